"""The local Kafka's secrets: a TLS CA and the broker's certificate, and one SCRAM password
per principal (the admin and each service), kept in the stack's data folder (`kafka-auth/`,
mode 0700; every secret file 0600), never in the repo, a log or a command line.

    auth = KafkaAuth(settings.data_dir / "kafka-auth")
    auth.ensure()                       # made once; later calls keep what exists
    auth.password("ingestion")          # what `streamledger serve ingestion` authenticates with
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from streamledger.kafka.clients import ADMIN
from streamledger.kafka.topics import SERVICES

PRINCIPALS = (ADMIN, *SERVICES)
BROKER_NAME = "streamledger-kafka"
"""The broker certificate's common name: `User:CN=streamledger-kafka` is the brokers' own principal
on the controller and internal listeners (mutual TLS), a super user with the admin. Every node of
a local cluster presents this one certificate (all listen on 127.0.0.1, its subject alternative
name), so the nodes know each other as the same principal and clients verify each alike."""


class KafkaAuth:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def broker_pem(self) -> Path:
        """The broker's private key (PKCS#8) and certificate: Kafka's PEM keystore."""
        return self.folder / "broker.pem"

    def password_file(self, principal: str) -> Path:
        return self.folder / "users" / f"{principal}.password"

    def password(self, principal: str) -> str:
        return self.password_file(principal).read_text().strip()

    def ensure(self) -> None:
        """Make the CA, the broker's certificate and every principal's password that is missing."""
        (self.folder / "users").mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o700)
        (self.folder / "users").chmod(0o700)
        if not (self.ca_cert.exists() and self.broker_pem.exists()):
            self._make_tls()
        for principal in PRINCIPALS:
            if not self.password_file(principal).exists():
                _write_secret(self.password_file(principal), secrets.token_urlsafe(32))

    def _make_tls(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "streamledger local Kafka CA")])
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=3650))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                           content_commitment=False, key_encipherment=False, data_encipherment=False,
                                           key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
              .sign(ca_key, hashes.SHA256()))
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, BROKER_NAME)]))
                .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=3650))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                               critical=False)
                # Server for clients; client for the controller listener (mutual TLS).
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        pem = serialization.Encoding.PEM
        pkcs8 = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        _write_secret(self.broker_pem, (pkcs8 + cert.public_bytes(pem) + ca.public_bytes(pem)).decode())
        _write_secret(self.folder / "ca.key", ca_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode())
        self.ca_cert.write_bytes(ca.public_bytes(pem))  # public: every client trusts it


def _write_secret(path: Path, text: str) -> None:
    """Write `text` to a new file only its owner can read (0600 from the start, never wider)."""
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text if text.endswith("\n") else text + "\n")
    partial.rename(path)
