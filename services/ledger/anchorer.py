"""The anchoring loop: events.clean -> Merkle batches -> one AnchorBatch each -> ledger.anchors.

    anchorer = Anchorer(settings, consumer, Ports(ledger, store, producer, codec, retries, letters), operator)
    await anchorer.run(stop)

Per partition, records are batched by `Batcher` (anchoring.py); each closed batch is recorded
in MongoDB (plan, then one inclusion proof per record), anchored with one Fabric transaction,
and published as an Anchor. Up to `ledger_batches_in_flight` batches are on their way at once;
while all are, reading waits. The offsets committed never pass a batch not yet anchored, and
every record read is either in a batch or a dead letter (a tombstone, a record that is no
CleanEvent, a bad content hash): none is dropped.

A topic's anchors belong to the operator account that anchored its first batch (the contract
binds it, `GetTopic`); `operator` is the account this loop anchors as. A topic bound to another
operator stops the loop at once with `TopicOwned` (checked before reading, and when the
contract refuses a batch with FORBIDDEN "batch_id"): retrying cannot help.

Replicas share the topic's partitions as one consumer group. A batch is never cut twice:
  - a partition's plans are recorded in offset order, each only once the one before it is, and
    keyed by the offset the batch starts at, so the first plan recorded from an offset is the
    only batch anchored from there (`PlanTaken` for any other; store.py);
  - whoever reads a partition (after a restart, or taking it over from another replica) first
    plans again the batches recorded from its committed offset on (`_prepare`), and a batch of
    its own that loses to a plan recorded since (by a replica that lost the partition but was
    still cutting) is dropped, and the partition read again from its start (`_rewind`);
  - aiokafka revokes every partition at each rebalance (it has no cooperative protocol), and
    does so while this loop may be halfway through a fetch: `generation` counts revocations,
    and records or batches of an earlier generation are dropped, never added to the new state
    (the partitions are read again from their committed offsets). A batch already on its way
    lands: its plan is recorded, so the partition's next reader anchors the same (a replayed
    AnchorBatch is a no-op).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import (
    AIOKafkaConsumer,
    ConsumerRebalanceListener,
    TopicPartition,
)

from services.ledger.anchoring import AnchoringError, Batch, Batcher
from services.ledger.dead_letters import EMPTY_MESSAGE
from services.ledger.offsets import OffsetCommitter
from services.ledger.ports import Ports
from services.ledger.settings import LedgerServiceSettings
from services.ledger.store import PlanTaken
from streamledger import metrics
from streamledger.avro import CodecError
from streamledger.core.contract_errors import Forbidden
from streamledger.core.records import Consumed
from streamledger.fabric import EndorseError
from streamledger.lifecycle import StartError
from streamledger.logging import get_logger
from streamledger.retry import Stopped

log = get_logger("ledger")

ANCHORED = metrics.counter("ledger", "records_anchored", "Clean records anchored on the ledger")
BATCHES = metrics.counter("ledger", "batches_anchored", "Batches anchored (one Fabric transaction each)")
ANCHOR_SECONDS = metrics.seconds("ledger", "anchor", "From a batch closing to its anchor on the ledger")
IN_FLIGHT = metrics.gauge("ledger", "batches_in_flight", "Batches being anchored")
PLANS_TAKEN = metrics.counter("ledger", "plans_taken", "Batches dropped because another batch from the same "
                                                       "offset was recorded first (by another replica)")


class TopicOwned(StartError):
    """The topic to anchor is bound on the ledger to another operator account."""


@dataclass
class Flight:
    """A batch handed to the ledger; `done` once its Anchor is published."""

    batch: Batch
    closed_at: float
    generation: int
    """The anchorer's `generation` when the batch was cut."""
    previous: Flight | None = None
    """The partition's batch before it, if still on its way: its plan is recorded first."""
    recorded: bool = False
    """Its plan is the partition's plan from its first offset (not another's)."""
    planned: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once its plan is recorded, or cannot be (the next batch waits for it)."""
    done: bool = False


class Anchorer(ConsumerRebalanceListener):
    def __init__(self, settings: LedgerServiceSettings, consumer: AIOKafkaConsumer, ports: Ports,
                 operator: str) -> None:
        self.topic = settings.ledger_clean_topic
        self.operator = operator
        """The operator account this loop anchors as."""
        self.anchors_topic = settings.ledger_anchors_topic
        self.consumer = consumer
        self.ports = ports
        self.committer = OffsetCommitter(consumer, self.topic, ports.producer)
        self.batcher = Batcher(self.topic, settings.ledger_batch_records, settings.ledger_batch_seconds)
        self.slots = asyncio.Semaphore(settings.ledger_batches_in_flight)
        self.flights: dict[int, list[Flight]] = {}
        """Per partition, the batches handed to the ledger, in offset order."""
        self.consumed: dict[int, int] = {}
        """Per partition, the next offset to read."""
        self.prepared: set[int] = set()
        """Partitions whose recorded batches are planned again (see `_prepare`)."""
        self.generation = 0
        """Revocations so far: what was fetched or cut before one belongs to no partition held now."""
        self.rewinds: dict[int, Flight] = {}
        """Per partition, its batch whose plan lost to another's: read again from its start."""
        self.tasks: set[asyncio.Task] = set()
        self.failures: list[BaseException] = []
        """Why batches could not be anchored (retries spent, or refused): the loop stops with the first."""

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self._check_owner()
        except Stopped:
            return
        # Started before subscribing, so that start() returns at once rather than wait for the
        # first assignment: the loop below sees `stop` while the group is still forming.
        await self.consumer.start()
        self.consumer.subscribe([self.topic], listener=self)
        log.info("anchoring_started", extra={"topic": self.topic, "batch_records": self.batcher.max_records,
                                             "batch_seconds": self.batcher.max_seconds, "operator": self.operator})
        failed = True
        try:
            while not stop.is_set():
                self._rewind()
                polled = await self.consumer.getmany(timeout_ms=100, max_records=2000)
                generation, now = self.generation, time.monotonic()
                for tp, messages in polled.items():
                    if not await self._prepare(tp, messages[0].offset, generation):
                        continue  # moved back to re-read a recorded batch: these records come again
                    for message in messages:
                        if self.generation != generation:
                            break  # revoked meanwhile: the rest is read again by the partition's owner
                        await self._take(tp, message, now, generation)
                generation = self.generation
                for batch in self.batcher.due(time.monotonic()):
                    await self._launch(batch, generation)
                self._raise_failures()
                await self.committer.commit(self.safe_offsets())
            failed = False
        except Stopped:
            failed = False  # asked to stop while waiting for the ledger or MongoDB
        finally:
            await self._finish(failed)

    async def _check_owner(self) -> None:
        """Refuse to anchor a topic the ledger binds to another operator."""
        ledger = self.ports.ledger
        bound = await self.ports.retries.run("get_topic", lambda: ledger.get_topic(self.topic))
        if bound is not None and bound["owner"] != self.operator:
            raise self._owned(f"it was bound to {bound['owner']!r} in tx {bound['tx_id']}")

    def _owned(self, how: str) -> TopicOwned:
        return TopicOwned(f"topic {self.topic!r} is anchored on the ledger by another operator only ({how}); this "
                          f"service anchors as {self.operator!r}: anchor a topic of its own "
                          f"(STREAMLEDGER_LEDGER_CLEAN_TOPIC), or act as that operator's identity")

    async def _take(self, tp: TopicPartition, message: Any, now: float, generation: int) -> None:
        """Add one record to its partition's batch, or dead-letter it: every record is one or the other."""
        self.consumed[tp.partition] = message.offset + 1
        consumed = Consumed(tp, message.topic, message.partition, message.offset, message.key, message.value)
        if message.value is None:
            await self.ports.letters.send(consumed, EMPTY_MESSAGE, "CleanEvent: the record has no value (a tombstone)")
            return
        try:
            record = self.ports.codec.decode(message.value, reader="CleanEvent")
            batch = self.batcher.add(tp.partition, message.offset, record["event_id"], record["content_hash"], now,
                                     tenant=record["tenant"])
        except (CodecError, AnchoringError) as exc:
            await self.ports.letters.send(consumed, exc.reason, f"CleanEvent: {exc}")
            return
        if batch is not None:
            await self._launch(batch, generation)

    async def _prepare(self, tp: TopicPartition, offset: int, generation: int) -> bool:
        """Before a partition's first record: plan again the batches recorded from here on, so
        they close where they did before a restart or on the replica that held the partition
        before; False when the partition was moved back to re-read a recorded batch, or was
        revoked meanwhile. (Done here, not when the partition is assigned, because aiokafka
        fetches a new assignment while its assignment callback still runs.)"""
        if self.generation != generation:
            return False
        if tp.partition in self.prepared:
            return True
        store = self.ports.store
        plans = await self.ports.retries.run("plans", lambda: store.plans_from(self.topic, tp.partition, offset))
        if self.generation != generation:
            return False
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

    async def _launch(self, batch: Batch, generation: int) -> None:
        await self.slots.acquire()  # all slots busy (the ledger is slow or down): reading waits
        if self.generation != generation:  # cut from a partition revoked since: its owner cuts it
            self.slots.release()
            return
        flights = self.flights.setdefault(batch.partition, [])
        flight = Flight(batch, time.monotonic(), generation, previous=flights[-1] if flights else None)
        flights.append(flight)
        task = asyncio.create_task(self._anchor(flight), name=f"anchor {batch.batch_id}")
        self.tasks.add(task)
        task.add_done_callback(self._landed)
        IN_FLIGHT.set(len(self.tasks))

    async def _anchor(self, flight: Flight) -> None:
        batch = flight.batch
        try:
            previous, flight.previous = flight.previous, None  # no chain of every batch ever cut
            if previous is not None:
                await previous.planned.wait()  # plans are recorded in offset order
                if not previous.recorded:
                    return  # the batch before lost its plan: this one is cut again from there
            tree = batch.tree()
            root = tree.root.hex()
            proofs, tree_document = list(batch.proofs()), batch.tree_document()
            try:
                await self.ports.retries.run("plan", lambda: self.ports.store.record_plan(batch, root))
            except PlanTaken as taken:
                self._taken(flight, taken)
                return
            flight.recorded = True
            flight.planned.set()
            await self.ports.retries.run("proofs", lambda: self.ports.store.write_proofs(tree_document, proofs))
            try:
                committed = await self.ports.retries.run("anchor", lambda: self.ports.ledger.anchor_batch(
                    batch.batch_id, root, len(batch.records), batch.first_offset, batch.last_offset))
            except EndorseError as exc:
                refusal = exc.contract_error
                if isinstance(refusal, Forbidden) and refusal.field == "batch_id":
                    raise self._owned(f"the contract refused batch {batch.batch_id}: {refusal.detail}") from exc
                raise
            anchor = committed.json()
            block = committed.block_number
            if anchor["tx_id"] != committed.transaction_id:
                # A replay returns the anchor as first committed: the block is that transaction's.
                ledger = self.ports.ledger
                found = await self.ports.retries.run("block", lambda: ledger.transaction_block(anchor["tx_id"]))
                block = found["block_number"] if found else None
            record = {"batch_id": batch.batch_id, "merkle_root": root, "count": len(batch.records),
                      "topic": batch.topic, "partition": batch.partition, "first_offset": batch.first_offset,
                      "last_offset": batch.last_offset, "tx_id": anchor["tx_id"], "block": block,
                      "ts": time.time_ns() // 1_000_000}
            value = self.ports.codec.encode("Anchor", record)
            await self.ports.retries.run("publish", lambda: self.ports.producer.send_and_wait(
                self.anchors_topic, key=batch.batch_id.encode(), value=value))
            flight.done = True
            ANCHORED.inc(len(batch.records))
            BATCHES.inc()
            ANCHOR_SECONDS.observe(time.monotonic() - flight.closed_at)
            log.info("anchored", extra={"batch_id": batch.batch_id, "count": len(batch.records),
                                        "tx_id": anchor["tx_id"], "block": block})
        except Stopped:
            pass  # not anchored: the offsets stay before it, and a restart anchors it
        finally:
            flight.planned.set()
            self.slots.release()
            IN_FLIGHT.set(len(self.tasks) - 1)

    def _taken(self, flight: Flight, taken: PlanTaken) -> None:
        """Another replica recorded a different batch from this one's first offset: drop this
        one, and read the partition again from there (if still held), planning that batch."""
        PLANS_TAKEN.inc()
        held = flight.generation == self.generation
        log.warning("plan_taken", extra={"batch_id": flight.batch.batch_id, "recorded": taken.recorded["batch_id"],
                                         "partition": flight.batch.partition, "reread": held})
        if held:
            self.rewinds.setdefault(flight.batch.partition, flight)

    def _rewind(self) -> None:
        """Read again each partition whose batch lost its plan, from that batch's first offset:
        its batches from there on are dropped, and the plans recorded since are planned again."""
        for partition, flight in self.rewinds.items():
            if flight.generation != self.generation:
                continue  # revoked since: its state is gone already
            flights = self.flights.get(partition, [])
            if flight in flights:
                del flights[flights.index(flight):]
            self.batcher.forget(partition)
            self.prepared.discard(partition)
            self.consumed[partition] = flight.batch.first_offset
            tp = TopicPartition(self.topic, partition)
            if tp in self.consumer.assignment():  # else being reassigned: read from the commit anyway
                self.consumer.seek(tp, flight.batch.first_offset)
            log.info("reread", extra={"partition": partition, "from": flight.batch.first_offset})
        self.rewinds.clear()

    def _landed(self, task: asyncio.Task) -> None:
        # Kept here: a task leaves `tasks` as soon as it is done, before the loop could look at it.
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.failures.append(task.exception())

    def _raise_failures(self) -> None:
        """A batch that could not be anchored (retries spent, or refused) stops the service."""
        if self.failures:
            raise self.failures[0]

    def safe_offsets(self) -> dict[int, int]:
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

    async def _finish(self, failed: bool) -> None:
        """On stop: let the batches on their way land (bounded), commit, leave the group. On a
        failure the batches on their way are given up at once (a restart anchors them)."""
        try:
            if self.tasks:
                _, pending = await asyncio.wait(set(self.tasks), timeout=0 if failed else 30)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            await self.committer.commit(self.safe_offsets())
            if not failed:
                self._raise_failures()  # a batch that failed while stopping is reported all the same
        finally:
            await self.consumer.stop()

    # -- ConsumerRebalanceListener --
    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        """Every partition, at each rebalance (aiokafka's protocol is eager): what was read of
        them is dropped, and the partitions held after it are read again from their commits.
        Batches on their way land; the next reader of their partition replays the same plans."""
        self.generation += 1
        gone = {tp.partition for tp in revoked}
        for partition in gone:
            self.batcher.forget(partition)
            self.prepared.discard(partition)
            self.flights.pop(partition, None)
            self.consumed.pop(partition, None)
        self.committer.forget(gone)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("partitions_assigned", extra={"partitions": sorted(tp.partition for tp in assigned)})
