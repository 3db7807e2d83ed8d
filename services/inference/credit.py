"""Paid serving's money rule: a request is served against its caller's hold only within the
client's latest signed receipt plus a credit window, and within credit this server reserved
on the ledger.

    meter = CreditMeter(source, window_units=100, reserve_units=1000, check_seconds=0.02, provider=acts_for)
    charge = await meter.charge(hold_id, client, units=rows, receipt=header)  # or an AuthorizationError
    charge = meter.charge_now(hold_id, client, rows, header)  # the same without waiting: None if it must wait
    ...                                                    # serve; if it fails: meter.refund(charge)

Per hold, this server keeps a `CreditLine`:

- **served**: the units served on the hold as far as this server knows: the highest receipt it
  accepted (what the client admits having received, from every server), plus what it served
  itself since. A request of n rows is served only while `served + n <= receipt units + W`
  (`window_units`). So a client that stops signing gets at most W more units from this server,
  and a new or restarted server starts from the latest receipt the client sends (or the ledger
  recorded), never from zero. A client with no receipt yet is served W units.
- **receipts**: a request's `streamledger-receipt` is looked at only when it changes (the same
  header again costs one string comparison). It must name the request's hold, have no fewer
  units than the one accepted, and stay within the units the hold pays for, or the request is
  refused at once. One with an older sequence supersedes nothing: as requests sent at once may
  arrive out of order, it is ignored while the request fits the window without it and refused
  (INVALID_ARGUMENT, "not newer than the one accepted") when the request needs a newer one. Its signature (an ECDSA verification, ~70 us: more
  than the rest of a request's metering) is checked against the certificate that froze the hold
  before the receipt counts: at once with `check_seconds` 0, else `check_seconds` later in the
  background, for the newest receipt received by then only (an honest client sends a new one every
  few requests: one check covers those of every request in between), off the event loop: by
  `verify` when given (paid mode's hold process, `hold_process.py`: another process, as the
  verification holds the GIL for its whole ~70-300 us and would stall the requests of a thread of
  this one), else in a worker thread; and at once
  on the request's path whenever a request needs it, i.e. would not fit the window with the
  receipt accepted so far. A receipt that does not verify is
  refused then, and on sight when it comes again. The window only ever counts checked receipts,
  and so do the usage records. The ledger's recorded receipt counts as accepted.
- **reservations**: this server serves at most the credit it reserved itself (its `Authorize`
  amounts, summed), so the contract, which charges at most what was reserved, can charge every
  unit a receipt covers. Before serving beyond it, the server reserves the next chunk,
  `reserve_units` x the hold's price, capped by what the hold has left; the next chunk is
  reserved in the background, off the request path, once less than half a chunk is left, and a
  chunk used up within `FAST_CHUNK_SECONDS` doubles the next one, so a busy hold costs a ledger
  transaction every few seconds rather than one per few requests. A restarted or second server
  has reserved nothing of its own: it reserves anew from what is left, never from the full amount.
- **the hold** (client, provider, status, expiry, price) is read once, then re-read in the
  background every `cache_seconds`; a settled, released or expired hold is refused.

All of it runs on the event loop: a request that needs no ledger call does not await at all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

from services.inference.authorization import (
    AuthorizationError,
    Hold,
    HoldClosed,
    HoldExhausted,
    HoldExpired,
    HoldSource,
    MalformedReceipt,
    NoHold,
    NothingToReserve,
    NotHoldClient,
    NotHoldProvider,
    ReceiptBeyondHold,
    ReceiptForAnotherHold,
    ReceiptNeeded,
    ReceiptNotSigned,
    StaleReceipt,
)
from streamledger import metrics
from streamledger.core.receipts import (
    HOLD_METADATA,
    RECEIPT_METADATA,
    InvalidReceipt,
    Receipt,
    ReceiptKey,
    receipt_from_header,
)
from streamledger.logging import get_logger

log = get_logger("inference")
RESERVATIONS = metrics.counter("inference", "reservations", "Authorize transactions committed (credit reserved on holds)")
RESERVED_CREDIT = metrics.counter("inference", "reserved_credit", "Credit reserved on holds by Authorize")
RESERVATION_FAILURES = metrics.counter("inference", "reservation_failures", "Reservations the ledger refused or missed",
                                       ("reason",))
RECEIPTS = metrics.counter("inference", "receipts", "Client receipts accepted (each checked once)")

FAST_CHUNK_SECONDS = 10.0
"""A reservation made within this long of the previous one on a hold doubles that hold's chunk."""
MAX_LINES = 10_000
"""Credit lines kept before those of expired or closed holds are dropped."""


