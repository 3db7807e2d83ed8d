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

from services.learning.ledger_seam import LedgerModelRegistry
from services.learning.shards import ShardMap, shard_of
from streamledger import kafka
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.kafka import topics
from streamledger.ledger import LedgerClient
from tests.integration.conftest import identity
from tests.integration.pipeline.conftest import ServiceProcess, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]
CODEC = AvroCodec(SchemaRegistry.from_dir())
PARTITIONS, SHARDS = 3, 4
SOURCES = {"phishing-a": "phishing", "phishing-b": "phishing", "phishing-d": "phishing", "phishing-e": "phishing",
           "trump-a": "trump_approval", "trump-b": "trump_approval", "trump-d": "trump_approval"}


def declarations(sources: dict[str, str]) -> str:
    blocks = []
    for model_id, source in sources.items():
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

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.bootstrap, self.topic, self.partitions = bootstrap, topic, partitions
        self.sources: dict[tuple[int, int], str] = {}  # (partition, offset) -> the event's source

    async def send(self, events: list[dict]) -> None:
        async with kafka.producer(self.bootstrap) as producer:
            deliveries = []
            for i, (event, value) in enumerate(zip(events, CODEC.encode_many("CleanEvent", events))):
                deliveries.append((event, await producer.send(self.topic, key=event["event_id"].encode(), value=value,
                                                              partition=(len(self.sources) + i) % self.partitions)))
            for event, delivery in deliveries:
                meta = await delivery
                self.sources[(meta.partition, meta.offset)] = event["source"]

    def between(self, source: str, start: dict[int, int], end: dict[int, int]) -> int:
        """Events of `source` from offsets `start` (included) to `end` (excluded), per partition."""
        return sum(1 for (p, o), s in self.sources.items() if s == source and start.get(p, 0) <= o < end.get(p, 0))

    def ends(self) -> dict[int, int]:
        ends = dict.fromkeys(range(self.partitions), 0)
        for p, o in self.sources:
            ends[p] = max(ends[p], o + 1)
        return ends


@pytest.fixture
async def registry_ledger(network):
    """The learning service's ledger identity (an operator, which registers models)."""
    async with LedgerClient.connect(identity("registry")) as ledger:
        yield ledger


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


