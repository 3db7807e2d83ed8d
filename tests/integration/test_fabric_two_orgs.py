"""Two organisations that do not trust each other (issue 20): the release they run, the
chaincode definition both approved, each org's peer holding what the other's committed, and
no transaction committing with one organisation's endorsement alone.

Fabric's own CLI (`peer`, acting on either org's peer) checks what our Python gateway client
wrote, so the two never share a mistake. The ledger keeps its state between runs: every id
carries a fresh suffix.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from fabric_protos.common import policies_pb2
from fabric_protos.msp import msp_principal_pb2
from fabric_protos.peer import policy_pb2

from devstack.fabric import CHANNEL, ENDORSEMENT_POLICY, FabricError, FabricNetwork
from devstack.fabric.network import CHAINCODE_NAME
from streamledger.core.receipts import hold_id
from streamledger.ledger import LedgerClient
from tests.integration.conftest import identity

pytestmark = [pytest.mark.integration, pytest.mark.fabric]

FABRIC_RELEASE = "3.1.5"


@pytest.fixture
def suffix() -> str:
    return uuid.uuid4().hex[:10]


def wait_for(read: Callable[[], str], timeout_s: float = 30.0, what: str = "answer") -> str:
    """`read()`'s first answer that is not a FabricError: the other org's peer commits the
    block a moment after the gateway's peer reported it."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return read()
        except FabricError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


# -- the release and the chaincode definition --

def test_the_peer_and_orderer_binaries_are_fabric_3_1_5(network: FabricNetwork) -> None:
    peer = network.peer_cli("version")
    assert f"Version: {FABRIC_RELEASE}" in peer, peer
    orderer = subprocess.run([network.binaries.tool("orderer"), "version"], capture_output=True, text=True, check=False,
                             timeout=30)
    assert f"Version: {FABRIC_RELEASE}" in orderer.stdout, orderer.stdout + orderer.stderr


def policy_text(envelope: policies_pb2.SignaturePolicyEnvelope) -> str:
    """A signature policy written back in Fabric's policy language: AND('Org1MSP.peer', ...)."""
    def principal(index: int) -> str:
        who = envelope.identities[index]
        assert who.principal_classification == msp_principal_pb2.MSPPrincipal.ROLE, who
        role = msp_principal_pb2.MSPRole.FromString(who.principal)
        return f"'{role.msp_identifier}.{msp_principal_pb2.MSPRole.MSPRoleType.Name(role.role).lower()}'"

    def rule(r: policies_pb2.SignaturePolicy) -> str:
        if r.WhichOneof("Type") == "signed_by":
            return principal(r.signed_by)
        rules = [rule(sub) for sub in r.n_out_of.rules]
        if r.n_out_of.n == len(rules):
            return f"AND({','.join(rules)})"
        if r.n_out_of.n == 1:
            return f"OR({','.join(rules)})"
        return f"OutOf({r.n_out_of.n},{','.join(rules)})"

    return rule(envelope.rule)


@pytest.mark.parametrize("org", ["Org1", "Org2"])
def test_the_committed_definition_needs_both_organisations(network: FabricNetwork, org: str) -> None:
    definition = json.loads(network.peer_cli(
        "lifecycle", "chaincode", "querycommitted", "-C", CHANNEL, "-n", CHAINCODE_NAME, "--output", "json",
        org=org))
    assert definition["approvals"] == {"Org1MSP": True, "Org2MSP": True}
    policy = policy_pb2.ApplicationPolicy.FromString(base64.b64decode(definition["validation_parameter"]))
    assert policy.WhichOneof("Type") == "signature_policy", policy
    assert policy_text(policy.signature_policy) == ENDORSEMENT_POLICY == "AND('Org1MSP.peer','Org2MSP.peer')"


# -- one ledger, two peers --

@pytest.fixture
async def admin(network: FabricNetwork) -> AsyncIterator[LedgerClient]:
    async with LedgerClient.connect(identity("Admin")) as ledger:
        yield ledger


