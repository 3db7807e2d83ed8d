"""Two learning replicas share the models: each event learned exactly once per model, through
rebalances and a kill -9.

Replicas a and b (`streamledger serve learning`, as the learning principal, without the ledger)
learn seven models spread over four shards from a three-partition input. Events arrive in four
waves: both replicas start on the first (the second to join takes half the shards over from the
first); a is killed with SIGKILL while learning the second, b takes a's models over from their
last snapshots (after the session timeout) and learns the third alone; a comes back, the group
rebalances again, and the fourth wave is learned by both.

At the end each model's newest snapshot has learned exactly the events of its source, and every
snapshot of every model continues the one before it: consecutive versions, never one version
twice, and each one's count grows by exactly the events of its source between the two snapshots'
offsets. Two replicas learning the same model would write the same version twice (both continue
the same snapshot), so this fails when the models are not sharded.
"""

from __future__ import annotations

import json
import os
import time
from itertools import pairwise
from pathlib import Path

import pytest
from river import datasets

from services.learning.shards import ShardMap
from streamledger import kafka
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.kafka import topics
from tests.integration.pipeline.conftest import ServiceProcess, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]
CODEC = AvroCodec(SchemaRegistry.from_dir())
PARTITIONS, SHARDS = 3, 4
SOURCES = {"phishing-a": "phishing", "phishing-b": "phishing", "phishing-d": "phishing", "phishing-e": "phishing",
           "trump-a": "trump_approval", "trump-b": "trump_approval", "trump-d": "trump_approval"}


def declarations() -> str:
    blocks = []
    for model_id, source in SOURCES.items():
        task, learner = ("binary", "linear_model.LogisticRegression") if source == "phishing" else \
            ("regression", "linear_model.LinearRegression")
        metric = "Accuracy" if task == "binary" else "MAE"
        blocks.append(f'[[model]]\nid = "{model_id}"\ntask = "{task}"\nsource = "{source}"\nmetrics = ["{metric}"]\n'
                      f'pipeline = [{{ class = "preprocessing.StandardScaler" }}, {{ class = "{learner}" }}]\n')
    return "\n".join(blocks)


def clean_events() -> list[dict]:
    """Phishing and TrumpApproval events, interleaved."""
    phishing = [("phishing", x, y) for x, y in datasets.Phishing()]
    trump = [("trump_approval", x, float(y)) for x, y in datasets.TrumpApproval()]
    mixed = [e for pair in zip(phishing, trump) for e in pair] + phishing[len(trump):] + trump[len(phishing):]
    return [{"event_id": f"{source}-{i}", "tenant": "acme", "source": source, "ts": 1_700_000_000_000 + i,
             "features": {k: float(v) for k, v in x.items()}, "label": y, "content_hash": "0" * 64,
             "raw_partition": 0, "raw_offset": i} for i, (source, x, y) in enumerate(mixed)]


