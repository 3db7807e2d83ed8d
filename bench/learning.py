"""Events/s of the learning service next to the same River model learning in-process.

    .venv/bin/python bench/learning.py [--events 100000] [--repeat 2] [--ledger]

For each model below, the same CleanEvents (River's Phishing dataset, cycled) are:
  - learned in-process by River alone: `evaluate.progressive_val_score` over Python dicts
    already in memory (the baseline: no Kafka, no Avro);
  - only read and decoded, by a bare aiokafka consumer and the codec, with no model at all:
    the ceiling any service reading Kafka and Avro in one process can reach here (the
    service passes it by fetching and decoding in a reader process of its own);
  - learned by the service (`services.learning.app.Learning`, run in this process as `serve`
    runs it) from a one-partition Kafka topic the events were written to beforehand: from its
    `learning_started` log line until every model has processed the last event. The service
    runs with its default snapshot and metrics cadence (every 10,000 events or 30 s, metrics
    every 5 s; `STREAMLEDGER_LEARNING_*` may change them, and the figures say which ran), so
    Avro decoding, dead-letter checks, offsets and the snapshots written on the way are all
    inside the measured time; the last snapshot, written when the service stops, is not.
    Without `--ledger` the service runs with no ledger (`STREAMLEDGER_LEARNING_LEDGER=false`:
    River's and the service's own speed); with it, it registers every snapshot on the local
    Fabric network before publishing it, as it does by default (run it under
    `flock /tmp/fabric.lock`; the models get ids of their own per run).
The machine is shared, so each service run follows an in-process run of the same model right
away, and each rate is the best of `--repeat` such pairs: baseline and service see the same load.
Prints both rates and their ratio per model, and the CPU time per event of River in-process and
of the service's two processes together (learner and reader). Those explain a ratio that moves
with the machine's load: the scheduler shares the CPU between sessions (autogroups), so while
other sessions keep both cores busy, this bench's session gets its share and the service's two
processes split what River in-process had alone; the ratio then tends to River's CPU per event
over the service's. On a quiet machine the service has both cores. Asserts nothing.

Goal (issue 6): ratio >= 0.8 for logistic regression one event at a time; > 1.0 for a
model declared with `batch_size` (River's `learn_many`) against in-process `learn_one`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

from aiokafka import TopicPartition
from river import datasets, evaluate
from river.metrics.base import Metrics

from services.learning import app
from services.learning.settings import LearningSettings
from streamledger import kafka
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.declarations import load_declarations
from streamledger.lifecycle import run_until
from streamledger.settings import CommonSettings, LedgerSettings

MODELS = {
    "logreg": """
[[model]]
id = "logreg"
task = "binary"
metrics = ["Accuracy"]
pipeline = [ { class = "preprocessing.StandardScaler" }, { class = "linear_model.LogisticRegression" } ]
""",
    "logreg-batch500": """
