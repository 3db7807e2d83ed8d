"""The gateway client retries only with the caller's bounded policy, once around a whole
evaluate or submit; a retried submit resumes at the step that failed, and a read conflict
runs the transaction anew. The gateway's gRPC stub is faked: each call answers from a script."""

from __future__ import annotations

import inspect
from collections.abc import Iterable

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fabric_protos.common import common_pb2
from fabric_protos.gateway import gateway_pb2
from fabric_protos.peer import proposal_pb2, proposal_response_pb2, transaction_pb2

from streamledger.core.contract_errors import NotFound
from streamledger.fabric import (
    NO_RETRY,
    CommitError,
    CommitStatusError,
    Contract,
    EndorseError,
    EvaluateError,
    Gateway,
    Identity,
    Signer,
    SubmitError,
)
from streamledger.fabric.client import GatewayClient
from streamledger.ledger import DEFAULT_RETRY, LedgerClient
from streamledger.retry import RetryPolicy

FAST = {"initial_seconds": 0.001, "max_seconds": 0.001}


def rpc_error(code: grpc.StatusCode, details: str = "failed") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def endorsed(result: bytes) -> gateway_pb2.EndorseResponse:
    action = proposal_pb2.ChaincodeAction()
    action.response.payload = result
    payload = proposal_response_pb2.ProposalResponsePayload(extension=action.SerializeToString())
    cap = transaction_pb2.ChaincodeActionPayload(action=transaction_pb2.ChaincodeEndorsedAction(
        proposal_response_payload=payload.SerializeToString()))
    transaction = transaction_pb2.Transaction(actions=[transaction_pb2.TransactionAction(payload=cap.SerializeToString())])
    return gateway_pb2.EndorseResponse(prepared_transaction=common_pb2.Envelope(
        payload=common_pb2.Payload(data=transaction.SerializeToString()).SerializeToString()))


def status(code: int = transaction_pb2.VALID, block: int = 7) -> gateway_pb2.CommitStatusResponse:
    return gateway_pb2.CommitStatusResponse(result=code, block_number=block)


class ScriptedStub:
    """The gateway's four unary calls; each answers from its script (an exception is raised),
    the last answer repeating, and every request is kept."""

    def __init__(self, **scripts: Iterable) -> None:
        self.scripts = {name: list(answers) for name, answers in scripts.items()}
        self.requests: dict[str, list] = {name: [] for name in ("Evaluate", "Endorse", "Submit", "CommitStatus")}

    def _answer(self, name: str, request):
        self.requests[name].append(request)
        script = self.scripts[name]
        answer = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def Evaluate(self, request, timeout=None):
        return self._answer("Evaluate", request)

    async def Endorse(self, request, timeout=None):
        return self._answer("Endorse", request)

    async def Submit(self, request, timeout=None):
        return self._answer("Submit", request)

    async def CommitStatus(self, request, timeout=None):
        return self._answer("CommitStatus", gateway_pb2.CommitStatusRequest.FromString(request.request))

    def calls(self) -> dict[str, int]:
        return {name: len(requests) for name, requests in self.requests.items()}


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer(ec.generate_private_key(ec.SECP256R1()))


def contract(stub: ScriptedStub, signer: Signer, retry: RetryPolicy) -> Contract:
    client = GatewayClient(stub, Identity("Org1MSP", b"cert"), signer)  # type: ignore[arg-type]
    return Contract(client, "ch", "cc", retry)


UNAVAILABLE = rpc_error(grpc.StatusCode.UNAVAILABLE)
DEADLINE = rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED)
ANSWER = gateway_pb2.EvaluateResponse(result=proposal_response_pb2.Response(payload=b'{"balance": 3}'))


async def test_evaluate_retries_transient_failures_within_the_policy(signer: Signer) -> None:
    stub = ScriptedStub(Evaluate=[UNAVAILABLE, DEADLINE, ANSWER])
    assert await contract(stub, signer, RetryPolicy(attempts=5, **FAST)).evaluate_json("Balance", "a") == {"balance": 3}
    assert stub.calls()["Evaluate"] == 3


async def test_evaluate_gives_up_after_exactly_the_policys_attempts(signer: Signer) -> None:
    stub = ScriptedStub(Evaluate=[UNAVAILABLE])
    with pytest.raises(EvaluateError) as failure:
        await contract(stub, signer, RetryPolicy(attempts=3, **FAST)).evaluate("Balance", "a")
    assert failure.value.code == grpc.StatusCode.UNAVAILABLE
    assert stub.calls()["Evaluate"] == 3


