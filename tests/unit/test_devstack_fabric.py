"""The local Fabric network's pure pieces: identities issued by an org CA, config read and
set as YAML, the release pin, and release binaries named by a setting (no servers)."""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devstack.fabric import ENDORSEMENT_POLICY, FabricNetwork
from devstack.fabric.binaries import (
    COMMANDS,
    FabricBinaries,
    pinned_commit,
    pinned_release,
)
from devstack.fabric.identities import issue_client, issue_server_tls
from devstack.fabric.network import load_grants
from devstack.part import InstallError
from devstack.settings import StackSettings
from streamledger.fabric.identity import load_msp

DOMAIN = "org1.example"


def _ca(folder: Path, name: str) -> bytes:
    """A self-signed CA as cryptogen makes one (its key id a SHA-256 of the key) in `folder`; its PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=2)  # cryptogen rounds up
    point = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(start).not_valid_after(start + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier(hashlib.sha256(point).digest()), critical=False)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (folder / f"{name}-cert.pem").write_bytes(pem)
    (folder / "priv_sk").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return pem


def _org_with_ca(root: Path) -> Path:
    """A cryptogen-shaped org folder: ca/ and tlsca/ (cert + priv_sk) and Admin's msp/ template."""
    org = root / DOMAIN
    pem = _ca(org / "ca", f"ca.{DOMAIN}")
    _ca(org / "tlsca", f"tlsca.{DOMAIN}")
    msp = org / "users" / f"Admin@{DOMAIN}" / "msp"
    for folder in ("cacerts", "tlscacerts"):
        (msp / folder).mkdir(parents=True)
        (msp / folder / "ca.pem").write_bytes(pem)
    (msp / "config.yaml").write_text("NodeOUs: {Enable: true}\n")
    return org


def test_an_issued_identity_is_a_client_signed_by_the_org_ca_within_its_validity(tmp_path: Path) -> None:
    org = _org_with_ca(tmp_path)
    msp = issue_client(org, DOMAIN, "settlement")
    ca = x509.load_pem_x509_certificate((org / "ca" / f"ca.{DOMAIN}-cert.pem").read_bytes())
    cert = x509.load_pem_x509_certificate(next((msp / "signcerts").iterdir()).read_bytes())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"settlement@{DOMAIN}"
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)] == ["client"]
    # Fabric checks the chain at the certificate's notBefore: the CA must be valid then.
    assert cert.not_valid_before_utc >= ca.not_valid_before_utc
    identity, _signer = load_msp(msp, "Org1MSP")
    assert not identity.is_admin
    assert (msp / "config.yaml").exists() and (msp / "cacerts").is_dir()


def _key_id(cert: x509.Certificate, kind: type) -> bytes:
    value = cert.extensions.get_extension_for_class(kind).value
    return value.key_identifier if kind is x509.AuthorityKeyIdentifier else value.digest


def test_an_issued_certificate_names_its_issuer_by_the_ca_s_own_key_id(tmp_path: Path) -> None:
    """TLS stacks find a certificate's issuer by its authority key id: it must be the one the CA
    certificate states (cryptogen's SHA-256), or mutual TLS fails with "unable to get local issuer"."""
    org = _org_with_ca(tmp_path)
    ca = x509.load_pem_x509_certificate((org / "ca" / f"ca.{DOMAIN}-cert.pem").read_bytes())
    cert = x509.load_pem_x509_certificate(next((issue_client(org, DOMAIN, "demo") / "signcerts").iterdir()).read_bytes())
    assert _key_id(cert, x509.AuthorityKeyIdentifier) == _key_id(ca, x509.SubjectKeyIdentifier)