class Charge(NamedTuple):
    """A request's units charged to a hold, with the receipt the server had accepted when it served it."""

    hold_id: str
    client: str
    units: int
    price: int
    receipt: Receipt | None = None

    @property
    def cost(self) -> int:
        return self.units * self.price


@dataclass(eq=False)
class CreditLine:
    """What this server knows of one hold and has done with it."""

    hold: Hold
    read_at: float
    chunk_units: int
    """Units of the next reservation."""
    receipt: Receipt | None = None
    """The latest receipt accepted (from a request, or recorded on the ledger)."""
    header: str | None = None
    """The metadata value `receipt` came in, to know it again without parsing."""
    served: int = 0
    """Units served on the hold as far as this server knows (see the module's doc)."""
    own_units: int = 0
    """Units this server served on the hold."""
    reserved: int = 0
    """Credit this server reserved on the hold."""
    reserved_at: float = float("-inf")
    key: ReceiptKey | None = None
    pending: Receipt | None = None
    """The newest receipt received that supersedes `receipt`, its signature not checked yet."""
    pending_header: str | None = None
    forged: str | None = None
    """The last receipt header whose signature did not verify: refused on sight."""
    checking: asyncio.TimerHandle | None = None
    verifying: asyncio.Future | None = None
    """The background check of a pending receipt, off the event loop."""
    reserving: asyncio.Future | None = None
    refreshing: asyncio.Future | None = None

    @property
    def unspent(self) -> int:
        """Credit this server reserved and has not served yet."""
        return self.reserved - self.own_units * self.hold.price_per_unit

    def adopt(self, hold: Hold) -> None:
        """Take a fresher read of the hold, and its recorded receipt if that is newer than the one accepted."""
        self.hold = hold
        recorded = hold.receipt
        if recorded is not None and recorded.supersedes(self.receipt):
            self.receipt, self.header = recorded, None
            self.served = max(self.served, recorded.units)