@pytest.fixture
async def client_via_org1(network: FabricNetwork) -> AsyncIterator[LedgerClient]:
    """Org2's client User5, talking to the Org1 peer's gateway (which gathers Org2's endorsement)."""
    org1 = network.org("Org1")
    async with LedgerClient.connect(identity("User5", "Org2", fabric_peer_endpoint=org1.peer_address,
                                             fabric_peer_tls_root=network.peer_tls_ca(org1))) as ledger:
        yield ledger


async def test_what_a_client_writes_through_the_org1_gateway_the_org2_peer_returns(
        network: FabricNetwork, admin: LedgerClient, client_via_org1: LedgerClient, suffix: str) -> None:
    me = (await client_via_org1.who_am_i())["Account"]
    provider = network.account_of("provider")
    minted = await admin.contract.submit("Mint", me, 100)
    assert minted.endorsers == ("Org1MSP", "Org2MSP")
    nonce = f"two-orgs-{suffix}"
    hold = hold_id(me, nonce)
    frozen = await client_via_org1.contract.submit("Freeze", nonce, provider, 40, 4, int(time.time()) + 3600, 0)
    assert frozen.endorsers == ("Org1MSP", "Org2MSP")  # neither org could have committed it alone

    on_org2 = json.loads(wait_for(lambda: network.query("GetHold", hold, user="User5", org="Org2"),
                                  what=f"hold {hold} on the Org2 peer"))
    assert (on_org2["hold_id"], on_org2["client"], on_org2["provider"], on_org2["amount"], on_org2["price_per_unit"],
            on_org2["status"], on_org2["freeze_tx_id"]) == (hold, me, provider, 40, 4, "OPEN", frozen.transaction_id)
    assert json.loads(network.query("Balance", me, user="User5", org="Org2")) == \
        json.loads(network.query("Balance", me, user="audit", org="Org1"))


async def test_what_org1_anchors_the_org2_peer_returns(network: FabricNetwork, suffix: str) -> None:
    batch, root = f"two-orgs-{suffix}:0:0-6", uuid.uuid4().hex * 2  # <topic>:<partition>:<first>-<last>
    async with LedgerClient.connect(identity("anchoring")) as anchoring:
        anchored = await anchoring.anchor_batch(batch, root, 7, 0, 6)
    assert anchored.endorsers == ("Org1MSP", "Org2MSP")
    on_org2 = json.loads(wait_for(lambda: network.query("GetAnchor", batch, user="User5", org="Org2"),
                                  what=f"anchor {batch} on the Org2 peer"))
    assert (on_org2["merkle_root"], on_org2["count"], on_org2["tx_id"]) == (root, 7, anchored.transaction_id)


# -- no organisation commits alone --

def test_a_transaction_endorsed_by_one_organisation_alone_is_invalidated_and_changes_nothing(
        network: FabricNetwork, suffix: str) -> None:
    client = network.account_of("User5", "Org2")
    network.invoke("Mint", client, "10")  # endorsed by both: commits (the CLI waits for both peers' blocks)

    def balances() -> tuple[int, int]:
        """The client's balance on each org's peer (as the client itself, and as Org1's auditor)."""
        return (json.loads(network.query("Balance", client, user="User5", org="Org2"))["balance"],
                json.loads(network.query("Balance", client, user="audit", org="Org1"))["balance"])

    before = balances()
    assert before[0] == before[1] >= 10
    with pytest.raises(FabricError, match="ENDORSEMENT_POLICY_FAILURE"):
        network.invoke("Mint", client, "5", endorsers=(network.org("Org1"),))
    payee = f"one-org-{suffix}"
    with pytest.raises(FabricError, match="ENDORSEMENT_POLICY_FAILURE"):  # nor Org2 alone
        network.invoke("Transfer", payee, "3", user="User5", org="Org2", endorsers=(network.org("Org2"),))
    assert balances() == before  # both peers marked both transactions invalid
    with pytest.raises(FabricError, match="NOT_FOUND"):
        network.query("Balance", payee, user="audit")
