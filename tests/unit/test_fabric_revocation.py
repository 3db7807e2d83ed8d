"""Revoking a certificate (devstack/fabric/revocation.py) without a network: the org CA's one
CRL in a channel configuration (configtxlator's JSON form) gains the certificate's serial,
signed so that Fabric finds and trusts it; revoking twice changes nothing; and the
configtxlator the network needs for it is among the Fabric commands built or required."""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devstack.fabric import binaries
from devstack.fabric.binaries import COMMANDS, MODULE_DIR, FabricBinaries
from devstack.fabric.identities import issue_client, org_ca
from devstack.fabric.revocation import (
    RevocationError,
    issue_crl,
    org_msp,
    revoke_in,
    revoked_serials,
    signing_certificate,
)
from devstack.part import InstallError
from devstack.settings import StackSettings

DOMAIN = "org2.example"


def make_ca(org: Path, name: str = f"ca.{DOMAIN}") -> Path:
    """A cryptogen-shaped org folder: ca/ with a CA whose subject key id is a SHA-256 of its
    public key, as cryptogen's is; Admin's msp/ as the template issue_client copies."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    raw = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(start).not_valid_after(start + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier(hashlib.sha256(raw).digest()), critical=False)
            .sign(key, hashes.SHA256()))
    (org / "ca").mkdir(parents=True)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (org / "ca" / f"{name}-cert.pem").write_bytes(pem)
    (org / "ca" / "priv_sk").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    template = org / "users" / f"Admin@{DOMAIN}" / "msp"
    for folder in ("cacerts", "tlscacerts"):
        (template / folder).mkdir(parents=True)
        (template / folder / "ca.pem").write_bytes(pem)
    (template / "config.yaml").write_text("NodeOUs: {Enable: true}\n")
    return org


def channel_config(revocation_list: list[str] | None = None) -> dict[str, Any]:
    """The parts of a channel configuration that revocation reads, as configtxlator writes them."""
    def org(msp_id: str) -> dict[str, Any]:
        msp = {"name": msp_id, "root_certs": [], "revocation_list": []}
        return {"values": {"MSP": {"mod_policy": "Admins", "value": {"config": msp, "type": 0}}}}
    config = {"sequence": "3", "channel_group": {"groups": {"Application": {"groups": {
        "Org1MSP": org("Org1MSP"), "Org2MSP": org("Org2MSP")}}}}}
    org_msp(config, "Org2MSP")["revocation_list"] = revocation_list or []
    return config


def crls_of(config: dict[str, Any]) -> list[x509.CertificateRevocationList]:
    return [x509.load_pem_x509_crl(base64.b64decode(c)) for c in org_msp(config, "Org2MSP")["revocation_list"]]


@pytest.fixture
def org(tmp_path: Path) -> Path:
    return make_ca(tmp_path / DOMAIN)


def client(org: Path, name: str) -> x509.Certificate:
    return signing_certificate(issue_client(org, DOMAIN, name, users_dir=org.parent / "issued"))


def test_a_revoked_certificate_is_listed_in_one_crl_its_ca_signed(org: Path) -> None:
    cert = client(org, "User9")
    config = channel_config()
    assert revoke_in(config, "Org2MSP", cert, org) is True
    [crl] = crls_of(config)
    ca, _ = org_ca(org)
    assert [entry.serial_number for entry in crl] == [cert.serial_number]
    assert crl.issuer == ca.subject and crl.is_signature_valid(ca.public_key())
    # Fabric pairs a CRL with a CA by these bytes: the CRL's authority key id is the CA's subject key id.
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    assert aki == ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert revoked_serials(config, "Org2MSP") == {cert.serial_number}
    assert org_msp(config, "Org1MSP")["revocation_list"] == []


def test_revoking_twice_changes_nothing(org: Path) -> None:
    cert = client(org, "User9")
    config = channel_config()
    revoke_in(config, "Org2MSP", cert, org)
    before = copy.deepcopy(config)
    assert revoke_in(config, "Org2MSP", cert, org) is False
    assert config == before


def test_the_ca_keeps_one_crl_that_lists_every_serial_it_revoked(org: Path) -> None:
    first, second = client(org, "User8"), client(org, "User9")
    config = channel_config()
    revoke_in(config, "Org2MSP", first, org)
    [earlier] = crls_of(config)
    revoke_in(config, "Org2MSP", second, org)
    [crl] = crls_of(config)
    assert {entry.serial_number for entry in crl} == {first.serial_number, second.serial_number}
    # The first revocation keeps its date: the list is re-signed, not rewritten.
    assert (crl.get_revoked_certificate_by_serial_number(first.serial_number).revocation_date_utc
            == earlier.get_revoked_certificate_by_serial_number(first.serial_number).revocation_date_utc)


def test_another_cas_crl_stays_as_it_was(org: Path, tmp_path: Path) -> None:
    other = make_ca(tmp_path / "other", name="ca.other.example")
    other_crl = base64.b64encode(issue_crl(*org_ca(other), {
        77: datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)})).decode()
    config = channel_config([other_crl])
    cert = client(org, "User9")
    revoke_in(config, "Org2MSP", cert, org)
    listed = org_msp(config, "Org2MSP")["revocation_list"]
    assert listed[0] == other_crl and len(listed) == 2
    assert revoked_serials(config, "Org2MSP") == {77, cert.serial_number}


def test_a_certificate_another_ca_issued_is_refused_by_name(org: Path, tmp_path: Path) -> None:
    stranger = client(make_ca(tmp_path / "other", name="ca.other.example"), "User9")
    config = channel_config()
    with pytest.raises(RevocationError, match=r"CN=User9@org2\.example.*was not issued by Org2MSP's CA"):
        revoke_in(config, "Org2MSP", stranger, org)
    assert config == channel_config()


def test_an_organisation_missing_from_the_channel_is_named(org: Path) -> None:
    with pytest.raises(RevocationError, match="no application organisation Org9MSP"):
        revoke_in(channel_config(), "Org9MSP", client(org, "User9"), org)


def test_an_issued_identity_can_go_to_a_folder_of_its_own(org: Path, tmp_path: Path) -> None:
    msp = issue_client(org, DOMAIN, "User9", users_dir=tmp_path / "elsewhere")
    assert msp == tmp_path / "elsewhere" / f"User9@{DOMAIN}" / "msp"
    assert not (org / "users" / f"User9@{DOMAIN}").exists()
    signing_certificate(msp).verify_directly_issued_by(org_ca(org)[0])


# -- configtxlator, which builds the configuration update --

def test_every_command_is_a_tool_of_go_mod() -> None:
    """`go build` builds what COMMANDS names from the modules go.mod/go.sum pin; its `tool`
    block makes `go mod tidy` keep them all (configtxlator needs a module the others do not)."""
    block = re.search(r"^tool \((.*?)^\)", (MODULE_DIR / "go.mod").read_text(), re.MULTILINE | re.DOTALL)
    assert block is not None
    assert sorted(line.strip().rsplit("/", 1)[-1] for line in block.group(1).strip().splitlines()) == sorted(COMMANDS)
    assert "configtxlator" in COMMANDS


def test_the_build_folder_is_keyed_by_the_command_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build made before a command joined the list lacks it: a new list is a new folder."""
    settings = StackSettings(home=tmp_path)
    before = FabricBinaries(settings).build_dir
    monkeypatch.setattr(binaries, "COMMANDS", COMMANDS[:-1])
    assert FabricBinaries(settings).build_dir != before


def test_release_binaries_without_configtxlator_are_refused(tmp_path: Path) -> None:
    bin_dir = tmp_path / "fabric" / "bin"
    bin_dir.mkdir(parents=True)
    for command in set(COMMANDS) - {"configtxlator"}:
        (bin_dir / command).write_text("")
    (tmp_path / "fabric" / "config").mkdir()
    (tmp_path / "fabric" / "config" / "core.yaml").write_text("{}")
    with pytest.raises(InstallError, match="configtxlator"):
        FabricBinaries(StackSettings(home=tmp_path / "home", fabric_bin=bin_dir)).install()
