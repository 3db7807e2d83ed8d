"""The client's side of a hold: the units it has received in all, and its latest signed receipt.

    book = ReceiptBook(signer.sign, hold_id)
    book.latest                      # None: nothing received yet, no receipt
    book.received(8)                 # a response of 8 rows arrived: counted, not signed yet (8 < every_units)
    book.received(4)                 # 12 units received, 12 unsigned: signs (hold, 12, sequence 1)
    book.sign()                      # a receipt for every unit received now (the latest if it covers them)
    book.latest.header               # "<hold id>,12,1,<signature>": the `streamledger-receipt` metadata

Each receipt covers every unit received so far (cumulative) under the next sequence, so it
supersedes the last (`streamledger.core.receipts`). A receipt is signed once `every_units` units
(default `SIGN_EVERY_UNITS`) came since the last one, and whenever asked (`sign()`: when a server
says it needs a newer receipt, or the receipt is wanted): the server serves up to its credit window
W beyond the latest receipt, so a client need not sign after each small response, and signing (an
ECDSA signature) and the server's check of it (an ECDSA verification) are paid once per
`every_units` units rather than once per response. `every_units` 1 signs after every response.
Safe to share between threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from streamledger.core.receipts import Receipt, sign_receipt

SIGN_EVERY_UNITS = 10
"""Units received between two receipts by default: well within a server's default credit window (100)."""


class ReceiptBook:
    def __init__(self, sign: Callable[[bytes], bytes], hold_id: str, units: int = 0, sequence: int = 0,
                 every_units: int = SIGN_EVERY_UNITS) -> None:
        """`units` and `sequence`: where an earlier process left the hold (0, 0 for a fresh one)."""
        if every_units < 1:
            raise ValueError(f"every_units must be at least 1; got {every_units}")
        self.sign_message = sign
        self.hold_id = hold_id
        self.every_units = every_units
        self.units = units
        """Units received on the hold, in all."""
        self.sequence = sequence
        self.latest: Receipt | None = sign_receipt(sign, hold_id, units, sequence) if sequence else None
        """The latest receipt signed (None before the first); it may cover fewer units than received."""
        self._lock = threading.Lock()

    def received(self, units: int) -> Receipt | None:
        """Count `units` more received; sign a receipt for them all once `every_units` are unsigned. The latest receipt."""
        with self._lock:
            self.units += units
            if self.units - self._signed_units() >= self.every_units:
                self._sign()
            return self.latest

    def sign(self) -> Receipt | None:
        """A receipt for every unit received so far: the latest one if it covers them all, else a new one
        (None while nothing was received)."""
        with self._lock:
            if self.units > self._signed_units() or (self.latest is None and self.units):
                self._sign()
            return self.latest

    def _signed_units(self) -> int:
        return self.latest.units if self.latest is not None else 0

    def _sign(self) -> None:
        self.sequence += 1
        self.latest = sign_receipt(self.sign_message, self.hold_id, self.units, self.sequence)

    @property
    def header(self) -> str | None:
        """The latest receipt as request metadata (None before the first)."""
        latest = self.latest
        return latest.header if latest is not None else None
