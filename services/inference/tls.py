"""Paid mode's mutual TLS, from the files the settings name.

    credentials = server_credentials(settings)   # the server's certificate and key, client CAs as roots
    cas = client_cas(settings)                   # MSP id -> CA certificate, for `client_identity`

A file that cannot be read or parsed refuses the start (`StartError`) naming its setting.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from cryptography import x509

from services.inference.settings import InferenceSettings
from streamledger.lifecycle import StartError


def client_cas(settings: InferenceSettings) -> dict[str, x509.Certificate]:
    """Each organisation's client CA certificate, by MSP id."""
    cas = {}
    for msp, path in settings.inference_client_cas.items():
        try:
            cas[msp] = x509.load_pem_x509_certificate(_read(path, f"STREAMLEDGER_INFERENCE_CLIENT_CAS[{msp!r}]"))
        except ValueError as exc:
            raise StartError(f"STREAMLEDGER_INFERENCE_CLIENT_CAS[{msp!r}]: {path} is not a PEM certificate: {exc}") from None
    return cas


def server_credentials(settings: InferenceSettings) -> grpc.ServerCredentials:
    """TLS with the server's certificate and key, requiring a client certificate from one of the client CAs."""
    roots = b"".join(_read(path, f"STREAMLEDGER_INFERENCE_CLIENT_CAS[{msp!r}]")
                     for msp, path in settings.inference_client_cas.items())
    key = _read(settings.inference_tls_key, "STREAMLEDGER_INFERENCE_TLS_KEY")
    cert = _read(settings.inference_tls_cert, "STREAMLEDGER_INFERENCE_TLS_CERT")
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=roots, require_client_auth=True)


def _read(path: Path | None, setting: str) -> bytes:
    if path is None:
        raise StartError(f"{setting} is not set; paid mode needs it")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StartError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None
