"""`streamledger serve storage`: events.clean, predictions, ledger.anchors, models.snapshots
and events.deadletter -> MongoDB, idempotent by key.

Data path, one batch at a time: poll up to `storage_batch_size` messages; `plan_batch`
decodes them into one upsert per `_id` (undecodable ones become dead letters); the
sink bulk-writes each collection unordered; refused documents become dead letters; only
then are the offsets committed. While MongoDB is down the write is retried with bounded
backoff and nothing more is polled, so Kafka holds the backlog (back-pressure) and the
sink's memory stays at one batch.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError, IllegalStateError
from pymongo import AsyncMongoClient

from streamledger import metrics
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger import kafka
from streamledger.kafka import topics
from streamledger.lifecycle import Loop, serve
from streamledger.logging import get_logger
from services.storage import documents
from streamledger.retry import RetryPolicy, Stopped, retry
from services.storage.documents import plan_batch
from streamledger.core.records import Consumed, dead_letter
from services.storage.settings import StorageSettings
from services.storage.sink import MongoSink, is_transient

log = get_logger("storage")

WRITTEN = metrics.counter("storage", "documents", "Documents upserted, by collection", ("collection",))
DEAD_LETTERS = metrics.counter("storage", "deadletters", "Messages dead-lettered by the sink, by reason", ("reason",))
RETRIES = metrics.counter("storage", "write_retries", "Bulk writes retried because MongoDB was unavailable")
WRITE_SECONDS = metrics.seconds("storage", "write", "Time to write one batch, retries included")
LAG = metrics.gauge("storage", "consumer_lag", "Messages not yet stored", ("topic", "partition"))


def routes(settings: StorageSettings) -> dict[str, documents.Route]:
    return {
        settings.clean_topic: documents.EVENTS,
        settings.predictions_topic: documents.PREDICTIONS,
        settings.anchors_topic: documents.ANCHORS,
        settings.snapshots_topic: documents.MODELS,
        settings.deadletter_topic: documents.DEAD_LETTERS,
    }


async def run(settings: StorageSettings, stop: asyncio.Event) -> None:
    by_topic = routes(settings)
    codec = AvroCodec(SchemaRegistry.from_dir())
    policy = RetryPolicy(settings.retry_attempts, settings.backoff_initial_seconds, settings.backoff_max_seconds, jitter=0.2)
    await kafka.provision(settings.kafka_bootstrap, [kafka.spec(role, name) for name, role in (
        (settings.clean_topic, topics.CLEAN), (settings.predictions_topic, topics.PREDICTIONS),
        (settings.anchors_topic, topics.ANCHORS), (settings.snapshots_topic, topics.SNAPSHOTS),
        (settings.deadletter_topic, topics.DEADLETTER))])
    consumer = AIOKafkaConsumer(
        *by_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.storage_group,
        enable_auto_commit=False,  # committed by hand, after MongoDB acknowledged
        auto_offset_reset="earliest",
        max_poll_records=settings.storage_batch_size,
        max_poll_interval_ms=settings.max_poll_interval_ms,
    )
    # A socket timeout turns a write that never answers into a retry instead of a hang.
    # tz_aware: documents read back compare equal to the decoded records (UTC datetimes).
    mongo = AsyncMongoClient(settings.mongo_url, tz_aware=True, serverSelectionTimeoutMS=2000, connectTimeoutMS=2000,
                             socketTimeoutMS=int(settings.mongo_write_timeout_seconds * 1000))
    sink = MongoSink(mongo[settings.mongo_db])

    def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
        RETRIES.inc()
        log.warning("mongo_unavailable", extra={"attempt": attempt, "retry_in_s": round(delay, 2), "error": str(exc)})

    async with kafka.producer(settings.kafka_bootstrap) as producer:
        await consumer.start()
        try:
            await retry(sink.ensure_indexes, policy, is_transient=is_transient, stop=stop, on_retry=on_retry)
            log.info("started", extra={"topics": sorted(by_topic), "group": settings.storage_group})
            while not stop.is_set():
                polled = await consumer.getmany(
                    timeout_ms=settings.storage_batch_wait_ms, max_records=settings.storage_batch_size
                )
                if not polled:
                    continue
                batch = [
                    Consumed(tp, m.topic, m.partition, m.offset, m.key, m.value)
                    for tp, messages in polled.items()
                    for m in messages
                ]
                plan = plan_batch(batch, codec, by_topic, now_ms=_now_ms())
                with WRITE_SECONDS.time():
                    rejected = await retry(lambda: sink.write(plan), policy, is_transient=is_transient, stop=stop,
                                           on_retry=on_retry)
                for collection, writes in plan.writes.items():
                    WRITTEN.labels(collection).inc(len(writes) - sum(r.collection == collection for r in rejected))
                letters = plan.dead_letters + [
                    dead_letter(r.source, "rejected_by_mongo", r.error, _now_ms(), service=documents.SERVICE) for r in rejected
                ]
                await _send_dead_letters(producer, codec, settings.deadletter_topic, letters)
                await _commit(consumer, plan.commit_offsets)
                _update_lag(consumer, plan.commit_offsets)
        except Stopped:
            log.info("stopped_while_waiting_for_mongo")
        finally:
            await consumer.stop()
            await mongo.close()


async def _send_dead_letters(producer, codec: AvroCodec, topic: str, letters: list[dict]) -> None:
    for letter in letters:
        DEAD_LETTERS.labels(letter["reason"]).inc()
        log.warning("dead_letter", extra={k: letter[k] for k in ("reason", "error", "source_topic", "source_offset")})
        if letter["source_topic"] == topic:
            # A dead letter that cannot be stored is not re-sent to its own topic (that would
            # loop); it stays in Kafka at the logged offset.
            continue
        await producer.send(topic, key=(letter["key"] or "").encode(), value=codec.encode("DeadLetter", letter))
    if letters:
        await producer.flush()  # dead letters durable before the offsets move past their source


async def _commit(consumer: AIOKafkaConsumer, offsets: dict) -> None:
    try:
        await consumer.commit(offsets)
    except (CommitFailedError, IllegalStateError) as exc:
        # The group moved our partitions (e.g. during a long MongoDB outage): whoever owns
        # them now re-reads from the last commit, and the upserts make that harmless.
        log.warning("commit_skipped", extra={"error": str(exc)})


def _update_lag(consumer: AIOKafkaConsumer, offsets: dict) -> None:
    for tp, next_offset in offsets.items():
        highwater = consumer.highwater(tp)
        if highwater is not None:
            LAG.labels(tp.topic, str(tp.partition)).set(max(highwater - next_offset, 0))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def main() -> None:
    serve("storage", StorageSettings, lambda settings: Loop.of(lambda stop: run(settings, stop)))

