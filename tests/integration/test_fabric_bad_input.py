"""Bad input at the peers (issue 20, "Bad input"): requests built with the gateway client's
lower-level pieces (`signed_proposal`, `Identity`, `Signer`, `Gateway`) from an unknown MSP,
from a certificate of the other organisation claiming the mint organisation's MSP id, with a
signature that belongs to another proposal, and from an expired certificate. Each is sent to
either organisation's gateway peer, and each is refused before the contract runs.

Fabric tells the caller no more than "access denied" for the first three (by design: a
prober learns nothing), and logs the cause with the transaction id; the tests read both. An
expired certificate is refused by the peer's ExpirationCheck filter, which names it to the
caller. Nothing a refused request tried (each is a Mint by an admin) reaches the ledger.
"""

from __future__ import annotations

import datetime
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fabric_protos.peer import proposal_pb2

from devstack import Stack
from devstack.fabric import CHANNEL, FabricNetwork, Org
from devstack.fabric.network import CHAINCODE_NAME
from devstack.settings import StackSettings
from streamledger.core.contract_errors import NotFound
from streamledger.fabric import (
    EndorseError,
    EvaluateError,
    Gateway,
    GatewayError,
    Identity,
    Signer,
    load_msp,
)
from streamledger.fabric.proposal import Proposal, signed_proposal
from streamledger.ledger import LedgerClient
from tests.integration.conftest import identity

pytestmark = [pytest.mark.integration, pytest.mark.fabric]

ACCESS_DENIED = f"error validating proposal: access denied: channel [{CHANNEL}]"


@pytest.fixture(params=["Org1", "Org2"])
def peer_org(request: pytest.FixtureRequest, network: FabricNetwork) -> Org:
    """The organisation whose gateway peer receives the bad request: each must refuse it."""
    return network.org(request.param)


@pytest.fixture
def account() -> str:
    """A fresh account the bad requests try to mint into."""
    return f"bad-input-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def auditor(network: FabricNetwork) -> AsyncIterator[LedgerClient]:
    async with LedgerClient.connect(identity("audit")) as ledger:
        yield ledger


def gateway(network: FabricNetwork, org: Org, who: Identity, signer: Signer) -> Gateway:
    return Gateway.connect(org.peer_address, network.peer_tls_ca(org).read_bytes(), who, signer)


def proposal(gateway: Gateway, function: str, *args: str | int) -> Proposal:
    """A proposal built and signed exactly as `Contract.submit` builds it."""
    transaction_id, signed = signed_proposal(gateway.client.identity, gateway.client.signer, CHANNEL,
                                             CHAINCODE_NAME, function, args)
    return Proposal(gateway.client, transaction_id, CHANNEL, signed)


class PeerLog:
    """The new lines of an org's peer log since this object was made."""

    def __init__(self, org: Org) -> None:
        stack = Stack(StackSettings(fabric=True), say=lambda _msg: None)
        self.path = stack.part(f"fabric-peer-{org.key}").process.logfile
        self.start = self.path.stat().st_size

    def line_for(self, transaction_id: str, timeout_s: float = 10.0) -> str:
        """The endorser's `Validate` warning about this transaction (the peer logs the first 8
        characters of its id), waited for: the log is written as the peer goes."""
        needle = f"txID={transaction_id[:8]} "
        deadline = time.monotonic() + timeout_s
        while True:
            with open(self.path, "rb") as log:
                log.seek(self.start)
                for line in log.read().decode(errors="replace").splitlines():
                    if "[endorser]" in line and "Validate" in line and needle in line:
                        return line
            assert time.monotonic() < deadline, f"no endorser warning for {transaction_id} in {self.path}"
            time.sleep(0.1)


async def nothing_minted(auditor: LedgerClient, account: str) -> None:
    with pytest.raises(EvaluateError) as unknown:
        await auditor.balance(account)
    assert isinstance(unknown.value.contract_error, NotFound)


def refused_by_the_peer(failure: pytest.ExceptionInfo[GatewayError], org: Org, message: str) -> None:
    """The gateway peer itself refused (its own detail carries `message`), not the contract."""
    assert failure.value.contract_error is None, failure.value
    assert [d.msp_id for d in failure.value.details] == [org.msp_id], failure.value
    assert message in failure.value.details[0].message, failure.value


async def test_the_same_construction_with_a_genuine_identity_is_accepted(
        network: FabricNetwork, peer_org: Org) -> None:
    """The control: what the tests below alter works unaltered, on either org's peer."""
    who, signer = load_msp(network.user_msp("Admin", "Org1"), "Org1MSP")
    async with gateway(network, peer_org, who, signer) as gw:
        answer = await proposal(gw, "WhoAmI").evaluate()
    assert b'"Account":"Org1MSP::CN=Admin@org1.streamledger.local' in answer


