"""What to settle per hold, and when, without I/O: the client's latest receipt, before the window closes.

    book = UsageBook()
    book.open(HoldTerms.of(hold), partition, now)      # once per hold, from GetHold
    book.offer(hold_id, receipt)                       # InvalidReceipt unless the client signed it
    book.add(hold_id, offset, request_id, units)       # False: a request already counted
    clock = SettlementClock(grace_seconds=5, margin_seconds=900, lead_seconds=5)
    for tally in book.due(clock, now):
        receipt = tally.settling_receipt()             # what Settle(hold, receipt) gets
    book.commit_offsets({partition: next_offset})      # never past a hold not yet settled

The provider is paid for what the client signed, not for what the usage topic says: each
usage record carries the latest receipt the inference server had accepted on its hold
(`receipt_units`, `receipt_sequence`, `receipt_signature`), and the contract charges
`receipt units x price per unit` (at most what was reserved). So a tally keeps the receipt
that supersedes all others seen (a higher sequence, never fewer units), each one checked
against the certificate that froze the hold; usage is counted too, once per request id,
to report what the receipts do not cover and usage beyond the hold.

When (`SettlementClock`): the provider may settle until `settle_by` (expiry + the hold's
settlement window), but a client may stamp its Release up to the peers' timewindow T in the
future, so a settlement is safe only before `settle_by - T` (the deadline). A hold is settled
`grace_seconds` after it expires (usage still in flight is counted), or `lead_seconds` before
its deadline if that comes first, and never before it expires (service ends at expiry).

Usage records are keyed by hold id, so all of a hold's records are in one partition: the
committed offset of a partition stays at the first record of its oldest unsettled hold, and
a restart re-reads every record of every hold it has not settled. That rebuilds the receipts
and the request ids seen exactly, so a duplicate is counted once across restarts too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from streamledger.core.receipts import InvalidReceipt, Receipt


class UsageError(ValueError):
    """A usage record that cannot be settled; `reason` is the dead-letter reason."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def check_usage(record: Mapping[str, Any]) -> None:
    """Refuse a usage record whose units or price cannot be charged, naming the field."""
    for name, least in (("units", 1), ("price", 1)):
        value = record.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise UsageError("invalid_usage", f"usage {record.get('request_id')!r} for hold {record.get('hold_id')!r}: "
                                              f"{name} must be an integer >= {least}, got {value!r}")
    if not record.get("hold_id"):
        raise UsageError("invalid_usage", f"usage {record.get('request_id')!r} names no hold_id")
    if not record.get("request_id"):
        raise UsageError("invalid_usage", f"usage for hold {record.get('hold_id')!r} names no request_id")


def receipt_of(record: Mapping[str, Any]) -> Receipt | None:
    """The receipt a usage record carries, or None (sequence 0: the client had signed none yet)."""
    units, sequence = record.get("receipt_units", 0), record.get("receipt_sequence", 0)
    signature = record.get("receipt_signature", "")
    if sequence == 0:
        if units or signature:
            raise UsageError("invalid_receipt", f"usage {record['request_id']!r} for hold {record['hold_id']!r}: "
                                                f"receipt_sequence 0 carries no receipt, yet receipt_units is "
                                                f"{units} and receipt_signature {'set' if signature else 'empty'}")
        return None
    if sequence < 0 or units < 0 or not signature:
        raise UsageError("invalid_receipt", f"usage {record['request_id']!r} for hold {record['hold_id']!r}: a "
                                            f"receipt needs receipt_sequence >= 1, receipt_units >= 0 and a "
                                            f"signature (got {sequence}, {units}, {signature!r})")
    return Receipt(record["hold_id"], units, sequence, signature)


def receipt_from_ledger(recorded: Mapping[str, Any] | None) -> Receipt | None:
    """The receipt recorded on a hold (its `receipt` field: null, or hold_id/units/sequence/signature)."""
    if not recorded:
        return None
    return Receipt(recorded["hold_id"], int(recorded["units"]), int(recorded["sequence"]), recorded["signature"])


@dataclass(frozen=True)
class HoldTerms:
    """What the ledger says about a hold, as far as settling it goes."""

    hold_id: str
    client: str
    client_cert: str
    """PEM of the certificate that froze the hold: its receipts verify against it."""
    amount: int
    price_per_unit: int
    expires_at: int
    """Unix seconds; service ends then."""
    settle_by: int
    """Unix seconds: expires_at + the settlement window; Settle is refused from then on."""
    recorded: Receipt | None = None
    """The receipt recorded on the ledger when the hold was read."""
    authorized: int = 0
    """Credit reserved when the hold was read: the most a settlement charges."""

    @classmethod
    def of(cls, hold: Mapping[str, Any]) -> HoldTerms:
        """From a GetHold answer."""
        return cls(hold["hold_id"], hold["client"], hold["client_cert"], int(hold["amount"]),
                   int(hold["price_per_unit"]), int(hold["expires_at"]), int(hold["settle_by"]),
                   receipt_from_ledger(hold.get("receipt")), int(hold.get("authorized", 0)))

    @property
    def max_units(self) -> int:
        """The most units a receipt may name: what the amount pays at the price."""
        return self.amount // self.price_per_unit


@dataclass(frozen=True)
class SettlementClock:
    """When a hold is settled, from its expiry and settle_by (wall clock, unix seconds)."""

    grace_seconds: float
    """After expiry, wait this long for usage (and receipts) still on their way."""
    margin_seconds: float
    """The peers' timewindow T: a client's Release stamped T early lands at settle_by - T."""
    lead_seconds: float
    """Settle at least this long before the deadline: time for the Settle's retries and commit."""

    def deadline(self, terms: HoldTerms) -> float:
        """The last moment a Settle is safe from a client's early-stamped Release."""
        return terms.settle_by - self.margin_seconds

    def margin_fits(self, terms: HoldTerms) -> bool:
        """Whether the deadline falls after expiry: false when the margin is not shorter than the
        hold's window, i.e. the margin is set longer than this network's timewindow."""
        return self.deadline(terms) > terms.expires_at

    def settle_at(self, terms: HoldTerms) -> float:
        return max(float(terms.expires_at),
                   min(terms.expires_at + self.grace_seconds, self.deadline(terms) - self.lead_seconds))


