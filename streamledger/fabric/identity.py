"""Who signs: an X.509 identity of an MSP and its ECDSA P-256 private key.

Fabric rejects high-S ECDSA signatures (a signature and its malleated twin must not both
verify), so `Signer.sign` always returns the low-S form.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509.oid import NameOID
from fabric_protos.msp import identities_pb2

# Go's pkix.Name.String() names these attributes so; cryptography's RFC 4514 output differs for two.
_GO_NAMES = {NameOID.SERIAL_NUMBER: "SERIALNUMBER", NameOID.POSTAL_CODE: "POSTALCODE"}

# Order of the P-256 group; S above half of it is "high".
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


class IdentityError(ValueError):
    """An MSP folder, certificate or key that cannot be used; the message names the file."""


@dataclass(frozen=True)
class Identity:
    msp_id: str
    certificate: bytes
    """PEM of the X.509 certificate."""

    def serialized(self) -> bytes:
        """The `SerializedIdentity` every proposal and request carries as its creator."""
        return identities_pb2.SerializedIdentity(mspid=self.msp_id, id_bytes=self.certificate).SerializeToString()

    @property
    def account(self) -> str:
        """The ledger account of this identity, `<MSP id>::<subject DN>`, as the contract names it
        (Go's `pkix.Name.String()`, which RFC 4514 matches but for two attribute names)."""
        subject = x509.load_pem_x509_certificate(self.certificate).subject
        return f"{self.msp_id}::{subject.rfc4514_string(_GO_NAMES)}"

    @property
    def is_admin(self) -> bool:
        """Carries the `admin` NodeOU (as cryptogen and Fabric CA issue admin certificates)."""
        subject = x509.load_pem_x509_certificate(self.certificate).subject
        return any(ou.value == "admin" for ou in subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME))


class Signer:
    """Signs with an ECDSA P-256 key: SHA-256 digest, DER encoding, low S."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise IdentityError("the signing key must be an ECDSA P-256 (secp256r1) private key")
        self._key = key

    def sign(self, message: bytes) -> bytes:
        r, s = decode_dss_signature(self._key.sign(message, ec.ECDSA(hashes.SHA256())))
        if s > P256_ORDER // 2:
            s = P256_ORDER - s
        return encode_dss_signature(r, s)


def _only_file(folder: Path, what: str) -> Path:
    files = sorted(p for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []
    if not files:
        raise IdentityError(f"no {what} in {folder}")
    return files[0]


def load_msp(msp_dir: str | Path, msp_id: str) -> tuple[Identity, Signer]:
    """The identity and signer of an MSP folder as cryptogen or a CA writes it:
    `signcerts/` holds the certificate, `keystore/` the PEM private key."""
    msp_dir = Path(msp_dir)
    cert_file = _only_file(msp_dir / "signcerts", "certificate")
    key_file = _only_file(msp_dir / "keystore", "private key")
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except ValueError as exc:
        raise IdentityError(f"{key_file}: not an unencrypted PEM private key ({exc})") from exc
    return Identity(msp_id, cert_file.read_bytes()), Signer(key)  # type: ignore[arg-type]
