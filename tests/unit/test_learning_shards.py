"""Models sharded over learning replicas: the shard map, the positions behind the lag display,
hand-overs (final snapshots, then the models dropped) and take-ups (resumed), and the fence that
keeps a replica which lost its shards from writing their snapshots."""

from __future__ import annotations

import asyncio

import pytest

from services.learning import publisher as publisher_module
from services.learning.learners import LearnerSet, TrackedModel
from services.learning.publisher import Publisher
from services.learning.settings import LearningSettings
from services.learning.shards import (
    ShardHolder,
    ShardMap,
    decode_positions,
    encode_positions,
    shard_of,
    slowest,
)
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.core.models import parse_declaration
from streamledger.core.records import Consumed

codec = AvroCodec(SchemaRegistry.from_dir())
TOPIC = "events.clean"
MODELS = ["phishing-a", "phishing-b", "phishing-d", "trump-a"]  # shards 3, 1, 0, 0 of 4


def declare(model_id: str):
    return parse_declaration({"id": model_id, "task": "binary", "metrics": ["Accuracy"],
                              "pipeline": [{"class": "preprocessing.StandardScaler"},
                                           {"class": "linear_model.LogisticRegression"}]})


def learner_set(holding=None) -> LearnerSet:
    return LearnerSet([declare(m) for m in MODELS], holding=holding)


def learn(learners: LearnerSet, start: int, stop: int, events=None) -> list:
    records = [(Consumed((TOPIC, 0), TOPIC, 0, i, f"e{i}".encode(), b"raw"),
                (events or {}).get(i, {"event_id": f"e{i}", "tenant": "t", "source": "s",
                                       "features": {"x": float(i % 7)}, "label": i % 2 == 0}))
               for i in range(start, stop)]
    return learners.handle_batch(records)


# -- the shard map -----------------------------------------------------------------------------


def test_a_model_s_shard_is_its_crc32_modulo_the_shard_count_the_same_in_every_process():
    assert [shard_of(m, 4) for m in MODELS] == [3, 1, 0, 0]
    shard_map = ShardMap(MODELS, 4)
    assert shard_map.models_of({0, 3}) == ["phishing-a", "phishing-d", "trump-a"]  # declaration order
    assert shard_map.models_of({2}) == []
    assert shard_map.occupied() == {0, 1, 3}
    assert ShardMap(MODELS, 1).models_of({0}) == MODELS  # one shard: one replica learns everything
    with pytest.raises(ValueError, match="at least one partition"):
        ShardMap(MODELS, 0)


def test_positions_travel_as_commit_metadata_and_the_slowest_shard_sets_the_lag():
    positions = {(TOPIC, 0): 120, (TOPIC, 2): 7}
    assert decode_positions(encode_positions(positions)) == positions
    assert decode_positions("") == decode_positions(None) == decode_positions("not ours") == {}
    found = {0: {(TOPIC, 0): 120, (TOPIC, 1): 40}, 1: {(TOPIC, 0): 90, (TOPIC, 1): 55}, 3: {(TOPIC, 0): 300}}
    assert slowest(found, [0, 1]) == {(TOPIC, 0): 90, (TOPIC, 1): 40}
    # A shard that has no position for a partition yet (its models never snapshotted it) holds it back.
    assert slowest(found, [0, 1, 3]) == {(TOPIC, 0): 90}
    assert slowest(found, [0, 2]) == {}  # shard 2 never committed
    assert slowest(found, []) == {}


# -- which models a replica holds ----------------------------------------------------------------


def test_a_learner_set_holds_and_drops_models_and_learns_only_those_it_holds():
    learners = learner_set(holding=())
    assert learners.models == {} and learn(learners, 0, 10) == []
    assert learners.hold(["trump-a", "phishing-a"]) == ["phishing-a", "trump-a"]  # declaration order
    assert learners.hold(["phishing-a"]) == []  # already held: kept as it is
    learn(learners, 0, 10)
    assert {m: t.online.learned for m, t in learners.models.items()} == {"phishing-a": 10, "trump-a": 10}
    learners.drop(["phishing-a"])
    assert list(learners.models) == ["trump-a"]
    assert learners.start_offsets([(TOPIC, 0)]) == {(TOPIC, 0): 10}
    with pytest.raises(KeyError, match="no declared model nope"):
        learners.hold(["nope"])


def test_an_undecodable_record_is_dead_lettered_only_by_the_holder_of_the_first_declared_model():
    bad = {3: ValueError("not avro")}
    first, others = learner_set(holding=["phishing-a"]), learner_set(holding=["phishing-b", "trump-a"])
    assert [o.record["source_offset"] for o in learn(first, 0, 6, bad)] == [3]
    assert learn(others, 0, 6, bad) == []
    assert others.models["trump-a"].online.learned == 5  # skipped it all the same
    # One replica holding everything reports it once, as before.
    assert [o.record["source_offset"] for o in learn(learner_set(), 0, 6, bad)] == [3]


# -- hand-over and take-up -----------------------------------------------------------------------


class Writer:
    """The publisher as the holder sees it: records what it was asked to write."""

    def __init__(self, learners: LearnerSet, fail: bool = False) -> None:
        self.learners, self.fail = learners, fail
        self.written: list[tuple[str, int]] = []

    async def finish_writing(self) -> None:
        pass

    async def write_snapshots(self, due: list[TrackedModel]) -> None:
        if self.fail:
            raise RuntimeError("the ledger refused the registration")
        for tracked in due:
            record = self.learners.snapshot(tracked).record
            self.written.append((tracked.model_id, record["events_seen"]))
            self.learners.snapshot_written(tracked, record)


