"""The contract's refusals parsed into typed errors (streamledger/core/contract_errors.py),
as the gateway errors expose them, and which gateway failures are worth retrying."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest

from streamledger.core import contract_errors
from streamledger.core.contract_errors import CODES, ContractError, parse
from streamledger.fabric import (
    CommitError,
    CommitStatusError,
    EndorseError,
    EvaluateError,
    GatewayError,
    PeerDetail,
    SubmitError,
    is_transient,
)

ERRORS_GO = Path(__file__).resolve().parents[2] / "chaincode" / "ledger" / "errors.go"


def go_codes() -> set[str]:
    return set(re.findall(r'Code\w+\s+Code = "([A-Z_]+)"', ERRORS_GO.read_text()))


def test_every_code_of_the_chaincode_has_its_own_class() -> None:
    assert go_codes() and set(CODES) == go_codes()
    assert len(set(CODES.values())) == len(CODES)
    assert all(issubclass(kind, ContractError) and kind is not ContractError for kind in CODES.values())


@pytest.mark.parametrize("code", sorted(CODES))
def test_each_code_is_parsed_with_its_field_and_detail(code: str) -> None:
    refusal = parse(f'chaincode response 500, {code}: "hold_id": no hold "h-1"')
    assert type(refusal) is CODES[code]
    assert (refusal.code, refusal.field, refusal.detail) == (code, "hold_id", 'no hold "h-1"')
    assert str(refusal) == refusal.message == f'{code}: "hold_id": no hold "h-1"'
    bare = parse(f"{code}: the transaction has no readable client identity")  # as the chaincode writes it
    assert type(bare) is CODES[code]
    assert (bare.field, bare.detail) == ("", "the transaction has no readable client identity")


def test_the_subclasses_are_named_after_their_codes() -> None:
    assert isinstance(parse("INSUFFICIENT_FUNDS: x"), contract_errors.InsufficientFunds)
    assert isinstance(parse("ALREADY_SETTLED: x"), contract_errors.AlreadySettled)
    assert isinstance(parse("WINDOW_OPEN: x"), contract_errors.WindowOpen)
    assert isinstance(parse("STALE_RECEIPT: \"sequence\": x"), contract_errors.StaleReceipt)
    assert isinstance(parse("CONFLICT: x"), contract_errors.Conflict)


@pytest.mark.parametrize("message", [
    "chaincode response 500, Function Nope not found in contract StreamLedger",
    "chaincode response 500, error managing parameter param1. conversion error",
    "evaluate failed: NOT_FOUND: channel 'nope' not found",  # a gRPC status name, not the contract's code
    "evaluate failed: UNAVAILABLE: connection refused",
    "SOMETHING_ELSE: a code the contract does not have",
    "",
])
def test_messages_without_a_contract_code_parse_to_none(message: str) -> None:
    assert parse(message) is None


def test_a_detail_may_hold_quotes_colons_and_newlines() -> None:
    refusal = parse('chaincode response 500, INVALID_ARGUMENT: "hold_id": must be 1-128 of \'.\', \':\'; got "a: b"\nmore')
    assert refusal.field == "hold_id" and refusal.detail == 'must be 1-128 of \'.\', \':\'; got "a: b"\nmore'


def test_gateway_errors_expose_the_contracts_refusal_from_the_peers_details() -> None:
    peer = PeerDetail("127.0.0.1:7051", "Org1MSP",
                      'chaincode response 500, INSUFFICIENT_FUNDS: "amount": account "a" has 0, needs 5')
    exc = EndorseError("endorse failed: ABORTED: failed to endorse transaction", code=grpc.StatusCode.ABORTED,
                       details=(peer,))
    assert isinstance(exc.contract_error, contract_errors.InsufficientFunds)
    assert exc.contract_error.field == "amount"
    assert isinstance(exc, GatewayError)  # still caught as before


def test_without_details_the_refusal_is_read_from_the_message() -> None:
    exc = EvaluateError('evaluate failed: UNKNOWN: evaluate call to endorser returned error: chaincode response 500, '
                        'NOT_FOUND: "hold_id": no hold "h"', code=grpc.StatusCode.UNKNOWN)
    assert isinstance(exc.contract_error, contract_errors.NotFound)
    assert exc.contract_error.detail == 'no hold "h"'


def test_a_failure_that_is_not_the_contracts_has_no_contract_error() -> None:
    assert EvaluateError("evaluate failed: NOT_FOUND: no such chaincode", code=grpc.StatusCode.NOT_FOUND
                         ).contract_error is None
    assert GatewayError("evaluate failed: UNAVAILABLE: refused", code=grpc.StatusCode.UNAVAILABLE).contract_error is None
    assert CommitError("tx", "MVCC_READ_CONFLICT", 3).contract_error is None


@pytest.mark.parametrize("kind", [GatewayError, EndorseError, SubmitError, CommitStatusError, EvaluateError])
@pytest.mark.parametrize(("code", "transient"), [
    (grpc.StatusCode.UNAVAILABLE, True), (grpc.StatusCode.DEADLINE_EXCEEDED, True),
    (grpc.StatusCode.ABORTED, False), (grpc.StatusCode.UNKNOWN, False), (grpc.StatusCode.PERMISSION_DENIED, False),
    (None, False),
])
def test_unreachable_or_slow_peers_and_orderers_are_transient(kind, code, transient: bool) -> None:
    assert is_transient(kind("x", code=code)) is transient


@pytest.mark.parametrize("kind", [GatewayError, EndorseError, SubmitError, EvaluateError])
def test_a_cancelled_stream_is_transient_only_for_the_commit_wait(kind) -> None:
    # The wait only reads (and a resubmit carries the same transaction id); other steps may not be safe.
    assert is_transient(CommitStatusError("x", code=grpc.StatusCode.CANCELLED))
    assert not is_transient(kind("x", code=grpc.StatusCode.CANCELLED))


@pytest.mark.parametrize(("status", "transient"), [
    ("MVCC_READ_CONFLICT", True), ("PHANTOM_READ_CONFLICT", True),
    ("ENDORSEMENT_POLICY_FAILURE", False), ("DUPLICATE_TXID", False),
])
def test_only_read_conflicts_among_invalid_commits_are_transient(status: str, transient: bool) -> None:
    assert is_transient(CommitError("tx", status, 3)) is transient


def test_other_exceptions_are_not_transient() -> None:
    assert not is_transient(ValueError("x"))
    assert not is_transient(contract_errors.NotFound("x"))