async def test_a_contract_refusal_is_not_retried(signer: Signer) -> None:
    refusal = rpc_error(grpc.StatusCode.UNKNOWN, 'chaincode response 500, NOT_FOUND: "hold_id": no hold "h"')
    stub = ScriptedStub(Evaluate=[refusal, ANSWER])
    with pytest.raises(EvaluateError) as failure:
        await contract(stub, signer, RetryPolicy(attempts=5, **FAST)).evaluate("GetHold", "h")
    assert isinstance(failure.value.contract_error, NotFound)
    assert stub.calls()["Evaluate"] == 1


async def test_the_gateway_does_not_retry_unless_given_a_policy(signer: Signer) -> None:
    identity = Identity("Org1MSP", b"cert")
    policy = RetryPolicy(attempts=4, **FAST)
    async with Gateway(grpc.aio.insecure_channel("127.0.0.1:1"), identity, signer) as plain, \
            Gateway(grpc.aio.insecure_channel("127.0.0.1:1"), identity, signer, retry=policy) as retrying:
        assert plain.network("ch").contract("cc").retry is NO_RETRY
        assert retrying.network("ch").contract("cc").retry is policy
        assert retrying.network("ch").contract("qscc", retry=NO_RETRY).retry is NO_RETRY
        stub = ScriptedStub(Evaluate=[UNAVAILABLE, ANSWER])
        plain.client.stub = stub
        with pytest.raises(EvaluateError):
            await plain.network("ch").contract("cc").evaluate("Balance", "a")
        assert stub.calls()["Evaluate"] == 1


async def test_submit_runs_the_steps_once_when_nothing_fails(signer: Signer) -> None:
    stub = ScriptedStub(Endorse=[endorsed(b'{"ok": 1}')], Submit=[gateway_pb2.SubmitResponse()],
                        CommitStatus=[status(block=9)])
    committed = await contract(stub, signer, RetryPolicy(attempts=5, **FAST)).submit("Mint", "a", 1)
    assert (committed.json(), committed.block_number) == ({"ok": 1}, 9)
    assert stub.calls() == {"Evaluate": 0, "Endorse": 1, "Submit": 1, "CommitStatus": 1}
    assert committed.transaction_id == stub.requests["Endorse"][0].transaction_id


async def test_a_retried_submit_resumes_at_the_step_that_failed(signer: Signer) -> None:
    stub = ScriptedStub(Endorse=[UNAVAILABLE, endorsed(b"{}")], Submit=[UNAVAILABLE, gateway_pb2.SubmitResponse()],
                        CommitStatus=[UNAVAILABLE, status()])
    committed = await contract(stub, signer, RetryPolicy(attempts=4, **FAST)).submit("Mint", "a", 1)
    assert stub.calls() == {"Evaluate": 0, "Endorse": 2, "Submit": 2, "CommitStatus": 2}
    # One transaction throughout: the same proposal re-endorsed, the same signed envelope resent.
    ids = {r.transaction_id for name in ("Endorse", "Submit", "CommitStatus") for r in stub.requests[name]}
    assert ids == {committed.transaction_id}
    assert stub.requests["Endorse"][0].proposed_transaction == stub.requests["Endorse"][1].proposed_transaction
    assert stub.requests["Submit"][0].prepared_transaction == stub.requests["Submit"][1].prepared_transaction


async def test_an_endorse_retried_after_the_proposal_went_stale_signs_a_new_one(signer: Signer, monkeypatch) -> None:
    monkeypatch.setattr("streamledger.fabric.contract.FRESH_PROPOSAL_SECONDS", 0.0)
    stub = ScriptedStub(Endorse=[UNAVAILABLE, endorsed(b"{}")], Submit=[UNAVAILABLE, gateway_pb2.SubmitResponse()],
                        CommitStatus=[status()])
    committed = await contract(stub, signer, RetryPolicy(attempts=4, **FAST)).submit("Mint", "a", 1)
    first, second = stub.requests["Endorse"]
    assert first.transaction_id != second.transaction_id == committed.transaction_id
    # Once endorsed, the envelope is what is retried, however old: it may already be ordered.
    assert stub.requests["Submit"][0].prepared_transaction == stub.requests["Submit"][1].prepared_transaction


async def test_a_commit_wait_that_runs_out_submits_the_same_envelope_again(signer: Signer) -> None:
    # The orderer took it but a Raft leader change lost it: waiting again would wait forever.
    stub = ScriptedStub(Endorse=[endorsed(b"{}")], Submit=[gateway_pb2.SubmitResponse()],
                        CommitStatus=[DEADLINE, DEADLINE, status(block=12)])
    committed = await contract(stub, signer, RetryPolicy(attempts=4, **FAST)).submit("Mint", "a", 1)
    assert committed.block_number == 12
    assert stub.calls() == {"Evaluate": 0, "Endorse": 1, "Submit": 3, "CommitStatus": 3}
    envelopes = {r.prepared_transaction.SerializeToString() for r in stub.requests["Submit"]}
    assert len(envelopes) == 1  # one signed envelope, one transaction id: it cannot commit twice
    assert {r.transaction_id for r in stub.requests["CommitStatus"]} == {committed.transaction_id}


