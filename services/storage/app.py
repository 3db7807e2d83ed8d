"""`streamledger serve storage`: events.clean, predictions, ledger.anchors, models.snapshots
and events.deadletter -> MongoDB, idempotent by key.

Data path, two stages that overlap: while one batch is being written, the next is polled
and decoded (`plan_batch`: one upsert per `_id`; undecodable messages become dead letters),
until it is full (`storage_batch_size` messages or `storage_batch_max_bytes`), or the write
is done and the batch's first message has waited `storage_batch_wait_seconds`; then it is
written.
Writing a batch: the sink bulk-writes each collection unordered; refused documents become
dead letters; only then are its offsets committed. Batches are written one at a time, in
poll order, so offsets are committed in order. While MongoDB is down the write is retried
(bounded by `storage_retry_attempts`, each retry counted) and, once the next batch is full,
nothing more is polled: Kafka holds the backlog (back-pressure) and the sink's memory stays
at two batches, the one being written and the next.
"""

from __future__ import annotations

import asyncio
import time

from pymongo import AsyncMongoClient

from services.storage import documents
from services.storage.documents import BatchPlan, plan_batch
from services.storage.metrics import DEAD_LETTERS, LAG, RETRIES, WRITE_SECONDS, WRITTEN
from services.storage.settings import StorageSettings
from services.storage.sink import MongoSink, is_transient
from streamledger import kafka
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.core.records import Consumed, dead_letter
from streamledger.kafka import topics
from streamledger.lifecycle import Loop, serve
from streamledger.logging import get_logger
from streamledger.retry import RetryPolicy, Stopped, retry

log = get_logger("storage")

FETCH_MAX_WAIT_MS = 100
"""How long the broker holds a fetch that finds no new message (aiokafka's default: 500 ms). The
five topics share a broker, and aiokafka sends that broker no fetch while one is pending: while
events.clean's fetched messages are still being stored, it fetches the four quiet topics alone,
and the next events.clean fetch waited for that one to come back empty (a 0.5 s stall)."""
POLL_RECORDS = 1000
"""Most messages per poll: aiokafka unpacks them on the event loop, where the write under way
runs too, so a batch is polled in parts, and decoded part by part in a thread."""
POLL_WHILE_WRITING_S = 0.01
"""Longest wait of one poll while a batch is being written, so the next write starts at most this
long after the previous one ended."""


