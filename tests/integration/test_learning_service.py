"""The learning service on the real Kafka: River parity, kill -9 recovery, refused snapshots, dead letters.

Every test writes CleanEvents for River's bundled datasets onto its own one-partition
topic and runs the service on it (in-process, `app.Learning` run as `serve` runs it, or as
the real `streamledger serve learning` subprocess for the kill -9 test).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from river import datasets, evaluate
from river.metrics.base import Metrics

from devstack import Stack
from services.learning import app
from services.learning.settings import LearningSettings
from streamledger import kafka
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.child import ChildDied
from streamledger.declarations import load_declarations
from streamledger.lifecycle import run_until
from streamledger.settings import CommonSettings

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
codec = AvroCodec(SchemaRegistry.from_dir())

MODELS = """
[[model]]
id = "phishing-logreg"
task = "binary"
source = "phishing"
metrics = ["Accuracy", "ROCAUC"]
pipeline = [
  { class = "preprocessing.StandardScaler" },
  { class = "linear_model.LogisticRegression", params = { optimizer = { class = "optim.SGD", params = { lr = 0.1 } } } },
]

[[model]]
id = "phishing-hat"
task = "binary"
source = "phishing"
metrics = ["Accuracy", "LogLoss"]
pipeline = [ { class = "tree.HoeffdingAdaptiveTreeClassifier", params = { seed = 42 } } ]
[model.drift]
response = "background"
background_events = 200

[[model]]
id = "trump-linreg"
task = "regression"
source = "trump_approval"
metrics = ["MAE", "RMSE"]
pipeline = [ { class = "preprocessing.StandardScaler" }, { class = "linear_model.LinearRegression" } ]
"""


def clean_events(dataset, source: str, start: int = 0) -> list[dict]:
    return [
        {"event_id": f"{source}-{i}", "tenant": "acme", "source": source, "ts": 1_700_000_000_000 + i,
         "features": {k: float(v) for k, v in x.items()},
         "label": y if isinstance(y, bool) else float(y),
         "content_hash": "0" * 64, "raw_partition": 0, "raw_offset": start + i}
        for i, (x, y) in enumerate(dataset)
    ]


PHISHING = clean_events(datasets.Phishing(), "phishing")
TRUMP = clean_events(datasets.TrumpApproval(), "trump_approval", start=len(PHISHING))


@pytest.fixture(scope="module")
def bootstrap() -> str:
    """Kafka only: the learner never touches MongoDB, so a FerretDB outage must not fail these tests."""
    stack = Stack(say=lambda _msg: None)
    if not stack.part("kafka").healthy():
        stack.up()
    return CommonSettings().kafka_bootstrap


@pytest.fixture
def names(unique: str, tmp_path: Path) -> dict:
    models = tmp_path / "models.toml"
    models.write_text(MODELS)
    return {"input": f"clean-{unique}", "snapshots": f"snapshots-{unique}", "metrics": f"metrics-{unique}",
            "deadletter": f"deadletter-{unique}", "group": f"learning-{unique}", "models": models}


def settings_for(bootstrap: str, names: dict, **overrides) -> LearningSettings:
    values = dict(kafka_bootstrap=bootstrap, learning_models_file=names["models"],
                  learning_input_topics=[names["input"]], learning_snapshot_topic=names["snapshots"],
                  learning_metrics_topic=names["metrics"], learning_deadletter_topic=names["deadletter"],
                  learning_group_id=names["group"], learning_snapshot_every_events=500,
                  learning_snapshot_every_seconds=1.0, learning_metrics_every_seconds=1.0,
                  learning_ledger=False)  # learning alone; with the ledger: tests/integration/test_ledger_seams.py
    values.update(overrides)
    return LearningSettings(**values)


async def produce(bootstrap: str, topic: str, values: list[tuple[str | None, bytes]]) -> None:
    await kafka.provision(bootstrap, [kafka.TopicSpec(topic, partitions=1)])
    async with kafka.producer(bootstrap) as producer:
        for key, value in values:
            await producer.send(topic, key=key.encode() if key else None, value=value)
        await producer.flush()


def encoded(events: list[dict]) -> list[tuple[str, bytes]]:
    return [(e["event_id"], v) for e, v in zip(events, codec.encode_many("CleanEvent", events))]


async def read_all(bootstrap: str, topic: str, reader: str, want, timeout_s: float = 60.0) -> list[dict]:
    """Records of `topic` (decoded) read from the start until `want(records)` is true."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **kafka.connection(), enable_auto_commit=False,
                                max_partition_fetch_bytes=64 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
    await consumer.start()
    records: list[dict] = []
    try:
        async with asyncio.timeout(timeout_s):
            while topic not in await consumer.topics():
                await asyncio.sleep(0.2)
            consumer.assign([TopicPartition(topic, 0)])
            await consumer.seek_to_beginning(TopicPartition(topic, 0))
            while not want(records):
                batches = await consumer.getmany(timeout_ms=500)
                for messages in batches.values():
                    records.extend(codec.decode(m.value, reader=reader) for m in messages)
    finally:
        await consumer.stop()
    return records