class Run:
    """One test's replicas a and b of `streamledger serve learning` on the test's own topics, as the
    learning principal, with what they wrote and logged."""

    def __init__(self, bootstrap: str, unique: str, tmp_path: Path, sources: dict[str, str], partitions: int,
                 **settings: str) -> None:
        self.bootstrap, self.sources = bootstrap, sources
        self.names = {"input": f"{topics.CLEAN}.{unique}", "snapshots": f"{topics.SNAPSHOTS}.{unique}",
                      "group": f"streamledger-learning-{unique}"}
        models = tmp_path / "models.toml"
        models.write_text(declarations(sources))
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLEDGER_KAFKA_")}
        env.update(kafka.child_environment(username=topics.LEARNING),  # as the service's principal: its ACLs
                   STREAMLEDGER_LEARNING_MODELS_FILE=str(models),
                   STREAMLEDGER_LEARNING_INPUT_TOPICS=json.dumps([self.names["input"]]),
                   STREAMLEDGER_LEARNING_SNAPSHOT_TOPIC=self.names["snapshots"],
                   STREAMLEDGER_LEARNING_METRICS_TOPIC=f"{topics.MODEL_METRICS}.{unique}",
                   STREAMLEDGER_LEARNING_DEADLETTER_TOPIC=f"{topics.DEADLETTER}.{unique}",
                   STREAMLEDGER_LEARNING_GROUP_ID=self.names["group"],
                   STREAMLEDGER_LEARNING_METRICS_EVERY_SECONDS="1",
                   STREAMLEDGER_LEARNING_FETCH_MAX_RECORDS="50",
                   STREAMLEDGER_LEARNING_SESSION_TIMEOUT_SECONDS="6",  # a killed replica is let go sooner
                   **settings)
        self.replicas = {name: ServiceProcess("learning", env, tmp_path / name) for name in ("a", "b")}
        for name in self.replicas:
            (tmp_path / name).mkdir()
        self.input = Input(bootstrap, self.names["input"], partitions)

    async def provision(self) -> None:
        await kafka.provision(self.bootstrap, [kafka.TopicSpec(self.names["input"], partitions=self.input.partitions),
                                               kafka.spec(topics.SNAPSHOTS, self.names["snapshots"])])

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{r.tail()}" for name, r in self.replicas.items())

    async def snapshots(self) -> list[dict]:
        return await snapshots(self.bootstrap, self.names["snapshots"])

    async def covered(self, what: str, timeout: float = 40) -> None:
        """Wait until every model's newest snapshot reflects every event sent."""
        async def every_model() -> bool:
            latest = newest(await self.snapshots())
            return set(latest) == set(self.sources) and all(
                sum(offsets_of(s).values()) >= len(self.input.sources) for s in latest.values())
        await wait_until(every_model, timeout, what, self.logs)

    def handed_over_losslessly(self) -> int:
        """Each hand-over so far: every model resumed from exactly what its last holder had learned."""
        handed = {(m, n) for r in self.replicas.values() for line in logged(r, "models_handed_over")
                  for m, n in line["learned"].items() if n}
        resumed = {(line["model_id"], line["events_seen"]) for r in self.replicas.values()
                   for line in logged(r, "model_resumed")}
        assert handed and handed <= resumed, (sorted(handed - resumed), self.logs())
        return len(handed)

    def stop(self) -> None:
        codes = {name: replica.stop() for name, replica in self.replicas.items() if replica.alive()}
        assert all(code == 0 for code in codes.values()), (codes, self.logs())

    def assert_learned_once(self, records: list[dict]) -> dict[str, set[str]]:
        """Each model's snapshots continue one another and the newest has learned its input exactly;
        returns the models each replica wrote snapshots of (both wrote some, none was fenced)."""
        for model_id, model_source in self.sources.items():
            mine = sorted((r for r in records if r["model_id"] == model_id), key=lambda r: r["version"])
            versions = [r["version"] for r in mine]
            assert versions == list(range(1, len(mine) + 1)), f"{model_id}: versions {versions} (two writers?)"
            for before, after in pairwise(mine):
                learned = self.input.between(model_source, offsets_of(before), offsets_of(after))
                assert after["events_seen"] - before["events_seen"] == learned, (model_id, after["version"])
            final = mine[-1]
            assert offsets_of(final) == self.input.ends(), model_id
            assert final["events_seen"] == sum(1 for s in self.input.sources.values() if s == model_source), model_id
        by_replica = {name: {line["model_id"] for line in logged(r, "snapshot_written")}
                      for name, r in self.replicas.items()}
        assert by_replica["a"] and by_replica["b"], by_replica  # both replicas learned models
        assert not any(logged(r, "snapshots_fenced") for r in self.replicas.values())  # none lost a shard unaware
        return by_replica


