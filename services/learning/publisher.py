"""Where the learner's outputs go: dead letters, metrics and snapshots to Kafka, snapshots to the
ledger's model registry (before Kafka), and the group's offsets committed once snapshots are durable.

    publisher = Publisher(producer, committer, codec, settings, learners, registry)
    await publisher.publish(learners.handle_fetched([batch]))
    await publisher.write_in_background(learners.due_snapshots(every_events, every_seconds))  # learning goes on
    await publisher.write_snapshots(learners.due_snapshots(every_events=1, every_seconds=0))  # at stop

A snapshot is sealed (pickled and hashed) at once, so it holds exactly the offsets its model has
learned; registering it on the ledger, publishing it after that and committing the offsets it
reflects wait for peers and brokers, so `write_in_background` does them in a task of their own
while the learner learns on, one such task at a time: when models are due again before it ended,
the learner waits for it, so the next snapshot of a model is sealed only after the previous one was
written or failed (versions follow one another) and at its cadence. A registration that fails is
raised by the next call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from services.learning.learners import LearnerSet, Output, TrackedModel
from services.learning.ledger_seam import ModelRegistry
from services.learning.settings import LearningSettings
from streamledger import kafka, metrics
from streamledger.avro import AvroCodec
from streamledger.logging import get_logger

log = get_logger("learning")
DEAD_LETTERS = metrics.counter("learning", "deadletters", "Records sent to the dead letters", ("reason",))
SNAPSHOTS = metrics.counter("learning", "snapshots", "Model snapshots written", ("model_id",))
DRIFTS = metrics.counter("learning", "drifts", "Concept drifts detected", ("model_id",))
FENCED = metrics.counter("learning", "snapshots_fenced",
                         "Snapshots not written: the group had given the model to another replica")


class ShardPositions(Protocol):
    """The replicas' group, as the publisher sees it (`shard_group.ShardGroup`)."""

    async def fence(self, model_ids: list[str]) -> bool:
        """Whether this replica still holds the shards of `model_ids` (the group says so)."""

    async def record(self) -> None:
        """Record what the held models' durable snapshots reflect."""


class Publisher:
    def __init__(self, producer: AIOKafkaProducer, committer: AIOKafkaConsumer | None, codec: AvroCodec,
                 settings: LearningSettings, learners: LearnerSet, registry: ModelRegistry | None,
                 shards: ShardPositions | None = None) -> None:
        self.producer = producer
        self.committer = committer
        """A consumer of the learner's group that never fetches: it commits what snapshots reflect
        (when no `shards` group records them instead)."""
        self.shards = shards
        """With replicas: the group that fences a snapshot write off once this replica lost the
        model, and records what the snapshots reflect."""
        self.codec = codec
        self.learners = learners
        self.registry = registry
        self.retry_seconds = settings.learning_snapshot_every_seconds
        self._writing: asyncio.Task | None = None
        """The background task writing sealed snapshots, if any."""
        self.topics = {"DeadLetter": settings.learning_deadletter_topic, "ModelMetrics": settings.learning_metrics_topic,
                       "ModelSnapshot": settings.learning_snapshot_topic}

    async def publish(self, outputs: Iterable[Output]) -> None:
        for output in outputs:
            await self._send(output)

    async def _send(self, output: Output) -> asyncio.Future:
        if output.record_name == "DeadLetter":
            DEAD_LETTERS.labels(output.record["reason"]).inc()
        elif output.record.get("drift"):
            DRIFTS.labels(output.key).inc()
            log.info("drift_detected", extra={"model_id": output.key, **output.record["drift"]})
        key = output.key.encode() if output.key is not None else None
        return await self.producer.send(self.topics[output.record_name], key=key,
                                        value=self.codec.encode(output.record_name, output.record))

    async def write_in_background(self, due: list[TrackedModel]) -> None:
        """Seal each due model's snapshot now, then register, publish and commit them in a background
        task while learning goes on. Waits for the previous task only when models are due again
        before it finished, so every snapshot is sealed at its cadence; raises what made the previous
        task fail (a registration the ledger refused)."""
        if self._writing is not None and (due or self._writing.done()):
            await self.finish_writing()
            now = self.learners.clock()
            due = [tracked for tracked in due if now >= tracked.retry_at]  # a failed write backs off
        if due:
            sealed = [(tracked, self.learners.snapshot(tracked)) for tracked in due]
            self._writing = asyncio.create_task(self._write_sealed(sealed), name="learning snapshots")

    async def finish_writing(self) -> None:
        """Wait for the snapshots being written in the background; raises what made them fail."""
        if self._writing is not None:
            writing, self._writing = self._writing, None
            await writing

    async def close(self) -> None:
        """Stop writing in the background (the service is stopping on an error: the snapshots in flight
        are dropped; the service resumes from the last written ones)."""
        if self._writing is not None:
            self._writing.cancel()
            await asyncio.gather(self._writing, return_exceptions=True)
            self._writing = None

    async def write_snapshots(self, due: list[TrackedModel]) -> None:
        """Write each due model's snapshot (registering it on the ledger first), then commit the offsets;
        after the snapshots being written in the background."""
        await self.finish_writing()
        await self._write_sealed([(tracked, self.learners.snapshot(tracked)) for tracked in due])

    async def _write_sealed(self, sealed: list[tuple[TrackedModel, Output]]) -> None:
        if sealed and self.shards is not None and not await self.shards.fence([t.model_id for t, _ in sealed]):
            # Another replica holds these models now (this one was out of the group): its lineage goes on.
            for tracked, _ in sealed:
                self.learners.snapshot_failed(tracked, self.retry_seconds)
            FENCED.inc(len(sealed))
            log.warning("snapshots_fenced", extra={"models": [t.model_id for t, _ in sealed],
                                                   "why": "the group gave their shards to another replica"})
            return
        for tracked, snapshot in sealed:
            await self._write_snapshot(tracked, snapshot)
        if sealed:
            await self._commit()

    async def _write_snapshot(self, tracked: TrackedModel, snapshot: Output) -> None:
        record = snapshot.record
        await self.producer.flush()  # dead letters and drifts it moved past are durable first
        if self.registry is not None:
            # Registered first, published after: whoever reads it on Kafka finds it on the ledger.
            # A registration that fails raises (the service stops and resumes from its last snapshot).
            await self.registry.register(tracked.model_id, record["version"], record["sha256"])
            self.learners.snapshot_registered(tracked, record)
        try:
            await (await self._send(snapshot))
        except KafkaError as exc:
            self.learners.snapshot_failed(tracked, self.retry_seconds)
            log.error("snapshot_failed", extra={"model_id": tracked.model_id, "error": repr(exc)})
            return
        self.learners.snapshot_written(tracked, record)
        SNAPSHOTS.labels(tracked.model_id).inc()
        log.info("snapshot_written", extra={k: record[k] for k in ("model_id", "version", "sha256", "events_seen")})

    async def _commit(self) -> None:
        """Commit what every model's snapshot reflects, so the group's lag shows the learner's real position
        (with replicas: record it per shard; `ShardGroup.commit_slowest` commits the slowest)."""
        if self.shards is not None:
            await self.shards.record()
            return
        offsets = {TopicPartition(t, p): o for (t, p), o in self.learners.committed_offsets().items()}
        try:
            await kafka.commit(self.committer, offsets)
        except KafkaError as exc:  # only monitoring depends on it: the snapshots hold the truth
            log.warning("commit_failed", extra={"error": repr(exc)})
