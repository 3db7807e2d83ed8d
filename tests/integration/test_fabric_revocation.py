"""A revoked certificate (issue 20, "Bad input and faults"): Org2's CA revokes a client's
certificate and Org2's admin puts the CRL in Org2's MSP in the channel configuration
(`FabricNetwork.revoke`). From then on both peers refuse the client's proposals before the
contract runs. Fabric tells the caller no more than "access denied" (a prober learns
nothing); each peer logs the cause with the transaction id: "The certificate has been
revoked". The tests read both.

Each run issues one fresh Org2 client into its tmp folder (never the stack's crypto: the
stack's identities serve every other test) and revokes it, so Org2's one CRL in the channel
grows by one serial per run.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from devstack.fabric import FabricNetwork
from devstack.fabric.identities import issue_client, org_ca
from devstack.fabric.revocation import org_msp, revoked_serials, signing_certificate
from streamledger.fabric import EndorseError, EvaluateError, load_msp
from streamledger.ledger import LedgerClient
from streamledger.settings import LedgerSettings
from tests.integration.conftest import identity
from tests.integration.test_fabric_bad_input import (
    ACCESS_DENIED,
    PeerLog,
    gateway,
    proposal,
    refused_by_the_peer,
)

pytestmark = [pytest.mark.integration, pytest.mark.fabric]

REVOKED = "The certificate has been revoked"


@pytest.fixture(scope="module")
def client_msp(network: FabricNetwork, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A client of Org2 issued by Org2's CA for this run, outside the stack's crypto."""
    org = network.org("Org2")
    return issue_client(network.org_dir(org), org.domain, f"revoked-{uuid.uuid4().hex[:10]}",
                        users_dir=tmp_path_factory.mktemp("revocation"))


@pytest.fixture
async def ledgers(network: FabricNetwork, client_msp: Path) -> AsyncIterator[dict[str, LedgerClient]]:
    """The client; Org2's admin, who grants it the client role; Org1's admin, who mints; an auditor."""
    opened = {"client": LedgerClient.connect(LedgerSettings(fabric_msp_id="Org2MSP", fabric_msp_dir=client_msp)),
              "org2-admin": LedgerClient.connect(identity("Admin", "Org2")),
              "minter": LedgerClient.connect(identity("Admin", "Org1")),
              "audit": LedgerClient.connect(identity("audit"))}
    try:
        yield opened
    finally:
        for ledger in opened.values():
            await ledger.gateway.close()


async def test_a_revoked_certificate_is_refused_by_both_peers(
        network: FabricNetwork, client_msp: Path, ledgers: dict[str, LedgerClient]) -> None:
    client, audit = ledgers["client"], ledgers["audit"]
    account = (await client.who_am_i())["Account"]
    recipient = f"revocation-recipient-{uuid.uuid4().hex[:10]}"
    await ledgers["org2-admin"].grant_role(account, "client")
    await ledgers["minter"].mint(account, 10)

    # Before: it reads its balance and transfers (endorsed by both peers).
    assert await client.balance(account) == 10
    await client.transfer(recipient, 3)
    assert await client.balance(account) == 7

    assert network.revoke(client_msp, "Org2") is True

    org2 = network.org("Org2")
    cn = signing_certificate(client_msp).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    who, signer = load_msp(client_msp, org2.msp_id)
    for peer_org in network.orgs:
        log = PeerLog(peer_org)
        async with gateway(network, peer_org, who, signer) as gw:
            transfer = proposal(gw, "Transfer", recipient, 1)
            with pytest.raises(EndorseError) as failure:
                await transfer.endorse()
        refused_by_the_peer(failure, peer_org, f"{ACCESS_DENIED} creator org [{org2.msp_id}]")
        line = log.line_for(transfer.transaction_id)
        assert "access denied: identity is not valid" in line and REVOKED in line, line
        assert f"mspid={org2.msp_id} subject=CN={cn}" in line, line

    # The client library meets the same refusal, on a read too: not the contract's.
    with pytest.raises(EvaluateError) as read:
        await client.balance(account)
    assert read.value.contract_error is None and read.value.details, read.value
    assert all(f"{ACCESS_DENIED} creator org [{org2.msp_id}]" in d.message for d in read.value.details), read.value
    # Nothing moved after the revocation.
    assert await audit.balance(account) == 7
    assert await audit.balance(recipient) == 3


def test_revoking_twice_changes_nothing(network: FabricNetwork, client_msp: Path) -> None:
    """Whichever test revokes first, a second revocation submits nothing: the channel's
    configuration keeps its sequence, and Org2's MSP keeps one CRL, signed by Org2's CA,
    that lists this run's serial beside every earlier run's."""
    org2 = network.org("Org2")
    network.revoke(client_msp, "Org2")
    before = network.fetch_config(org2)
    assert network.revoke(client_msp, "Org2") is False
    after = network.fetch_config(org2)
    assert after["sequence"] == before["sequence"] and after == before
    assert signing_certificate(client_msp).serial_number in revoked_serials(after, org2.msp_id)
    [encoded] = org_msp(after, org2.msp_id)["revocation_list"]
    ca_cert, _ = org_ca(network.org_dir(org2))
    assert x509.load_pem_x509_crl(base64.b64decode(encoded)).is_signature_valid(ca_cert.public_key())
