"""Pay-per-use authorization: a request is served only against a live ledger hold of its caller.

    authorizer = HoldAuthorizer(source, cache_seconds=5.0)
    client = client_identity(peer_certificate_pem, {"Org1MSP": org1_ca})
    charge = await authorizer.charge(hold_id, client, units=rows, price=2)
    ...                                     # serve; on failure: authorizer.refund(charge)

The ledger is reached through `HoldSource`, the one seam to Fabric: it looks a hold up
(its client, its provider, the credit left, its expiry); `LedgerHoldSource` in
`ledger_holds.py` reads it with the Fabric Gateway client. Holds are cached for a short time and the
credit is counted down locally per request, so a request costs no ledger round trip.
The local count assumes one inference replica per hold; the `usage` topic carries every
charge for settlement.

Identity: the client proves who it is by mutual TLS. Its certificate must be issued by
one of the organisations' client CAs (TLS checks the chain, `client_identity` names the
organisation), and the identity is written like the contract's account ids:
`<MSP id>::<certificate subject DN>` (RFC 4514 order and attribute names, as Go prints a
subject). A hold id alone grants nothing: the hold's client must be that identity.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Hold:
    hold_id: str
    client: str
    """Account id of the client the credit was frozen for: `<MSP id>::<subject DN>`."""
    remaining: int
    """Credit of the hold not yet authorized or charged, when it was read."""
    expires_at: float
    """Unix seconds."""
    live: bool = True
    """False once the hold is settled or released."""
    provider: str = ""
    """Account id the credit is frozen for; only that provider can settle the hold."""


class HoldSource(Protocol):
    """Where holds are read from: the ledger (Fabric gateway) in production."""

    async def hold(self, hold_id: str) -> Hold | None:
        """The hold, or None if the ledger has no hold with this id; raise `HoldUnavailable`
        when the ledger cannot be read (the caller may retry)."""


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


class InsufficientCredit(AuthorizationError):
    code = "RESOURCE_EXHAUSTED"


class UnknownClient(AuthorizationError):
    """No certificate, or one not issued by a configured client CA."""


@dataclass(frozen=True)
class Charge:
    hold_id: str
    client: str
    units: int
    price: int

    @property
    def cost(self) -> int:
        return self.units * self.price


class HoldAuthorizer:
    """Checks and counts down holds, reading each from the `HoldSource` at most every `cache_seconds`.

    With `provider` set (the account this server acts for, its identity's `ActsFor`), a hold frozen
    for another provider is refused.
    """

    def __init__(self, source: HoldSource, cache_seconds: float = 5.0, clock: Callable[[], float] = time.time,
                 provider: str | None = None) -> None:
        self.source = source
        self.provider = provider
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._cached: dict[str, tuple[Hold, float]] = {}
        self._spent: dict[str, int] = {}

    async def charge(self, hold_id: str | None, client: str, units: int, price: int) -> Charge:
        """Reserve `units * price` of the hold's credit for `client`, or raise an `AuthorizationError` saying why."""
        if not hold_id:
            raise NoHold("no hold named: send the hold id in the 'streamledger-hold-id' request metadata")
        hold = await self._hold(hold_id)
        if hold.client != client:
            raise NotHoldClient(f"hold {hold_id!r} belongs to another client; the caller is {client!r}")
        if self.provider is not None and hold.provider != self.provider:
            raise NotHoldProvider(f"hold {hold_id!r} pays provider {hold.provider!r}, not this server ({self.provider!r})")
        if not hold.live:
            raise HoldClosed(f"hold {hold_id!r} is settled or released")
        if self.clock() >= hold.expires_at:
            raise HoldExpired(f"hold {hold_id!r} expired at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(hold.expires_at))}")
        cost = units * price
        left = hold.remaining - self._spent.get(hold_id, 0)
        if cost > left:
            raise InsufficientCredit(f"hold {hold_id!r} has {left} credit left; {units} rows at {price} cost {cost}")
        self._spent[hold_id] = self._spent.get(hold_id, 0) + cost
        return Charge(hold_id, client, units, price)

    def refund(self, charge: Charge) -> None:
        """Give back a charge whose request was not served."""
        self._spent[charge.hold_id] -= charge.cost

    def spent(self, hold_id: str) -> int:
        return self._spent.get(hold_id, 0)

    async def _hold(self, hold_id: str) -> Hold:
        cached = self._cached.get(hold_id)
        if cached is not None and self.clock() - cached[1] < self.cache_seconds:
            return cached[0]
        hold = await self.source.hold(hold_id)
        if hold is None:
            self._cached.pop(hold_id, None)
            raise NoHold(f"hold {hold_id!r} does not exist on the ledger")
        self._cached[hold_id] = (hold, self.clock())
        return hold


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
