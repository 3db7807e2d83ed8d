"""The client's side of a hold: the units it has received in all, and its latest signed receipt.

    book = ReceiptBook(signer.sign, hold_id)
    book.latest                      # None: nothing received yet, no receipt
    book.received(8)                 # a response of 8 rows arrived: signs (hold, 8, sequence 1)
    book.latest.header               # "<hold id>,8,1,<signature>": the `streamledger-receipt` metadata

Each receipt covers every unit received so far (cumulative) under the next sequence, so it
supersedes the last (`streamledger.core.receipts`). Safe to share between threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from streamledger.core.receipts import Receipt, sign_receipt


class ReceiptBook:
    def __init__(self, sign: Callable[[bytes], bytes], hold_id: str, units: int = 0, sequence: int = 0) -> None:
        """`units` and `sequence`: where an earlier process left the hold (0, 0 for a fresh one)."""
        self.sign = sign
        self.hold_id = hold_id
        self.units = units
        """Units received on the hold, in all."""
        self.sequence = sequence
        self.latest: Receipt | None = sign_receipt(sign, hold_id, units, sequence) if sequence else None
        """The receipt for all units received (None before the first)."""
        self._lock = threading.Lock()

    def received(self, units: int) -> Receipt:
        """Count `units` more received and sign the receipt that covers them all."""
        with self._lock:
            self.units += units
            self.sequence += 1
            self.latest = sign_receipt(self.sign, self.hold_id, self.units, self.sequence)
            return self.latest

    @property
    def header(self) -> str | None:
        """The latest receipt as request metadata (None before the first)."""
        latest = self.latest
        return latest.header if latest is not None else None
