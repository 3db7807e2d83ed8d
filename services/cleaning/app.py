"""`streamledger serve cleaning`: events.raw -> events.clean | events.deadletter (faust-streaming).

Data path: faust consumes events.raw (raw bytes: our codec is Avro single-object, not
faust's), `Cleaner.handle` decodes, cleans, hashes and dedups each message, and the result
goes to events.clean, or to events.deadletter with the rule and reason. Duplicates are
dropped. faust commits a source offset only after flushing the producer, so every consumed
message reaches its output topic at least once; outputs are keyed by event_id, so a replay
after a crash changes nothing downstream. The dedup window is a faust Table whose
changelog topic restores it after a restart.
"""

from __future__ import annotations

import asyncio
import logging

import faust
from faust.types import TP

from services.cleaning.cleaner import Cleaner, Outcome, RawMessage
from services.cleaning.dedup import DedupWindow
from services.cleaning.settings import CleaningSettings
from streamledger import metrics
from streamledger.kafka import topics
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger import kafka
from streamledger.logging import configure_logging, get_logger

log = get_logger("cleaning")

MESSAGES = metrics.counter("cleaning", "messages", "Raw messages handled, by outcome", ("outcome",))
DEAD_LETTERS = metrics.counter("cleaning", "deadletters", "Messages dead-lettered, by reason", ("reason",))
HANDLE_SECONDS = metrics.seconds("cleaning", "handle", "Time to decode, clean, hash and encode one message")
LAG = metrics.gauge("cleaning", "consumer_lag", "Messages in events.raw not yet handled", ("partition",))
EXPIRED = metrics.counter("cleaning", "dedup_expired", "Dedup entries forgotten after their window")

EXPIRE_EVERY = 10_000  # messages between sweeps of the dedup window
LAG_EVERY = 500  # messages between lag updates


async def prepare(settings: CleaningSettings, registry: SchemaRegistry) -> int:
    """Create the topics and exchange schemas through `_schemas` before faust starts.

    Returns the raw topic's partition count: the dedup table's changelog must match it,
    and the topic may have been created by ingestion with its own count.
    """
    await kafka.provision(settings.kafka_bootstrap, [
        kafka.spec(topics.SCHEMAS),
        kafka.spec(topics.RAW, settings.raw_topic, partitions=settings.cleaning_partitions),
        kafka.spec(topics.CLEAN, settings.clean_topic, partitions=settings.cleaning_partitions),
        kafka.spec(topics.DEADLETTER, settings.deadletter_topic, partitions=settings.cleaning_partitions),
    ])
    # Publish first: it also waits for the topic's metadata, which reading it needs.
    async with kafka.producer(settings.kafka_bootstrap) as producer:
        await registry.publish(producer, ["CleanEvent", "DeadLetter"])
    learned = await registry.load_from_topic(settings.kafka_bootstrap)
    log.info("schemas_ready", extra={"learned_from_topic": learned})
    return len(await kafka.partitions_of(settings.kafka_bootstrap, [settings.raw_topic]))


def build_app(settings: CleaningSettings, registry: SchemaRegistry, partitions: int) -> faust.App:
    settings.cleaning_data_dir.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
    app = faust.App(
        settings.cleaning_group,
        broker=f"kafka://{settings.kafka_bootstrap}",
        datadir=str(settings.cleaning_data_dir / settings.cleaning_group),
        store="memory://",  # the changelog topic is the durable copy of the dedup table
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=partitions,
        topic_replication_factor=1,
        producer_acks=-1,
        producer_compression_type="lz4",
        broker_commit_interval=settings.commit_interval_seconds,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
    )
    raw_topic = app.topic(settings.raw_topic, key_type=bytes, value_type=bytes)
    output = {
        "clean": app.topic(settings.clean_topic, key_type=bytes, value_type=bytes),
        "deadletter": app.topic(settings.deadletter_topic, key_type=bytes, value_type=bytes),
    }
    seen = app.Table(
        "dedup",
        partitions=partitions,
        schema=faust.Schema(key_type=str, key_serializer="json", value_serializer="json"),
    )
    window = DedupWindow(seen, window_ms=int(settings.dedup_window_seconds * 1000))
    cleaner = Cleaner(AvroCodec(registry), settings.rule_book(), window, max_message_bytes=settings.max_message_bytes)

    @app.agent(raw_topic, name="clean")
    async def clean(stream: faust.StreamT) -> None:
        handled = 0
        async for event in stream.events():
            message = event.message
            raw = RawMessage(
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                key=message.key,
                value=message.value,
                timestamp_ms=round(message.timestamp * 1000),  # faust gives seconds as a float
            )
            outcome = _handle(cleaner, raw)
            if outcome.value is not None:
                await output[outcome.kind].send(key=outcome.key, value=outcome.value)
            handled += 1
            if handled % LAG_EVERY == 0:
                highwater = app.consumer.highwater(TP(message.topic, message.partition))
                if highwater is not None:
                    LAG.labels(str(message.partition)).set(max(highwater - message.offset - 1, 0))
            if handled % EXPIRE_EVERY == 0:
                # Inside the stream, so the table's tombstones go to this partition's changelog.
                EXPIRED.inc(window.expire(raw.timestamp_ms, partition=raw.partition))

    return app


def _handle(cleaner: Cleaner, raw: RawMessage) -> Outcome:
    with HANDLE_SECONDS.time():
        try:
            outcome = cleaner.handle(raw)
        except Exception as exc:  # a bug must not stop the stream: keep the message as a dead letter
            log.exception("handle_failed", extra={"partition": raw.partition, "offset": raw.offset})
            outcome = cleaner.dead_letter(raw, None, "internal_error", f"{type(exc).__name__}: {exc}")
    MESSAGES.labels(outcome.kind).inc()
    if outcome.kind == "deadletter":
        DEAD_LETTERS.labels(outcome.reason).inc()
        log.warning("dead_letter", extra={"reason": outcome.reason, "key": outcome.key.decode(errors="replace"),
                                          "partition": raw.partition, "offset": raw.offset})
    return outcome


def main() -> None:
    settings = CleaningSettings()
    configure_logging(settings.log_level)
    metrics.serve_metrics(settings.metrics_port)
    registry = SchemaRegistry.from_dir()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    partitions = loop.run_until_complete(prepare(settings, registry))
    app = build_app(settings, registry, partitions)
    log.info("starting", extra={"raw": settings.raw_topic, "group": settings.cleaning_group})
    # faust's Worker owns the loop from here and stops cleanly on SIGINT/SIGTERM.
    faust.Worker(app, loop=loop, loglevel=logging.getLevelName(logging.WARNING), quiet=True).execute_from_commandline()