EVENTS = clean_events()
WAVES = [EVENTS[i * len(EVENTS) // 4:(i + 1) * len(EVENTS) // 4] for i in range(4)]


class Input:
    """The input topic: events sent round-robin over its partitions, and where each one landed."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.sources: dict[tuple[int, int], str] = {}  # (partition, offset) -> the event's source

    async def send(self, events: list[dict]) -> None:
        async with kafka.producer(self.bootstrap) as producer:
            deliveries = []
            for i, (event, value) in enumerate(zip(events, CODEC.encode_many("CleanEvent", events))):
                deliveries.append((event, await producer.send(self.topic, key=event["event_id"].encode(), value=value,
                                                              partition=(len(self.sources) + i) % PARTITIONS)))
            for event, delivery in deliveries:
                meta = await delivery
                self.sources[(meta.partition, meta.offset)] = event["source"]

    def between(self, source: str, start: dict[int, int], end: dict[int, int]) -> int:
        """Events of `source` from offsets `start` (included) to `end` (excluded), per partition."""
        return sum(1 for (p, o), s in self.sources.items() if s == source and start.get(p, 0) <= o < end.get(p, 0))

    def ends(self) -> dict[int, int]:
        ends = {p: 0 for p in range(PARTITIONS)}
        for p, o in self.sources:
            ends[p] = max(ends[p], o + 1)
        return ends


def offsets_of(snapshot: dict) -> dict[int, int]:
    return {o["partition"]: o["offset"] for o in snapshot["offsets"]}


async def snapshots(bootstrap: str, topic: str) -> list[dict]:
    found = []
    async with kafka.consumer(bootstrap, max_fetch_bytes=topics.MAX_SNAPSHOT_BYTES) as consumer:
        async for records in kafka.read_to_end(consumer, bootstrap, topic, timeout_s=20):
            found.extend(CODEC.decode(r.value, reader="ModelSnapshot") for r in records if r.value is not None)
    return found


def newest(records: list[dict]) -> dict[str, dict]:
    latest: dict[str, dict] = {}
    for r in records:
        if r["model_id"] not in latest or r["version"] > latest[r["model_id"]]["version"]:
            latest[r["model_id"]] = r
    return latest


def logged(replica: ServiceProcess, event: str) -> list[dict]:
    """The `event` lines of every run of `replica` (its log files)."""
    lines = [json.loads(line) for path in sorted(replica.log_dir.glob("*.log"))
             for line in path.read_text(errors="replace").splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]


async def test_two_replicas_learn_each_event_once_per_model_through_a_kill_and_rebalances(
        bootstrap: str, unique: str, tmp_path: Path) -> None:
    assert ShardMap(SOURCES, SHARDS).occupied() == set(range(SHARDS))  # each replica's shards hold models
    started = time.monotonic()
    names = {"input": f"{topics.CLEAN}.{unique}", "snapshots": f"{topics.SNAPSHOTS}.{unique}",
             "group": f"streamledger-learning-{unique}"}
    await kafka.provision(bootstrap, [kafka.TopicSpec(names["input"], partitions=PARTITIONS),
                                      kafka.spec(topics.SNAPSHOTS, names["snapshots"])])
    models = tmp_path / "models.toml"
    models.write_text(declarations())
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLEDGER_KAFKA_")}
    env.update(kafka.child_environment(username=topics.LEARNING),  # as the service's principal: its ACLs
               STREAMLEDGER_LEARNING_MODELS_FILE=str(models),
               STREAMLEDGER_LEARNING_INPUT_TOPICS=json.dumps([names["input"]]),
               STREAMLEDGER_LEARNING_SNAPSHOT_TOPIC=names["snapshots"],
               STREAMLEDGER_LEARNING_METRICS_TOPIC=f"{topics.MODEL_METRICS}.{unique}",
               STREAMLEDGER_LEARNING_DEADLETTER_TOPIC=f"{topics.DEADLETTER}.{unique}",
               STREAMLEDGER_LEARNING_GROUP_ID=names["group"],
               STREAMLEDGER_LEARNING_SHARDS=str(SHARDS),
               STREAMLEDGER_LEARNING_LEDGER="false",
               STREAMLEDGER_LEARNING_SNAPSHOT_EVERY_EVENTS="100",
               STREAMLEDGER_LEARNING_SNAPSHOT_EVERY_SECONDS="1",
               STREAMLEDGER_LEARNING_METRICS_EVERY_SECONDS="1",
               STREAMLEDGER_LEARNING_FETCH_MAX_RECORDS="50",
               STREAMLEDGER_LEARNING_SESSION_TIMEOUT_SECONDS="6")  # the killed replica is let go sooner
    replicas = {name: ServiceProcess("learning", env, tmp_path / name) for name in ("a", "b")}
    a, b = replicas["a"], replicas["b"]
    source = Input(bootstrap, names["input"])

    def logs() -> str:
        return "\n".join(f"--- {name} ---\n{r.tail()}" for name, r in replicas.items())

    def covers(count: int):
        async def every_model() -> bool:
            latest = newest(await snapshots(bootstrap, names["snapshots"]))
            return set(latest) == set(SOURCES) and all(sum(offsets_of(s).values()) >= count for s in latest.values())
        return every_model

    try:
        await source.send(WAVES[0])
        for replica in replicas.values():
            (tmp_path / replica.log_dir.name).mkdir()
            replica.start()
        await a.logged('"event": "learning_started"')
        await b.logged('"event": "learning_started"')
        await wait_until(covers(len(source.sources)), 40, "every model through the first wave", logs)

        await source.send(WAVES[1])
        async def a_learning() -> bool:  # a wrote a snapshot into the second wave: it is mid-stream
            return any(sum(offsets_of(s).values()) > len(WAVES[0]) for s in await snapshots(bootstrap, names["snapshots"])
                       if s["model_id"] in {line["model_id"] for line in logged(a, "snapshot_written")})
        await wait_until(a_learning, 30, "a learning the second wave", logs)
        a.kill9()

        await source.send(WAVES[2])
        await wait_until(covers(len(source.sources)), 40, "b alone through the third wave", logs)

        a.start()
        await a.logged('"event": "learning_started"')
        await source.send(WAVES[3])
        await wait_until(covers(len(source.sources)), 40, "every model through the fourth wave", logs)

        async def lag_committed() -> bool:  # the slowest model's position, committed by shard 0's holder
            async with kafka.admin(bootstrap) as admin:
                committed = await admin.list_consumer_group_offsets(names["group"])
            return {tp.partition: om.offset for tp, om in committed.items()} == source.ends()
        await wait_until(lag_committed, 20, "the learning group's offsets at the end of the input", logs)
        # Every hand-over so far was lossless: each model resumed from exactly what its last holder had learned.
        handed = {(m, n) for r in replicas.values() for line in logged(r, "models_handed_over")
                  for m, n in line["learned"].items() if n}
        resumed = {(line["model_id"], line["events_seen"]) for r in replicas.values()
                   for line in logged(r, "model_resumed")}
        assert handed and handed <= resumed, (sorted(handed - resumed), logs())
    finally:
        codes = {name: replica.stop() for name, replica in replicas.items() if replica.alive()}
    assert codes == {"a": 0, "b": 0}, logs()

    records = await snapshots(bootstrap, names["snapshots"])
    for model_id, model_source in SOURCES.items():
        mine = sorted((r for r in records if r["model_id"] == model_id), key=lambda r: r["version"])
        versions = [r["version"] for r in mine]
        assert versions == list(range(1, len(mine) + 1)), f"{model_id}: versions {versions} (two writers?)"
        for before, after in pairwise(mine):
            learned = source.between(model_source, offsets_of(before), offsets_of(after))
            assert after["events_seen"] - before["events_seen"] == learned, (model_id, after["version"])
        final = mine[-1]
        assert offsets_of(final) == source.ends(), model_id
        assert final["events_seen"] == sum(1 for e in EVENTS if e["source"] == model_source), model_id

    by_replica = {name: {line["model_id"] for line in logged(r, "snapshot_written")} for name, r in replicas.items()}
    assert by_replica["a"] and by_replica["b"], by_replica  # both replicas learned models
    assert not any(logged(r, "snapshots_fenced") for r in replicas.values())  # no replica lost a shard unaware
    print(f"{len(EVENTS)} events in four waves, {len(handed)} models handed over, models by replica {by_replica}, "
          f"{time.monotonic() - started:.0f}s")