class CreditMeter:
    """Charges paid requests to holds read and reserved through `source`, by the rule above.

    With `provider` set (the account this server acts for, its identity's `ActsFor`), a hold
    frozen for another provider is refused.
    """

    def __init__(self, source: HoldSource, *, window_units: int, reserve_units: int, cache_seconds: float = 5.0,
                 check_seconds: float = 0.0, provider: str | None = None,
                 clock: Callable[[], float] = time.time,
                 verify: Callable[[str, Receipt], Awaitable[str | None]] | None = None) -> None:
        self.source = source
        self.window_units = window_units
        self.reserve_units = reserve_units
        self.check_seconds = check_seconds
        self.cache_seconds = cache_seconds
        self.provider = provider
        self.clock = clock
        self.reservations = 0
        """Reservations (Authorize transactions) this server made."""
        self._lines: dict[str, CreditLine] = {}
        self._opening: dict[str, asyncio.Future] = {}
        self.verify = verify
        """Where background checks verify a receipt: `verify(client_cert_pem, receipt)` -> None if the
        certificate's key signed it, else why not; None: in a worker thread of this process."""
        self._verifier: ThreadPoolExecutor | None = None
        """The one thread background checks verify signatures in without `verify` (made at the first)."""

    async def charge(self, hold_id: str | None, client: str, units: int, receipt: str | None = None) -> Charge:
        """Charge `units` to the hold for `client`, who sent `receipt` (a `streamledger-receipt`
        metadata value, or None); raise an `AuthorizationError` saying why not."""
        while True:
            charge = self.charge_now(hold_id, client, units, receipt)
            if charge is not None:
                return charge
            line = self._lines.get(hold_id)
            if line is None:
                await self._open(hold_id)
            else:
                await self._reserve(line, units * line.hold.price_per_unit - line.unspent)

    def charge_now(self, hold_id: str | None, client: str, units: int, receipt: str | None = None) -> Charge | None:
        """`charge` without waiting: None when it must wait for the ledger first (the hold not read
        yet, or credit to reserve), which `charge` does. The usual paid request is charged here, without
        the meter's coroutine."""
        if not hold_id:
            raise NoHold(f"no hold named: send the hold id in the {HOLD_METADATA!r} request metadata")
        line = self._lines.get(hold_id)
        if line is None:
            return None
        now = self.clock()
        if now - line.read_at >= self.cache_seconds:
            self._refresh(line)
        hold = line.hold
        if hold.client != client:
            raise NotHoldClient(f"hold {hold_id!r} belongs to another client; the caller is {client!r}")
        if self.provider is not None and hold.provider != self.provider:
            raise NotHoldProvider(f"hold {hold_id!r} pays provider {hold.provider!r}, not this server ({self.provider!r})")
        if not hold.live:
            raise HoldClosed(f"hold {hold_id!r} is settled or released")
        if now >= hold.expires_at:
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(hold.expires_at))
            raise HoldExpired(f"hold {hold_id!r} expired at {when}")
        older = None
        if receipt is not None and receipt != line.header and receipt != line.pending_header:
            older = self._take(line, receipt)
        self._check_window(line, units, older)
        if line.unspent < units * hold.price_per_unit:
            return None
        line.served += units
        line.own_units += units
        self._reserve_ahead(line, now)
        return Charge(hold_id, client, units, hold.price_per_unit, line.receipt)

    def refund(self, charge: Charge) -> None:
        """Give back a charge whose request was not served."""
        line = self._lines.get(charge.hold_id)
        if line is not None:
            line.served -= charge.units
            line.own_units -= charge.units

    def line(self, hold_id: str) -> CreditLine | None:
        """What this server knows of a hold (None before its first request)."""
        return self._lines.get(hold_id)

    # -- the hold --

    async def _open(self, hold_id: str) -> CreditLine:
        """The hold's line, read from the source once however many requests wait for it."""
        opening = self._opening.get(hold_id)
        if opening is None:
            opening = self._opening[hold_id] = asyncio.ensure_future(self._read(hold_id))
            opening.add_done_callback(lambda done: (self._opening.pop(hold_id, None), _retrieved(done)))
        return await asyncio.shield(opening)

    async def _read(self, hold_id: str) -> CreditLine:
        hold = await self.source.hold(hold_id)
        if hold is None:
            raise NoHold(f"hold {hold_id!r} does not exist on the ledger")
        if len(self._lines) >= MAX_LINES:
            self._forget_finished()
        line = CreditLine(hold, read_at=self.clock(), chunk_units=self.reserve_units)
        line.adopt(hold)
        self._lines[hold_id] = line
        return line

    def _refresh(self, line: CreditLine) -> None:
        """Re-read the hold in the background; requests go on with what is known meanwhile."""
        if line.refreshing is not None:
            return
        line.read_at = self.clock()  # once per period, even if the read fails
        line.refreshing = asyncio.ensure_future(self._reread(line))

    async def _reread(self, line: CreditLine) -> None:
        try:
            hold = await self.source.hold(line.hold.hold_id)
        except AuthorizationError as exc:
            log.warning("hold_not_refreshed", extra={"hold_id": line.hold.hold_id, "error": str(exc)})
            return
        finally:
            line.refreshing = None
        if hold is not None:
            line.adopt(hold)

    def _forget_finished(self) -> None:
        now = self.clock()
        for hold_id in [h for h, line in self._lines.items() if not line.hold.live or now >= line.hold.expires_at]:
            del self._lines[hold_id]

    # -- receipts --

    def _take(self, line: CreditLine, header: str) -> Receipt | None:
        """A request's receipt, not seen before: refuse it if it is malformed, for another hold, with
        fewer units than the one accepted or beyond the hold; return it if it has an older sequence
        (it supersedes nothing); else check its signature now or soon (`check_seconds`)."""
        hold = line.hold
        try:
            receipt = receipt_from_header(header)
        except InvalidReceipt as exc:
            raise MalformedReceipt(f"{RECEIPT_METADATA}: {exc}") from None
        if receipt.hold_id != hold.hold_id:
            raise ReceiptForAnotherHold(f"the receipt (sequence {receipt.sequence}) is for hold {receipt.hold_id!r}; "
                                        f"the request is charged to hold {hold.hold_id!r}")
        if header == line.forged:
            raise self._not_signed(line, receipt, "found out before")
        last = line.receipt
        if last is not None and (receipt.sequence, receipt.units) == (last.sequence, last.units):
            self._verify(line, receipt)  # the accepted receipt signed anew (ECDSA signatures differ each time)
            line.header = header
            return None
        if last is not None and receipt.sequence <= last.sequence:
            # Requests sent at once may arrive out of order: an older receipt is refused only when
            # the request needs a newer one (`_check_window`), else ignored.
            return receipt
        if last is not None and receipt.units < last.units:
            raise StaleReceipt(f"hold {hold.hold_id!r}: receipt sequence {receipt.sequence} is for {receipt.units} "
                               f"units, fewer than the {last.units} of sequence {last.sequence} accepted; units "
                               f"never decrease")
        if receipt.units > hold.units:
            raise ReceiptBeyondHold(f"hold {hold.hold_id!r} pays for at most {hold.units} units ({hold.amount} at "
                                    f"{hold.price_per_unit}); the receipt says {receipt.units}")
        if line.pending is None or receipt.supersedes(line.pending):
            line.pending, line.pending_header = receipt, header
        if self.check_seconds <= 0:
            self._check_pending(line)
        elif line.checking is None:
            line.checking = asyncio.get_running_loop().call_later(self.check_seconds, self._check_later, line)
        return None

    def _check_pending(self, line: CreditLine) -> None:
        """Accept the newest receipt received, once its signature verifies; `ReceiptNotSigned` if it does not."""
        receipt, header = line.pending, line.pending_header
        line.pending = line.pending_header = None
        if receipt is None:
            return
        try:
            self._verify(line, receipt)
        except ReceiptNotSigned:
            line.forged = header
            raise
        if receipt.supersedes(line.receipt):  # (the ledger's recorded receipt may have overtaken it)
            self._accept(line, receipt, header)

    def _check_later(self, line: CreditLine) -> None:
        """The timer's check: the newest receipt received verified off the event loop (`verify`, or the worker thread)."""
        line.checking = None
        receipt, header = line.pending, line.pending_header
        if receipt is None or line.verifying is not None:
            return  # checked meanwhile on a request's path, or a check is on its way (it looks again when done)
        try:
            key = self._key(line)
        except ReceiptNotSigned as exc:
            self._found_forged(line, receipt, header, exc)
            return
        if self.verify is not None:
            line.verifying = asyncio.ensure_future(self.verify(line.hold.client_cert, receipt))
        else:
            if self._verifier is None:
                self._verifier = ThreadPoolExecutor(1, thread_name_prefix="receipts")
            line.verifying = asyncio.get_running_loop().run_in_executor(self._verifier, _verifies, key, receipt)
        line.verifying.add_done_callback(partial(self._checked, line, receipt, header))

    def _checked(self, line: CreditLine, receipt: Receipt, header: str, done: asyncio.Future) -> None:
        """A background check's outcome: the receipt accepted (if still newer than the one accepted) or found forged."""
        line.verifying = None
        if done.cancelled():  # the loop is closing
            return
        failed = done.exception()
        if failed is not None:  # not an answer about the signature: it stays pending, checked again
            log.error("receipt_not_checked", extra={"hold_id": line.hold.hold_id, "error": repr(failed)})
        else:
            if line.pending is receipt:
                line.pending = line.pending_header = None
            why = done.result()
            if why is not None:
                self._found_forged(line, receipt, header, self._not_signed(line, receipt, why))
            elif receipt.supersedes(line.receipt):
                self._accept(line, receipt, header)
        if line.pending is not None and line.checking is None:  # a newer one came meanwhile
            line.checking = asyncio.get_running_loop().call_later(self.check_seconds, self._check_later, line)

    def _found_forged(self, line: CreditLine, receipt: Receipt, header: str, exc: ReceiptNotSigned) -> None:
        line.forged = header  # refused when it comes again, or when the window needs it
        if line.pending is receipt:
            line.pending = line.pending_header = None
        log.warning("receipt_not_signed", extra={"hold_id": line.hold.hold_id, "error": str(exc)})

    def _accept(self, line: CreditLine, receipt: Receipt, header: str | None) -> None:
        line.receipt, line.header = receipt, header
        line.served = max(line.served, receipt.units)
        RECEIPTS.inc()

    def _key(self, line: CreditLine) -> ReceiptKey:
        """The hold's client key, read from its certificate once."""
        if line.key is None:
            try:
                line.key = ReceiptKey(line.hold.client_cert)
            except InvalidReceipt as exc:
                raise ReceiptNotSigned(f"hold {line.hold.hold_id!r}: {exc}") from None
        return line.key

    def _verify(self, line: CreditLine, receipt: Receipt) -> None:
        key = self._key(line)
        try:
            key.verify(receipt)
        except InvalidReceipt as exc:
            raise self._not_signed(line, receipt, str(exc)) from None

    @staticmethod
    def _not_signed(line: CreditLine, receipt: Receipt, why: str) -> ReceiptNotSigned:
        return ReceiptNotSigned(f"hold {line.hold.hold_id!r}: receipt sequence {receipt.sequence} is not signed by the "
                                f"certificate of client {line.hold.client!r} that froze the hold ({why})")

    def _check_window(self, line: CreditLine, units: int, older: Receipt | None) -> None:
        """Refuse the request unless it fits the window; `older`: its receipt, if that superseded nothing."""
        if line.pending is not None and line.served + units > self._covered(line) + self.window_units:
            self._check_pending(line)  # the request needs the newer receipt: check it now
        covered = self._covered(line)
        if line.served + units > covered + self.window_units:
            receipt = line.receipt
            if older is not None:
                raise StaleReceipt(f"hold {line.hold.hold_id!r}: receipt sequence {older.sequence} is not newer than "
                                   f"the one accepted, sequence {receipt.sequence} for {receipt.units} units; send "
                                   f"the latest receipt")
            known = (f"the latest receipt covers {covered} (sequence {receipt.sequence})" if receipt is not None
                     else "no receipt yet")
            raise ReceiptNeeded(
                f"hold {line.hold.hold_id!r}: {line.served} units served, {known}, credit window {self.window_units} "
                f"units: {units} more need a receipt for at least {line.served + units - self.window_units} units; "
                f"send a newer receipt in the {RECEIPT_METADATA!r} request metadata")

    @staticmethod
    def _covered(line: CreditLine) -> int:
        return line.receipt.units if line.receipt is not None else 0

    # -- reservations --

    async def _reserve(self, line: CreditLine, short: int) -> None:
        """Wait for the hold's reservation in flight, or make one of at least `short` credit."""
        reserving = line.reserving or self._start_reserving(line, short)
        await asyncio.shield(reserving)

    def _reserve_ahead(self, line: CreditLine, now: float) -> None:
        hold = line.hold
        if (line.reserving is None and 2 * line.unspent < line.chunk_units * hold.price_per_unit
                and hold.remaining > 0 and now < hold.expires_at):
            self._start_reserving(line, 0)

    def _start_reserving(self, line: CreditLine, at_least: int) -> asyncio.Future:
        line.reserving = asyncio.ensure_future(self._reservation(line, at_least))
        line.reserving.add_done_callback(partial(self._reservation_done, line))
        return line.reserving

    def _reservation_done(self, line: CreditLine, done: asyncio.Future) -> None:
        error = None if done.cancelled() else done.exception()
        if error is not None:
            reason = type(error).__name__
            RESERVATION_FAILURES.labels(reason).inc()
            log.warning("credit_not_reserved", extra={"hold_id": line.hold.hold_id, "reason": reason,
                                                      "error": str(error)})

    async def _reservation(self, line: CreditLine, at_least: int) -> None:
        try:
            await self._reserve_chunk(line, at_least)
        finally:
            line.reserving = None  # before its waiters wake: one that still lacks credit starts the next

    async def _reserve_chunk(self, line: CreditLine, at_least: int) -> None:
        """Reserve the next chunk (at least `at_least` credit) of what the hold has left."""
        hold_id, price = line.hold.hold_id, line.hold.price_per_unit
        chunk = max(line.chunk_units * price, at_least)
        try:
            credit = self._reservable(line, chunk, at_least)
            after = await self.source.reserve(hold_id, credit)
        except NothingToReserve:  # other servers reserved meanwhile: what is left now?
            fresh = await self.source.hold(hold_id)
            if fresh is not None:
                line.adopt(fresh)
            credit = self._reservable(line, chunk, at_least)
            try:
                after = await self.source.reserve(hold_id, credit)
            except NothingToReserve:
                raise self._exhausted(line, at_least) from None
        now = self.clock()
        if now - line.reserved_at < FAST_CHUNK_SECONDS:
            line.chunk_units = min(2 * line.chunk_units, max(line.hold.units, 1))
        line.reserved_at = now
        line.reserved += credit
        line.adopt(after)
        self.reservations += 1
        RESERVATIONS.inc()
        RESERVED_CREDIT.inc(credit)
        log.info("credit_reserved", extra={"hold_id": hold_id, "credit": credit, "reserved_here": line.reserved,
                                           "authorized": after.authorized, "amount": after.amount})

    def _reservable(self, line: CreditLine, chunk: int, at_least: int) -> int:
        left = line.hold.remaining
        if left <= 0 or left < at_least:
            raise self._exhausted(line, at_least)
        return min(chunk, left)

    def _exhausted(self, line: CreditLine, at_least: int) -> HoldExhausted:
        hold = line.hold
        need = f"; this request needs {at_least} more" if at_least else ""
        return HoldExhausted(
            f"hold {hold.hold_id!r} has {max(hold.remaining, 0)} credit left to reserve (amount {hold.amount}, "
            f"reserved by the provider's servers {hold.authorized}, by this server {line.reserved}, of which it "
            f"served {line.own_units * hold.price_per_unit}){need}: the client freezes a new hold")


def _verifies(key: ReceiptKey, receipt: Receipt) -> str | None:
    """None if `key` signed `receipt`, else why not (run off the event loop)."""
    try:
        key.verify(receipt)
    except InvalidReceipt as exc:
        return str(exc)
    return None


def _retrieved(done: asyncio.Future) -> None:
    """Mark a shared future's exception as seen: its waiters raise it, or none was left to."""
    if not done.cancelled():
        done.exception()
