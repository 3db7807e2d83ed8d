"""`streamledger serve ledger`: Merkle anchoring of events.clean and settlement of usage, on Fabric.

    events.clean --> Batcher (per partition: 1,000 records or 1 s) --> plan + proofs (MongoDB)
                 --> AnchorBatch (one Fabric transaction per batch) --> Anchor on ledger.anchors
                 --> commit offsets, only past batches that are anchored

    usage --> UsageBook (per hold) --> hold expired + grace --> plan (MongoDB) --> Settle
          --> outcome (MongoDB settlements) --> commit offsets, only past settled holds

Both halves write their intent to MongoDB before the Fabric transaction and commit Kafka
offsets after it, so after a kill -9 at any point a restart forms the same batches and the
same settlements again: the contract takes a replayed AnchorBatch as a no-op and refuses a
second Settle, so nothing is anchored or charged twice and nothing read is skipped.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from streamledger import metrics
from streamledger.avro import AvroCodec, CodecError, SchemaRegistry
from streamledger.retry import RetryPolicy, Stopped, retry
from streamledger import kafka
from streamledger.kafka import topics
from streamledger.lifecycle import Loop, serve
from streamledger.logging import get_logger
from streamledger.mongo import mongo_client
from services.ledger import store as ledger_store
from services.ledger.anchoring import AnchoringError, Batch, Batcher
from streamledger.ledger import LedgerClient
from streamledger.fabric.errors import (
    CommitError,
    CommitStatusError,
    EndorseError,
    EvaluateError,
    GatewayError,
    SubmitError,
)
from services.ledger.settings import LedgerServiceSettings
from services.ledger.settlement import UsageBook, UsageError, check_usage
from services.ledger.store import LedgerStore
from streamledger.core.records import Consumed, dead_letter

log = get_logger("ledger")
T = TypeVar("T")

ANCHORED = metrics.counter("ledger", "records_anchored", "Clean records anchored on the ledger")
BATCHES = metrics.counter("ledger", "batches_anchored", "Batches anchored (one Fabric transaction each)")
ANCHOR_SECONDS = metrics.seconds("ledger", "anchor", "From a batch closing to its anchor on the ledger")
IN_FLIGHT = metrics.gauge("ledger", "batches_in_flight", "Batches being anchored")
SETTLED = metrics.counter("ledger", "holds_settled", "Holds settled, by outcome", ("status",))
CHARGED = metrics.counter("ledger", "credit_charged", "Credit paid to providers at settlement")
DEAD_LETTERS = metrics.counter("ledger", "deadletters", "Messages dead-lettered, by reason", ("reason",))
RETRIES = metrics.counter("ledger", "retries", "Operations retried after a transient failure", ("what",))


def is_transient(exc: BaseException) -> bool:
    """Worth retrying as is: the ledger, MongoDB or Kafka was unreachable or busy."""
    if isinstance(exc, CommitError):
        return exc.conflict
    if isinstance(exc, GatewayError):
        return exc.transient or isinstance(exc, (SubmitError, CommitStatusError))
    if isinstance(exc, KafkaError):
        return exc.retriable
    return ledger_store.is_transient(exc)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Plumbing:
    """What both halves share: the ledger, MongoDB, the producer, the codec, and retries."""

    settings: LedgerServiceSettings
    ledger: LedgerClient
    store: LedgerStore
    producer: AIOKafkaProducer
    codec: AvroCodec
    stop: asyncio.Event

    def __post_init__(self) -> None:
        self.policy = RetryPolicy(self.settings.retry_attempts, self.settings.backoff_initial_seconds,
                                  self.settings.backoff_max_seconds, jitter=0.2)

    async def retry(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
            RETRIES.labels(what).inc()
            log.warning("retrying", extra={"what": what, "attempt": attempt, "retry_in_s": round(delay, 2),
                                           "error": str(exc)[:500]})
        return await retry(operation, self.policy, is_transient=is_transient, stop=self.stop, on_retry=on_retry)

    async def dead_letter(self, message: Consumed, reason: str, error: str) -> None:
        DEAD_LETTERS.labels(reason).inc()
        log.warning("dead_letter", extra={"reason": reason, "error": error, "source_topic": message.topic,
                                          "source_offset": message.offset})
        letter = dead_letter(message, reason, error, _now_ms(), service="ledger")
        await self.producer.send(self.settings.deadletter_topic, key=(letter["key"] or "").encode(),
                                 value=self.codec.encode("DeadLetter", letter))

    def consumer(self, group: str) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap, group_id=group,
            enable_auto_commit=False,  # committed by hand, once the ledger holds what was read
            auto_offset_reset="earliest", max_poll_records=2000,
            max_poll_interval_ms=600_000,  # the ledger may be down a while: reading waits meanwhile
        )

    async def commit(self, consumer: AIOKafkaConsumer, topic: str, offsets: dict[int, int],
                     committed: dict[int, int]) -> None:
        """Commit the offsets that moved; dead letters are made durable first."""
        moved = {TopicPartition(topic, p): o for p, o in offsets.items() if o > committed.get(p, -1)}
        if not moved:
            return
        await self.producer.flush()
        try:
            await consumer.commit(moved)
        except (CommitFailedError, IllegalStateError) as exc:
            # The partitions moved to another consumer, which re-reads from the last commit.
            log.warning("commit_skipped", extra={"error": str(exc)})
            return
        committed.update({tp.partition: o for tp, o in moved.items()})


# -- anchoring ---------------------------------------------------------------------------------

@dataclass
class Flight:
    batch: Batch
    closed_at: float
    done: bool = False


class Anchorer(ConsumerRebalanceListener):
    def __init__(self, plumbing: Plumbing) -> None:
        self.p = plumbing
        s = plumbing.settings
        self.topic = s.clean_topic
        self.batcher = Batcher(s.clean_topic, s.ledger_batch_records, s.ledger_batch_seconds)
        self.slots = asyncio.Semaphore(s.ledger_batches_in_flight)
        self.flights: dict[int, list[Flight]] = {}
        """Per partition, the batches handed to the ledger, in offset order."""
        self.consumed: dict[int, int] = {}
        """Per partition, the next offset to read."""
        self.committed: dict[int, int] = {}
        self.prepared: set[int] = set()
        """Partitions whose recorded batches are planned again (see `_prepare`)."""
        self.tasks: set[asyncio.Task] = set()
        self.consumer = plumbing.consumer(s.ledger_anchor_group)

    async def run(self) -> None:
        self.consumer.subscribe([self.topic], listener=self)
        await self.consumer.start()
        log.info("anchoring_started", extra={"topic": self.topic, "batch_records": self.batcher.max_records,
                                             "batch_seconds": self.batcher.max_seconds})
        try:
            while not self.p.stop.is_set():
                polled = await self.consumer.getmany(timeout_ms=100, max_records=2000)
                now = time.monotonic()
                for tp, messages in polled.items():
                    for message in messages:
                        if not await self._take(tp, message, now):
                            break
                for batch in self.batcher.due(time.monotonic()):
                    await self._launch(batch)
                self._raise_failures()
                await self.p.commit(self.consumer, self.topic, self._safe_offsets(), self.committed)
        except Stopped:
            pass  # asked to stop while waiting for the ledger or MongoDB
        finally:
            await self._finish()

    async def _take(self, tp: TopicPartition, message: Any, now: float) -> bool:
        """Batch one message; False when the partition was moved back to re-form a recorded batch."""
        if tp.partition not in self.prepared and not await self._prepare(tp, message.offset):
            return False
        self.consumed[tp.partition] = message.offset + 1
        if message.value is None:
            return
        try:
            record = self.p.codec.decode(message.value, reader="CleanEvent")
            batch = self.batcher.add(tp.partition, message.offset, record["event_id"], record["content_hash"], now)
        except (CodecError, AnchoringError) as exc:
            consumed = Consumed(tp, message.topic, message.partition, message.offset, message.key, message.value)
            await self.p.dead_letter(consumed, getattr(exc, "reason", "unanchorable"), f"CleanEvent: {exc}")
            return True
        if batch is not None:
            await self._launch(batch)
        return True

    async def _prepare(self, tp: TopicPartition, offset: int) -> bool:
        """Before a partition's first record: plan again the batches recorded from here on, so
        they close where they did before a restart. (Done here, not when the partition is
        assigned, because records can arrive while an assignment callback still runs.)"""
        plans = await self.p.retry("plans", lambda: self.p.store.plans_from(self.topic, tp.partition, offset))
        if plans and plans[0]["first_offset"] < offset:
            # The committed offset fell inside a recorded batch: re-read all of it.
            self.consumer.seek(tp, plans[0]["first_offset"])
            log.warning("rewound", extra={"partition": tp.partition, "from": offset, "to": plans[0]["first_offset"]})
            return False
        for plan in plans:
            self.batcher.plan(tp.partition, plan["first_offset"], plan["last_offset"])
        self.prepared.add(tp.partition)
        if plans:
            log.info("replanned", extra={"partition": tp.partition, "batches": len(plans), "from_offset": offset})
        return True

    async def _launch(self, batch: Batch) -> None:
        await self.slots.acquire()  # all slots busy (the ledger is slow or down): reading waits
        flight = Flight(batch, time.monotonic())
        self.flights.setdefault(batch.partition, []).append(flight)
        task = asyncio.create_task(self._anchor(flight), name=f"anchor {batch.batch_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        IN_FLIGHT.set(len(self.tasks))

    async def _anchor(self, flight: Flight) -> None:
        batch = flight.batch
        try:
            tree = batch.tree()
            root = tree.root.hex()
            proofs = list(batch.proofs(tree))
            await self.p.retry("plan", lambda: self.p.store.record_plan(batch, root))
            await self.p.retry("proofs", lambda: self.p.store.write_proofs(proofs))
            committed = await self.p.retry("anchor", lambda: self.p.ledger.anchor_batch(
                batch.batch_id, root, len(batch.records), batch.first_offset, batch.last_offset))
            anchor = committed.json()
            block = committed.block_number
            if anchor["tx_id"] != committed.transaction_id:
                # A replay returns the anchor as first committed: the block is that transaction's.
                found = await self.p.retry("block", lambda: self.p.ledger.transaction_block(anchor["tx_id"]))
                block = found["block_number"] if found else None
            record = {"batch_id": batch.batch_id, "merkle_root": root, "count": len(batch.records),
                      "topic": batch.topic, "partition": batch.partition, "first_offset": batch.first_offset,
                      "last_offset": batch.last_offset, "tx_id": anchor["tx_id"], "block": block, "ts": _now_ms()}
            value = self.p.codec.encode("Anchor", record)
            await self.p.retry("publish", lambda: self.p.producer.send_and_wait(
                self.p.settings.anchors_topic, key=batch.batch_id.encode(), value=value))
            flight.done = True
            ANCHORED.inc(len(batch.records))
            BATCHES.inc()
            ANCHOR_SECONDS.observe(time.monotonic() - flight.closed_at)
            log.info("anchored", extra={"batch_id": batch.batch_id, "count": len(batch.records),
                                        "tx_id": anchor["tx_id"], "block": block})
        except Stopped:
            pass  # not anchored: the offsets stay before it, and a restart anchors it
        finally:
            self.slots.release()
            IN_FLIGHT.set(len(self.tasks) - 1)

    def _raise_failures(self) -> None:
        """A batch the ledger refused for good (e.g. its id anchored with another root) stops the service."""
        for task in list(self.tasks):
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()

    def _safe_offsets(self) -> dict[int, int]:
        """Per partition, how far every record is anchored (or dead-lettered)."""
        offsets = {}
        for partition, next_offset in self.consumed.items():
            flights = self.flights.get(partition, [])
            while flights and flights[0].done:
                flights.pop(0)
            bounds = [next_offset]
            if flights:
                bounds.append(flights[0].batch.first_offset)
            open_from = self.batcher.open_from(partition)
            if open_from is not None:
                bounds.append(open_from)
            offsets[partition] = min(bounds)
        return offsets

    async def _finish(self) -> None:
        """On stop: let the batches on their way land (bounded), commit, leave the group."""
        try:
            if self.tasks:
                done, pending = await asyncio.wait(set(self.tasks), timeout=30)
                for task in pending:
                    task.cancel()
            await self.p.commit(self.consumer, self.topic, self._safe_offsets(), self.committed)
        finally:
            await self.consumer.stop()

    # -- ConsumerRebalanceListener --
    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        for tp in revoked:
            self.batcher.forget(tp.partition)
            self.prepared.discard(tp.partition)
            for name in ("flights", "consumed", "committed"):
                getattr(self, name).pop(tp.partition, None)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        pass


# -- settlement --------------------------------------------------------------------------------

class Settler(ConsumerRebalanceListener):
    REMEMBERED = 100_000

    def __init__(self, plumbing: Plumbing) -> None:
        self.p = plumbing
        s = plumbing.settings
        self.topic = s.usage_topic
        self.book = UsageBook()
        self.consumed: dict[int, int] = {}
        self.committed: dict[int, int] = {}
        self.closed: dict[str, int] = {}
        """Holds no longer open -> the last usage offset their settlement counted (-1: none)."""
        self.slots = asyncio.Semaphore(16)
        self.consumer = plumbing.consumer(s.ledger_settlement_group)

    async def run(self) -> None:
        # Settlements planned before a crash go first, with the units they recorded.
        try:
            pending = await self.p.retry("pending", self.p.store.pending_settlements)
        except Stopped:
            return
        for plan in pending:
            self._remember(plan["_id"], plan["through_offset"])
        await asyncio.gather(*(self._submit(plan) for plan in pending))
        self.consumer.subscribe([self.topic], listener=self)
        await self.consumer.start()
        log.info("settlement_started", extra={"topic": self.topic,
                                              "grace_s": self.p.settings.ledger_settle_grace_seconds})
        next_tick = 0.0
        try:
            while not self.p.stop.is_set():
                polled = await self.consumer.getmany(timeout_ms=200, max_records=2000)
                for tp, messages in polled.items():
                    for message in messages:
                        await self._take(tp, message)
                if time.monotonic() >= next_tick:
                    await self._settle_due()
                    next_tick = time.monotonic() + self.p.settings.ledger_settle_tick_seconds
                await self.p.commit(self.consumer, self.topic, self.book.commit_offsets(self.consumed), self.committed)
        except Stopped:
            pass  # asked to stop while waiting for the ledger or MongoDB
        finally:
            await self.consumer.stop()

    async def _take(self, tp: TopicPartition, message: Any) -> None:
        self.consumed[tp.partition] = message.offset + 1
        consumed = Consumed(tp, message.topic, message.partition, message.offset, message.key, message.value)
        if message.value is None:
            return
        try:
            record = self.p.codec.decode(message.value, reader="UsageRecord")
            check_usage(record)
        except (CodecError, UsageError) as exc:
            await self.p.dead_letter(consumed, exc.reason, f"UsageRecord: {exc}")
            return
        hold_id = record["hold_id"]
        if hold_id not in self.book:
            if hold_id not in self.closed and not await self._open(hold_id, consumed):
                return
            if hold_id in self.closed:
                through = self.closed[hold_id]
                if message.offset > through:
                    await self.p.dead_letter(consumed, "hold_closed",
                                             f"usage {record['request_id']!r} arrived after hold {hold_id!r} was "
                                             f"settled or released; it was not charged")
                return  # at or before `through`: counted by the settlement already (a replay)
        self.book.add(hold_id, message.offset, record["units"], record["price"])

    async def _open(self, hold_id: str, consumed: Consumed) -> bool:
        """Start a tally for a hold seen for the first time; False when its usage cannot be settled."""
        try:
            hold = await self.p.retry("get_hold", lambda: self.p.ledger.get_hold(hold_id))
        except EvaluateError as exc:  # e.g. a malformed hold id
            await self.p.dead_letter(consumed, "unknown_hold", f"hold {hold_id!r}: {exc.chaincode_message}")
            return False
        if hold is None:
            await self.p.dead_letter(consumed, "unknown_hold", f"no hold {hold_id!r} on the ledger")
            return False
        if hold["status"] != "OPEN":
            outcome = await self.p.retry("settlement", lambda: self.p.store.settlement(hold_id))
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
        s = self.p.settings
        plans = []
        for tally in self.book.due(time.monotonic(), time.time(), s.ledger_settle_grace_seconds,
                                   s.ledger_settle_every_seconds):
            units, price, excess = tally.terms()
            plan = {"_id": tally.hold_id, "units": units, "price": price, "amount": units * price,
                    "usage_units": tally.units, "usage_records": tally.records, "partition": tally.partition,
                    "first_offset": tally.first_offset, "through_offset": tally.last_offset, "planned_at": _now_ms()}
            plan = await self.p.retry("plan", lambda: self.p.store.plan_settlement(plan))
            self.book.pop(tally.hold_id)  # the plan is durable: a restart resumes it
            self._remember(tally.hold_id, plan["through_offset"])
            if excess:
                summary = json.dumps({"hold_id": tally.hold_id, "usage_charge": tally.charge,
                                      "frozen": tally.amount, "excess": excess}).encode()
                source = Consumed(None, self.topic, tally.partition, tally.last_offset, tally.hold_id.encode(), summary)
                await self.p.dead_letter(source, "usage_exceeds_hold",
                                         f"usage of hold {tally.hold_id!r} came to {tally.charge}, more than the "
                                         f"{tally.amount} frozen; {excess} was not charged")
            plans.append(plan)
        await asyncio.gather(*(self._submit(plan) for plan in plans))

    async def _submit(self, plan: dict[str, Any]) -> None:
        hold_id = plan["_id"]
        async with self.slots:
            try:
                committed = await self.p.retry("settle", lambda: self.p.ledger.settle(hold_id, plan["units"],
                                                                                      plan["price"]))
                result = committed.json()
                outcome = {"status": "SETTLED", "tx_id": result["tx_id"], "block": committed.block_number,
                           "charged": result["charged"], "refunded": result["refunded"]}
            except EndorseError as exc:
                outcome = await self._refused(plan, exc)
            except Stopped:
                return  # still planned: the next start settles it
            await self.p.retry("outcome", lambda: self.p.store.record_settlement(plan, outcome))
        SETTLED.labels(outcome["status"]).inc()
        CHARGED.inc(outcome.get("charged") or 0)
        log.info("settled", extra={"hold_id": hold_id, **outcome})

    async def _refused(self, plan: dict[str, Any], exc: EndorseError) -> dict[str, Any]:
        message = exc.chaincode_message
        hold = await self.p.retry("get_hold", lambda: self.p.ledger.get_hold(plan["_id"]))
        if "ALREADY_SETTLED" in message and hold is not None:
            # Our own Settle landed before a crash or a lost answer: its outcome is on the ledger.
            if hold["charged"] != plan["amount"]:
                log.error("settled_differently", extra={"hold_id": plan["_id"], "charged": hold["charged"],
                                                        "planned": plan["amount"]})
            return {"status": "SETTLED", "tx_id": hold["close_tx_id"], "block": None,
                    "charged": hold["charged"], "refunded": hold["refunded"]}
        status = hold["status"] if hold is not None else "REFUSED"
        summary = json.dumps({"hold_id": plan["_id"], "units": plan["units"], "price": plan["price"]}).encode()
        source = Consumed(None, self.topic, plan["partition"], plan["through_offset"], plan["_id"].encode(), summary)
        await self.p.dead_letter(source, "settlement_refused",
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
            self.committed.pop(partition, None)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        pass


# -- the service -------------------------------------------------------------------------------

async def run(settings: LedgerServiceSettings, stop: asyncio.Event, ledger: LedgerClient | None = None) -> None:
    """Anchor and settle until `stop` is set; `ledger` defaults to one connected from `settings`."""
    registry = SchemaRegistry.from_dir()
    codec = AvroCodec(registry)
    await kafka.provision(settings.kafka_bootstrap, [
        kafka.spec(topics.CLEAN, settings.clean_topic), kafka.spec(topics.ANCHORS, settings.anchors_topic),
        kafka.spec(topics.USAGE, settings.usage_topic), kafka.spec(topics.DEADLETTER, settings.deadletter_topic)])
    mongo = mongo_client(settings.mongo_url, tz_aware=True)
    own_ledger = ledger is None
    ledger = ledger or LedgerClient.connect(settings)
    try:
        async with kafka.producer(settings.kafka_bootstrap) as producer:
            await registry.publish(producer, ["Anchor", "DeadLetter"])
            plumbing = Plumbing(settings, ledger, LedgerStore(mongo[settings.mongo_db]), producer, codec, stop)
            await plumbing.retry("indexes", plumbing.store.ensure_indexes)
            caller = await plumbing.retry("who_am_i", ledger.who_am_i)
            log.info("ledger_connected", extra={"peer": settings.fabric_peer_endpoint, "account": caller["Account"]})
            async with asyncio.TaskGroup() as group:
                if settings.ledger_anchoring:
                    group.create_task(Anchorer(plumbing).run())
                if settings.ledger_settlement:
                    group.create_task(Settler(plumbing).run())
    except Stopped:
        log.info("stopped_while_waiting")
    finally:
        if own_ledger:
            await ledger.gateway.close()
        await mongo.close()


def main() -> None:
    serve("ledger", LedgerServiceSettings, lambda settings: Loop.of(lambda stop: run(settings, stop)))
