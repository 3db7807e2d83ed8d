"""Learning on several replicas: the models sharded over them, each on one replica at a time.

    shard_map = ShardMap(["phishing-logreg", "trump-linreg"], count=12)
    shard_map.shard_of("trump-linreg")          # crc32(model id) % 12
    holder = ShardHolder(shard_map, learners, publisher, load=resume_models)
    holder.assign({0, 3})                       # the group's assignment callback
    async with holder.lock:
        arriving = await holder.take_up()       # the run loop: resume the models of new shards
    await holder.hand_over({3})                 # the group's revoke callback: final snapshots, drop

The replicas are the members of one consumer group (`<learning group>-shards`) on a topic nobody
writes (`<learning group>-shards`, `learning_shards` partitions): shard k is its partition k, and
model m belongs to shard crc32(m) % the topic's partition count. A replica learns the models of
the shards the group assigns it; one replica alone gets them all. With more replicas than shards
holding models, the extra ones idle (no reader, no fetching).

Handing over. aiokafka rebalances eagerly: the group takes every shard from every member, waits
for each member's revoke callback to return (up to `learning_rebalance_timeout_seconds`), then
assigns them again (`kafka.assignor` gives members back what they had where balance allows).
`hand_over` (in that callback) waits for the batch in hand, writes a final snapshot of every
leaving model that moved, at exactly the offsets it learned (registered on the ledger first when
there is one), waits until it is durable, then drops the models. `take_up` (in the run loop,
once the assignment came: aiokafka starts the new generation while its callbacks may still run)
resumes the arriving models from their newest verified snapshot, which is the one just handed
over, and the app repositions the reader. So each event is learned once per model: the new owner
continues at exactly the offsets the old owner's final snapshot records.

A replica killed (-9) writes no final snapshot: after its session times out, its models resume
elsewhere from their last periodic snapshot, and the events after it are learned again by the new
owner only (what the dead replica learned since is lost with it). A replica that lost its shards
without noticing (paused longer than the session: a zombie) must not write them: before every
snapshot write the publisher commits the shards' positions through the group member, which the
broker accepts only from a current member (`ShardGroup.fence`); a refused fence drops the write.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Protocol

from services.learning.learners import LearnerSet, Partition, TrackedModel
from streamledger.logging import get_logger

log = get_logger("learning")


def shard_of(model_id: str, count: int) -> int:
    """The shard of `model_id` among `count`: stable across processes and Python versions (CRC-32)."""
    return zlib.crc32(model_id.encode()) % count


class ShardMap:
    """Which shard each declared model belongs to."""

    def __init__(self, model_ids: Iterable[str], count: int) -> None:
        if count < 1:
            raise ValueError(f"the shards topic must have at least one partition, got {count}")
        self.count = count
        self.shards = {model_id: shard_of(model_id, count) for model_id in model_ids}

    def shard_of(self, model_id: str) -> int:
        return self.shards[model_id]

    def models_of(self, shards: Iterable[int]) -> list[str]:
        """The models of `shards`, in declaration order."""
        wanted = set(shards)
        return [m for m, shard in self.shards.items() if shard in wanted]

    def occupied(self) -> set[int]:
        """The shards that hold at least one model."""
        return set(self.shards.values())


# -- positions: what each shard's models reflect, for the lag display --------------------------


def encode_positions(offsets: Mapping[Partition, int]) -> str:
    """A shard's position (per input partition, the offset its models' snapshots all reflect), as the
    metadata of the group's commit on the shard's partition."""
    return json.dumps(sorted([t, p, o] for (t, p), o in offsets.items()), separators=(",", ":"))


def decode_positions(metadata: str | None) -> dict[Partition, int]:
    """`encode_positions` read back; nothing from metadata that is not ours."""
    try:
        return {(str(t), int(p)): int(o) for t, p, o in json.loads(metadata or "[]")}
    except (ValueError, TypeError):
        return {}


def slowest(positions: Mapping[int, Mapping[Partition, int]], shards: Iterable[int]) -> dict[Partition, int]:
    """Per input partition, the smallest position over `shards` (those holding models): what every
    model's snapshot reflects. A partition that one of them has no position for yet is left out.

    >>> slowest({0: {("c", 0): 5}, 3: {("c", 0): 9, ("c", 1): 2}}, [0, 3])
    {('c', 0): 5}
    """
    shards = list(shards)
    if not shards:
        return {}
    found = [positions.get(shard, {}) for shard in shards]
    common = set.intersection(*(set(p) for p in found))
    return {tp: min(p[tp] for p in found) for tp in sorted(common)}


# -- holding the models of the shards the group assigns ----------------------------------------


class SnapshotWriter(Protocol):
    """What hands a model's final snapshot over (the `Publisher`)."""

    async def finish_writing(self) -> None:
        """Wait for the snapshots being written in the background; raise what made them fail."""

    async def write_snapshots(self, due: list[TrackedModel]) -> None:
        """Seal and write each model's snapshot now (unless the group fenced this replica off)."""