async def test_an_unknown_msp_is_refused(
        network: FabricNetwork, peer_org: Org, account: str, auditor: LedgerClient) -> None:
    cert_owner, signer = load_msp(network.user_msp("Admin", "Org1"), "Org1MSP")
    log = PeerLog(peer_org)
    async with gateway(network, peer_org, Identity("Org9MSP", cert_owner.certificate), signer) as gw:
        mint = proposal(gw, "Mint", account, 1000)
        with pytest.raises(EndorseError) as failure:
            await mint.endorse()
    refused_by_the_peer(failure, peer_org, f"{ACCESS_DENIED} creator org unknown, creator is malformed")
    assert 'error="MSP Org9MSP is not defined on channel"' in log.line_for(mint.transaction_id)
    await nothing_minted(auditor, account)


async def test_a_certificate_of_the_other_org_claiming_the_mint_orgs_msp_id_is_refused(
        network: FabricNetwork, peer_org: Org, account: str, auditor: LedgerClient) -> None:
    """Org2's admin certificate presented as Org1MSP's: Org1's CA never issued it."""
    org2_admin, signer = load_msp(network.user_msp("Admin", "Org2"), "Org2MSP")
    log = PeerLog(peer_org)
    async with gateway(network, peer_org, Identity("Org1MSP", org2_admin.certificate), signer) as gw:
        mint = proposal(gw, "Mint", account, 1000)
        with pytest.raises(EndorseError) as failure:
            await mint.endorse()
    refused_by_the_peer(failure, peer_org, ACCESS_DENIED)
    line = log.line_for(mint.transaction_id)
    assert "the supplied identity is not valid: x509: certificate signed by unknown authority" in line, line
    assert "mspid=Org1MSP subject=CN=Admin@org2.streamledger.local" in line, line
    await nothing_minted(auditor, account)


async def test_a_signature_of_another_proposal_is_refused(
        network: FabricNetwork, peer_org: Org, account: str, auditor: LedgerClient) -> None:
    """A Mint of 1 signed by Org1's admin, its bytes swapped for a Mint of 1000: the signature
    no longer covers what is proposed."""
    admin, signer = load_msp(network.user_msp("Admin", "Org1"), "Org1MSP")
    log = PeerLog(peer_org)
    async with gateway(network, peer_org, admin, signer) as gw:
        signed = proposal(gw, "Mint", account, 1)
        wanted = proposal(gw, "Mint", account, 1000)
        tampered = Proposal(gw.client, wanted.transaction_id, CHANNEL, proposal_pb2.SignedProposal(
            proposal_bytes=wanted.signed.proposal_bytes, signature=signed.signed.signature))
        with pytest.raises(EndorseError) as failure:
            await tampered.endorse()
    refused_by_the_peer(failure, peer_org, f"{ACCESS_DENIED} creator org [Org1MSP]")
    line = log.line_for(wanted.transaction_id)
    assert "access denied: creator's signature over the proposal is not valid" in line, line
    assert 'error="The signature is invalid"' in line, line
    await nothing_minted(auditor, account)


def issue_expired_admin(network: FabricNetwork, folder: Path) -> Path:
    """An MSP folder (in `folder`, never the stack's crypto) holding an admin certificate that
    Org1's CA issued and that has expired: it ran out a day ago, or, when the CA itself is
    younger than that, a second after the CA's own start (Fabric checks the chain at the
    certificate's start, so that start must fall within the CA's validity)."""
    ca_dir = network.org_dir(network.org("Org1")) / "ca"
    ca_cert = x509.load_pem_x509_certificate(next(ca_dir.glob("*-cert.pem")).read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "priv_sk").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    now = datetime.datetime.now(datetime.UTC)
    not_before = ca_cert.not_valid_before_utc
    not_after = max(not_before + datetime.timedelta(seconds=1), now - datetime.timedelta(days=1))
    assert not_after < now - datetime.timedelta(seconds=30), "the CA is too young to have issued an expired cert"
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "admin"),  # an admin: it would mint
            x509.NameAttribute(NameOID.COMMON_NAME, "expired@org1.streamledger.local")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    msp = folder / "expired-msp"
    (msp / "signcerts").mkdir(parents=True)
    (msp / "keystore").mkdir()
    (msp / "signcerts" / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (msp / "keystore" / "priv_sk").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return msp


async def test_an_expired_certificate_is_refused(
        network: FabricNetwork, peer_org: Org, account: str, auditor: LedgerClient, tmp_path: Path) -> None:
    expired, signer = load_msp(issue_expired_admin(network, tmp_path), "Org1MSP")
    assert expired.is_admin
    async with gateway(network, peer_org, expired, signer) as gw:
        with pytest.raises(EndorseError) as failure:
            await proposal(gw, "Mint", account, 1000).endorse()
        refused_by_the_peer(failure, peer_org, "proposal client identity expired")
        with pytest.raises(EvaluateError) as query:
            await proposal(gw, "WhoAmI").evaluate()
    # A query is tried on every peer that could answer it; each says the same.
    assert query.value.contract_error is None and query.value.details, query.value
    assert all("proposal client identity expired" in d.message for d in query.value.details), query.value
    await nothing_minted(auditor, account)
