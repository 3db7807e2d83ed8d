"""Hold ids and client-signed receipts, byte for byte as the contract derives and checks
them (chaincode/ledger/holds.go and receipts.go).

A client freezes credit under a nonce of its own; the hold id is derived from the client
account and that nonce, so nobody can take another client's id first:

    >>> hold_id("Org2MSP::CN=User1@org2.example.com,OU=client", "0f8e2a7c")
    'f898c8e3fcf5d04a8186f04a431e5a78'

A receipt says "I, the client, have received `units` units in all on this hold"; each one
supersedes the last (a higher `sequence`, never fewer units). The client signs its
canonical bytes with its Fabric key; the provider settles on the latest one:

    >>> receipt_message("f898c8e3fcf5d04a8186f04a431e5a78", 42, 7)
    b'streamledger-receipt/v1\\nf898c8e3fcf5d04a8186f04a431e5a78\\n42\\n7'
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from streamledger.core.ids import RECORD_ID

NONCE = RECORD_ID
"""A client's hold nonce: any id the contract accepts."""


class InvalidReceipt(ValueError):
    """A receipt that is malformed or whose signature does not verify; the message says which."""


def hold_id(client: str, nonce: str) -> str:
    """The id the contract gives the hold `client` freezes under `nonce`."""
    if not NONCE.fullmatch(nonce):
        raise ValueError(f"nonce {nonce!r}: 1-128 characters of A-Z a-z 0-9 . _ : -, starting with a letter or digit")
    return hashlib.sha256(f"streamledger-hold/v1\n{client}\n{nonce}".encode()).hexdigest()[:32]


def receipt_message(hold: str, units: int, sequence: int) -> bytes:
    """The canonical bytes a receipt's signature covers."""
    if units < 0 or sequence < 1:
        raise InvalidReceipt(f"units must be >= 0 and sequence >= 1 (got units={units}, sequence={sequence})")
    return f"streamledger-receipt/v1\n{hold}\n{units}\n{sequence}".encode()


@dataclass(frozen=True)
class Receipt:
    hold_id: str
    units: int
    sequence: int
    signature: str
    """Base64 (standard, padded) of the DER ECDSA signature over `receipt_message`."""

    def supersedes(self, other: Receipt | None) -> bool:
        """True when the contract would take this receipt over `other`."""
        return other is None or (self.sequence > other.sequence and self.units >= other.units)

    def verify(self, client_cert_pem: str | bytes) -> None:
        """Raise InvalidReceipt unless the certificate's key signed this receipt."""
        ReceiptKey(client_cert_pem).verify(self)

    @cached_property
    def header(self) -> str:
        """The receipt as the `streamledger-receipt` metadata value of a paid request (built once:
        a client sends it with every call until the next receipt)."""
        return f"{self.hold_id},{self.units},{self.sequence},{self.signature}"


def sign_receipt(sign: Callable[[bytes], bytes], hold: str, units: int, sequence: int) -> Receipt:
    """A receipt signed by `sign(message) -> DER signature` (a Fabric identity's Signer.sign)."""
    der = sign(receipt_message(hold, units, sequence))
    return Receipt(hold, units, sequence, base64.b64encode(der).decode())


def verify_signature(cert_pem: str | bytes, message: bytes, signature_b64: str) -> None:
    ReceiptKey(cert_pem).verify_signature(message, signature_b64)


class ReceiptKey:
    """The public key of a hold's client certificate, read once, that checks receipts signed by it
    (a server checking many receipts of one hold parses the certificate only once)."""

    def __init__(self, cert_pem: str | bytes) -> None:
        try:
            certificate = x509.load_pem_x509_certificate(cert_pem.encode() if isinstance(cert_pem, str) else cert_pem)
        except ValueError as exc:
            raise InvalidReceipt(f"the client certificate cannot be read: {exc}") from exc
        self.key = certificate.public_key()
        if not isinstance(self.key, (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)):
            raise InvalidReceipt(f"the client certificate's key ({type(self.key).__name__}) cannot sign receipts")

    def verify(self, receipt: Receipt) -> None:
        """Raise InvalidReceipt unless this key signed `receipt`."""
        self.verify_signature(receipt_message(receipt.hold_id, receipt.units, receipt.sequence), receipt.signature)

    def verify_signature(self, message: bytes, signature_b64: str) -> None:
        try:
            signature = base64.b64decode(signature_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidReceipt(f"signature is not base64: {exc}") from exc
        try:
            if isinstance(self.key, ec.EllipticCurvePublicKey):
                self.key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
            else:
                self.key.verify(signature, message)
        except InvalidSignature as exc:
            raise InvalidReceipt("the signature does not verify against the hold's client certificate") from exc


# -- receipts as gRPC request metadata (a paid inference call carries both) --

HOLD_METADATA = "streamledger-hold-id"
"""The hold a paid request is charged to."""
RECEIPT_METADATA = "streamledger-receipt"
"""The client's latest receipt on that hold: `<hold id>,<units>,<sequence>,<signature>` (`Receipt.header`)."""


def receipt_from_header(text: str) -> Receipt:
    """The receipt a `streamledger-receipt` metadata value carries; InvalidReceipt names what is malformed.

    >>> receipt_from_header("f898c8e3fcf5d04a8186f04a431e5a78,42,7,MEUCIQ==")
    Receipt(hold_id='f898c8e3fcf5d04a8186f04a431e5a78', units=42, sequence=7, signature='MEUCIQ==')
    """
    parts = text.split(",")
    if len(parts) != 4:
        raise InvalidReceipt(f"a receipt is '<hold id>,<units>,<sequence>,<signature>'; got {len(parts)} "
                             f"comma-separated fields")
    hold, units, sequence, signature = parts
    if not all(n.isascii() and n.isdigit() for n in (units, sequence)) or not hold or not signature:
        raise InvalidReceipt(f"a receipt is '<hold id>,<units>,<sequence>,<signature>' with decimal units and "
                             f"sequence; got {text[:200]!r}")
    if int(sequence) < 1:
        raise InvalidReceipt(f"a receipt's sequence starts at 1, got {sequence}")
    return Receipt(hold, int(units), int(sequence), signature)