class ShardHolder:
    """The models of the shards this replica holds, following the group's assignment."""

    def __init__(self, shard_map: ShardMap, learners: LearnerSet, writer: SnapshotWriter,
                 load: Callable[[list[str]], Awaitable[None]]) -> None:
        self.shard_map = shard_map
        self.learners = learners
        self.writer = writer
        self.load = load
        """Resumes models (just `hold`-en) from their newest verified snapshot."""
        self.lock = asyncio.Lock()
        """Held by the run loop while it handles a batch: a hand-over waits for the batch in hand."""
        self.assigned: set[int] = set()
        """The shards the group gives this replica now (set by the group's callbacks)."""
        self.held: set[int] = set()
        """The shards whose models are in memory."""
        self.failed: BaseException | None = None
        """What made a hand-over fail, raised by the run loop's next `take_up`."""
        self.assigned_once = False
        """The group assigned this replica its shards (maybe none) at least once."""

    def assign(self, shards: set[int]) -> None:
        """The group assigned `shards` (its callback): taken up by the run loop's next `take_up`."""
        self.assigned = set(shards)
        self.assigned_once = True

    async def hand_over(self, shards: set[int]) -> None:
        """The group takes `shards` away (its revoke callback, which the group waits for): final
        snapshots of their models, then they are dropped. Never raises: the group's callback would
        swallow it; a failure is raised by the run loop's next `take_up` instead."""
        self.assigned -= shards
        async with self.lock:
            try:
                await self._leave(shards)
            except Exception as exc:  # noqa: BLE001 - raised by the run loop, not lost in aiokafka's callback
                self.failed = exc

    async def take_up(self) -> list[str]:
        """Hold exactly the models of the shards assigned now (call with `lock` held): resume the
        arriving ones; returns them (the reader must reposition for them)."""
        if self.failed is not None:
            failed, self.failed = self.failed, None
            raise failed
        gone, new = self.held - self.assigned, self.assigned - self.held
        if gone:  # only if shards went without the revoke callback: hand them over the same way
            await self._leave(gone)
        if not new:
            return []
        arriving = self.learners.hold(self.shard_map.models_of(new))
        self.held |= new
        if arriving:
            await self.load(arriving)
        log.info("shards_taken_up", extra={"shards": sorted(new), "models": arriving, "held": sorted(self.held)})
        return arriving

    async def _leave(self, shards: set[int]) -> None:
        leaving = [m for m in self.shard_map.models_of(shards & self.held) if m in self.learners.models]
        self.held -= shards
        if not leaving:
            return
        try:
            await self.writer.finish_writing()
            moved = self.learners.due_snapshots(every_events=1, every_seconds=0)
            await self.writer.write_snapshots([m for m in moved if m.model_id in leaving])
        finally:
            positions = {m: self.learners.models[m].online.learned for m in leaving}
            self.learners.drop(leaving)
            log.info("models_handed_over", extra={"shards": sorted(shards), "learned": positions})
