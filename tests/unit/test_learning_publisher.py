"""The publisher writes snapshots in the background: sealed at once, registered before published,
and the learner goes on meanwhile, waiting only when a model is due again before the write ended."""

from __future__ import annotations

import asyncio

import pytest
from river import datasets

from services.learning import publisher as publisher_module
from services.learning.learners import LearnerSet
from services.learning.publisher import Publisher
from services.learning.settings import LearningSettings
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.core.models import parse_declaration
from streamledger.core.records import Consumed
from streamledger.core.snapshots import unseal

codec = AvroCodec(SchemaRegistry.from_dir())
TOPIC = "events.clean"
PHISHING = list(datasets.Phishing())[:300]


def learners() -> LearnerSet:
    return LearnerSet([parse_declaration({
        "id": "m", "task": "binary", "metrics": ["Accuracy"],
        "pipeline": [{"class": "preprocessing.StandardScaler"}, {"class": "linear_model.LogisticRegression"}]})])


def learn(learner_set: LearnerSet, start: int, stop: int) -> None:
    records = [(Consumed((TOPIC, 0), TOPIC, 0, i, None, b""),
                {"event_id": f"e{i}", "tenant": "t", "source": "s", "features": dict(PHISHING[i][0]),
                 "label": PHISHING[i][1]}) for i in range(start, stop)]
    assert learner_set.handle_batch(records) == []


class SlowProducer:
    """Acknowledges a send only when the test says so."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls
        self.acks: list[asyncio.Future] = []
        self.sent: list[bytes] = []

    async def flush(self) -> None:
        pass

    async def send(self, topic, key=None, value=None):
        self.calls.append(f"publish {key.decode()}")
        self.sent.append(value)
        self.acks.append(asyncio.get_running_loop().create_future())
        return self.acks[-1]


class Registry:
    def __init__(self, calls: list[str], fail: bool = False) -> None:
        self.calls, self.fail = calls, fail

    async def register(self, model_id: str, version: int, sha256: str) -> None:
        self.calls.append(f"register {model_id} v{version}")
        if self.fail:
            raise RuntimeError("the ledger refused the registration")


def publisher_for(learner_set: LearnerSet, producer, registry, monkeypatch) -> Publisher:
    monkeypatch.setattr(publisher_module.kafka, "commit", lambda *_: asyncio.sleep(0))
    return Publisher(producer, None, codec, LearningSettings(kafka_bootstrap="127.0.0.1:1"), learner_set, registry)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_snapshot_is_sealed_at_once_written_in_the_background_and_learning_goes_on(monkeypatch):
    calls: list[str] = []
    learner_set, producer = learners(), SlowProducer(calls)
    publisher = publisher_for(learner_set, producer, Registry(calls), monkeypatch)
    tracked = learner_set.models["m"]
    learn(learner_set, 0, 100)
    await publisher.write_in_background(learner_set.due_snapshots(every_events=100, every_seconds=3600))
    await settle()
    assert tracked.writing == 100 and calls == ["register m v1", "publish m"]  # registered before published

    learn(learner_set, 100, 150)  # while Kafka has not acknowledged it
    assert learner_set.due_snapshots(every_events=100, every_seconds=3600) == []  # 50 since it was sealed
    producer.acks[0].set_result(None)
    await publisher.finish_writing()
    sealed = codec.decode(producer.sent[0])
    assert sealed["offsets"] == [{"topic": TOPIC, "partition": 0, "offset": 100}]  # what it had learned
    assert unseal(sealed["model"], sealed["sha256"])["learned"] == 100
    assert tracked.version == 1 and tracked.unsnapshotted == 50 and tracked.writing is None
    assert learner_set.committed_offsets() == {(TOPIC, 0): 100}


async def test_a_model_due_again_before_its_snapshot_was_written_waits_for_it(monkeypatch):
    calls: list[str] = []
    learner_set, producer = learners(), SlowProducer(calls)
    publisher = publisher_for(learner_set, producer, None, monkeypatch)
    learn(learner_set, 0, 100)
    await publisher.write_in_background(learner_set.due_snapshots(every_events=100, every_seconds=3600))
    learn(learner_set, 100, 200)
    due = learner_set.due_snapshots(every_events=100, every_seconds=3600)
    assert due == [learner_set.models["m"]]
    second = asyncio.create_task(publisher.write_in_background(due))
    await settle()
    assert not second.done() and len(producer.sent) == 1  # the learner waits for the first write
    producer.acks[0].set_result(None)
    await second
    await settle()
    producer.acks[1].set_result(None)
    await publisher.finish_writing()
    assert [codec.decode(v)["version"] for v in producer.sent] == [1, 2]
    assert [codec.decode(v)["offsets"][0]["offset"] for v in producer.sent] == [100, 200]
    assert learner_set.models["m"].unsnapshotted == 0


async def test_a_registration_refused_in_the_background_stops_the_learner_at_its_next_step(monkeypatch):
    calls: list[str] = []
    learner_set = learners()
    publisher = publisher_for(learner_set, SlowProducer(calls), Registry(calls, fail=True), monkeypatch)
    learn(learner_set, 0, 100)
    await publisher.write_in_background(learner_set.due_snapshots(every_events=100, every_seconds=3600))
    await settle()
    with pytest.raises(RuntimeError, match="refused the registration"):
        await publisher.write_in_background([])
    assert calls == ["register m v1"]  # never published
    assert learner_set.committed_offsets() == {}
