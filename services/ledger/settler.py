"""The settlement loop: usage -> the client's latest receipt per hold -> one Settle, before the window closes.

    settler = Settler(settings, consumer, Ports(ledger, store, producer, codec, retries, letters), provider)
    await settler.run(stop)

It settles the holds that pay `provider`, the account its identity acts for (`WhoAmI.ActsFor`
of the `settlement` identity): the contract lets it settle no other.

Each usage record carries the latest receipt the inference server had accepted on its hold.
`UsageBook` (streamledger/core/settlement.py) keeps per hold the receipt that supersedes the
others, each verified against the hold's `client_cert` (from `GetHold`), and counts usage once
per request id. A hold is settled `ledger_settle_grace_seconds` after it expires, or earlier
if its deadline comes first: `settle_by` minus the peers' timewindow
(`ledger_settle_margin_seconds`) minus `ledger_settle_lead_seconds`. Its settlement (the
receipt) is planned in MongoDB, submitted as `Settle(hold, receipt)`, and its outcome stored;
the offsets committed stay at the first record of the oldest unsettled hold, so a restart
(which first submits the plans left pending) re-reads the same records and settles once. A
long hold's latest receipt is also recorded on the ledger (`RecordReceipt`) every
`ledger_record_receipt_every_seconds`, so a client's Release pays for it even if this loop
is down at the end.

Usage that cannot be charged becomes a dead letter: `unknown_hold`, `other_provider` (its hold
pays another provider), `hold_closed` (after its hold was settled or released),
`invalid_receipt` (a receipt its client did not sign, or for more than the hold pays; that
record is not counted), `usage_exceeds_hold` (usage beyond the amount frozen),
`settlement_refused` (the contract refused `Settle`), and the reasons of records that are no
usable UsageRecord. A duplicate record (a request id counted before) is counted once, not
dead-lettered (delivery is at least once).

Replicas share the usage topic's partitions as one consumer group; usage is keyed by hold, so
each hold's records are on one partition and one replica tallies it. A replica that loses a
partition drops its unsettled holds (the next owner reads their usage again from the commit);
what is fetched or read while a rebalance revokes it (`generation`) is not tallied. A hold whose
settlement is planned is settled on that plan by whoever submits it (the first plan recorded
wins, a second Settle is refused as ALREADY_SETTLED and its outcome read from the ledger), so a
hold is charged once even when the replica that planned it and the partition's next owner both
submit.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiokafka import (
    AIOKafkaConsumer,
    ConsumerRebalanceListener,
    TopicPartition,
)

from services.ledger.dead_letters import EMPTY_MESSAGE
from services.ledger.offsets import OffsetCommitter
from services.ledger.ports import Ports
from services.ledger.settings import LedgerServiceSettings
from streamledger import metrics
from streamledger.avro import CodecError
from streamledger.core.contract_errors import AlreadySettled, Forbidden, StaleReceipt
from streamledger.core.receipts import InvalidReceipt, Receipt
from streamledger.core.records import Consumed
from streamledger.core.scoped import scoped_id
from streamledger.core.settlement import (
    HoldTerms,
    SettlementClock,
    Tally,
    UsageBook,
    UsageError,
    check_usage,
    receipt_from_ledger,
    receipt_of,
)
from streamledger.fabric import EndorseError, EvaluateError
from streamledger.logging import get_logger
from streamledger.retry import Stopped

log = get_logger("ledger")

SETTLED = metrics.counter("ledger", "holds_settled", "Holds settled, by outcome", ("status",))
CHARGED = metrics.counter("ledger", "credit_charged", "Credit paid to providers at settlement")
DUPLICATES = metrics.counter("ledger", "usage_duplicates", "Usage records of a request already counted")
RECORDED = metrics.counter("ledger", "receipts_recorded", "Receipts recorded on the ledger before settlement")


def clock_of(settings: LedgerServiceSettings) -> SettlementClock:
    return SettlementClock(settings.ledger_settle_grace_seconds, settings.ledger_settle_margin_seconds,
                           settings.ledger_settle_lead_seconds)


class Settler(ConsumerRebalanceListener):
    REMEMBERED = 100_000
    """Closed holds remembered, to tell a replayed usage record from one that came too late."""

    def __init__(self, settings: LedgerServiceSettings, consumer: AIOKafkaConsumer, ports: Ports,
                 provider: str) -> None:
        self.settings = settings
        self.provider = provider
        """The account whose holds this loop settles."""
        self.topic = settings.ledger_usage_topic
        self.consumer = consumer
        self.ports = ports
        self.committer = OffsetCommitter(consumer, self.topic, ports.producer)
        self.clock = clock_of(settings)
        self.book = UsageBook()
        self.consumed: dict[int, int] = {}
        """Per partition, the next offset to read."""
        self.closed: dict[str, int] = {}
        """Holds no longer open -> the last usage offset their settlement counted (-1: none)."""
        self.slots = asyncio.Semaphore(16)
        self.warned_margin = False
        self.generation = 0
        """Revocations so far: usage read before one is not tallied after it."""

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self._resume_pending()
            await self.consumer.start()  # then subscribed: see `Anchorer.run`
            self.consumer.subscribe([self.topic], listener=self)
            s = self.settings
            log.info("settlement_started", extra={
                "topic": self.topic, "provider": self.provider, "grace_s": s.ledger_settle_grace_seconds,
                "margin_s": s.ledger_settle_margin_seconds, "lead_s": s.ledger_settle_lead_seconds,
                "record_receipt_every_s": s.ledger_record_receipt_every_seconds})
            next_tick = 0.0
            while not stop.is_set():
                polled = await self.consumer.getmany(timeout_ms=200, max_records=2000)
                generation = self.generation
                for tp, messages in polled.items():
                    for message in messages:
                        if self.generation != generation:
                            break  # revoked meanwhile: the partition's owner reads the rest again
                        await self._take(tp, message, generation)
                if time.monotonic() >= next_tick:
                    await self._settle_due()
                    await self._record_receipts()
                    next_tick = time.monotonic() + s.ledger_settle_tick_seconds
                await self.committer.commit(self.book.commit_offsets(self.consumed))
        except Stopped:
            pass  # asked to stop while waiting for the ledger or MongoDB
        finally:
            await self.consumer.stop()

    async def _resume_pending(self) -> None:
        """Settlements planned before a crash go first, with the receipts they recorded."""
        pending = await self.ports.retries.run("pending", self.ports.store.pending_settlements)
        for plan in pending:
            self._remember(plan["_id"], plan["through_offset"])
        await asyncio.gather(*(self._submit(plan) for plan in pending))

    async def _take(self, tp: TopicPartition, message: Any, generation: int) -> None:
        self.consumed[tp.partition] = message.offset + 1
        consumed = Consumed(tp, message.topic, message.partition, message.offset, message.key, message.value)
        if message.value is None:
            await self.ports.letters.send(consumed, EMPTY_MESSAGE, "UsageRecord: the record has no value (a tombstone)")
            return
        try:
            record = self.ports.codec.decode(message.value, reader="UsageRecord")
            check_usage(record)
            receipt = receipt_of(record)
        except (CodecError, UsageError) as exc:
            await self.ports.letters.send(consumed, exc.reason, f"UsageRecord: {exc}")
            return
        hold_id = record["hold_id"]
        if hold_id not in self.book:
            if hold_id not in self.closed and not await self._open(hold_id, consumed, generation):
                return
            if self.generation != generation:
                return  # revoked while the hold was read
            if hold_id in self.closed:
                through = self.closed[hold_id]
                if message.offset > through:
                    await self.ports.letters.send(consumed, "hold_closed",
                                                  f"usage {record['request_id']!r} arrived after hold {hold_id!r} "
                                                  f"was settled or released; it was not charged")
                return  # at or before `through`: counted by the settlement already (a replay)
        if receipt is not None:
            try:
                self.book.offer(hold_id, receipt)
            except InvalidReceipt as exc:
                await self.ports.letters.send(consumed, "invalid_receipt",
                                              f"usage {record['request_id']!r}: {exc}; the record was not counted")
                return
        # Request ids are the client's own: counted once per (client, request id).
        request = scoped_id(record["client"], record["request_id"])
        if not self.book.add(hold_id, message.offset, request, record["units"]):
            DUPLICATES.inc()
            log.info("duplicate_usage", extra={"hold_id": hold_id, "request_id": record["request_id"],
                                               "offset": message.offset})

    async def _open(self, hold_id: str, consumed: Consumed, generation: int) -> bool:
        """Start a tally for a hold seen for the first time; False when its usage cannot be settled
        (or the partition was revoked while the hold was read)."""
        try:
            hold = await self.ports.retries.run("get_hold", lambda: self.ports.ledger.get_hold(hold_id))
        except EvaluateError as exc:  # refused, e.g. a malformed hold id (an outage is retried, then stops)
            if self.generation != generation:
                return False
            # FORBIDDEN: this identity is no party to the hold, so it pays another provider.
            reason = "other_provider" if isinstance(exc.contract_error, Forbidden) else "unknown_hold"
            await self.ports.letters.send(consumed, reason, f"hold {hold_id!r}: {exc.chaincode_message}")
            return False
        if self.generation != generation:
            return False  # revoked while the hold was read: the partition's next owner reads this record again
        if hold is None:
            await self.ports.letters.send(consumed, "unknown_hold", f"no hold {hold_id!r} on the ledger")
            return False
        if hold["provider"] != self.provider:
            await self.ports.letters.send(consumed, "other_provider", f"hold {hold_id!r} pays {hold['provider']!r}; "
                                                                      f"this service settles for {self.provider!r}")
            return False
        if hold["status"] != "OPEN":
            # Settled by this service (maybe by another replica, its outcome not stored yet): the
            # usage its plan counted is not late; closed otherwise, all of it is.
            outcome = await self.ports.retries.run("settlement", lambda: self.ports.store.settled_through(hold_id))
            through = outcome["through_offset"] if outcome and outcome["partition"] == consumed.partition else -1
            self._remember(hold_id, through)
            return True
        terms = HoldTerms.of(hold)
        if not self.clock.margin_fits(terms) and not self.warned_margin:
            self.warned_margin = True  # once: every hold of this network has such a window
            log.warning("settle_margin_exceeds_window", extra={
                "hold_id": hold_id, "window_s": terms.settle_by - terms.expires_at,
                "margin_s": self.settings.ledger_settle_margin_seconds,
                "hint": "holds are settled at expiry; set STREAMLEDGER_LEDGER_SETTLE_MARGIN_SECONDS to the "
                        "peers' peer.authentication.timewindow"})
        self.book.open(terms, consumed.partition, time.time())
        log.info("hold_opened", extra={"hold_id": hold_id, "partition": consumed.partition, "offset": consumed.offset})
        return True

    def _remember(self, hold_id: str, through: int) -> None:
        self.closed[hold_id] = through
        while len(self.closed) > self.REMEMBERED:
            self.closed.pop(next(iter(self.closed)))

    async def _settle_due(self) -> None:
        now = time.time()
        plans = []
        for tally in self.book.due(self.clock, now):
            if not self._holds(tally):
                continue  # its partition was revoked (while an earlier hold was settled): its next owner settles it
            if not tally.records:  # only records that were not counted (an invalid receipt): nothing to settle
                self.book.pop(tally.hold_id)
                continue
            if not await self._refresh(tally) or not self._holds(tally):
                continue
            plan = await self._plan(tally, now)
            if self._holds(tally):  # revoked meanwhile or not, the plan is durable: whoever submits it settles it
                self.book.pop(tally.hold_id)
            self._remember(tally.hold_id, plan["through_offset"])
            if tally.excess:
                summary = json.dumps({"hold_id": tally.hold_id, "usage_charge": tally.usage_charge,
                                      "frozen": tally.terms.amount, "excess": tally.excess}).encode()
                source = Consumed(None, self.topic, tally.partition, tally.last_offset, tally.hold_id.encode(), summary)
                await self.ports.letters.send(source, "usage_exceeds_hold",
                                              f"usage of hold {tally.hold_id!r} came to {tally.usage_charge}, more "
                                              f"than the {tally.terms.amount} frozen; {tally.excess} was not charged")
            plans.append(plan)
        await asyncio.gather(*(self._submit(plan) for plan in plans))

    def _holds(self, tally: Tally) -> bool:
        """Whether `tally` is still this loop's (not dropped with its partition)."""
        return self.book.tallies.get(tally.hold_id) is tally

    async def _refresh(self, tally: Tally) -> bool:
        """Read the hold again before settling it: the receipt recorded since (by an inference
        server, or a checkpoint) decides what Settle is given. False when it closed meanwhile
        (its outcome is stored as the ledger shows it)."""
        try:
            hold = await self.ports.retries.run("get_hold", lambda: self.ports.ledger.get_hold(tally.hold_id))
        except EvaluateError as exc:  # refused now (e.g. a role revoked): Settle will say why
            log.warning("hold_not_read_before_settlement", extra={"hold_id": tally.hold_id,
                                                                  "error": exc.chaincode_message})
            return True
        if hold is not None and hold["status"] == "OPEN":
            tally.recorded = receipt_from_ledger(hold.get("receipt"))
            tally.authorized = int(hold.get("authorized", 0))
            return True
        if self._holds(tally):
            self.book.pop(tally.hold_id)
        through = tally.last_offset if tally.last_offset is not None else -1
        self._remember(tally.hold_id, through)
        status = hold["status"] if hold is not None else "UNKNOWN"
        log.warning("hold_closed_before_settlement", extra={"hold_id": tally.hold_id, "status": status})
        plan = {"_id": tally.hold_id, "usage_units": tally.units, "usage_records": tally.records,
                "partition": tally.partition, "first_offset": tally.first_offset, "through_offset": through}
        outcome = {"status": status, "by_another": True, "charged": hold and hold["charged"],
                   "refunded": hold and hold["refunded"], "tx_id": hold and hold["close_tx_id"], "block": None}
        await self.ports.retries.run("outcome", lambda: self.ports.store.record_settlement(plan, outcome))
        return False

    async def _plan(self, tally: Tally, now: float) -> dict[str, Any]:
        terms = tally.terms
        receipt = tally.settling_receipt()
        units = tally.paid_units
        deadline = self.clock.deadline(terms)
        if now >= deadline:
            log.warning("settling_after_deadline", extra={"hold_id": tally.hold_id, "deadline": deadline,
                                                          "settle_by": terms.settle_by, "late_s": round(now - deadline, 1)})
        plan = {"_id": tally.hold_id, "units": units, "price": terms.price_per_unit,
                "amount": min(units * terms.price_per_unit, tally.authorized),
                "receipt": _receipt_document(receipt), "on_recorded_receipt": receipt is None,
                "usage_units": tally.units, "usage_records": tally.records, "duplicates": tally.duplicates,
                "partition": tally.partition, "first_offset": tally.first_offset,
                "through_offset": tally.last_offset, "settle_by": terms.settle_by, "deadline": deadline,
                "planned_at": time.time_ns() // 1_000_000}
        return await self.ports.retries.run("plan", lambda: self.ports.store.plan_settlement(plan))

    async def _submit(self, plan: dict[str, Any]) -> None:
        hold_id = plan["_id"]
        async with self.slots:
            try:
                committed = await self._settle(hold_id, _receipt_of_plan(plan))
                result = committed.json()
                outcome = {"status": "SETTLED", "tx_id": result["tx_id"], "block": committed.block_number,
                           "charged": result["charged"], "refunded": result["refunded"],
                           "paid_units": result.get("units", 0)}
            except EndorseError as exc:  # refused by the contract (an outage is retried, then stops)
                outcome = await self._refused(plan, exc)
            except Stopped:
                return  # still planned: the next start settles it
            await self.ports.retries.run("outcome", lambda: self.ports.store.record_settlement(plan, outcome))
        SETTLED.labels(outcome["status"]).inc()
        CHARGED.inc(outcome.get("charged") or 0)
        log.info("settled", extra={"hold_id": hold_id, **outcome})

    async def _settle(self, hold_id: str, receipt: Receipt | None) -> Any:
        ledger = self.ports.ledger
        try:
            return await self.ports.retries.run("settle", lambda: ledger.settle(hold_id, receipt))
        except EndorseError as exc:
            if receipt is None or not isinstance(exc.contract_error, StaleReceipt):
                raise
        # A later receipt was recorded since the plan (by an inference server): settle on it.
        log.info("settling_on_recorded_receipt", extra={"hold_id": hold_id, "sequence": receipt.sequence})
        return await self.ports.retries.run("settle", lambda: ledger.settle(hold_id, None))

    async def _refused(self, plan: dict[str, Any], exc: EndorseError) -> dict[str, Any]:
        message = exc.chaincode_message
        hold = await self.ports.retries.run("get_hold", lambda: self.ports.ledger.get_hold(plan["_id"]))
        if isinstance(exc.contract_error, AlreadySettled) and hold is not None:
            # Our own Settle landed before a crash or a lost answer: its outcome is on the ledger.
            if hold["charged"] != plan["amount"]:
                log.warning("settled_differently", extra={"hold_id": plan["_id"], "charged": hold["charged"],
                                                          "planned": plan["amount"]})
            paid = receipt_from_ledger(hold.get("receipt"))
            return {"status": "SETTLED", "tx_id": hold["close_tx_id"], "block": None,
                    "charged": hold["charged"], "refunded": hold["refunded"], "paid_units": paid.units if paid else 0}
        status = hold["status"] if hold is not None else "REFUSED"
        summary = json.dumps({"hold_id": plan["_id"], "units": plan["units"], "price": plan["price"],
                              "receipt": plan["receipt"]}).encode()
        source = Consumed(None, self.topic, plan["partition"], plan["through_offset"], plan["_id"].encode(), summary)
        await self.ports.letters.send(source, "settlement_refused",
                                      f"Settle of hold {plan['_id']!r} ({plan['units']} x {plan['price']}) was "
                                      f"refused: {message}")
        return {"status": "REFUSED" if status == "OPEN" else status, "error": message, "charged": 0,
                "tx_id": hold.get("close_tx_id") if hold else None, "block": None,
                "refunded": hold.get("refunded") if hold else None}

    async def _record_receipts(self) -> None:
        """Checkpoint the latest receipt of long holds on the ledger, so that a Release pays it."""
        now = time.time()
        due = self.book.checkpoints(self.settings.ledger_record_receipt_every_seconds, now)
        await asyncio.gather(*(self._record(tally, now) for tally in due))

    async def _record(self, tally: Tally, now: float) -> None:
        receipt = tally.settling_receipt()
        tally.checkpointed_at = now  # refused or not, the next try waits a whole period
        async with self.slots:
            try:
                await self.ports.retries.run("record_receipt", lambda: self.ports.ledger.record_receipt(receipt))
            except EndorseError as exc:  # e.g. STALE_RECEIPT (a later one was recorded), or the hold closed
                log.warning("receipt_not_recorded", extra={"hold_id": tally.hold_id, "sequence": receipt.sequence,
                                                           "error": exc.chaincode_message})
                return
            except Stopped:
                return
        tally.recorded = receipt
        RECORDED.inc()
        log.info("receipt_recorded", extra={"hold_id": tally.hold_id, "units": receipt.units,
                                            "sequence": receipt.sequence})

    # -- ConsumerRebalanceListener --
    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        """Every partition, at each rebalance (aiokafka's protocol is eager): unsettled holds are
        dropped, and the partitions held after it are read again from their commits."""
        self.generation += 1
        gone = {tp.partition for tp in revoked}
        for hold_id in [h for h, t in self.book.tallies.items() if t.partition in gone]:
            self.book.pop(hold_id)  # unsettled: the partition's new owner re-reads its usage
        for partition in gone:
            self.consumed.pop(partition, None)
        self.committer.forget(gone)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("usage_partitions_assigned", extra={"partitions": sorted(tp.partition for tp in assigned)})


def _receipt_document(receipt: Receipt | None) -> dict[str, Any] | None:
    if receipt is None:
        return None
    return {"units": receipt.units, "sequence": receipt.sequence, "signature": receipt.signature}


def _receipt_of_plan(plan: dict[str, Any]) -> Receipt | None:
    document = plan.get("receipt")
    if not document:
        return None
    return Receipt(plan["_id"], document["units"], document["sequence"], document["signature"])
