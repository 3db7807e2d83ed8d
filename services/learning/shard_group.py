"""The replicas' consumer group on the shards topic (the Kafka side of shards.py).

    async with ShardGroup(settings, shard_map, learners, committer) as group:
        group.follow(holder)                # the group's callbacks hand shards over / assign them
        await group.poll(timeout_ms=200)    # membership (no records come); waits out a rebalance
        await group.fence(["trump-linreg"]) # False: this replica no longer holds the model's shard
        await group.commit_slowest()        # the lag display: the slowest model's position

Nobody writes the shards topic: its partitions are the shards, and the group's commits on them
carry positions, not offsets. After each snapshot write a replica commits, on each shard it holds,
offset 0 with the shard's position as metadata (`encode_positions`: per input partition, the offset
all of its models' durable snapshots reflect). The broker accepts a commit only from a current member
of the group, so the same commit made before a write is the fence that keeps a replica which lost
its shards from writing their snapshots. The holder of shard 0 reads every shard's position back at
the metrics cadence and commits the slowest, on the input topic, under `learning_group_id` (by hand,
as one learner did before: nothing consumes in that group), so its lag is the slowest model's,
whichever replica holds it.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from services.learning.learners import LearnerSet
from services.learning.settings import LearningSettings
from services.learning.shards import (
    ShardHolder,
    ShardMap,
    decode_positions,
    encode_positions,
    slowest,
)
from streamledger import kafka
from streamledger.logging import get_logger

log = get_logger("learning")
MAX_METADATA = 4000
"""Below the broker's `offset.metadata.max.bytes` (4096 by default)."""


class ShardGroup:
    """This replica's membership of the shards group, and the commits made through it."""

    def __init__(self, settings: LearningSettings, shard_map: ShardMap, learners: LearnerSet,
                 committer: AIOKafkaConsumer) -> None:
        s = settings
        self.topic = self.group = s.shards_group
        self.bootstrap = s.kafka_bootstrap
        self.shard_map = shard_map
        self.learners = learners
        self.committer = committer
        """A group-less consumer assigned the input partitions: commits the slowest position."""
        self.member = kafka.consumer(
            s.kafka_bootstrap, group_id=self.group,
            session_timeout_ms=int(s.learning_session_timeout_seconds * 1000),
            heartbeat_interval_ms=max(100, int(s.learning_session_timeout_seconds * 1000 / 10)),
            rebalance_timeout_ms=int(s.learning_rebalance_timeout_seconds * 1000))
        self.holder: ShardHolder | None = None
        self.resources = AsyncExitStack()

    def follow(self, holder: ShardHolder) -> None:
        """Subscribe, `holder` taking each assignment (call before entering)."""
        self.holder = holder
        self.member.subscribe([self.topic], listener=_Callbacks(holder))

    async def __aenter__(self) -> ShardGroup:
        try:
            self.admin = await self.resources.enter_async_context(kafka.admin(self.bootstrap))
            await self.resources.enter_async_context(self.member)  # joins the group
        except BaseException:
            await self.resources.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.resources.aclose()  # leaves the group first: the others take its shards over

    async def poll(self, timeout_ms: int) -> None:
        """Show the group this replica is alive (aiokafka leaves the group after `max_poll_interval_ms`
        without one); during a rebalance this waits for the new assignment."""
        await self.member.getmany(timeout_ms=timeout_ms)

    async def fence(self, model_ids: list[str]) -> bool:
        """Whether the group still counts this replica a member holding the shards of `model_ids`:
        their positions committed (the broker refuses a member it no longer knows, or of an old generation)."""
        return await self._commit_positions({self.shard_map.shard_of(m) for m in model_ids})

    async def record(self) -> None:
        """Commit the position of every shard held (after snapshot writes)."""
        if self.holder is not None:
            await self._commit_positions(self.holder.held & self.shard_map.occupied())

    async def _commit_positions(self, shards: set[int]) -> bool:
        offsets = {}
        for shard in sorted(shards):
            metadata = encode_positions(self.learners.committed_offsets(self.shard_map.models_of({shard})))
            if len(metadata) > MAX_METADATA:  # too many input partitions to say: no position, still a fence
                metadata = ""
            offsets[TopicPartition(self.topic, shard)] = OffsetAndMetadata(0, metadata)
        try:
            return await kafka.commit(self.member, offsets)
        except KafkaError as exc:  # unsure whether the group still counts this replica: write nothing
            log.warning("shard_commit_failed", extra={"shards": sorted(shards), "error": repr(exc)})
            return False

    async def commit_slowest(self) -> None:
        """As the holder of shard 0: commit, per input partition, the slowest shard's position under
        the learning group (what every model's snapshot reflects), for the lag display."""
        if self.holder is None or 0 not in self.holder.held:
            return
        try:
            committed = await self.admin.list_consumer_group_offsets(self.group)
            positions = {tp.partition: decode_positions(om.metadata) for tp, om in committed.items()
                         if tp.topic == self.topic}
            offsets = slowest(positions, self.shard_map.occupied())
            await kafka.commit(self.committer, {TopicPartition(t, p): o for (t, p), o in offsets.items()})
        except KafkaError as exc:  # only monitoring depends on it: the snapshots hold the truth
            log.warning("commit_failed", extra={"error": repr(exc)})


class _Callbacks(ConsumerRebalanceListener):
    def __init__(self, holder: ShardHolder) -> None:
        self.holder = holder

    async def on_partitions_revoked(self, revoked) -> None:
        """The group waits for this: the leaving models' final snapshots are durable before anyone
        takes them up."""
        await self.holder.hand_over({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned) -> None:
        """Only noted: the run loop takes the shards up before its next batch."""
        self.holder.assign({tp.partition for tp in assigned})
