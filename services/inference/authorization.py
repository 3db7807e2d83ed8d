"""Who may be served in paid mode, and the holds they pay from: the identity, the hold, the refusals.

    client = client_identity(peer_certificate_pem, {"Org2MSP": org2_ca})   # "Org2MSP::CN=User1@...,OU=client"
    hold = await source.hold(hold_id)                                        # Hold(...) or None
    hold = await source.reserve(hold_id, credit)                             # the ledger's Authorize

The ledger is reached through `HoldSource`, the one seam to Fabric: it reads a hold (its
client and that client's certificate, its provider, amount, price per unit, what all servers
reserved so far, the receipt recorded, its expiry) and reserves credit on it;
`LedgerHoldSource` in `ledger_holds.py` does both with the Fabric Gateway client. What is
served against a hold, and when to reserve, is `credit.py`.

Identity: the client proves who it is by mutual TLS. Its certificate must be issued by
one of the organisations' client CAs (TLS checks the chain, `client_identity` names the
organisation), and the identity is written like the contract's account ids:
`<MSP id>::<certificate subject DN>` (RFC 4514 order and attribute names, as Go prints a
subject). A hold id alone grants nothing: the hold's client must be that identity.

Every refusal is an `AuthorizationError` whose `code` is the gRPC status to answer with and
whose message names the hold, receipt or setting at fault.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from streamledger.core.receipts import Receipt


@dataclass(frozen=True)
class Hold:
    """A hold as the ledger keeps it (chaincode/ledger/holds.go), when it was read."""

    hold_id: str
    client: str
    """Account id of the client the credit was frozen for: `<MSP id>::<subject DN>`."""
    expires_at: float
    """Unix seconds; nothing is served or reserved from then on."""
    provider: str = ""
    """Account id the credit is frozen for; only servers acting for it may serve the hold."""
    amount: int = 0
    """Credit frozen."""
    price_per_unit: int = 1
    """Credit per unit (row) served, fixed at Freeze."""
    authorized: int = 0
    """Credit reserved so far by every server of the provider (`Authorize`), at most `amount`."""
    client_cert: str = ""
    """PEM of the certificate that froze the hold: the client's receipts verify against it."""
    receipt: Receipt | None = None
    """The latest receipt recorded on the ledger (`RecordReceipt`), if any."""
    live: bool = True
    """False once the hold is settled or released."""

    @property
    def remaining(self) -> int:
        """Credit no server has reserved yet (nothing once the hold is closed)."""
        return self.amount - self.authorized if self.live else 0

    @property
    def units(self) -> int:
        """The most units the hold pays for: its amount at its price."""
        return self.amount // self.price_per_unit if self.price_per_unit > 0 else 0


class HoldSource(Protocol):
    """Where holds are read and reserved: the ledger (Fabric gateway) in production."""

    async def hold(self, hold_id: str) -> Hold | None:
        """The hold, or None if the ledger has no hold with this id; raise `HoldUnavailable`
        when the ledger cannot be read (the caller may retry)."""

    async def reserve(self, hold_id: str, credit: int) -> Hold:
        """Reserve `credit` more of the hold for this provider (the contract's `Authorize`) and
        return the hold after it; raise `NothingToReserve` when the hold has less left than
        `credit`, `HoldExpired` or `HoldClosed` when it can no longer be reserved, `HoldUnavailable`
        when the ledger cannot be reached."""


class AuthorizationError(Exception):
    """A request that may not be served; `code` is the gRPC status name to answer with."""

    code = "PERMISSION_DENIED"


class NoHold(AuthorizationError):
    pass


class NotHoldClient(AuthorizationError):
    pass


class NotHoldProvider(AuthorizationError):
    """The hold pays another provider: serving against it would never be paid."""


class InvalidHoldId(AuthorizationError):
    code = "INVALID_ARGUMENT"


class HoldUnavailable(AuthorizationError):
    """The ledger could not be read; nothing is known about the hold, so the caller may retry."""

    code = "UNAVAILABLE"


class HoldExpired(AuthorizationError):
    pass


class HoldClosed(AuthorizationError):
    pass


class HoldExhausted(AuthorizationError):
    """The hold has no credit left that this server could reserve: the client freezes a new one."""

    code = "RESOURCE_EXHAUSTED"


class NothingToReserve(Exception):
    """The ledger refused a reservation: the hold has less credit left than asked (EXCEEDS_HOLD)."""


class ReceiptNeeded(AuthorizationError):
    """Serving the request would take the hold beyond the client's latest receipt plus the credit window."""

    code = "RESOURCE_EXHAUSTED"


class MalformedReceipt(AuthorizationError):
    code = "INVALID_ARGUMENT"


class ReceiptForAnotherHold(AuthorizationError):
    code = "INVALID_ARGUMENT"


class StaleReceipt(AuthorizationError):
    """An older sequence than the receipt accepted, or fewer units: it supersedes nothing."""

    code = "INVALID_ARGUMENT"


class ReceiptBeyondHold(AuthorizationError):
    """More units than the hold pays for: the contract would refuse to settle on it."""

    code = "INVALID_ARGUMENT"


class ReceiptNotSigned(AuthorizationError):
    """The receipt's signature does not verify against the certificate that froze the hold."""


class UnknownClient(AuthorizationError):
    """No certificate, or one not issued by a configured client CA."""


# Go's pkix.Name.String() names these attributes so; cryptography's RFC 4514 output differs for two.
_GO_NAMES = {NameOID.SERIAL_NUMBER: "SERIALNUMBER", NameOID.POSTAL_CODE: "POSTALCODE"}


def client_identity(certificate_pem: bytes | None, client_cas: Mapping[str, x509.Certificate]) -> str:
    """`<MSP id>::<subject DN>` of a client certificate issued by one of `client_cas` (MSP id -> CA)."""
    if not certificate_pem:
        raise UnknownClient("no client certificate: paid mode needs mutual TLS")
    certificate = x509.load_pem_x509_certificate(certificate_pem)
    for msp_id, ca in client_cas.items():
        if ca.subject != certificate.issuer:
            continue
        try:
            certificate.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return f"{msp_id}::{certificate.subject.rfc4514_string(_GO_NAMES)}"
    raise UnknownClient(f"client certificate {certificate.subject.rfc4514_string()} is not issued by a configured "
                        f"client CA ({', '.join(client_cas)})")