[[model]]
id = "logreg-batch500"
task = "binary"
metrics = ["Accuracy"]
batch_size = 500
pipeline = [ { class = "preprocessing.StandardScaler" }, { class = "linear_model.LogisticRegression" } ]
""",
}


def clean_events(count: int) -> list[dict]:
    rows = list(datasets.Phishing())
    return [
        {"event_id": f"bench-{i}", "tenant": "bench", "source": "phishing", "ts": 1_700_000_000_000 + i,
         "features": {k: float(v) for k, v in rows[i % len(rows)][0].items()}, "label": rows[i % len(rows)][1],
         "content_hash": "0" * 64, "raw_partition": 0, "raw_offset": i}
        for i in range(count)
    ]


def in_process_rate(models_file: Path, events: list[dict]) -> tuple[float, float]:
    """Events/s of River learning in this process, and its CPU µs per event."""
    declaration = replace(load_declarations(models_file)[0], batch_size=1)  # River's learn_one, always
    stream = [(e["features"], e["label"]) for e in events]
    model, metrics = declaration.build_model(), Metrics(declaration.build_metrics())
    start, cpu = time.perf_counter(), time.process_time()
    evaluate.progressive_val_score(stream, model, metrics)
    return len(stream) / (time.perf_counter() - start), (time.process_time() - cpu) / len(stream) * 1e6


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children() -> list[int]:
    """This process's children (the service's reader process while it runs)."""
    tasks = Path(f"/proc/{os.getpid()}/task")
    return [int(pid) for task in tasks.iterdir() for pid in (task / "children").read_text().split()]


async def read_decode_rate(bootstrap: str, topic: str, events: int) -> float:
    """Events/s of fetching the topic from Kafka and decoding every CleanEvent, and nothing else."""
    codec = AvroCodec(SchemaRegistry.from_dir())
    async with kafka.consumer(bootstrap) as consumer:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        seen = 0
        start = time.perf_counter()
        while seen < events:
            for messages in (await consumer.getmany(timeout_ms=200, max_records=2000)).values():
                codec.decode_many([m.value for m in messages], reader="CleanEvent")
                seen += len(messages)
        return events / (time.perf_counter() - start)


class Counts(logging.Handler):
    """When the service logged `learning_started`, and how many snapshots it wrote."""

    def __init__(self) -> None:
        super().__init__()
        self.started: float | None = None
        self.snapshots = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "learning_started":
            self.started = record.created
        elif record.getMessage() == "snapshot_written":
            self.snapshots += 1


def settings_for(bootstrap: str, models_file: Path, topic: str, ledger: bool = False) -> LearningSettings:
    """The run's own output topics and group; every cadence the service's default (or the environment's)."""
    run_id = uuid.uuid4().hex[:8]
    return LearningSettings(
        kafka_bootstrap=bootstrap, learning_models_file=models_file, learning_input_topics=[topic],
        learning_snapshot_topic=f"bench-snapshots-{run_id}", learning_metrics_topic=f"bench-metrics-{run_id}",
        learning_deadletter_topic=f"bench-deadletter-{run_id}", learning_group_id=f"bench-{run_id}",
        learning_ledger=ledger,  # off: River's and the service's own speed; on: with the ledger's cost too
    )


async def service_rate(bootstrap: str, models_file: Path, topic: str, events: int,
                       ledger: bool = False) -> tuple[float, int, float]:
    """Events/s of the service from `learning_started` until every model processed the last event, the
    number of snapshots it wrote meanwhile, and the CPU µs per event of its two processes together."""
    counts = Counts()
    logger = logging.getLogger("streamledger.learning")
    logger.addHandler(counts)
    logger.setLevel(logging.INFO)
    settings = settings_for(bootstrap, models_file, topic, ledger)
    service, stop = app.Learning(settings, LedgerSettings() if ledger else None), asyncio.Event()
    task = asyncio.create_task(run_until(service, stop))
    try:
        async with asyncio.timeout(300):
            while counts.started is None:
                await asyncio.sleep(0.002)
            pids = [os.getpid(), *children()]  # the learner (here) and its reader process
            cpu = sum(map(cpu_seconds, pids))
            while any(m.offsets.get((topic, 0), 0) < events for m in service.learners.models.values()):
                await asyncio.sleep(0.002)  # the loop's turn comes between the service's batches
        finished, snapshots, cpu = time.time(), counts.snapshots, sum(map(cpu_seconds, pids)) - cpu
    finally:
        stop.set()
        await task
        logger.removeHandler(counts)
    return events / (finished - counts.started), snapshots, cpu / events * 1e6


async def main(events_count: int, repeat: int, ledger: bool) -> None:
    bootstrap = CommonSettings().kafka_bootstrap
    codec = AvroCodec(SchemaRegistry.from_dir())
    events = clean_events(events_count)
    topic = f"bench-learning-{uuid.uuid4().hex[:8]}"
    await kafka.provision(bootstrap, [kafka.TopicSpec(topic, partitions=1)])
    async with kafka.producer(bootstrap, linger_ms=20) as producer:
        for event, value in zip(events, codec.encode_many("CleanEvent", events)):
            await producer.send(topic, key=event["event_id"].encode(), value=value)
        await producer.flush()
    cadence = settings_for(bootstrap, Path("unused"), topic)
    print(f"{events_count} CleanEvents (Phishing, cycled) on {topic}; best of {repeat} runs each, "
          "each service run right after an in-process one")
    print(f"service cadence: a snapshot every {cadence.learning_snapshot_every_events:,} events or "
          f"{cadence.learning_snapshot_every_seconds:g} s, metrics every {cadence.learning_metrics_every_seconds:g} s "
          f"(defaults: 10,000 events or 30 s, 5 s); "
          + ("every snapshot registered on the ledger first" if ledger else "no ledger (--ledger: with one)"))
    print(f"{'model':<18} {'in-process River':>18} {'service':>14} {'ratio':>7}   CPU µs/event: River, service")
    suffix = f"-{uuid.uuid4().hex[:6]}" if ledger else ""  # the ledger keeps every model's versions
    with tempfile.TemporaryDirectory() as tmp:
        baseline_file = Path(tmp) / "logreg.toml"
        baseline_file.write_text(MODELS["logreg"])
        pairs = [(in_process_rate(baseline_file, events)[0], await read_decode_rate(bootstrap, topic, events_count))
                 for _ in range(repeat)]
        baseline, ceiling = max(b for b, _ in pairs), max(c for _, c in pairs)
        print(f"{'read+decode only':<18} {baseline:>14,.0f} ev/s {ceiling:>10,.0f} ev/s {ceiling / baseline:>7.2f}"
              "   (no model: the one-process ceiling)")
        for name, toml in MODELS.items():
            models_file = Path(tmp) / f"{name}.toml"
            models_file.write_text(toml.replace(f'id = "{name}"', f'id = "{name}{suffix}"'))
            baselines, runs = [], []
            for _ in range(repeat):
                baselines.append(in_process_rate(models_file, events))
                runs.append(await service_rate(bootstrap, models_file, topic, events_count, ledger))
            (baseline, river_cpu), (service, snapshots, service_cpu) = max(baselines), max(runs)
            print(f"{name:<18} {baseline:>14,.0f} ev/s {service:>10,.0f} ev/s {service / baseline:>7.2f}"
                  f"   {river_cpu:.1f}, {service_cpu:.1f} ({snapshots} snapshots written meanwhile)")
    print("baseline of every row: River learn_one in-process (progressive_val_score) on the same events")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--ledger", action="store_true",
                        help="register every snapshot on the local ledger (under flock /tmp/fabric.lock)")
    args = parser.parse_args()
    asyncio.run(main(args.events, args.repeat, args.ledger))
