"""An endorsement that failed because another organisation's peers could not be reached is an
`EndorsementUnavailable` naming those organisations, and one whose peers' results differed (a
peer that has not yet committed the latest block) an `EndorsementMismatch`; both transient, so
a retry policy endorses the same proposal again. The gateway's answers are the texts Fabric
v3.1.5's gateway writes (internal/pkg/gateway: endorse.go, endorsement.go, registry.go); its
stubs are faked."""

from __future__ import annotations

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fabric_protos.discovery import protocol_pb2
from fabric_protos.gateway import gateway_pb2
from google.protobuf import any_pb2
from google.rpc import status_pb2

from streamledger.fabric import (
    CommitStatusError,
    Contract,
    EndorseError,
    EndorsementMismatch,
    EndorsementUnavailable,
    Identity,
    PeerDetail,
    Signer,
    SubmitError,
    is_transient,
)
from streamledger.fabric.client import GatewayClient
from streamledger.fabric.discovery import (
    chaincode_of,
    discovery_request,
    orgs_without_peers,
)
from streamledger.fabric.errors import from_rpc_error, unreachable_endorsers
from streamledger.fabric.proposal import signed_proposal
from streamledger.retry import RetryPolicy
from tests.unit.test_fabric_retry import FAST, ScriptedStub, endorsed, status

ABORTED, FAILED_PRECONDITION, UNAVAILABLE = (grpc.StatusCode.ABORTED, grpc.StatusCode.FAILED_PRECONDITION,
                                             grpc.StatusCode.UNAVAILABLE)
COLLECT = "failed to collect enough transaction endorsements, see attached details for more info"
REFUSED = ('rpc error: code = Unavailable desc = connection error: desc = "transport: Error while dialing: '
           'dial tcp 127.0.0.1:9051: connect: connection refused"')
NO_COMBINATION = ("no combination of peers can be derived which satisfy the endorsement policy: "
                  "no peer combination can satisfy the endorsement policy")
NOT_CONNECTED = ("failed to select a set of endorsers that satisfy the endorsement policy due to unavailability "
                 "of peers: [127.0.0.1:9051]")
ORG2_DOWN = PeerDetail("127.0.0.1:9051", "Org2MSP", REFUSED)


def rich_rpc_error(code: grpc.StatusCode, message: str, *details: PeerDetail) -> grpc.aio.AioRpcError:
    """An AioRpcError as the gateway sends it: the ErrorDetails in grpc-status-details-bin."""
    packed = []
    for d in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(gateway_pb2.ErrorDetail(address=d.address, msp_id=d.msp_id, message=d.message))
        packed.append(any_detail)
    rich = status_pb2.Status(code=code.value[0], message=message, details=packed).SerializeToString()
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(("grpc-status-details-bin", rich)),
                                message)


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer(ec.generate_private_key(ec.SECP256R1()))


# -- what the gateway's answer says --
def test_a_peer_the_gateway_could_not_dial_is_named_by_its_org() -> None:
    assert unreachable_endorsers(ABORTED, COLLECT, (ORG2_DOWN,)) == ("Org2MSP",)
    timed_out = PeerDetail("127.0.0.1:9051", "Org2MSP", "rpc error: code = DeadlineExceeded desc = context deadline")
    assert unreachable_endorsers(ABORTED, "failed to endorse transaction, see attached details for more info",
                                 (timed_out, ORG2_DOWN)) == ("Org2MSP",)


def test_discovery_knowing_no_live_endorsers_is_unavailability_naming_no_org() -> None:
    assert unreachable_endorsers(FAILED_PRECONDITION, NO_COMBINATION, ()) == ()
    assert unreachable_endorsers(FAILED_PRECONDITION, NOT_CONNECTED, ()) == ()


def test_orgs_the_client_chose_are_named_from_the_message() -> None:
    message = "failed to find any endorsing peers for org(s): Org2MSP, Org3MSP"
    assert unreachable_endorsers(UNAVAILABLE, message, ()) == ("Org2MSP", "Org3MSP")


@pytest.mark.parametrize(("code", "message", "details"), [
    # the contract refused on the other peer: not a matter of reachability
    (ABORTED, COLLECT, (PeerDetail("127.0.0.1:9051", "Org2MSP", 'chaincode response 500, FORBIDDEN: "creator": no'),)),
    # one peer unreachable, another refused for its own reason: the refusal decides
    (ABORTED, COLLECT, (ORG2_DOWN, PeerDetail("127.0.0.1:7051", "Org1MSP", "access denied: creator org unknown"))),
    (ABORTED, "failed to endorse transaction, see attached details for more info", ()),
    (FAILED_PRECONDITION, "access denied: channel [streamledger] creator org unknown", ()),
    (UNAVAILABLE, "no peers available to evaluate chaincode streamledger in channel streamledger", ()),
    (grpc.StatusCode.UNKNOWN, NO_COMBINATION, ()),
])
def test_other_endorsement_failures_are_not_unavailability(code, message: str, details) -> None:
    assert unreachable_endorsers(code, message, details) is None


