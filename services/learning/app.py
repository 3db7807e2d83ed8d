"""`streamledger serve learning`: River models learning online from events.clean.

    events.clean --> reader process: fetch, decode --pipe--> LearnerSet.handle_batch (predict, metrics, learn)
                                                                 |--> dead letters, drifts
                                                                 |  every N events or T seconds
                                                                 +--> models.snapshots (then commit offsets)
                                                                 +--> models.metrics (fixed cadence)

Fetching and decoding run in a child process (`reader.py`), so River gets this process's
core to itself; the two balance the decoding between them.

At start the latest verified snapshot of each model is loaded from the compacted
snapshots topic and every input partition is sought to the offsets it records
(see `learners.py` for the ordering semantics and the exactly-once argument).

With `STREAMLEDGER_LEARNING_LEDGER=true`, `serve` connects a `LedgerClient` and every
snapshot is registered on the ledger; at start only registered snapshots are resumed
(see `ledger_seam.py`).
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from streamledger import metrics
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger import kafka
from streamledger.kafka import topics
from streamledger.lifecycle import run_until_signalled
from streamledger.logging import configure_logging, get_logger
from streamledger.core.models import DeclarationError, load_declarations
from services.learning.learners import Consumed, LearnerSet, Output, TrackedModel
from services.learning.reader import EventReader, ReaderFailed, relaxed_gc
from services.learning.ledger_seam import LedgerModelRegistry, ModelRegistry
from services.learning.settings import LearningSettings
from services.learning.snapshot_topic import read_snapshots
from streamledger.ledger import LedgerClient
from streamledger.settings import LedgerSettings

log = get_logger("learning")
EVENTS = metrics.counter("learning", "events", "Input records consumed")
DEAD_LETTERS = metrics.counter("learning", "deadletters", "Records sent to the dead letters", ("reason",))
SNAPSHOTS = metrics.counter("learning", "snapshots", "Model snapshots written", ("model_id",))
REFUSED = metrics.counter("learning", "snapshots_refused", "Snapshots refused at start-up", ("reason",))
DRIFTS = metrics.counter("learning", "drifts", "Concept drifts detected", ("model_id",))
BATCH = metrics.seconds("learning", "batch", "Time to process one fetched batch")


async def serve(settings: LearningSettings, ledger_settings: LedgerSettings, stop: asyncio.Event) -> None:
    """`run`, registering snapshots on the ledger when `learning_ledger` is set."""
    if not settings.learning_ledger:
        await run(settings, stop)
        return
    async with LedgerClient.connect(ledger_settings) as ledger:
        log.info("ledger_connected", extra={"peer": ledger_settings.fabric_peer_endpoint,
                                            "user": ledger_settings.fabric_user})
        await run(settings, stop, LedgerModelRegistry(ledger))


async def run(settings: LearningSettings, stop: asyncio.Event, registry: ModelRegistry | None = None) -> None:
    """Learn until `stop` is set, then write a last snapshot of every model that moved."""
    learners = LearnerSet(load_declarations(settings.learning_models_file))
    codec = AvroCodec(SchemaRegistry.from_dir())
    bootstrap = settings.kafka_bootstrap
    out_topics = {"DeadLetter": settings.learning_deadletter_topic, "ModelMetrics": settings.learning_metrics_topic,
                  "ModelSnapshot": settings.learning_snapshot_topic}
    await kafka.provision(bootstrap, [*(kafka.spec(topics.CLEAN, name) for name in settings.learning_input_topics),
                                      kafka.spec(topics.MODEL_METRICS, settings.learning_metrics_topic),
                                      kafka.spec(topics.DEADLETTER, settings.learning_deadletter_topic),
                                      kafka.spec(topics.SNAPSHOTS, settings.learning_snapshot_topic)])
    await resume(learners, bootstrap, settings.learning_snapshot_topic, codec, registry)
    if registry is None:
        log.warning("ledger_registration_disabled", extra={"why": "STREAMLEDGER_LEARNING_LEDGER is false; see ledger_seam.py"})

    # Fetching and decoding happen in the reader process; this consumer only commits.
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=settings.learning_group_id,
                                enable_auto_commit=False)
    producer = kafka.producer(bootstrap, max_request_size=topics.MAX_SNAPSHOT_BYTES)

    async def publish(output: Output) -> asyncio.Future:
        value = codec.encode(output.record_name, output.record)
        key = output.key.encode() if output.key is not None else None
        if output.record_name == "DeadLetter":
            DEAD_LETTERS.labels(output.record["reason"]).inc()
        elif output.record.get("drift"):
            DRIFTS.labels(output.key).inc()
            log.info("drift_detected", extra={"model_id": output.key, **output.record["drift"]})
        return await producer.send(out_topics[output.record_name], value=value, key=key)

    async def write_snapshot(tracked: TrackedModel) -> None:
        snapshot = learners.snapshot(tracked)
        await producer.flush()  # dead letters and drifts it moved past are durable first
        try:
            await (await publish(snapshot))
        except KafkaError as exc:
            learners.snapshot_failed(tracked, settings.learning_snapshot_every_seconds)
            log.error("snapshot_failed", extra={"model_id": tracked.model_id, "error": repr(exc)})
            return
        learners.snapshot_written(tracked, snapshot.record)
        SNAPSHOTS.labels(tracked.model_id).inc()
        log.info("snapshot_written", extra={k: snapshot.record[k] for k in ("model_id", "version", "sha256", "events_seen")})
        if registry is not None:
            await registry.register(tracked.model_id, snapshot.record["version"], snapshot.record["sha256"])

    async def learn(reader: EventReader) -> None:
        next_metrics = time.monotonic() + settings.learning_metrics_every_seconds
        while not stop.is_set():
            batch = await reader.next(timeout=0.2)
            if batch:
                with BATCH.time():
                    for output in learners.handle_batch(batch):
                        await publish(output)
                    EVENTS.inc(len(batch))
            due = learners.due_snapshots(settings.learning_snapshot_every_events, settings.learning_snapshot_every_seconds)
            for tracked in due:
                await write_snapshot(tracked)
            if due:
                await commit(consumer, learners)
            if time.monotonic() >= next_metrics:
                next_metrics = time.monotonic() + settings.learning_metrics_every_seconds
                for output in learners.metrics_records():
                    await publish(output)

    async with producer:
        await consumer.start()
        try:
            partitions = await kafka.partitions_of(bootstrap, settings.learning_input_topics)
            assigned = [TopicPartition(t, p) for t, p in partitions]
            consumer.assign(assigned)
            consumer.pause(*assigned)  # never fetches: committing needs the assignment, nothing more
            start = learners.start_offsets(partitions)
            async with EventReader(bootstrap, start, settings.learning_fetch_max_records, codec,
                                   settings.log_level) as reader:
                log.info("learning_started", extra={"models": list(learners.models), "partitions": partitions})
                with relaxed_gc():
                    await learn(reader)
            for tracked in learners.due_snapshots(every_events=1, every_seconds=0):
                await write_snapshot(tracked)
            await commit(consumer, learners)
        finally:
            await consumer.stop()
    log.info("learning_stopped", extra={"positions": {m: t.online.learned for m, t in learners.models.items()}})


async def resume(learners: LearnerSet, bootstrap: str, topic: str, codec: AvroCodec,
                 registry: ModelRegistry | None) -> None:
    """Load each model's newest snapshot that verifies; log every refused one."""
    found, undecodable = await read_snapshots(bootstrap, topic, codec)
    for error in undecodable:
        REFUSED.labels(error.reason).inc()
        log.error("snapshot_refused", extra={"reason": error.reason, "error": str(error)})
    for model_id in learners.models:
        candidates = found.get(model_id, [])
        if registry is not None:
            registered = [s for s in candidates if await registry.is_registered(model_id, s["version"], s["sha256"])]
            for s in candidates:
                if s not in registered:
                    REFUSED.labels("not_registered").inc()
                    log.error("snapshot_refused", extra={"model_id": model_id, "version": s["version"],
                                                         "reason": "not_registered"})
            candidates = registered
        version, refusals = learners.resume(model_id, candidates)
        if registry is not None:
            # New snapshots are numbered above every registered version (its hash can never change)
            # and every refused one (a reader may have loaded it: the next version must supersede it).
            tracked = learners.models[model_id]
            tracked.version = max(tracked.version, await registry.latest_version(model_id),
                                  *(s["version"] for s in found.get(model_id, [])))
        for refusal in refusals:
            reason = getattr(refusal.error, "reason", "declaration_changed")
            REFUSED.labels(reason).inc()
            log.error("snapshot_refused", extra={"model_id": model_id, "version": refusal.version,
                                                 "reason": reason, "error": str(refusal.error)})
        tracked = learners.models[model_id]
        log.info("model_resumed" if version is not None else "model_fresh",
                 extra={"model_id": model_id, "version": version, "events_seen": tracked.online.learned,
                        "offsets": {f"{t}/{p}": o for (t, p), o in tracked.offsets.items()}})


async def commit(consumer: AIOKafkaConsumer, learners: LearnerSet) -> None:
    """Commit what every model's snapshot reflects, so the group's lag shows the learner's real position."""
    offsets = {TopicPartition(t, p): o for (t, p), o in learners.committed_offsets().items()}
    if offsets:
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:  # only monitoring depends on it: the snapshots hold the truth
            log.warning("commit_failed", extra={"error": repr(exc)})


def main() -> None:
    settings = LearningSettings()
    configure_logging(settings.log_level)
    try:
        load_declarations(settings.learning_models_file)  # fail fast, with the key at fault
    except DeclarationError as exc:
        log.error("bad_model_declarations", extra={"file": str(settings.learning_models_file), "error": str(exc)})
        raise SystemExit(2) from None
    metrics.serve_metrics(settings.metrics_port)

    try:
        run_until_signalled(lambda stop: serve(settings, LedgerSettings(), stop))
    except ReaderFailed as exc:  # its input is gone: stop, to be restarted from the last snapshot
        log.error("learning_failed", extra={"error": str(exc)})
        raise SystemExit(1) from None