def holder_for(learners: LearnerSet, writer: Writer, loaded: list[list[str]]) -> ShardHolder:
    async def load(model_ids: list[str]) -> None:
        loaded.append(model_ids)

    return ShardHolder(ShardMap(MODELS, 4), learners, writer, load)


async def take_up(holder: ShardHolder) -> list[str]:
    async with holder.lock:
        return await holder.take_up()


async def test_assigned_shards_are_taken_up_and_their_models_resumed_once():
    learners, loaded = learner_set(holding=()), []
    holder = holder_for(learners, Writer(learners), loaded)
    assert await take_up(holder) == [] and not holder.assigned_once
    holder.assign({0, 2})
    assert await take_up(holder) == ["phishing-d", "trump-a"]
    assert loaded == [["phishing-d", "trump-a"]] and holder.held == {0, 2} and holder.assigned_once
    assert await take_up(holder) == [] and loaded == [["phishing-d", "trump-a"]]  # nothing new


async def test_a_hand_over_writes_a_final_snapshot_of_each_leaving_model_that_moved_then_drops_them():
    learners, loaded = learner_set(holding=()), []
    writer = Writer(learners)
    holder = holder_for(learners, writer, loaded)
    holder.assign({0, 1, 3})
    await take_up(holder)
    learn(learners, 0, 40)
    learners.snapshot_written(learners.models["phishing-b"], learners.snapshot(learners.models["phishing-b"]).record)
    await holder.hand_over({0, 1})  # phishing-b (shard 1) did not move since its snapshot: nothing to write
    assert writer.written == [("phishing-d", 40), ("trump-a", 40)]
    assert list(learners.models) == ["phishing-a"] and holder.held == {3} and holder.assigned == {3}

    holder.assign({0, 3})  # shard 0 back: its models resume from the snapshot topic, not from memory
    assert await take_up(holder) == ["phishing-d", "trump-a"]
    assert loaded[-1] == ["phishing-d", "trump-a"] and learners.models["trump-a"].online.learned == 0


async def test_a_hand_over_waits_for_the_batch_in_hand():
    learners = learner_set(holding=())
    writer = Writer(learners)
    holder = holder_for(learners, writer, [])
    holder.assign({3})
    await take_up(holder)
    async with holder.lock:  # the run loop, mid-batch
        handing = asyncio.create_task(holder.hand_over({3}))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not handing.done() and holder.assigned == set()  # no new take-up of it meanwhile
        learn(learners, 0, 25)
    await handing
    assert writer.written == [("phishing-a", 25)] and learners.models == {}


async def test_a_failed_hand_over_drops_the_models_and_stops_the_run_loop_at_its_next_take_up():
    learners = learner_set(holding=())
    holder = holder_for(learners, Writer(learners, fail=True), [])
    holder.assign({1})
    await take_up(holder)
    learn(learners, 0, 10)
    await holder.hand_over({1})  # never raises into the group's callback
    assert learners.models == {}
    with pytest.raises(RuntimeError, match="refused the registration"):
        await take_up(holder)


# -- the fence ------------------------------------------------------------------------------------


class Group:
    def __init__(self, member: bool) -> None:
        self.member = member
        self.calls: list[str] = []

    async def fence(self, model_ids: list[str]) -> bool:
        self.calls.append(f"fence {','.join(model_ids)}")
        return self.member

    async def record(self) -> None:
        self.calls.append("record")


class Producer:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def flush(self) -> None:
        pass

    async def send(self, topic, key=None, value=None):
        self.sent.append(value)
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def publisher_for(learners: LearnerSet, group: Group, producer: Producer, monkeypatch) -> Publisher:
    monkeypatch.setattr(publisher_module.kafka, "commit", lambda *_: pytest.fail("sharded: no direct commit"))
    return Publisher(producer, None, codec, LearningSettings(kafka_bootstrap="127.0.0.1:1"), learners, None, group)


async def test_a_member_writes_its_snapshots_between_the_fence_and_the_positions(monkeypatch):
    learners, group, producer = learner_set(holding=["trump-a"]), Group(member=True), Producer()
    publisher = publisher_for(learners, group, producer, monkeypatch)
    learn(learners, 0, 30)
    await publisher.write_snapshots(learners.due_snapshots(every_events=1, every_seconds=0))
    assert group.calls == ["fence trump-a", "record"]
    assert [codec.decode(v)["version"] for v in producer.sent] == [1]
    assert learners.committed_offsets() == {(TOPIC, 0): 30}


async def test_a_replica_the_group_no_longer_counts_writes_no_snapshot(monkeypatch):
    learners, group, producer = learner_set(holding=["trump-a"]), Group(member=False), Producer()
    publisher = publisher_for(learners, group, producer, monkeypatch)
    learn(learners, 0, 30)
    await publisher.write_snapshots(learners.due_snapshots(every_events=1, every_seconds=0))
    assert group.calls == ["fence trump-a"] and producer.sent == []
    tracked = learners.models["trump-a"]
    assert tracked.version == 0 and tracked.writing is None and learners.committed_offsets() == {}