def test_the_typed_error_is_an_endorse_error_naming_the_org_and_is_transient() -> None:
    error = from_rpc_error(EndorseError, "endorse", rich_rpc_error(ABORTED, COLLECT, ORG2_DOWN), "tx-1")
    assert type(error) is EndorsementUnavailable and isinstance(error, EndorseError)
    assert error.orgs == ("Org2MSP",) and error.transaction_id == "tx-1" and error.details == (ORG2_DOWN,)
    assert str(error).startswith("no peer of Org2MSP could endorse: endorse failed: ABORTED: failed to collect")
    assert "connection refused" in str(error)
    assert error.transient and is_transient(error)
    assert error.contract_error is None


def test_naming_the_orgs_later_keeps_the_gateways_answer() -> None:
    error = from_rpc_error(EndorseError, "endorse", rich_rpc_error(FAILED_PRECONDITION, NO_COMBINATION), "tx-2")
    assert isinstance(error, EndorsementUnavailable) and error.orgs == ()
    assert str(error).startswith("too few peers could endorse: endorse failed: FAILED_PRECONDITION: no combination")
    named = error.naming(("Org2MSP",))
    assert named.orgs == ("Org2MSP",) and named.transaction_id == "tx-2" and named.code == FAILED_PRECONDITION
    assert str(named) == f"no peer of Org2MSP could endorse: endorse failed: FAILED_PRECONDITION: {NO_COMBINATION}"


@pytest.mark.parametrize("kind", [SubmitError, CommitStatusError])
def test_only_endorsements_become_endorsement_unavailable(kind) -> None:
    error = from_rpc_error(kind, "submit", rich_rpc_error(FAILED_PRECONDITION, NO_COMBINATION))
    assert type(error) is kind and not is_transient(error)


def test_another_precondition_failure_stays_a_plain_endorse_error() -> None:
    error = from_rpc_error(EndorseError, "endorse", rich_rpc_error(FAILED_PRECONDITION, "access denied"))
    assert type(error) is EndorseError and not is_transient(error)


def test_peers_whose_results_differ_are_a_transient_mismatch_naming_their_org() -> None:
    lagging = PeerDetail("127.0.0.1:7051", "Org1MSP", "ProposalResponsePayloads do not match")
    error = from_rpc_error(EndorseError, "endorse", rich_rpc_error(ABORTED, COLLECT, lagging), "tx-3")
    assert type(error) is EndorsementMismatch and isinstance(error, EndorseError)
    assert error.orgs == ("Org1MSP",) and error.transaction_id == "tx-3"
    assert "ProposalResponsePayloads do not match" in str(error)
    assert is_transient(error) and error.contract_error is None


def test_a_mismatch_beside_another_failure_is_not_only_a_mismatch() -> None:
    lagging = PeerDetail("127.0.0.1:7051", "Org1MSP", "ProposalResponsePayloads do not match")
    refused = PeerDetail("127.0.0.1:9051", "Org2MSP", 'chaincode response 500, FORBIDDEN: "creator": no')
    error = from_rpc_error(EndorseError, "endorse", rich_rpc_error(ABORTED, COLLECT, lagging, refused))
    assert type(error) is EndorseError and not is_transient(error)


# -- asking discovery whose peers are missing --
def members(**peers_by_org: int) -> protocol_pb2.QueryResult:
    result = protocol_pb2.QueryResult(members=protocol_pb2.PeerMembershipResult())
    for org, count in peers_by_org.items():
        result.members.peers_by_org[org].peers.extend([protocol_pb2.Peer(identity=b"p")] * count)
    return result


def config(*msps: str, orderers: tuple[str, ...] = ("OrdererMSP",)) -> protocol_pb2.QueryResult:
    result = protocol_pb2.QueryResult(config_result=protocol_pb2.ConfigResult())
    for msp in (*msps, *orderers):
        result.config_result.msps[msp].name = msp
    for msp in orderers:
        result.config_result.orderers[msp].endpoint.add(host="127.0.0.1", port=7050)
    return result


def test_the_peer_orgs_without_a_live_peer_are_the_missing_ones() -> None:
    both = config("Org1MSP", "Org2MSP")
    assert orgs_without_peers(protocol_pb2.Response(results=[both, members(Org1MSP=1)])) == ("Org2MSP",)
    assert orgs_without_peers(protocol_pb2.Response(results=[both, members(Org1MSP=1, Org2MSP=0)])) == ("Org2MSP",)
    assert orgs_without_peers(protocol_pb2.Response(results=[both, members()])) == ("Org1MSP", "Org2MSP")
    assert orgs_without_peers(protocol_pb2.Response(results=[both, members(Org1MSP=1, Org2MSP=2)])) == ()