def test_a_server_certificate_is_issued_by_the_org_s_tls_ca_for_the_local_names(tmp_path: Path) -> None:
    org = _org_with_ca(tmp_path)
    folder = issue_server_tls(org, DOMAIN, "inference")
    ca = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((folder / "server.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert ca.subject.rfc4514_string() == f"CN=tlsca.{DOMAIN}"
    assert _key_id(cert, x509.AuthorityKeyIdentifier) == _key_id(ca, x509.SubjectKeyIdentifier)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert (folder / "server.key").stat().st_mode & 0o777 == 0o600
    assert issue_server_tls(org, DOMAIN, "inference") == folder  # once: the same files the second time
    assert x509.load_pem_x509_certificate((folder / "server.crt").read_bytes()) == cert


def test_issuing_twice_keeps_the_first_identity(tmp_path: Path) -> None:
    org = _org_with_ca(tmp_path)
    first = next((issue_client(org, DOMAIN, "audit") / "signcerts").iterdir()).read_bytes()
    second = next((issue_client(org, DOMAIN, "audit") / "signcerts").iterdir()).read_bytes()
    assert first == second


def test_the_channel_profile_names_two_orgs_three_consenters_and_the_local_addresses(tmp_path: Path) -> None:
    network = FabricNetwork(StackSettings(home=tmp_path, fabric=True))
    profile = network.channel_config()["Profiles"]["StreamLedgerChannel"]
    consenters = profile["Orderer"]["EtcdRaft"]["Consenters"]
    assert [c["Port"] for c in consenters] == [7050, 7150, 7250]
    assert all(Path(c["ServerTLSCert"]).is_relative_to(network.crypto) for c in consenters)
    orgs = {o["ID"]: o for o in profile["Application"]["Organizations"]}
    assert set(orgs) == {"Org1MSP", "Org2MSP"}
    assert orgs["Org2MSP"]["AnchorPeers"] == [{"Host": "127.0.0.1", "Port": 9051}]
    assert profile["Orderer"]["Organizations"][0]["OrdererEndpoints"] == [
        "127.0.0.1:7050", "127.0.0.1:7150", "127.0.0.1:7250"]
    assert profile["Application"]["Policies"]["Endorsement"]["Rule"] == "MAJORITY Endorsement"
    assert ENDORSEMENT_POLICY == "AND('Org1MSP.peer','Org2MSP.peer')"


def _release_folder(tmp_path: Path, core: dict) -> Path:
    bin_dir = tmp_path / "fabric" / "bin"
    bin_dir.mkdir(parents=True)
    for command in COMMANDS:
        (bin_dir / command).write_text("")
    (tmp_path / "fabric" / "config").mkdir()
    (tmp_path / "fabric" / "config" / "core.yaml").write_text(yaml.safe_dump(core))
    return bin_dir


SAMPLE_CORE = {
    "peer": {"handlers": {"authFilters": [{"name": "DefaultAuth"}, {"name": "ExpirationCheck"},
                                          {"name": "TimeWindowCheck"}]}},
    "vm": {"endpoint": "unix:///var/run/docker.sock", "docker": {"tls": {"enabled": False}}},
    "chaincode": {"externalBuilders": [{"name": "ccaas_builder", "path": "/opt/hyperledger/ccaas_builder"}],
                  "executetimeout": "30s"},
}


def test_peer_config_sets_keys_and_keeps_the_rest(tmp_path: Path) -> None:
    settings = StackSettings(home=tmp_path / "home", fabric_bin=_release_folder(tmp_path, SAMPLE_CORE))
    network = FabricNetwork(settings)
    network.write_peer_config()
    core = yaml.safe_load((network.peer_config / "core.yaml").read_text())
    assert core["vm"]["endpoint"] == ""
    assert core["vm"]["docker"] == SAMPLE_CORE["vm"]["docker"]
    assert [b["name"] for b in core["chaincode"]["externalBuilders"]] == ["streamledger-ccaas"]
    assert Path(core["chaincode"]["externalBuilders"][0]["path"]).name == "ccaas"
    assert core["chaincode"]["executetimeout"] == "30s"
    assert "TimeWindowCheck" in [f["name"] for f in core["peer"]["handlers"]["authFilters"]]


def test_a_core_yaml_without_the_time_window_filter_is_refused(tmp_path: Path) -> None:
    core = {**SAMPLE_CORE, "peer": {"handlers": {"authFilters": [{"name": "DefaultAuth"}]}}}
    network = FabricNetwork(StackSettings(home=tmp_path / "home", fabric_bin=_release_folder(tmp_path, core)))
    with pytest.raises(InstallError, match="TimeWindowCheck"):
        network.write_peer_config()


def test_a_core_yaml_missing_a_key_names_it(tmp_path: Path) -> None:
    core = {k: v for k, v in SAMPLE_CORE.items() if k != "vm"}
    network = FabricNetwork(StackSettings(home=tmp_path / "home", fabric_bin=_release_folder(tmp_path, core)))
    with pytest.raises(InstallError, match="'vm'"):
        network.write_peer_config()


def test_release_binaries_named_by_a_setting_are_used_as_they_are(tmp_path: Path) -> None:
    bin_dir = _release_folder(tmp_path, SAMPLE_CORE)
    binaries = FabricBinaries(StackSettings(home=tmp_path / "home", fabric_bin=bin_dir))
    assert binaries.tool("peer") == str(bin_dir / "peer")
    assert binaries.sampleconfig == bin_dir.parent / "config"
    assert str(bin_dir) in binaries.version
    (bin_dir / "osnadmin").unlink()
    with pytest.raises(InstallError, match="osnadmin"):
        binaries.install()


def test_the_pin_is_the_v3_1_5_release() -> None:
    assert pinned_release() == "3.1.5"
    assert pinned_commit() == "86c1172bec37"


def test_every_granted_identity_has_a_known_role_and_providers_act_for_an_identity_of_their_org() -> None:
    grants = load_grants()
    assert set(grants) == {"Org1", "Org2"}
    for identities in grants.values():
        for name, grant in identities.items():
            assert grant["role"] in {"operator", "provider", "client", "auditor"}, name
            if "acts_for" in grant:
                assert grant["role"] == "provider" and grant["acts_for"] in identities, name
    assert {g["role"] for g in grants["Org2"].values()} == {"client"}
