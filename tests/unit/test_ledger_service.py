"""Which failures the ledger service waits out (retries) and which stop it or become dead letters;
its one retry loop (bounded, counted by operation); its settings' names."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from aiokafka.errors import KafkaConnectionError, RecordTooLargeError
from prometheus_client import REGISTRY
from pymongo.errors import AutoReconnect

from services.ledger.retries import Retries, RetriesSpent, is_transient
from services.ledger.settings import LedgerServiceSettings
from services.ledger.store import StoreUnavailable
from streamledger.fabric.errors import (
    CommitError,
    EndorseError,
    EvaluateError,
    SubmitError,
)
from streamledger.retry import RetryPolicy, Stopped
from streamledger.settings import LedgerSettings


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


# -- the service's one retry loop: bounded, counted by operation, spent retries stop the service --

def retries_counted(operation: str) -> float:
    return REGISTRY.get_sample_value("streamledger_ledger_retries_total", {"operation": operation}) or 0.0


async def test_each_retry_is_counted_under_its_operation_and_spent_retries_are_named() -> None:
    calls = []

    async def unavailable() -> None:
        calls.append(1)
        raise EvaluateError("peer down", code=grpc.StatusCode.UNAVAILABLE)

    before = retries_counted("who_am_i")
    retries = Retries(RetryPolicy(attempts=3, initial_seconds=0.001, max_seconds=0.002), asyncio.Event())
    with pytest.raises(RetriesSpent, match="who_am_i still failed after 3 attempts: EvaluateError: peer down") as spent:
        await retries.run("who_am_i", unavailable)
    assert len(calls) == 3
    assert retries_counted("who_am_i") - before == 2  # the first try is no retry
    assert isinstance(spent.value.__cause__, EvaluateError)
    # A spent outage is not the contract's refusal: code catching EvaluateError does not see it.
    assert not isinstance(spent.value, EvaluateError)


async def test_a_refusal_is_not_retried_and_keeps_its_type() -> None:
    calls = []

    async def refused() -> None:
        calls.append(1)
        raise EndorseError("FORBIDDEN: only the provider may settle", code=grpc.StatusCode.ABORTED)

    before = retries_counted("settle")
    retries = Retries(RetryPolicy(attempts=5, initial_seconds=0.001, max_seconds=0.002), asyncio.Event())
    with pytest.raises(EndorseError, match="FORBIDDEN"):
        await retries.run("settle", refused)
    assert len(calls) == 1 and retries_counted("settle") == before


async def test_a_retry_succeeds_within_the_bound_and_a_stop_ends_the_wait() -> None:
    outcomes = [StoreUnavailable("mongo"), AutoReconnect("mongo restarting"), "stored"]

    async def flaky() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    retries = Retries(RetryPolicy(attempts=3, initial_seconds=0.001, max_seconds=0.002), asyncio.Event())
    assert await retries.run("proofs", flaky) == "stored"

    stop = asyncio.Event()
    stop.set()
    waiting = Retries(RetryPolicy(attempts=100, initial_seconds=60, max_seconds=60), stop)
    with pytest.raises(Stopped):
        await asyncio.wait_for(waiting.run("plan", mongo_down), timeout=5)


async def mongo_down() -> None:
    raise StoreUnavailable("mongo")


def test_settings_of_the_service_are_all_ledger_prefixed(monkeypatch: pytest.MonkeyPatch) -> None:
    own = set(LedgerServiceSettings.model_fields) - set(LedgerSettings.model_fields)
    assert own and all(name.startswith("ledger_") for name in own), sorted(own)
    assert all(not name.endswith(("_s", "_ms", "_secs")) for name in own), sorted(own)
    monkeypatch.setenv("STREAMLEDGER_LEDGER_CLEAN_TOPIC", "clean-x")
    monkeypatch.setenv("STREAMLEDGER_CLEAN_TOPIC", "not-mine")  # another service's variable
    monkeypatch.setenv("STREAMLEDGER_LEDGER_RETRY_ATTEMPTS", "7")
    settings = LedgerServiceSettings()
    assert (settings.ledger_clean_topic, settings.ledger_retry_attempts) == ("clean-x", 7)