class StorageService(Loop):
    def __init__(self, settings: StorageSettings) -> None:
        super().__init__()
        self.settings = s = settings
        self.topics = {  # topic -> (its role in the topic table, where its records go)
            s.storage_clean_topic: (topics.CLEAN, documents.EVENTS),
            s.storage_predictions_topic: (topics.PREDICTIONS, documents.PREDICTIONS),
            s.storage_anchors_topic: (topics.ANCHORS, documents.ANCHORS),
            s.storage_snapshots_topic: (topics.SNAPSHOTS, documents.MODELS),
            s.storage_deadletter_topic: (topics.DEADLETTER, documents.DEAD_LETTERS),
        }
        self.routes = {name: route for name, (_role, route) in self.topics.items()}
        self.codec = AvroCodec(SchemaRegistry.from_dir())
        self.policy = RetryPolicy(s.storage_retry_attempts, s.storage_backoff_initial_seconds,
                                  s.storage_backoff_max_seconds, jitter=0.2)

    async def start(self) -> None:
        s = self.settings
        await kafka.provision(s.kafka_bootstrap, [kafka.spec(role, name) for name, (role, _) in self.topics.items()])
        # A socket timeout turns a write that never answers into a retry instead of a hang.
        # tz_aware: documents read back compare equal to the decoded records (UTC datetimes).
        self.mongo = AsyncMongoClient(s.mongo_url, tz_aware=True, serverSelectionTimeoutMS=2000, connectTimeoutMS=2000,
                                      socketTimeoutMS=int(s.storage_mongo_write_timeout_seconds * 1000))
        self.sink = MongoSink(self.mongo[s.mongo_db])
        await self.retried(self.sink.ensure_indexes)  # the collections exist once the service has started
        self.producer = kafka.producer(s.kafka_bootstrap)
        await self.producer.start()
        self.inbox = kafka.consumer(s.kafka_bootstrap, *self.routes, group_id=s.storage_group,
                                    max_poll_records=s.storage_batch_size, fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
                                    max_poll_interval_ms=int(s.storage_max_poll_interval_seconds * 1000))
        await self.inbox.start()

    async def run(self, stopping: asyncio.Event) -> None:
        writing: asyncio.Task | None = None  # the batch being written, dead-lettered and committed
        try:
            while not stopping.is_set():
                plan = await self.poll(writing)
                if writing is not None:
                    await writing  # raises what made a write fail for good
                    writing = None
                if plan.message_count:
                    writing = asyncio.create_task(self.store(plan))
            if writing is not None:
                await writing
        except Stopped:
            log.info("stopped_while_waiting_for_mongo")
        finally:
            if writing is not None and not writing.done():  # run() itself cancelled
                writing.cancel()

    async def poll(self, writing: asyncio.Task | None) -> BatchPlan:
        """The next batch, decoded as it arrives. It is handed over when it is full, or once the
        batch before is written and its own first message has waited `storage_batch_wait_seconds`
        (at a low rate: a few large writes and commits rather than many small ones); an empty
        one after one poll with nothing to write."""
        size, max_bytes = self.settings.storage_batch_size, self.settings.storage_batch_max_bytes
        linger = self.settings.storage_batch_wait_seconds
        plan, first_at = BatchPlan(), None
        while True:
            busy = writing is not None and not writing.done()
            # During a write, short polls, so that its end is seen within one. (A poll raced
            # against the write and cancelled would be counted by aiokafka as never ending, and
            # the consumer would then never leave its group after `max_poll_interval`.)
            wait = POLL_WHILE_WRITING_S if busy else linger if first_at is None else first_at + linger - time.monotonic()
            polled = await self.inbox.getmany(timeout_ms=max(int(wait * 1000), 0),
                                              max_records=min(size - plan.message_count, POLL_RECORDS))
            batch = [Consumed(tp, m.topic, m.partition, m.offset, m.key, m.value, m.timestamp)
                     for tp, messages in polled.items() for m in messages]
            if batch:  # decoded in a thread, so that the write under way goes on meanwhile
                await asyncio.to_thread(self.plan, batch, plan)
            if first_at is None and batch:
                first_at = time.monotonic()
            if plan.message_count >= size or plan.byte_count >= max_bytes or self.stopping.is_set():
                return plan
            if not busy and (first_at is None or time.monotonic() - first_at >= linger):
                return plan

    def plan(self, batch: list[Consumed], plan: BatchPlan | None = None) -> BatchPlan:
        return plan_batch(batch, self.codec, self.routes, now_ms=_now_ms(), plan=plan)

    async def store(self, plan: BatchPlan) -> None:
        """Write one batch, then send its dead letters, then commit its offsets."""
        with WRITE_SECONDS.time():
            rejected = await self.retried(lambda: self.sink.write(plan))
        for collection, writes in plan.writes.items():
            WRITTEN.labels(collection).inc(len(writes) - sum(r.collection == collection for r in rejected))
        await self.send_dead_letters(plan.dead_letters + [
            dead_letter(r.source, "rejected_by_mongo", r.error, _now_ms(), service=documents.SERVICE) for r in rejected])
        await kafka.commit(self.inbox, plan.commit_offsets)  # only once MongoDB and Kafka acknowledged
        assigned = self.inbox.assignment()  # a partition revoked while the batch was written has no highwater here
        for tp, next_offset in plan.commit_offsets.items():
            if tp in assigned and (highwater := self.inbox.highwater(tp)) is not None:
                LAG.labels(tp.topic, str(tp.partition)).set(max(highwater - next_offset, 0))

    async def retried(self, write):
        """The one place MongoDB operations are retried: bounded by the policy, each retry counted."""
        def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
            RETRIES.inc()
            log.warning("mongo_unavailable", extra={"attempt": attempt, "retry_in_s": round(delay, 2), "error": str(exc)})

        return await retry(write, self.policy, is_transient=is_transient, stop=self.stopping, on_retry=on_retry)

    async def send_dead_letters(self, letters: list[dict]) -> None:
        topic = self.settings.storage_deadletter_topic
        for letter in letters:
            DEAD_LETTERS.labels(letter["reason"]).inc()
            log.warning("dead_letter", extra={k: letter[k] for k in ("reason", "error", "source_topic", "source_offset")})
            if letter["source_topic"] != topic:  # never re-sent to its own topic (a loop); it stays at the logged offset
                await self.producer.send(topic, key=(letter["key"] or "").encode(),
                                         value=self.codec.encode("DeadLetter", letter))
        if letters:
            await self.producer.flush()  # dead letters durable before the offsets move past their source

    async def stop(self) -> None:
        await self.inbox.stop()
        await self.producer.stop()
        await self.mongo.close()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def main() -> None:
    serve("storage", StorageSettings, StorageService)
