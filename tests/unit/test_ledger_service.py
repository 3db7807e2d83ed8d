"""Which failures the ledger service waits out (retries) and which stop it or become dead letters."""

from __future__ import annotations

import grpc
import pytest
from aiokafka.errors import KafkaConnectionError, RecordTooLargeError
from pymongo.errors import AutoReconnect

from services.ledger.app import is_transient
from streamledger.fabric.errors import CommitError, EndorseError, EvaluateError, SubmitError
from services.ledger.store import StoreUnavailable


@pytest.mark.parametrize("exc", [
    EvaluateError("peer down", code=grpc.StatusCode.UNAVAILABLE),
    EndorseError("slow", code=grpc.StatusCode.DEADLINE_EXCEEDED),
    SubmitError("orderer refused", code=grpc.StatusCode.ABORTED),
    CommitError("tx1", "MVCC_READ_CONFLICT", 7),
    StoreUnavailable("mongo"),
    AutoReconnect("mongo restarting"),
    KafkaConnectionError(),
], ids=lambda e: type(e).__name__)
def test_outages_and_conflicts_are_retried(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize("exc", [
    EndorseError("CONFLICT: batch already anchored with another root", code=grpc.StatusCode.ABORTED),
    EvaluateError("INVALID_ARGUMENT: hold_id", code=grpc.StatusCode.UNKNOWN),
    CommitError("tx1", "ENDORSEMENT_POLICY_FAILURE", 7),
    RecordTooLargeError(),
    ValueError("a bug"),
], ids=lambda e: type(e).__name__)
def test_refusals_are_not_retried(exc: BaseException) -> None:
    assert not is_transient(exc)