@dataclass
class Tally:
    terms: HoldTerms
    partition: int
    opened_at: float
    """Wall clock when the tally opened; the first checkpoint is counted from it."""
    first_offset: int | None = None
    last_offset: int | None = None
    requests: set[str] = field(default_factory=set)
    """Request ids counted: a duplicate record (same request id) is counted once."""
    units: int = 0
    """Units of usage, each request once."""
    duplicates: int = 0
    receipt: Receipt | None = None
    """The latest valid receipt seen on the usage topic."""
    recorded: Receipt | None = None
    """The latest receipt known to be recorded on the ledger."""
    authorized: int = 0
    """Credit reserved on the hold, as last read."""
    checkpointed_at: float = 0.0
    verified: set[str] = field(default_factory=set)
    """Signatures already verified for this hold (records repeat the same receipt)."""

    @property
    def hold_id(self) -> str:
        return self.terms.hold_id

    @property
    def records(self) -> int:
        return len(self.requests)

    @property
    def usage_charge(self) -> int:
        return self.units * self.terms.price_per_unit

    @property
    def excess(self) -> int:
        """Credit of usage beyond the frozen amount (the inference service should prevent any)."""
        return max(0, self.usage_charge - self.terms.amount)

    def settling_receipt(self) -> Receipt | None:
        """The receipt to present to Settle: the latest seen, unless the ledger already holds it or
        a later one (then None: the contract settles on the recorded receipt)."""
        if self.receipt is None or (self.recorded is not None and not self.receipt.supersedes(self.recorded)):
            return None
        return self.receipt

    @property
    def paid_units(self) -> int:
        """The units the settlement pays for: those of the receipt it settles on."""
        receipt = self.settling_receipt() or self.recorded
        return receipt.units if receipt else 0

    def offer(self, receipt: Receipt) -> bool:
        """Keep `receipt` if it supersedes the latest one; InvalidReceipt unless the hold's client
        signed it for units the hold can pay."""
        if receipt.hold_id != self.hold_id:
            raise InvalidReceipt(f"the receipt names hold {receipt.hold_id!r}, the usage hold {self.hold_id!r}")
        if receipt.units > self.terms.max_units:
            raise InvalidReceipt(f"receipt (units {receipt.units}, sequence {receipt.sequence}) of hold "
                                 f"{self.hold_id!r}: the hold pays for at most {self.terms.max_units} units "
                                 f"({self.terms.amount} at {self.terms.price_per_unit})")
        if receipt.signature not in self.verified:
            try:
                receipt.verify(self.terms.client_cert)
            except InvalidReceipt as exc:
                raise InvalidReceipt(f"receipt (units {receipt.units}, sequence {receipt.sequence}) of hold "
                                     f"{self.hold_id!r} is not signed by its client {self.terms.client!r}: "
                                     f"{exc}") from None
            self.verified.add(receipt.signature)
        if receipt.supersedes(self.receipt):
            self.receipt = receipt
            return True
        return False

    def add(self, offset: int, request_id: str, units: int) -> bool:
        """Count a request's usage; False (nothing counted) when the request was counted before."""
        if request_id in self.requests:
            self.duplicates += 1
            return False
        if self.first_offset is None:
            self.first_offset = offset
        self.last_offset = offset
        self.requests.add(request_id)
        self.units += units
        return True


class UsageBook:
    def __init__(self) -> None:
        self.tallies: dict[str, Tally] = {}

    def __contains__(self, hold_id: object) -> bool:
        return hold_id in self.tallies

    def open(self, terms: HoldTerms, partition: int, now: float) -> Tally:
        return self.tallies.setdefault(terms.hold_id, Tally(terms, partition, now, recorded=terms.recorded,
                                                            authorized=terms.authorized, checkpointed_at=now))

    def offer(self, hold_id: str, receipt: Receipt) -> bool:
        return self.tallies[hold_id].offer(receipt)

    def add(self, hold_id: str, offset: int, request_id: str, units: int) -> bool:
        return self.tallies[hold_id].add(offset, request_id, units)

    def due(self, clock: SettlementClock, now: float) -> list[Tally]:
        """Tallies whose settlement time has come (wall clock `now`, unix seconds)."""
        return [t for t in self.tallies.values() if now >= clock.settle_at(t.terms)]

    def checkpoints(self, every_seconds: float, now: float) -> list[Tally]:
        """Tallies whose latest receipt is not on the ledger yet, last recorded (or opened)
        `every_seconds` ago or more (0 turns checkpoints off)."""
        if every_seconds <= 0:
            return []
        return [t for t in self.tallies.values()
                if t.settling_receipt() is not None and now - t.checkpointed_at >= every_seconds]

    def pop(self, hold_id: str) -> Tally:
        return self.tallies.pop(hold_id)

    def commit_offsets(self, consumed: Mapping[int, int]) -> dict[int, int]:
        """Per partition, the offset to commit: the first record of its oldest open tally, or
        `consumed` (the next offset to read) when every hold read so far is settled."""
        offsets = dict(consumed)
        for tally in self.tallies.values():
            if tally.first_offset is not None and tally.partition in offsets:
                offsets[tally.partition] = min(offsets[tally.partition], tally.first_offset)
        return offsets