def final_snapshots(end_offset: int, topic: str, model_ids) -> callable:
    """A `want` that holds once every model has a snapshot reflecting offsets up to `end_offset`."""
    def want(records):
        done = {r["model_id"] for r in records if r["offsets"] and r["offsets"][0]["offset"] >= end_offset}
        return set(model_ids) <= done
    return want


def latest(records: list[dict]) -> dict[str, dict]:
    """Each model's highest version; at a tie (a refused snapshot's number reused), the later record."""
    newest: dict[str, dict] = {}
    for r in records:
        if r["model_id"] not in newest or r["version"] >= newest[r["model_id"]]["version"]:
            newest[r["model_id"]] = r
    return newest


class Service:
    """The learning service as a task in this event loop, stopped like SIGTERM would."""

    def __init__(self, settings: LearningSettings) -> None:
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(run_until(app.Learning(settings), self.stop))

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)


def river_reference(declaration, dataset) -> dict[str, float]:
    metrics = declaration.build_metrics()
    evaluate.progressive_val_score(dataset, declaration.build_model(), Metrics(metrics))
    return {type(m).__name__: float(m.get()) for m in metrics}


async def test_final_metrics_equal_progressive_val_score_exactly(bootstrap, names):
    await produce(bootstrap, names["input"], encoded(PHISHING + TRUMP))
    end = len(PHISHING) + len(TRUMP)
    learned = {"phishing-logreg": len(PHISHING), "phishing-hat": len(PHISHING), "trump-linreg": len(TRUMP)}

    def metrics_caught_up(records: list[dict]) -> bool:
        return all(any(r["model_id"] == m and r["position"] == n for r in records) for m, n in learned.items())

    service = Service(settings_for(bootstrap, names))
    try:
        snapshots = await read_all(bootstrap, names["snapshots"], "ModelSnapshot",
                                   final_snapshots(end, names["snapshots"], ["phishing-logreg", "phishing-hat", "trump-linreg"]))
        metric_records = await read_all(bootstrap, names["metrics"], "ModelMetrics", metrics_caught_up)
    finally:
        await service.close()

    final = latest(snapshots)
    declarations = {d.model_id: d for d in load_declarations(names["models"])}
    reference = {"phishing-logreg": river_reference(declarations["phishing-logreg"], datasets.Phishing()),
                 "phishing-hat": river_reference(declarations["phishing-hat"], datasets.Phishing()),
                 "trump-linreg": river_reference(declarations["trump-linreg"], datasets.TrumpApproval())}
    for model_id, count in learned.items():
        assert final[model_id]["metrics"] == reference[model_id]
        assert final[model_id]["events_seen"] == count
        # The periodic metrics records: the declared metrics, a position that never goes back,
        # and once every event is learned, exactly the final metrics.
        mine = [r for r in metric_records if r["model_id"] == model_id]
        positions = [r["position"] for r in mine]
        assert positions == sorted(positions) and positions[-1] == count, model_id
        assert all(set(r["metrics"]) == set(declarations[model_id].metrics) for r in mine)
        assert mine[-1]["metrics"] == reference[model_id]
    assert {r["model_id"] for r in metric_records} == set(learned)


