"""Paid mode's CRL check: a revoked client certificate is refused on every call, even one whose
connection was already named; CRLs are the CA's own, and a changed file is read again."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.inference.revocation import Revocations, RevokedClient
from services.inference.servicer import Metering
from streamledger.tls import StartError

NOW = datetime.datetime.now(datetime.UTC)


def _ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW - datetime.timedelta(days=1))
            .not_valid_after(NOW + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def _client(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], name: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    return (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca[0].subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(days=1)).not_valid_after(NOW + datetime.timedelta(days=1))
            .sign(ca[1], hashes.SHA256()))


def _crl(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], *revoked: x509.Certificate,
         pem: bool = True) -> bytes:
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca[0].subject).last_update(NOW)
               .next_update(NOW + datetime.timedelta(days=1)))
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(NOW).build())
    crl = builder.sign(ca[1], hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM if pem else serialization.Encoding.DER)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def org2() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    return _ca("ca.org2")


@pytest.mark.parametrize("pem", [True, False])
def test_a_revoked_certificate_is_refused_and_another_served(tmp_path: Path, org2, pem: bool) -> None:
    revoked, fine = _client(org2, "User3"), _client(org2, "User1")
    (tmp_path / "org2.crl").write_bytes(_crl(org2, revoked, pem=pem))
    crls = Revocations.load({"Org2MSP": tmp_path / "org2.crl"}, {"Org2MSP": org2[0]})
    with pytest.raises(RevokedClient, match=f"CN=User3.*serial {revoked.serial_number:x}.*revoked by Org2MSP"):
        crls.check("Org2MSP", revoked)
    assert RevokedClient("x").code == "UNAUTHENTICATED"
    crls.check("Org2MSP", fine)
    crls.check("Org3MSP", revoked)  # no CRL for that org: nothing listed


def test_a_crl_not_signed_by_the_client_ca_refuses_the_start(tmp_path: Path, org2) -> None:
    other = _ca("ca.org2")  # the same name, another key: a forged list
    (tmp_path / "forged.crl").write_bytes(_crl(other, _client(org2, "User1")))
    with pytest.raises(StartError, match=r"CLIENT_CRLS\['Org2MSP'\].*not signed by the client CA CN=ca.org2"):
        Revocations.load({"Org2MSP": tmp_path / "forged.crl"}, {"Org2MSP": org2[0]})


@pytest.mark.parametrize(("files", "message"), [
    ({"Org2MSP": "missing.crl"}, r"CLIENT_CRLS\['Org2MSP'\]: cannot read"),
    ({"Org2MSP": "garbage.crl"}, "is not a certificate revocation list"),
    ({"Org9MSP": "garbage.crl"}, "no client CA is configured for Org9MSP"),
])
def test_a_crl_that_cannot_be_used_refuses_the_start(tmp_path: Path, org2, files: dict, message: str) -> None:
    (tmp_path / "garbage.crl").write_bytes(b"-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n")
    with pytest.raises(StartError, match=message):
        Revocations.load({msp: tmp_path / name for msp, name in files.items()}, {"Org2MSP": org2[0]})


def test_a_changed_crl_is_read_again_and_a_bad_one_keeps_the_list_loaded(tmp_path: Path, org2) -> None:
    first, second = _client(org2, "User1"), _client(org2, "User2")
    path = tmp_path / "org2.crl"
    path.write_bytes(_crl(org2, first))
    clock = Clock()
    crls = Revocations.load({"Org2MSP": path}, {"Org2MSP": org2[0]}, recheck_seconds=5.0)
    crls.clock, crls._next_check = clock, 5.0
    path.write_bytes(_crl(org2, first, second))  # revoked while the server runs
    crls.check("Org2MSP", second)  # not looked at again yet: within the recheck interval
    clock.now = 6.0
    with pytest.raises(RevokedClient):
        crls.check("Org2MSP", second)
    path.write_bytes(_crl(_ca("ca.org2"), first))  # a forged replacement: ignored
    clock.now = 12.0
    with pytest.raises(RevokedClient):
        crls.check("Org2MSP", second)


def test_metering_checks_revocation_on_every_call_of_a_named_connection(tmp_path: Path, org2) -> None:
    user = _client(org2, "User5")
    pem = user.public_bytes(serialization.Encoding.PEM)
    path = tmp_path / "org2.crl"
    path.write_bytes(_crl(org2))
    clock = Clock()
    crls = Revocations.load({"Org2MSP": path}, {"Org2MSP": org2[0]}, recheck_seconds=1.0)
    crls.clock, crls._next_check = clock, 1.0
    metering = Metering(meter=None, client_cas={"Org2MSP": org2[0]}, revocations=crls)  # type: ignore[arg-type]
    assert metering.client(pem) == "Org2MSP::CN=User5"
    path.write_bytes(_crl(org2, user))
    clock.now = 2.0
    with pytest.raises(RevokedClient):
        metering.client(pem)  # the connection was named before: still refused
