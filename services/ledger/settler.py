"""The settlement loop: usage -> totals per hold -> one Settle per hold once it is due.

    settler = Settler(settings, consumer, Ports(ledger, store, producer, codec, retries, letters), provider)
    await settler.run(stop)

It settles the holds that pay `provider`, the account its identity acts for (`WhoAmI.ActsFor`
of the `settlement` identity): the contract lets it settle no other.

Usage is totalled per hold by `UsageBook` (settlement.py), with the hold's terms from
`GetHold`. A due hold's settlement is planned in MongoDB, submitted as `Settle`, and its
outcome stored; the offsets committed stay at the first record of the oldest unsettled hold,
so a restart (which first submits the plans left pending) settles the same units once.
Usage that cannot be charged becomes a dead letter: `unknown_hold`, `other_provider` (its hold
pays another provider), `hold_closed` (after its hold was settled or released),
`usage_exceeds_hold` (beyond the amount frozen; the rest is charged), `settlement_refused` (the
contract refused `Settle`), and the reasons of records that are no usable UsageRecord.
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
from streamledger.core.contract_errors import AlreadySettled, Forbidden
from streamledger.core.records import Consumed
from streamledger.core.settlement import UsageBook, UsageError, check_usage
from streamledger.fabric import EndorseError, EvaluateError
from streamledger.logging import get_logger
from streamledger.retry import Stopped

log = get_logger("ledger")

SETTLED = metrics.counter("ledger", "holds_settled", "Holds settled, by outcome", ("status",))
CHARGED = metrics.counter("ledger", "credit_charged", "Credit paid to providers at settlement")


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
        self.book = UsageBook()
        self.consumed: dict[int, int] = {}
        """Per partition, the next offset to read."""
        self.closed: dict[str, int] = {}
        """Holds no longer open -> the last usage offset their settlement counted (-1: none)."""
        self.slots = asyncio.Semaphore(16)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self._resume_pending()
            self.consumer.subscribe([self.topic], listener=self)
            await self.consumer.start()
            log.info("settlement_started", extra={"topic": self.topic, "provider": self.provider,
                                                  "grace_s": self.settings.ledger_settle_grace_seconds})
            next_tick = 0.0
            while not stop.is_set():
                polled = await self.consumer.getmany(timeout_ms=200, max_records=2000)
                for tp, messages in polled.items():
                    for message in messages:
                        await self._take(tp, message)
                if time.monotonic() >= next_tick:
                    await self._settle_due()
                    next_tick = time.monotonic() + self.settings.ledger_settle_tick_seconds
                await self.committer.commit(self.book.commit_offsets(self.consumed))
        except Stopped:
            pass  # asked to stop while waiting for the ledger or MongoDB
        finally:
            await self.consumer.stop()

    async def _resume_pending(self) -> None:
        """Settlements planned before a crash go first, with the units they recorded."""
        pending = await self.ports.retries.run("pending", self.ports.store.pending_settlements)
        for plan in pending:
            self._remember(plan["_id"], plan["through_offset"])
        await asyncio.gather(*(self._submit(plan) for plan in pending))

    async def _take(self, tp: TopicPartition, message: Any) -> None:
        self.consumed[tp.partition] = message.offset + 1
        consumed = Consumed(tp, message.topic, message.partition, message.offset, message.key, message.value)
        if message.value is None:
            await self.ports.letters.send(consumed, EMPTY_MESSAGE, "UsageRecord: the record has no value (a tombstone)")
            return
        try:
            record = self.ports.codec.decode(message.value, reader="UsageRecord")
            check_usage(record)
        except (CodecError, UsageError) as exc:
            await self.ports.letters.send(consumed, exc.reason, f"UsageRecord: {exc}")
            return
        hold_id = record["hold_id"]
        if hold_id not in self.book:
            if hold_id not in self.closed and not await self._open(hold_id, consumed):
                return
            if hold_id in self.closed:
                through = self.closed[hold_id]
                if message.offset > through:
                    await self.ports.letters.send(consumed, "hold_closed",
                                            f"usage {record['request_id']!r} arrived after hold {hold_id!r} was "
                                            f"settled or released; it was not charged")
                return  # at or before `through`: counted by the settlement already (a replay)
        self.book.add(hold_id, message.offset, record["units"], record["price"])

    async def _open(self, hold_id: str, consumed: Consumed) -> bool:
        """Start a tally for a hold seen for the first time; False when its usage cannot be settled."""
        try:
            hold = await self.ports.retries.run("get_hold", lambda: self.ports.ledger.get_hold(hold_id))
        except EvaluateError as exc:  # refused, e.g. a malformed hold id (an outage is retried, then stops)
            # FORBIDDEN: this identity is no party to the hold, so it pays another provider.
            reason = "other_provider" if isinstance(exc.contract_error, Forbidden) else "unknown_hold"
            await self.ports.letters.send(consumed, reason, f"hold {hold_id!r}: {exc.chaincode_message}")
            return False
        if hold is None:
            await self.ports.letters.send(consumed, "unknown_hold", f"no hold {hold_id!r} on the ledger")
            return False
        if hold["provider"] != self.provider:
            await self.ports.letters.send(consumed, "other_provider", f"hold {hold_id!r} pays {hold['provider']!r}; "
                                                                      f"this service settles for {self.provider!r}")
            return False
        if hold["status"] != "OPEN":
            outcome = await self.ports.retries.run("settlement", lambda: self.ports.store.settlement(hold_id))
            through = outcome["through_offset"] if outcome and outcome["partition"] == consumed.partition else -1
            self._remember(hold_id, through)
            return True
        self.book.open(hold_id, consumed.partition, int(hold["expires_at"]), int(hold["amount"]), time.monotonic())
        return True

    def _remember(self, hold_id: str, through: int) -> None:
        self.closed[hold_id] = through
        while len(self.closed) > self.REMEMBERED:
            self.closed.pop(next(iter(self.closed)))

    async def _settle_due(self) -> None:
        s = self.settings
        plans = []
        for tally in self.book.due(time.monotonic(), time.time(), s.ledger_settle_grace_seconds,
                                   s.ledger_settle_every_seconds):
            units, price, excess = tally.terms()
            plan = {"_id": tally.hold_id, "units": units, "price": price, "amount": units * price,
                    "usage_units": tally.units, "usage_records": tally.records, "partition": tally.partition,
                    "first_offset": tally.first_offset, "through_offset": tally.last_offset,
                    "planned_at": time.time_ns() // 1_000_000}
            plan = await self.ports.retries.run("plan", lambda: self.ports.store.plan_settlement(plan))
            self.book.pop(tally.hold_id)  # the plan is durable: a restart resumes it
            self._remember(tally.hold_id, plan["through_offset"])
            if excess:
                summary = json.dumps({"hold_id": tally.hold_id, "usage_charge": tally.charge,
                                      "frozen": tally.amount, "excess": excess}).encode()
                source = Consumed(None, self.topic, tally.partition, tally.last_offset, tally.hold_id.encode(), summary)
                await self.ports.letters.send(source, "usage_exceeds_hold",
                                        f"usage of hold {tally.hold_id!r} came to {tally.charge}, more than the "
                                        f"{tally.amount} frozen; {excess} was not charged")
            plans.append(plan)
        await asyncio.gather(*(self._submit(plan) for plan in plans))

    async def _submit(self, plan: dict[str, Any]) -> None:
        hold_id = plan["_id"]
        async with self.slots:
            try:
                ledger = self.ports.ledger
                committed = await self.ports.retries.run(
                    "settle", lambda: ledger.settle(hold_id, plan["units"], plan["price"]))
                result = committed.json()
                outcome = {"status": "SETTLED", "tx_id": result["tx_id"], "block": committed.block_number,
                           "charged": result["charged"], "refunded": result["refunded"]}
            except EndorseError as exc:  # refused by the contract (an outage is retried, then stops)
                outcome = await self._refused(plan, exc)
            except Stopped:
                return  # still planned: the next start settles it
            await self.ports.retries.run("outcome", lambda: self.ports.store.record_settlement(plan, outcome))
        SETTLED.labels(outcome["status"]).inc()
        CHARGED.inc(outcome.get("charged") or 0)
        log.info("settled", extra={"hold_id": hold_id, **outcome})

    async def _refused(self, plan: dict[str, Any], exc: EndorseError) -> dict[str, Any]:
        message = exc.chaincode_message
        hold = await self.ports.retries.run("get_hold", lambda: self.ports.ledger.get_hold(plan["_id"]))
        if isinstance(exc.contract_error, AlreadySettled) and hold is not None:
            # Our own Settle landed before a crash or a lost answer: its outcome is on the ledger.
            if hold["charged"] != plan["amount"]:
                log.error("settled_differently", extra={"hold_id": plan["_id"], "charged": hold["charged"],
                                                        "planned": plan["amount"]})
            return {"status": "SETTLED", "tx_id": hold["close_tx_id"], "block": None,
                    "charged": hold["charged"], "refunded": hold["refunded"]}
        status = hold["status"] if hold is not None else "REFUSED"
        summary = json.dumps({"hold_id": plan["_id"], "units": plan["units"], "price": plan["price"]}).encode()
        source = Consumed(None, self.topic, plan["partition"], plan["through_offset"], plan["_id"].encode(), summary)
        await self.ports.letters.send(source, "settlement_refused",
                                f"Settle of hold {plan['_id']!r} ({plan['units']} x {plan['price']}) was refused: "
                                f"{message}")
        return {"status": "REFUSED" if status == "OPEN" else status, "error": message, "charged": 0,
                "tx_id": hold.get("close_tx_id") if hold else None, "block": None,
                "refunded": hold.get("refunded") if hold else None}

    # -- ConsumerRebalanceListener --
    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        gone = {tp.partition for tp in revoked}
        for hold_id in [h for h, t in self.book.tallies.items() if t.partition in gone]:
            self.book.pop(hold_id)  # unsettled: the partition's new owner re-reads its usage
        for partition in gone:
            self.consumed.pop(partition, None)
        self.committer.forget(gone)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        pass
