"""Paid mode's certificate revocation: a CRL file per client CA, checked for every call.

    crls = Revocations.load(settings, client_cas)      # StartError if a file is unreadable or not the CA's
    crls.check("Org2MSP", certificate)                  # raises RevokedClient naming the serial

Each `STREAMLEDGER_INFERENCE_CLIENT_CRLS` entry names the CRL (PEM or DER) its organisation's
client CA signed, e.g. the `crls/` file of that org's MSP folder. A CRL whose signature is not
its CA's refuses the start. The files are read again when they change (looked at every
`recheck_seconds`), so a certificate revoked while the server runs is refused from its next
call on, without a restart; a new file that does not verify is logged and the list already
loaded is kept.

Why not at the TLS handshake: grpcio's Python server credentials take no CRL (gRPC's C core has
a CRL directory option, but the Python API does not expose it), so the check runs where the
client is named, before a call is served: a revoked client gets UNAUTHENTICATED and nothing
else.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from services.inference.authorization import AuthorizationError
from streamledger.logging import get_logger
from streamledger.tls import StartError, read_file

log = get_logger("inference")


class RevokedClient(AuthorizationError):
    """The client certificate is on its CA's revocation list."""

    code = "UNAUTHENTICATED"


def load_crl(data: bytes, ca: x509.Certificate, where: str) -> frozenset[int]:
    """The revoked serial numbers of a CRL (PEM or DER) that `ca` signed; ValueError saying why not."""
    try:
        crl = x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----") else x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise ValueError(f"{where} is not a certificate revocation list: {exc}") from None
    if crl.issuer != ca.subject or not crl.is_signature_valid(ca.public_key()):
        raise ValueError(f"{where} is not signed by the client CA {ca.subject.rfc4514_string()}")
    return frozenset(revoked.serial_number for revoked in crl)


@dataclass
class _Crl:
    path: Path
    ca: x509.Certificate
    serials: frozenset[int]
    stamp: tuple[int, int]


@dataclass
class Revocations:
    crls: dict[str, _Crl] = field(default_factory=dict)
    recheck_seconds: float = 5.0
    clock: Callable[[], float] = time.monotonic
    _next_check: float = 0.0

    @classmethod
    def load(cls, crl_files: Mapping[str, Path], client_cas: Mapping[str, x509.Certificate],
             recheck_seconds: float = 5.0) -> Revocations:
        crls = {}
        for msp_id, path in crl_files.items():
            setting = f"STREAMLEDGER_INFERENCE_CLIENT_CRLS[{msp_id!r}]"
            ca = client_cas.get(msp_id)
            if ca is None:
                raise StartError(f"{setting}: no client CA is configured for {msp_id} (STREAMLEDGER_INFERENCE_CLIENT_CAS)")
            data = read_file(path, setting)
            try:
                crls[msp_id] = _Crl(Path(path), ca, load_crl(data, ca, f"{setting} ({path})"), _stamp(Path(path)))
            except ValueError as exc:
                raise StartError(str(exc)) from None
        revocations = cls(crls, recheck_seconds)
        revocations._next_check = revocations.clock() + recheck_seconds
        return revocations

    def check(self, msp_id: str, certificate: x509.Certificate) -> None:
        """Raise RevokedClient if `msp_id`'s CRL lists `certificate`."""
        if not self.crls:  # none configured: nothing listed, nothing to reload
            return
        if self.clock() >= self._next_check:
            self._reload_changed()
        crl = self.crls.get(msp_id)
        if crl is not None and certificate.serial_number in crl.serials:
            raise RevokedClient(f"client certificate {certificate.subject.rfc4514_string()} (serial "
                                f"{certificate.serial_number:x}) is revoked by {msp_id}'s CA ({crl.path.name})")

    def _reload_changed(self) -> None:
        self._next_check = self.clock() + self.recheck_seconds
        for msp_id, crl in self.crls.items():
            stamp = _stamp(crl.path)
            if stamp == crl.stamp:
                continue
            try:
                serials = load_crl(crl.path.read_bytes(), crl.ca, str(crl.path))
            except (OSError, ValueError) as exc:
                log.error("crl_not_reloaded", extra={"msp_id": msp_id, "path": str(crl.path), "error": str(exc)})
                continue
            self.crls[msp_id] = _Crl(crl.path, crl.ca, serials, stamp)
            log.info("crl_reloaded", extra={"msp_id": msp_id, "revoked": len(serials)})


def _stamp(path: Path) -> tuple[int, int]:
    try:
        info = path.stat()
    except OSError:
        return (0, 0)
    return (info.st_mtime_ns, info.st_size)
