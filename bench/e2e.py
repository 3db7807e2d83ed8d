"""End to end: every service running (as `streamledger demo` runs them), events pushed through
HTTP ingestion for a while, and what each stage sustained, next to bare Kafka in the same run.

    .venv/bin/python bench/e2e.py [--rate 10000] [--seconds 60] [--latency-rate 5000 --latency-seconds 30]

Needs the local stack with Fabric (`streamledger stack up --fabric`): the ledger service anchors.
One run, on topics, consumer groups and a database of its own:

1. Baseline: a bare aiokafka producer and consumer move the same RawEvents through one topic.
2. ingestion, cleaning, storage, learning and the ledger service (anchoring; no settlement)
   start as `streamledger serve NAME` children, each acting as its own ledger identity.
3. Throughput: HTTP posters send batches of phishing-like events at `--rate` for `--seconds`.
   Every second the bench samples each stage's position: ingested (the raw topic's end),
   cleaned (the clean topic's end), stored (storage's committed offsets), anchored (the last
   clean offset an anchor covers) and learned (the slowest model's `position` on the metrics
   topic). A stage's rate is its progress over the load window divided by the measured wall
   time; its lag is how far it is behind the stage before it, first and last third of the
   window (lag that grows means the stage cannot keep up at that rate).
4. Latency: posting at `--latency-rate`, the bench times sampled events from the HTTP answer
   (accepted) to the moment it sees an anchor covering the event's clean record.
5. Where the time goes: each service's CPU seconds (from /proc, its child processes included)
   per 1,000 events it handled.
6. Memory: each service's resident memory (with its child processes) once the services are up,
   after the throughput phase and after the latency phase, so growth shows.

Learning runs the logistic regression alone by default (`--models all` runs every declared
model: the adaptive random forest learns far below ingest speed, by design of the model).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import secrets
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from aiokafka import TopicPartition

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devstack.runner import ServiceGroup  # noqa: E402
from services.ingestion.auth import hash_key  # noqa: E402
from streamledger import kafka  # noqa: E402
from streamledger.avro import AvroCodec, SchemaRegistry  # noqa: E402
from streamledger.kafka import topics as table  # noqa: E402
from streamledger.mongo import mongo_client  # noqa: E402
from streamledger.settings import CommonSettings  # noqa: E402

CODEC = AvroCodec(SchemaRegistry.from_dir())
TABLE_NAMES = {"raw": table.RAW, "clean": table.CLEAN, "dead": table.DEADLETTER, "anchors": table.ANCHORS,
               "metrics": table.MODEL_METRICS, "snapshots": table.SNAPSHOTS, "predictions": table.PREDICTIONS,
               "usage": table.USAGE, "baseline": table.RAW + ".baseline"}
STAGES = ("ingested", "cleaned", "stored", "anchored", "learned")
SERVICE_OF = {"ingested": "ingestion", "cleaned": "cleaning", "stored": "storage", "anchored": "ledger",
              "learned": "learning"}
TENANT = "bench"
FEATURES = ("empty_server_form_handler", "popup_window", "https", "request_from_other_domain",
            "anchor_from_other_domain", "is_popular", "long_url", "age_of_domain", "ip_in_url")
LOGREG_ONLY = """
[[model]]
id = "phishing-logreg"
task = "binary"
source = "phishing"
metrics = ["Accuracy", "ROCAUC"]
pipeline = [
  { class = "preprocessing.StandardScaler" },
  { class = "linear_model.LogisticRegression", params = { optimizer = { class = "optim.SGD", params = { lr = 0.1 } } } },
]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def event(run: str, n: int, rng: random.Random) -> dict:
    features = {name: rng.random() for name in FEATURES}
    return {"event_id": f"e2e-{run}-{n}", "tenant": TENANT, "source": "phishing", "ts": int(time.time() * 1000),
            "features": features, "label": features["https"] > 0.5}