def test_a_discovery_error_names_no_org() -> None:
    refused = protocol_pb2.QueryResult(error=protocol_pb2.Error(content="access denied"))
    assert orgs_without_peers(protocol_pb2.Response(results=[refused, members(Org1MSP=1)])) == ()
    assert orgs_without_peers(protocol_pb2.Response(results=[config("Org1MSP"), refused])) == ()
    assert orgs_without_peers(protocol_pb2.Response()) == ()


def test_the_request_asks_about_the_proposals_chaincode_as_the_client(signer: Signer) -> None:
    identity = Identity("Org2MSP", b"cert")
    _, proposal = signed_proposal(identity, signer, "streamledger", "the-chaincode", "Transfer", ("a", 1))
    assert chaincode_of(proposal) == "the-chaincode"
    signed = discovery_request(identity, signer, "streamledger", chaincode_of(proposal))
    request = protocol_pb2.Request.FromString(signed.payload)
    assert request.authentication.client_identity == identity.serialized()
    assert [q.channel for q in request.queries] == ["streamledger", "streamledger"]
    assert request.queries[0].HasField("config_query")
    assert [c.name for c in request.queries[1].peer_query.filter.chaincodes] == ["the-chaincode"]


class FakeDiscovery:
    def __init__(self, answer: protocol_pb2.Response | BaseException) -> None:
        self.answer = answer
        self.requests: list[protocol_pb2.SignedRequest] = []

    async def Discover(self, request, timeout=None):
        self.requests.append(request)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def contract(stub: ScriptedStub, signer: Signer, discovery: FakeDiscovery | None, retry: RetryPolicy) -> Contract:
    client = GatewayClient(stub, Identity("Org2MSP", b"cert"), signer, discovery=discovery)  # type: ignore[arg-type]
    return Contract(client, "streamledger", "streamledger", retry)


async def test_the_endorse_step_asks_discovery_only_when_the_gateway_names_no_org(signer: Signer) -> None:
    discovery = FakeDiscovery(protocol_pb2.Response(results=[config("Org1MSP", "Org2MSP"), members(Org1MSP=1)]))
    stub = ScriptedStub(Endorse=[rich_rpc_error(FAILED_PRECONDITION, NO_COMBINATION)])
    with pytest.raises(EndorsementUnavailable) as failure:
        await contract(stub, signer, discovery, RetryPolicy(attempts=1)).submit("Transfer", "a", 1)
    assert failure.value.orgs == ("Org2MSP",) and "no peer of Org2MSP could endorse" in str(failure.value)
    assert len(discovery.requests) == 1

    stub = ScriptedStub(Endorse=[rich_rpc_error(ABORTED, COLLECT, ORG2_DOWN)])
    with pytest.raises(EndorsementUnavailable) as failure:
        await contract(stub, signer, discovery, RetryPolicy(attempts=1)).submit("Transfer", "a", 1)
    assert failure.value.orgs == ("Org2MSP",)
    assert len(discovery.requests) == 1  # the gateway named it: discovery not asked


async def test_when_discovery_cannot_answer_the_error_names_no_org_and_stays_transient(signer: Signer) -> None:
    discovery = FakeDiscovery(grpc.aio.AioRpcError(UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down"))
    stub = ScriptedStub(Endorse=[rich_rpc_error(FAILED_PRECONDITION, NO_COMBINATION)])
    with pytest.raises(EndorsementUnavailable) as failure:
        await contract(stub, signer, discovery, RetryPolicy(attempts=1)).submit("Transfer", "a", 1)
    assert failure.value.orgs == () and is_transient(failure.value)


async def test_a_retry_policy_endorses_the_same_proposal_again_until_the_org_is_back(signer: Signer) -> None:
    discovery = FakeDiscovery(protocol_pb2.Response(results=[config("Org1MSP", "Org2MSP"), members(Org1MSP=1)]))
    lagging = PeerDetail("127.0.0.1:9051", "Org2MSP", "ProposalResponsePayloads do not match")
    down = [rich_rpc_error(ABORTED, COLLECT, ORG2_DOWN), rich_rpc_error(FAILED_PRECONDITION, NO_COMBINATION),
            rich_rpc_error(ABORTED, COLLECT, lagging)]
    stub = ScriptedStub(Endorse=[*down, endorsed(b'{"ok": true}')], Submit=[gateway_pb2.SubmitResponse()],
                        CommitStatus=[status()])
    committed = await contract(stub, signer, discovery, RetryPolicy(attempts=4, **FAST)).submit("Transfer", "a", 1)
    assert committed.json() == {"ok": True}
    assert stub.calls() == {"Evaluate": 0, "Endorse": 4, "Submit": 1, "CommitStatus": 1}
    assert len({r.transaction_id for r in stub.requests["Endorse"]}) == 1  # one transaction, never two
