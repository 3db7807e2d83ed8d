"""The server's TLS, from the files the settings name (read by `streamledger.tls`): paid mode's
mutual TLS, and free mode's when its settings name a certificate (plaintext otherwise).

    credentials = server_credentials(settings)   # the server's certificate and key, client CAs as roots
    cas = client_cas(settings)                   # MSP id -> CA certificate, for `client_identity`

A file that cannot be read or parsed refuses the start (`StartError`) naming its setting.
"""

from __future__ import annotations

import grpc
from cryptography import x509

from services.inference.settings import InferenceSettings
from streamledger.tls import ServerTls, load_certificate, read_file


def client_cas(settings: InferenceSettings) -> dict[str, x509.Certificate]:
    """Each organisation's client CA certificate, by MSP id."""
    return {msp: load_certificate(path, f"STREAMLEDGER_INFERENCE_CLIENT_CAS[{msp!r}]")
            for msp, path in settings.inference_client_cas.items()}


def server_credentials(settings: InferenceSettings) -> grpc.ServerCredentials | None:
    """TLS with the server's certificate and key, requiring a client certificate from one of the client CAs
    (paid mode always; free mode when it has client CAs, else server TLS only); None: free mode in plaintext."""
    if settings.inference_mode == "free" and settings.inference_tls_cert is None:
        return None
    roots = b"".join(read_file(path, f"STREAMLEDGER_INFERENCE_CLIENT_CAS[{msp!r}]")
                     for msp, path in settings.inference_client_cas.items())
    tls = ServerTls.load(settings.inference_tls_cert, settings.inference_tls_key, "STREAMLEDGER_INFERENCE_TLS")
    return tls.grpc_credentials(client_cas=roots or None)  # no client CAs: free mode's server TLS only