# -- the bare Kafka baseline --
async def bare_kafka(bootstrap: str, topic: str, count: int) -> tuple[float, float]:
    """RawEvents/s a bare idempotent producer writes (acks=all) and a bare consumer reads."""
    rng = random.Random(1)
    values = CODEC.encode_many("RawEvent", (event("baseline", i, rng) for i in range(count)))
    async with kafka.producer(bootstrap) as producer:
        started = time.perf_counter()
        for i, value in enumerate(values):
            await producer.send(topic, value, key=str(i).encode())
        await producer.flush()
        produced = count / (time.perf_counter() - started)
    consumer = kafka.consumer(bootstrap)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        await consumer.position(tp)
        seen, started = 0, time.perf_counter()
        while seen < count:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            seen += sum(len(m) for m in batches.values())
        return produced, count / (time.perf_counter() - started)
    finally:
        await consumer.stop()


# -- the services --
@dataclass
class Run:
    settings: CommonSettings
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    port: int = field(default_factory=free_port)
    api_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    numbers: Iterator[int] = field(default_factory=itertools.count)
    """Event numbers, continued from phase to phase: a number used again would be a duplicate
    event id, which cleaning drops."""

    def topic(self, role: str) -> str:
        """Under the table's name (events.raw.bench-e2e-<run>, ...): each service acts as its own
        Kafka principal, whose ACLs cover its topics and the names under them."""
        return f"{TABLE_NAMES[role]}.bench-e2e-{self.run}"

    def group(self, service: str) -> str:
        return f"streamledger-{service}-bench-e2e-{self.run}"  # a service owns its streamledger-<service>* groups

    @property
    def database(self) -> str:
        return f"bench_e2e_{self.run}"

    def env(self, scratch: Path, models: str) -> dict[str, str]:
        t = self.topic
        return {
            "STREAMLEDGER_LOG_LEVEL": "INFO", "STREAMLEDGER_MONGO_DB": self.database,
            "STREAMLEDGER_INGESTION_API_KEYS": json.dumps({TENANT: [hash_key(self.api_key)]}),
            "STREAMLEDGER_INGESTION_HTTP_PORT": str(self.port), "STREAMLEDGER_INGESTION_GRPC_PORT": str(free_port()),
            "STREAMLEDGER_INGESTION_RAW_TOPIC": t("raw"), "STREAMLEDGER_INGESTION_RAW_PARTITIONS": "1",
            "STREAMLEDGER_CLEANING_RAW_TOPIC": t("raw"), "STREAMLEDGER_CLEANING_CLEAN_TOPIC": t("clean"),
            "STREAMLEDGER_CLEANING_DEADLETTER_TOPIC": t("dead"), "STREAMLEDGER_CLEANING_GROUP": self.group("cleaning"),
            "STREAMLEDGER_STORAGE_CLEAN_TOPIC": t("clean"), "STREAMLEDGER_STORAGE_DEADLETTER_TOPIC": t("dead"),
            "STREAMLEDGER_STORAGE_PREDICTIONS_TOPIC": t("predictions"), "STREAMLEDGER_STORAGE_ANCHORS_TOPIC": t("anchors"),
            "STREAMLEDGER_STORAGE_SNAPSHOTS_TOPIC": t("snapshots"), "STREAMLEDGER_STORAGE_GROUP": self.group("storage"),
            "STREAMLEDGER_LEARNING_INPUT_TOPICS": json.dumps([t("clean")]), "STREAMLEDGER_LEARNING_GROUP_ID": self.group("learning"),
            "STREAMLEDGER_LEARNING_SNAPSHOT_TOPIC": t("snapshots"), "STREAMLEDGER_LEARNING_METRICS_TOPIC": t("metrics"),
            "STREAMLEDGER_LEARNING_DEADLETTER_TOPIC": t("dead"), "STREAMLEDGER_LEARNING_METRICS_EVERY_SECONDS": "1",
            **({"STREAMLEDGER_LEARNING_MODELS_FILE": str(scratch / "models.toml")} if models == "logreg" else {}),
            "STREAMLEDGER_LEDGER_CLEAN_TOPIC": t("clean"), "STREAMLEDGER_LEDGER_ANCHORS_TOPIC": t("anchors"),
            "STREAMLEDGER_LEDGER_USAGE_TOPIC": t("usage"), "STREAMLEDGER_LEDGER_DEADLETTER_TOPIC": t("dead"),
            "STREAMLEDGER_LEDGER_ANCHOR_GROUP": self.group("ledger-anchoring"), "STREAMLEDGER_LEDGER_SETTLEMENT": "false",
        }


