"""`streamledger serve learning`: River models learning online from events.clean.

    events.clean --> EventReader (a child process: fetch, decode) --> LearnerSet.handle_fetched (learners.py)
        Publisher (publisher.py) <-- dead letters, drifts; every N events or T seconds the
        snapshots, sealed in the loop and registered, published and committed in a background
        task while learning goes on; models.metrics at a fixed cadence

Replicas (`serve learning` started N times) share the models: each replica is a member of the
group `<learning group>-shards` and learns the models of the shards it is assigned (shards.py:
model m is in shard crc32(m) % shards; shard_group.py: the group). One replica alone holds them
all. When the group moves a shard, its old holder writes a final snapshot of each of its models
in the group's revoke callback, before the group assigns it anew, and the new holder resumes them
from it, so each event is learned once per model.

Models resume (at start, and when a shard arrives) from their newest verified snapshot
(`snapshot_topic.resume`: with a ledger, `STREAMLEDGER_LEARNING_LEDGER=true` by default, only from
snapshots the ledger vouches for, registered with exactly their hash by this service's identity,
`registry`, an operator, which registers every new one before publishing it) and the reader
starts each partition at the smallest offset those record. Without a ledger
(`STREAMLEDGER_LEARNING_LEDGER=false`) it warns at start, and
`streamledger_learning_snapshots_unverified` is 1: snapshots are then checked only against their
own record's hash. A dead reader stops the service
(`ChildDied`, exit 1), to be restarted from the last snapshot.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

from aiokafka import TopicPartition

from services.learning.learners import LearnerSet
from services.learning.ledger_seam import LedgerModelRegistry, ModelRegistry
from services.learning.publisher import Publisher
from services.learning.reader import EventReader, relaxed_gc
from services.learning.settings import LearningSettings
from services.learning.shard_group import ShardGroup
from services.learning.shards import ShardHolder, ShardMap
from services.learning.snapshot_topic import resume
from streamledger import kafka, metrics
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.core.models import DeclarationError
from streamledger.declarations import load_declarations
from streamledger.ledger import LedgerClient
from streamledger.lifecycle import Loop, StartError, serve
from streamledger.logging import get_logger
from streamledger.settings import LedgerSettings

log = get_logger("learning")
EVENTS = metrics.counter("learning", "events", "Input records consumed")
BATCH = metrics.seconds("learning", "batch", "Time to process one fetched batch")
UNVERIFIED = metrics.gauge("learning", "snapshots_unverified",
                           "1: no ledger vouches for snapshots (STREAMLEDGER_LEARNING_LEDGER=false)")
HELD = metrics.gauge("learning", "models_held", "Models this replica learns now (those of the shards the group gives it)")
IDENTITY = "registry"
"""The local ledger identity that registers snapshots (deploy/fabric/identities.yaml): an operator."""


class Learning(Loop):
    def __init__(self, settings: LearningSettings, ledger: LedgerSettings | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.ledger = ledger  # where the ledger is, when `learning_ledger` is on (default: LedgerSettings())
        self.resources = AsyncExitStack()
        self.publisher: Publisher | None = None
        self.reader: EventReader | None = None
        """Runs while this replica holds models; restarted when models arrive."""

    async def start(self) -> None:
        s, bootstrap, enter = self.settings, self.settings.kafka_bootstrap, self.resources.enter_async_context
        try:
            self.learners = LearnerSet(load_declarations(s.learning_models_file), holding=())
        except DeclarationError as exc:
            raise StartError(f"STREAMLEDGER_LEARNING_MODELS_FILE={s.learning_models_file}: {exc}") from None
        self.codec = AvroCodec(SchemaRegistry.from_dir())
        await kafka.provision(bootstrap, s.topic_specs())
        try:
            self.registry = await self._registry()
            producer = await enter(kafka.producer(bootstrap, max_request_size=kafka.topics.MAX_SNAPSHOT_BYTES))
            committer = await enter(kafka.consumer(bootstrap, group_id=s.learning_group_id))
            self.partitions = await kafka.partitions_of(bootstrap, s.learning_input_topics)
            committer.assign([TopicPartition(t, p) for t, p in self.partitions])
            committer.pause(*committer.assignment())  # never fetches: committing needs the assignment only
            shard_map = ShardMap(self.learners.declarations, len(await kafka.partitions_of(bootstrap, [s.shards_group])))
            self.group = ShardGroup(s, shard_map, self.learners, committer)
            self.publisher = Publisher(producer, committer, self.codec, s, self.learners, self.registry, self.group)
            self.holder = ShardHolder(shard_map, self.learners, self.publisher, load=self._resume)
            self.group.follow(self.holder)
            await enter(self.group)
            await self._first_assignment()
        except BaseException:
            await self.stop()
            raise
        log.info("learning_started", extra={"models": list(self.learners.models), "partitions": self.partitions,
                                            "shards": sorted(self.holder.held), "of_shards": shard_map.count})

    async def _first_assignment(self) -> None:
        """Wait until the group assigned this replica its shards (maybe none), and take them up."""
        s = self.settings
        wait_s = s.learning_rebalance_timeout_seconds + s.learning_session_timeout_seconds + 30
        try:
            async with asyncio.timeout(wait_s):
                while not self.holder.assigned_once:
                    await self.group.poll(timeout_ms=200)
        except TimeoutError:
            raise StartError(f"the group {s.shards_group} assigned no shards within {wait_s:.0f} s") from None
        async with self.holder.lock:
            await self._take_up()

    async def _resume(self, model_ids: list[str]) -> None:
        s = self.settings
        await resume(self.learners, s.kafka_bootstrap, s.learning_snapshot_topic, self.codec, self.registry, model_ids)

    async def _take_up(self) -> None:
        """Hold the models of the shards assigned now; the reader restarts from the offsets arriving
        models need, and stops when no model is left (an idle replica fetches nothing)."""
        arrived = await self.holder.take_up()
        HELD.set(len(self.learners.models))
        if arrived or (self.reader is not None and not self.learners.models):
            if self.reader is not None:
                reader, self.reader = self.reader, None
                await reader.__aexit__(None, None, None)
            if self.learners.models:
                s = self.settings
                self.reader = await EventReader(s.kafka_bootstrap, self.learners.start_offsets(self.partitions),
                                                s.learning_fetch_max_records, self.codec, s.log_level).__aenter__()

    async def _registry(self) -> ModelRegistry | None:
        if not self.settings.learning_ledger:
            UNVERIFIED.set(1)
            log.warning("snapshots_unverified", extra={
                "why": "STREAMLEDGER_LEARNING_LEDGER is false: no ledger registers or vouches for snapshots",
                "risk": "a snapshot rewritten with its own hash on the snapshots topic would be loaded at restart"})
            return None
        UNVERIFIED.set(0)
        settings = self.ledger or LedgerSettings()
        ledger = await self.resources.enter_async_context(LedgerClient.connect(settings, service_identity=IDENTITY))
        me = await ledger.require_role("operator")  # registering models; MissingRole: the service cannot start
        log.info("ledger_connected", extra={"peer": settings.peer_endpoint(), "identity": ledger.identity,
                                            "account": me["Account"]})
        return LedgerModelRegistry(ledger, registrant=me["Account"])

    async def run(self, stopping: asyncio.Event) -> None:
        """Learn until `stopping` is set, then write a last snapshot of every model that moved."""
        s, learners, publisher, holder = self.settings, self.learners, self.publisher, self.holder
        next_metrics = time.monotonic() + s.learning_metrics_every_seconds
        with relaxed_gc():
            while not stopping.is_set():
                # No records come (nobody writes the shards topic): it keeps this replica in the group, waits
                # out a rebalance, and is where an idle replica waits.
                await self.group.poll(timeout_ms=0 if self.reader is not None else 200)
                async with holder.lock:  # a hand-over waits for the batch in hand
                    await self._take_up()
                    batch = await self.reader.next(timeout=0.2) if self.reader is not None else None
                    if batch:
                        with BATCH.time():
                            await publisher.publish(learners.handle_fetched([batch]))
                        EVENTS.inc(len(batch))
                    # Sealed here, at exactly the offsets learned; registered, published, committed meanwhile.
                    await publisher.write_in_background(learners.due_snapshots(s.learning_snapshot_every_events,
                                                                               s.learning_snapshot_every_seconds))
                    if time.monotonic() >= next_metrics:
                        next_metrics = time.monotonic() + s.learning_metrics_every_seconds
                        await publisher.publish(learners.metrics_records())
                        await self.group.commit_slowest()
                await asyncio.sleep(0)  # a batch waiting already is taken without a pause: let the writes run
        async with holder.lock:
            await publisher.finish_writing()
            await publisher.write_snapshots(learners.due_snapshots(every_events=1, every_seconds=0))

    async def stop(self) -> None:
        if self.publisher is not None:
            await self.publisher.close()  # snapshots still in flight after an error: dropped
        if self.reader is not None:
            reader, self.reader = self.reader, None
            await reader.__aexit__(None, None, None)
        await self.resources.aclose()  # leaves the group: the other replicas take its shards over
        log.info("learning_stopped", extra={"positions": {m: t.online.learned for m, t in self.learners.models.items()}})


def main() -> None:
    serve("learning", LearningSettings, Learning)