async def test_two_replicas_learn_each_event_once_per_model_through_a_kill_and_rebalances(
        bootstrap: str, unique: str, tmp_path: Path) -> None:
    assert ShardMap(SOURCES, SHARDS).occupied() == set(range(SHARDS))  # each replica's shards hold models
    started = time.monotonic()
    run = Run(bootstrap, unique, tmp_path, SOURCES, PARTITIONS, STREAMLEDGER_LEARNING_SHARDS=str(SHARDS),
              STREAMLEDGER_LEARNING_LEDGER="false", STREAMLEDGER_LEARNING_SNAPSHOT_EVERY_EVENTS="100",
              STREAMLEDGER_LEARNING_SNAPSHOT_EVERY_SECONDS="1")
    await run.provision()
    a, b = run.replicas["a"], run.replicas["b"]
    try:
        await run.input.send(WAVES[0])
        a.start()
        b.start()
        await a.logged('"event": "learning_started"')
        await b.logged('"event": "learning_started"')
        await run.covered("every model through the first wave")

        await run.input.send(WAVES[1])
        async def a_learning() -> bool:  # a wrote a snapshot into the second wave: it is mid-stream
            return any(sum(offsets_of(s).values()) > len(WAVES[0]) for s in await run.snapshots()
                       if s["model_id"] in {line["model_id"] for line in logged(a, "snapshot_written")})
        await wait_until(a_learning, 30, "a learning the second wave", run.logs)
        a.kill9()

        await run.input.send(WAVES[2])
        await run.covered("b alone through the third wave")

        a.start()
        await a.logged('"event": "learning_started"')
        await run.input.send(WAVES[3])
        await run.covered("every model through the fourth wave")

        async def lag_committed() -> bool:  # the slowest model's position, committed by shard 0's holder
            async with kafka.admin(bootstrap) as admin:
                committed = await admin.list_consumer_group_offsets(run.names["group"])
            return {tp.partition: om.offset for tp, om in committed.items()} == run.input.ends()
        await wait_until(lag_committed, 20, "the learning group's offsets at the end of the input", run.logs)
        handed = run.handed_over_losslessly()
    finally:
        run.stop()
    by_replica = run.assert_learned_once(await run.snapshots())
    print(f"{len(EVENTS)} events in four waves, {handed} models handed over, models by replica {by_replica}, "
          f"{time.monotonic() - started:.0f}s")


async def test_with_the_ledger_every_snapshot_handed_over_is_registered_once(
        bootstrap: str, unique: str, tmp_path: Path, registry_ledger) -> None:
    """Hand-overs register their final snapshots before the group moves the models on (run it under
    `flock /tmp/fabric.lock`). No periodic snapshots: every one is written at a hand-over or a stop.
    b joins (a hands b's model over), then stops (b's model back to a)."""
    ids = [f"phishing-{unique}-{n}" for n in range(40)]  # fresh ids: the ledger remembers old ones
    sources = {next(m for m in ids if shard_of(m, 2) == shard): "phishing" for shard in (0, 1)}
    started = time.monotonic()
    run = Run(bootstrap, unique, tmp_path, sources, 1, STREAMLEDGER_LEARNING_SHARDS="2",
              STREAMLEDGER_LEARNING_LEDGER="true", STREAMLEDGER_LEARNING_SNAPSHOT_EVERY_EVENTS="1000000",
              STREAMLEDGER_LEARNING_SNAPSHOT_EVERY_SECONDS="3600")
    await run.provision()
    a, b = run.replicas["a"], run.replicas["b"]
    phishing = [e for e in EVENTS if e["source"] == "phishing"]

    async def learned(count: int, what: str) -> None:
        async def every_model() -> bool:  # the models' positions, published at the metrics cadence
            found = {}
            async with kafka.consumer(bootstrap) as consumer:
                async for records in kafka.read_to_end(consumer, bootstrap, f"{topics.MODEL_METRICS}.{unique}"):
                    found.update((m["model_id"], m["position"]) for m in
                                 (CODEC.decode(r.value, reader="ModelMetrics") for r in records))
            return found == dict.fromkeys(sources, count)
        await wait_until(every_model, 60, what, run.logs)

    try:
        await run.input.send(phishing[:400])
        a.start()
        await learned(400, "a through the first 400 events")
        b.start()  # a hands b's model over: its final snapshot, registered, at 400
        await b.logged('"event": "learning_started"')
        await run.input.send(phishing[400:800])
        await learned(800, "a and b through 800 events")
        assert b.stop() == 0, run.logs()  # b's final snapshot at 800; a takes b's model back from it
        await run.input.send(phishing[800:])
        await learned(len(phishing), "a alone through every event")
        handed = run.handed_over_losslessly()
    finally:
        run.stop()
    records = await run.snapshots()
    by_replica = run.assert_learned_once(records)
    registry = LedgerModelRegistry(registry_ledger, (await registry_ledger.who_am_i())["Account"])
    for record in records:
        assert await registry.is_registered(record["model_id"], record["version"], record["sha256"]), record["version"]
    print(f"{len(phishing)} events, {len(records)} snapshots registered, {handed} models handed over, "
          f"models by replica {by_replica}, {time.monotonic() - started:.0f}s")
