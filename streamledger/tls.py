"""TLS files a server is given by its settings: read once at start, refused by name.

    tls = ServerTls.load(s.ingestion_tls_cert, s.ingestion_tls_key, "STREAMLEDGER_INGESTION_TLS")
    server.add_secure_port(address, tls.grpc_credentials())        # gRPC: TLS only
    EmbeddedHttpServer(app, host, port, tls=tls)                    # HTTP: https only

A file that cannot be read or is not PEM refuses the start (`StartError`) naming its setting.
Settings check "both or neither" of a certificate and its key with `pair_problem`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from streamledger.lifecycle import StartError


def read_file(path: Path | None, setting: str) -> bytes:
    """The bytes of the file `setting` names."""
    if path is None:
        raise StartError(f"{setting} is not set")
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise StartError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None


def load_certificate(path: Path | None, setting: str) -> x509.Certificate:
    """The PEM certificate in the file `setting` names."""
    try:
        return x509.load_pem_x509_certificate(read_file(path, setting))
    except ValueError as exc:
        raise StartError(f"{setting}: {path} is not a PEM certificate: {exc}") from None


def pair_problem(cert: Path | None, key: Path | None, prefix: str) -> str | None:
    """Why a certificate/key pair of settings `<prefix>_CERT`/`<prefix>_KEY` is not usable as set, or None."""
    if (cert is None) != (key is None):
        missing = f"{prefix}_KEY" if key is None else f"{prefix}_CERT"
        return f"{prefix}_CERT and {prefix}_KEY go together: set both (for TLS) or neither; {missing} is missing"
    return None


@dataclass(frozen=True)
class ServerTls:
    """A server's certificate chain and private key, as files (for uvicorn) and as read bytes (for gRPC)."""

    cert_file: Path
    key_file: Path
    cert: bytes
    key: bytes

    @classmethod
    def load(cls, cert_file: Path, key_file: Path, prefix: str) -> ServerTls:
        """Both files, read and parsed now, so a bad one fails the start, not the first handshake."""
        key = read_file(key_file, f"{prefix}_KEY")
        cert = read_file(cert_file, f"{prefix}_CERT")
        try:
            x509.load_pem_x509_certificate(cert)
        except ValueError as exc:
            raise StartError(f"{prefix}_CERT: {cert_file} is not a PEM certificate: {exc}") from None
        try:
            serialization.load_pem_private_key(key, password=None)
        except (ValueError, TypeError) as exc:
            raise StartError(f"{prefix}_KEY: {key_file} is not an unencrypted PEM private key: {exc}") from None
        return cls(Path(cert_file), Path(key_file), cert, key)

    @classmethod
    def optional(cls, cert_file: Path | None, key_file: Path | None, prefix: str) -> ServerTls | None:
        """`load` when the settings name the files; None (plaintext) when they do not."""
        if cert_file is None and key_file is None:
            return None
        return cls.load(cert_file, key_file, prefix)  # type: ignore[arg-type]  # the settings allow both or neither

    def grpc_credentials(self, client_cas: bytes | None = None) -> grpc.ServerCredentials:
        """Server TLS; with `client_cas`, a client certificate issued by one of them is required (mutual TLS)."""
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=client_cas,
                                           require_client_auth=client_cas is not None)


def bind_grpc(server: grpc.aio.Server, address: str, tls: ServerTls | None) -> int:
    """Bind `address` on `server`, TLS only when `tls` is given; the bound port (0 asks for a free one)."""
    return server.add_secure_port(address, tls.grpc_credentials()) if tls else server.add_insecure_port(address)