async def test_a_commit_wait_whose_stream_the_peer_cancelled_submits_the_same_envelope_and_waits_again(
        signer: Signer) -> None:
    # Seen while the Raft leader stops: the peer drops the wait's stream (RST_STREAM, CANCELLED).
    stub = ScriptedStub(Endorse=[endorsed(b"{}")], Submit=[gateway_pb2.SubmitResponse()],
                        CommitStatus=[rpc_error(grpc.StatusCode.CANCELLED, "Stream removed"), status(block=7)])
    committed = await contract(stub, signer, RetryPolicy(attempts=3, **FAST)).submit("Mint", "a", 1)
    assert committed.block_number == 7
    assert stub.calls() == {"Evaluate": 0, "Endorse": 1, "Submit": 2, "CommitStatus": 2}
    assert len({r.prepared_transaction.SerializeToString() for r in stub.requests["Submit"]}) == 1


async def test_the_bound_counts_attempts_of_the_whole_submit_not_of_each_step(signer: Signer) -> None:
    stub = ScriptedStub(Endorse=[UNAVAILABLE, endorsed(b"{}")], Submit=[UNAVAILABLE, gateway_pb2.SubmitResponse()],
                        CommitStatus=[DEADLINE, status()])
    with pytest.raises(CommitStatusError):
        await contract(stub, signer, RetryPolicy(attempts=3, **FAST)).submit("Mint", "a", 1)
    assert stub.calls() == {"Evaluate": 0, "Endorse": 2, "Submit": 2, "CommitStatus": 1}


async def test_a_read_conflict_runs_the_transaction_anew(signer: Signer) -> None:
    stub = ScriptedStub(Endorse=[endorsed(b"{}")], Submit=[gateway_pb2.SubmitResponse()],
                        CommitStatus=[status(transaction_pb2.MVCC_READ_CONFLICT), status(block=11)])
    committed = await contract(stub, signer, RetryPolicy(attempts=5, **FAST)).submit("Transfer", "b", 1)
    first, second = (r.transaction_id for r in stub.requests["Endorse"])
    assert first != second and committed.transaction_id == second and committed.block_number == 11
    assert stub.calls() == {"Evaluate": 0, "Endorse": 2, "Submit": 2, "CommitStatus": 2}


async def test_conflicts_stop_at_the_bound_with_the_commit_error(signer: Signer) -> None:
    stub = ScriptedStub(Endorse=[endorsed(b"{}")], Submit=[gateway_pb2.SubmitResponse()],
                        CommitStatus=[status(transaction_pb2.PHANTOM_READ_CONFLICT)])
    with pytest.raises(CommitError) as failure:
        await contract(stub, signer, RetryPolicy(attempts=3, **FAST)).submit("Transfer", "b", 1)
    assert failure.value.conflict
    assert stub.calls() == {"Evaluate": 0, "Endorse": 3, "Submit": 3, "CommitStatus": 3}


@pytest.mark.parametrize("failure", [
    {"Endorse": [rpc_error(grpc.StatusCode.ABORTED, "INSUFFICIENT_FUNDS: x")]},
    {"Submit": [rpc_error(grpc.StatusCode.PERMISSION_DENIED)]},
    {"CommitStatus": [status(transaction_pb2.ENDORSEMENT_POLICY_FAILURE)]},
])
async def test_a_failure_that_is_not_transient_ends_the_submit_at_once(signer: Signer, failure: dict) -> None:
    scripts = {"Endorse": [endorsed(b"{}")], "Submit": [gateway_pb2.SubmitResponse()], "CommitStatus": [status()],
               **failure}
    stub = ScriptedStub(**scripts)
    with pytest.raises((EndorseError, SubmitError, CommitError)):
        await contract(stub, signer, RetryPolicy(attempts=5, **FAST)).submit("Transfer", "b", 1)
    assert stub.calls()["Endorse"] == 1 and stub.calls()["Submit"] <= 1 and stub.calls()["CommitStatus"] <= 1


def test_the_ledger_clients_default_policy_is_bounded_as_before() -> None:
    assert DEFAULT_RETRY == RetryPolicy(attempts=5, initial_seconds=0.1, max_seconds=2.0, jitter=1.0)
    assert inspect.signature(LedgerClient.connect).parameters["retry"].default is DEFAULT_RETRY
