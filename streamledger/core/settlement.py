"""Totalling metered usage per hold and deciding when to settle it, without I/O.

    book = UsageBook()
    book.open(hold_id, partition, expires_at=..., amount=..., now=...)   # once per hold
    book.add(hold_id, offset, units, price)
    for tally in book.due(now, grace_seconds=5, settle_every_seconds=0):
        units, price, excess = tally.terms()     # what Settle(hold, units, price) gets
    book.commit_offsets({partition: next_offset})  # never past a hold not yet settled

A hold settles once (the contract refuses a second Settle), so the book waits until a hold
has expired (plus a grace period for usage still in flight from the inference service),
or, for long holds, until it has been open `settle_every_seconds`. Usage records are keyed
by hold id, so all of a hold's records are in one partition: the committed offset of a
partition stays at the first record of its oldest unsettled hold, and a restart re-reads
every record of every hold it has not settled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


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


@dataclass
class Tally:
    hold_id: str
    partition: int
    expires_at: int
    """Unix seconds, from the hold on the ledger."""
    amount: int
    """Credit frozen in the hold: the most that can be charged."""
    opened_at: float
    first_offset: int | None = None
    last_offset: int | None = None
    units: int = 0
    charge: int = 0
    prices: set[int] = field(default_factory=set)
    records: int = 0

    def terms(self) -> tuple[int, int, int]:
        """(units, price, excess credit) for Settle.

        One price for every record settles as (units, price); mixed prices as (charge, 1),
        so the amount is right either way. Usage beyond the frozen amount (which the
        inference service's local count-down should prevent) is capped, and returned as
        `excess` for a dead letter.
        """
        if len(self.prices) == 1:
            (price,) = self.prices
            units = min(self.units, self.amount // price)
            return units, price, self.charge - units * price
        charge = min(self.charge, self.amount)
        return charge, 1, self.charge - charge


class UsageBook:
    def __init__(self) -> None:
        self.tallies: dict[str, Tally] = {}

    def __contains__(self, hold_id: object) -> bool:
        return hold_id in self.tallies

    def open(self, hold_id: str, partition: int, expires_at: int, amount: int, now: float) -> Tally:
        return self.tallies.setdefault(hold_id, Tally(hold_id, partition, expires_at, amount, now))

    def add(self, hold_id: str, offset: int, units: int, price: int) -> Tally:
        tally = self.tallies[hold_id]
        if tally.first_offset is None:
            tally.first_offset = offset
        tally.last_offset = offset
        tally.units += units
        tally.charge += units * price
        tally.prices.add(price)
        tally.records += 1
        return tally

    def due(self, now: float, wall_seconds: float, grace_seconds: float,
            settle_every_seconds: float = 0.0) -> list[Tally]:
        """Tallies to settle: the hold expired `grace_seconds` ago (wall clock, unix seconds), or
        it has been open `settle_every_seconds` (monotonic `now`; 0 turns that off)."""
        return [t for t in self.tallies.values() if t.records and (
            wall_seconds >= t.expires_at + grace_seconds
            or (settle_every_seconds and now - t.opened_at >= settle_every_seconds))]

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