def serve(names: dict, bootstrap: str, **overrides: str) -> subprocess.Popen:
    env = dict(os.environ,
               STREAMLEDGER_KAFKA_BOOTSTRAP=bootstrap,
               STREAMLEDGER_LEARNING_MODELS_FILE=str(names["models"]),
               STREAMLEDGER_LEARNING_INPUT_TOPICS=f'["{names["input"]}"]',
               STREAMLEDGER_LEARNING_SNAPSHOT_TOPIC=names["snapshots"],
               STREAMLEDGER_LEARNING_METRICS_TOPIC=names["metrics"],
               STREAMLEDGER_LEARNING_DEADLETTER_TOPIC=names["deadletter"],
               STREAMLEDGER_LEARNING_GROUP_ID=names["group"],
               STREAMLEDGER_LEARNING_LEDGER="false",
               **overrides)
    return subprocess.Popen([str(REPO / ".venv/bin/streamledger"), "serve", "learning"], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


async def test_kill_9_mid_stream_then_restart_ends_with_the_uninterrupted_hash(bootstrap, names, unique):
    models = ["phishing-logreg", "phishing-hat"]
    first_part, rest = PHISHING[:600], PHISHING[600:]
    await produce(bootstrap, names["input"], encoded(first_part))

    # Snapshots at 250 and 500 only: the 100 events after 500 are learned, then lost to the kill.
    process = serve(names, bootstrap, STREAMLEDGER_LEARNING_SNAPSHOT_EVERY_EVENTS="250",
                    STREAMLEDGER_LEARNING_SNAPSHOT_EVERY_SECONDS="3600", STREAMLEDGER_LEARNING_FETCH_MAX_RECORDS="50")
    try:
        before_kill = await read_all(bootstrap, names["snapshots"], "ModelSnapshot",
                                     final_snapshots(500, names["snapshots"], models))
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    assert process.returncode == -signal.SIGKILL
    assert max(s["offsets"][0]["offset"] for s in before_kill) == 500
    await readers_gone(names["input"])  # the killed service's reader process does not outlive it

    await produce(bootstrap, names["input"], encoded(rest))
    process = serve(names, bootstrap, STREAMLEDGER_LEARNING_SNAPSHOT_EVERY_EVENTS="250",
                    STREAMLEDGER_LEARNING_SNAPSHOT_EVERY_SECONDS="1")
    try:
        restarted = latest(await read_all(bootstrap, names["snapshots"], "ModelSnapshot",
                                          final_snapshots(len(PHISHING), names["snapshots"], models)))
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr[-2000:]
    assert '"model_resumed"' in stderr and '"version": 2' in stderr

    # The same input, one uninterrupted run in this process (its own snapshot topic and group).
    clean = dict(names, snapshots=f"snapshots-clean-{unique}", group=f"learning-clean-{unique}")
    service = Service(settings_for(bootstrap, clean))
    try:
        uninterrupted = latest(await read_all(bootstrap, clean["snapshots"], "ModelSnapshot",
                                              final_snapshots(len(PHISHING), clean["snapshots"], models)))
    finally:
        await service.close()
    for model_id in models:
        assert restarted[model_id]["events_seen"] == uninterrupted[model_id]["events_seen"] == len(PHISHING)
        assert restarted[model_id]["sha256"] == uninterrupted[model_id]["sha256"], model_id
        assert restarted[model_id]["metrics"] == uninterrupted[model_id]["metrics"]


def readers_of(topic: str) -> list[int]:
    """Pids of learning reader processes reading `topic` (their command line names it)."""
    found = subprocess.run(["pgrep", "-f", f"services.learning.reader .*{topic}"], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


async def readers_gone(topic: str, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while readers_of(topic):
            await asyncio.sleep(0.1)


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_a_dead_reader_process_stops_the_service_with_the_reason(bootstrap, names):
    await produce(bootstrap, names["input"], encoded(PHISHING[:100]))
    captured = Captured()
    logger = logging.getLogger("streamledger.learning")
    logger.addHandler(captured)
    level = logger.level
    logger.setLevel(logging.INFO)
    service = Service(settings_for(bootstrap, names))
    try:
        async with asyncio.timeout(30):  # started: the reader said it is ready
            while not any(r.getMessage() == "learning_started" for r in captured.records):
                await asyncio.sleep(0.1)
        [pid] = readers_of(names["input"])
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ChildDied, match=r"learning reader process exited \(exit code -9\)") as died:
            await asyncio.wait_for(service.task, 10)
        assert died.value.exit_code == -9
    finally:
        service.stop.set()
        logger.removeHandler(captured)
        logger.setLevel(level)
    await readers_gone(names["input"])


async def test_a_tampered_snapshot_is_refused_and_the_previous_one_used(bootstrap, names):
    await produce(bootstrap, names["input"], encoded(PHISHING[:400]))
    service = Service(settings_for(bootstrap, names, learning_snapshot_every_events=200,
                                   learning_snapshot_every_seconds=3600))
    try:
        honest = await read_all(bootstrap, names["snapshots"], "ModelSnapshot",
                                final_snapshots(400, names["snapshots"], ["phishing-logreg"]))
    finally:
        await service.close()
    newest = latest(honest)["phishing-logreg"]
    tampered = dict(newest, version=newest["version"] + 1,
                    model=newest["model"].replace(b"StandardScaler", b"StandardScaleR", 1))
    assert tampered["model"] != newest["model"]
    await produce(bootstrap, names["snapshots"], [("phishing-logreg", codec.encode("ModelSnapshot", tampered))])

    captured = Captured()
    logger = logging.getLogger("streamledger.learning")
    logger.addHandler(captured)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        service = Service(settings_for(bootstrap, names))
        await produce(bootstrap, names["input"], encoded(PHISHING[400:500]))
        after = await read_all(bootstrap, names["snapshots"], "ModelSnapshot",
                               final_snapshots(500, names["snapshots"], ["phishing-logreg"]))
        await service.close()
    finally:
        logger.removeHandler(captured)
        logger.setLevel(level)
    refused = [r for r in captured.records if r.getMessage() == "snapshot_refused"]
    assert [(r.model_id, r.version, r.reason) for r in refused] == [
        ("phishing-logreg", tampered["version"], "snapshot_hash_mismatch")]
    resumed = [r for r in captured.records if r.getMessage() == "model_resumed" and r.model_id == "phishing-logreg"]
    assert resumed[0].version == newest["version"]
    final = latest(after)["phishing-logreg"]
    assert final["version"] == tampered["version"] + 1 and final["events_seen"] == 500


async def test_bad_events_go_to_the_dead_letters_with_a_reason_and_learning_goes_on(bootstrap, names):
    wrong_label = dict(PHISHING[1], event_id="bad-label", label="yes")
    string_feature = dict(PHISHING[2], event_id="bad-feature", features={"https": "sometimes"})
    values = encoded([PHISHING[0]]) + [("garbage", b"\x00\x01 not avro")] + encoded([wrong_label, string_feature]) \
        + [("tombstone", None)] + encoded(PHISHING[3:10])
    await produce(bootstrap, names["input"], values)
    service = Service(settings_for(bootstrap, names))
    try:
        letters = await read_all(bootstrap, names["deadletter"], "DeadLetter", lambda r: len(r) >= 6)
        snapshots = await read_all(bootstrap, names["snapshots"], "ModelSnapshot",
                                   final_snapshots(len(values), names["snapshots"], ["phishing-logreg"]))
    finally:
        await service.close()
    by_key = {}
    for letter in letters:
        by_key.setdefault(letter["key"], []).append(letter)
    assert by_key["garbage"][0]["reason"] == "not_single_object" and by_key["garbage"][0]["original"] == b"\x00\x01 not avro"
    assert by_key["garbage"][0]["source_topic"] == names["input"] and by_key["garbage"][0]["source_offset"] == 1
    assert by_key["tombstone"][0]["reason"] == "not_single_object"
    label_reasons = {(d["reason"], d["error"].split(":")[0]) for d in by_key["bad-label"]}
    assert label_reasons == {("invalid_label", "model 'phishing-logreg'"), ("invalid_label", "model 'phishing-hat'")}
    assert "needs a boolean label, got string 'yes'" in by_key["bad-label"][0]["error"]
    feature = {d["error"].split(":")[0]: d for d in by_key["bad-feature"]}
    assert {model: d["reason"] for model, d in feature.items()} == {"model 'phishing-logreg'": "invalid_feature",
                                                                     "model 'phishing-hat'": "invalid_feature"}
    assert "features['https']: model 'phishing-logreg' takes numbers only" in feature["model 'phishing-logreg'"]["error"]
    # The tree takes strings, but this feature was a number in the events before.
    assert "features['https']: is a string here but was a number" in feature["model 'phishing-hat'"]["error"]
    assert latest(snapshots)["phishing-logreg"]["events_seen"] == 8  # the 8 good events


async def test_several_partitions_each_event_is_learned_exactly_once_across_a_restart(bootstrap, names):
    """With 3 partitions the interleaving is not reproducible, but every event counts once."""
    await kafka.provision(bootstrap, [kafka.TopicSpec(names["input"], partitions=3)])
    events = encoded(PHISHING)

    async def produce_spread(values):
        async with kafka.producer(bootstrap) as producer:
            for i, (key, value) in enumerate(values):
                await producer.send(names["input"], key=key.encode(), value=value, partition=i % 3)
            await producer.flush()

    def covered(count):
        def want(records):
            mine = [r for r in records if r["model_id"] == "phishing-logreg"]
            return any(sum(o["offset"] for o in r["offsets"]) >= count for r in mine)
        return want

    await produce_spread(events[:600])
    service = Service(settings_for(bootstrap, names))
    try:
        first = await read_all(bootstrap, names["snapshots"], "ModelSnapshot", covered(600))
    finally:
        await service.close()
    await produce_spread(events[600:])
    service = Service(settings_for(bootstrap, names))
    try:
        second = await read_all(bootstrap, names["snapshots"], "ModelSnapshot", covered(len(events)))
    finally:
        await service.close()
    final = latest(second)["phishing-logreg"]
    assert sorted((o["partition"], o["offset"]) for o in final["offsets"]) == [(0, 417), (1, 417), (2, 416)]
    assert final["events_seen"] == len(PHISHING)  # nothing learned twice, nothing skipped
    assert latest(first)["phishing-logreg"]["events_seen"] == 600