def family(pid: int) -> list[int]:
    """`pid` and its live descendants (a service's child processes: learning's reader,
    inference's record writer), from /proc."""
    pids, i = [pid], 0
    while i < len(pids):
        for task in Path(f"/proc/{pids[i]}/task").glob("*"):
            try:
                pids.extend(int(child) for child in (task / "children").read_text().split())
            except OSError:
                pass
        i += 1
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` and its children (live, and reaped), from /proc."""
    total = 0.0
    for member in family(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        total += sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


def resident_mib(pid: int) -> float:
    """Resident memory of `pid` and its live children, MiB (VmRSS from /proc)."""
    total = 0
    for member in family(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total / 1024


def record_memory(group: ServiceGroup, when: str, memory: dict[str, list]) -> None:
    """Each service's resident memory now, appended to `memory` (and `when` to its "_when")."""
    for name, process in group.processes.items():
        memory.setdefault(name, []).append(resident_mib(process.pid))
    memory.setdefault("_when", []).append(when)


async def wait_healthy(group: ServiceGroup, port: int, names: list[str], timeout: float = 120.0) -> None:
    """Until ingestion answers /healthz and every other service has logged `started`."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline:
            if group.exited():
                name = next(iter(group.exited()))
                raise SystemExit(f"{name} exited during start-up:\n{group.log_tail(name, 30)}")
            try:
                healthy = (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
            except httpx.HTTPError:
                healthy = False
            logs = {n: (group.log_dir / f"service-{n}.log").read_text(errors="replace") for n in names}
            if healthy and all('"event": "started"' in text for text in logs.values()):
                return
            await asyncio.sleep(0.5)
    raise SystemExit(f"services not all started within {timeout:.0f}s")


# -- watching the stages --
@dataclass
class Watch:
    """Each stage's position, read from Kafka as the services leave it."""

    bootstrap: str
    run: Run
    anchored: int = 0  # clean offsets covered by anchors (last covered + 1)
    anchored_at: list[tuple[float, int]] = field(default_factory=list)  # (when seen, covered up to)
    learned: dict[str, int] = field(default_factory=dict)

    async def follow(self) -> None:
        consumer = kafka.consumer(self.bootstrap)
        await consumer.start()
        anchors, metrics = TopicPartition(self.run.topic("anchors"), 0), TopicPartition(self.run.topic("metrics"), 0)
        try:
            consumer.assign([anchors, metrics])
            await consumer.seek_to_beginning(anchors, metrics)
            while True:
                for tp, messages in (await consumer.getmany(timeout_ms=200)).items():
                    for message in messages:
                        if tp == anchors:
                            record = CODEC.decode(message.value)
                            self.anchored = max(self.anchored, record["last_offset"] + 1)
                            self.anchored_at.append((time.monotonic(), self.anchored))
                        else:
                            record = CODEC.decode(message.value)
                            self.learned[record["model_id"]] = record["position"]
        finally:
            await consumer.stop()

    async def positions(self, consumer, admin) -> dict[str, int]:
        raw, clean = TopicPartition(self.run.topic("raw"), 0), TopicPartition(self.run.topic("clean"), 0)
        ends = await consumer.end_offsets([raw, clean])
        stored = (await admin.list_consumer_group_offsets(self.run.group("storage"))).get(clean)
        return {"ingested": ends[raw], "cleaned": ends[clean], "stored": stored.offset if stored and stored.offset > 0 else 0,
                "anchored": self.anchored, "learned": min(self.learned.values(), default=0)}


# -- load --
async def post_at(run: Run, rate: float, seconds: float, batch: int, sampled: dict[str, float] | None = None,
                  concurrency: int = 4) -> tuple[int, int]:
    """Post events at `rate` per second for `seconds`; (accepted, refused). With `sampled`, the
    first event of every batch is timed: its id -> when its batch was accepted."""
    url, headers = f"http://127.0.0.1:{run.port}/v1/events", {"Authorization": f"Bearer {run.api_key}"}
    counter, accepted, refused = run.numbers, 0, 0
    rng = random.Random(run.run)
    started = time.monotonic()
    per_poster = rate / concurrency

    async def poster(http: httpx.AsyncClient) -> None:
        nonlocal accepted, refused
        sent = 0
        while time.monotonic() - started < seconds:
            events = [event(run.run, next(counter), rng) for _ in range(batch)]
            answer = await http.post(url, content=json.dumps(events), headers={**headers,
                                                                              "Content-Type": "application/json"})
            if answer.status_code == 200:
                accepted += len(answer.json().get("event_ids", []))
                if sampled is not None:
                    sampled[events[0]["event_id"]] = time.monotonic()
            else:
                refused += len(events)
            sent += batch
            await asyncio.sleep(max(0.0, started + sent / per_poster - time.monotonic()))

    async with httpx.AsyncClient(timeout=30) as http:
        await asyncio.gather(*(poster(http) for _ in range(concurrency)))
    return accepted, refused


async def clean_offsets(bootstrap: str, topic: str, wanted: dict[str, float], found: dict[str, int],
                        stop: asyncio.Event) -> None:
    """Find the clean topic offset of every event id cleaned from now on (`wanted` are the samples)."""
    consumer = kafka.consumer(bootstrap)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        while not stop.is_set():
            for messages in (await consumer.getmany(timeout_ms=200, max_records=5000)).values():
                for message in messages:
                    # Every id, not only those sampled so far: a clean record can come before the
                    # HTTP answer that makes its event a sample.
                    found[CODEC.decode(message.value)["event_id"]] = message.offset
    finally:
        await consumer.stop()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def main(args: argparse.Namespace) -> None:
    settings = CommonSettings()
    bootstrap, run = settings.kafka_bootstrap, Run(settings)
    names = ["storage", "cleaning", "learning", "ledger", "ingestion"]
    await kafka.provision(bootstrap, [table.spec(table.RAW, run.topic("raw"), partitions=1),
                                      table.spec(table.CLEAN, run.topic("clean")),
                                      table.spec(table.DEADLETTER, run.topic("dead")),
                                      table.spec(table.ANCHORS, run.topic("anchors")),
                                      table.spec(table.MODEL_METRICS, run.topic("metrics")),
                                      table.spec(table.SNAPSHOTS, run.topic("snapshots")),
                                      table.TopicSpec(run.topic("baseline"))])
    produced, consumed = await bare_kafka(bootstrap, run.topic("baseline"), args.baseline_events)
    args.produced_baseline = produced
    print(f"bare Kafka (same run): produce {produced:,.0f} RawEvents/s, consume {consumed:,.0f}/s\n")

    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as scratch:
        (Path(scratch) / "models.toml").write_text(LOGREG_ONLY)
        group = ServiceGroup(env=run.env(Path(scratch), args.models), log_dir=Path(scratch) / "logs")
        group.start(names)
        watch = Watch(bootstrap, run)
        follower = asyncio.create_task(watch.follow())
        consumer = kafka.consumer(bootstrap)
        await consumer.start()
        try:
            async with kafka.admin(bootstrap) as admin:
                await wait_healthy(group, run.port, [n for n in names if n != "ingestion"])
                print(f"services up: {', '.join(names)} (logs: {group.log_dir})")
                memory: dict[str, list] = {}
                record_memory(group, "up", memory)
                await throughput(args, run, watch, group, consumer, admin)
                record_memory(group, "after throughput", memory)
                await latency(args, run, watch, bootstrap)
                record_memory(group, "after latency", memory)
                when = memory.pop("_when")
                print("resident memory, MiB (each service with its child processes): "
                      + ", ".join(f"{w}" for w in when))
                for name, values in memory.items():
                    print(f"  {name:<10} " + "  ".join(f"{v:>8.0f}" for v in values))
        finally:
            follower.cancel()
            await consumer.stop()
            group.stop()
            client = mongo_client(settings.mongo_url)
            await client.drop_database(run.database)
            await client.close()


async def throughput(args, run: Run, watch: Watch, group: ServiceGroup, consumer, admin) -> None:
    print(f"throughput: posting {args.rate:,.0f} events/s for {args.seconds:.0f} s in batches of {args.batch}")
    samples: list[tuple[float, dict[str, int]]] = []
    cpu_before = {name: cpu_seconds(p.pid) for name, p in group.processes.items()}
    load = asyncio.create_task(post_at(run, args.rate, args.seconds, args.batch))
    started = time.monotonic()
    while not load.done():
        samples.append((time.monotonic() - started, await watch.positions(consumer, admin)))
        await asyncio.sleep(1.0)
    accepted, refused = load.result()
    window = samples[-1][0] - samples[0][0]
    end = samples[-1][1]
    drain_started = time.monotonic()
    while time.monotonic() - drain_started < args.drain:  # let the stages finish what was accepted
        now = await watch.positions(consumer, admin)
        if all(now[s] >= now["ingested"] for s in STAGES[1:]):
            break
        await asyncio.sleep(1.0)
    drained = await watch.positions(consumer, admin)
    cpu = {name: cpu_seconds(p.pid) - cpu_before[name] for name, p in group.processes.items()}
    print(f"  accepted {accepted:,}, refused {refused:,} (503 = back-pressure)")
    print(f"  {'stage':<10} {'events/s':>10} {'x bare produce':>15} {'lag first third':>16} {'lag last third':>15}"
          f" {'after drain':>12} {'CPU s/1k ev':>12}")
    third = max(1, len(samples) // 3)
    for i, stage in enumerate(STAGES):
        rate = (end[stage] - samples[0][1][stage]) / window if window > 0 else 0.0
        before = STAGES[i - 1] if i else None
        lag = (lambda part: sum(s[before] - s[stage] for _, s in part) / len(part)) if before else None
        handled = max(1, drained[stage])
        print(f"  {stage:<10} {rate:>10,.0f} {rate / args.produced_baseline:>15.2f}"
              f" {lag(samples[:third]) if lag else 0:>16,.0f} {lag(samples[-third:]) if lag else 0:>15,.0f}"
              f" {drained['ingested'] - drained[stage]:>12,} {cpu[SERVICE_OF[stage]] / handled * 1000:>12.3f}")
    print(f"  (drained for {time.monotonic() - drain_started:.0f} s; lag = behind the stage before, in events)")


async def latency(args, run: Run, watch: Watch, bootstrap: str) -> None:
    if args.latency_seconds <= 0:
        return
    print(f"latency: posting {args.latency_rate:,.0f} events/s for {args.latency_seconds:.0f} s, first event of "
          f"each batch timed from accepted to anchored")
    sampled: dict[str, float] = {}
    found: dict[str, int] = {}
    stop = asyncio.Event()
    finder = asyncio.create_task(clean_offsets(bootstrap, run.topic("clean"), sampled, found, stop))
    await post_at(run, args.latency_rate, args.latency_seconds, args.batch, sampled)
    deadline = time.monotonic() + args.drain
    def sample_offsets() -> list[int]:
        return [found[event_id] for event_id in sampled if event_id in found]

    while time.monotonic() < deadline and (len(sample_offsets()) < len(sampled)
                                           or watch.anchored <= max(sample_offsets(), default=0)):
        await asyncio.sleep(0.5)
    stop.set()
    await finder
    latencies = []
    for event_id, accepted_at in sampled.items():
        offset = found.get(event_id)
        seen = next((when for when, covered in watch.anchored_at if offset is not None and covered > offset), None)
        if seen is not None:
            latencies.append(seen - accepted_at)
    print(f"  ingest -> anchored, {len(latencies)} of {len(sampled)} sampled events: p50 "
          f"{percentile(latencies, 0.5):.2f} s, p99 {percentile(latencies, 0.99):.2f} s, max "
          f"{max(latencies, default=float('nan')):.2f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=10_000, help="events/s posted in the throughput phase")
    parser.add_argument("--seconds", type=float, default=60, help="length of the throughput phase")
    parser.add_argument("--batch", type=int, default=500, help="events per HTTP request")
    parser.add_argument("--latency-rate", type=float, default=5_000)
    parser.add_argument("--latency-seconds", type=float, default=30, help="0 skips the latency phase")
    parser.add_argument("--drain", type=float, default=60, help="seconds to wait for the stages to catch up")
    parser.add_argument("--baseline-events", type=int, default=50_000)
    parser.add_argument("--models", choices=("logreg", "all"), default="logreg")
    asyncio.run(main(parser.parse_args()))
