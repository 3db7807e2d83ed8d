"""End to end: every service running (as `streamledger demo` runs them), events pushed through
HTTP ingestion for a while, and what each stage sustained, next to bare Kafka in the same run.

    .venv/bin/python bench/e2e.py [--rate 10000] [--seconds 60] [--latency-rate 5000 --latency-seconds 30]
                                  [--replicas N] [--brokers {1,3}] [--partitions P]
    flock /tmp/cluster.lock .venv/bin/python bench/e2e.py --matrix [--rate ... --seconds ...]

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
7. Scale-out: `--replicas N` starts every service N times (`ServiceGroup.start(names, replicas=N)`:
   ingestion's replicas share its port, the others share their consumer groups), on raw and clean
   topics of `--partitions` partitions (default 1 for one replica, 2 x N for N: replicas beyond
   the partitions would sit idle). `--brokers 3` runs on a three-node Kafka cluster the bench
   starts in a scratch home (bench/brokers.py; run it under `flock /tmp/cluster.lock`), the
   services connecting with that cluster's credentials; FerretDB and Fabric stay the shared
   stack's. `--matrix` runs 1 broker x 1 replica, 1 x 2, 3 x 1 and 3 x 2 one after the other with
   the same load and prints one table: each stage's events/s, its lag after the drain, and each
   configuration's ratio to 1 x 1 of the same run.
8. What a real cluster needs (computed, not measured): the ledger transactions/s each rate and
   partition count asks for at the service's batch size, and partitions per replica.

Learning runs the logistic regression alone by default (`--models all` runs every declared
model: the adaptive random forest learns far below ingest speed, by design of the model).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import random
import secrets
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from aiokafka import TopicPartition

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.brokers import Brokers, shared_broker, three_brokers
from devstack.runner import ServiceGroup
from services.ingestion.auth import hash_key
from services.ledger.anchoring import Batcher
from services.ledger.settings import LedgerServiceSettings
from streamledger import kafka
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.kafka import topics as table
from streamledger.mongo import mongo_client
from streamledger.settings import CommonSettings

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
async def bare_kafka(brokers: Brokers, topic: str, count: int) -> tuple[float, float]:
    """RawEvents/s a bare idempotent producer writes (acks=all) and a bare consumer reads."""
    rng = random.Random(1)
    values = CODEC.encode_many("RawEvent", (event("baseline", i, rng) for i in range(count)))
    async with kafka.producer(brokers.bootstrap, security=brokers.security) as producer:
        started = time.perf_counter()
        for i, value in enumerate(values):
            await producer.send(topic, value, key=str(i).encode())
        await producer.flush()
        produced = count / (time.perf_counter() - started)
    consumer = kafka.consumer(brokers.bootstrap, security=brokers.security)
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
    partitions: int = 1
    """Of the raw and clean topics: what the replicas of cleaning, storage and anchoring share."""
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

    def specs(self) -> list[kafka.TopicSpec]:
        return [table.spec(table.RAW, self.topic("raw"), partitions=self.partitions),
                table.spec(table.CLEAN, self.topic("clean"), partitions=self.partitions),
                table.spec(table.DEADLETTER, self.topic("dead")),
                table.spec(table.ANCHORS, self.topic("anchors")),
                table.spec(table.MODEL_METRICS, self.topic("metrics")),
                table.spec(table.SNAPSHOTS, self.topic("snapshots")),
                table.TopicSpec(self.topic("baseline"))]

    def env(self, scratch: Path, models: str) -> dict[str, str]:
        t = self.topic
        return {
            "STREAMLEDGER_LOG_LEVEL": "INFO", "STREAMLEDGER_MONGO_DB": self.database,
            "STREAMLEDGER_INGESTION_API_KEYS": json.dumps({TENANT: [hash_key(self.api_key)]}),
            "STREAMLEDGER_INGESTION_HTTP_PORT": str(self.port), "STREAMLEDGER_INGESTION_GRPC_PORT": str(free_port()),
            "STREAMLEDGER_INGESTION_RAW_TOPIC": t("raw"), "STREAMLEDGER_INGESTION_RAW_PARTITIONS": str(self.partitions),
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


def service_cpu(group: ServiceGroup) -> dict[str, float]:
    """CPU seconds of each service so far, its replicas (and their children) added up."""
    return {name: sum(cpu_seconds(group.processes[key].pid) for key in group.keys(name))
            for name in SERVICE_OF.values()}


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
    """Each process's resident memory now, appended to `memory` (and `when` to its "_when")."""
    for key, process in group.processes.items():
        memory.setdefault(key, []).append(resident_mib(process.pid))
    memory.setdefault("_when", []).append(when)


async def wait_healthy(group: ServiceGroup, port: int, keys: list[str], timeout: float = 180.0) -> None:
    """Until ingestion answers /healthz and every process in `keys` has logged `started`."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline:
            if group.exited():
                key = next(iter(group.exited()))
                raise SystemExit(f"{key} exited during start-up:\n{group.log_tail(key, 30)}")
            try:
                healthy = (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
            except httpx.HTTPError:
                healthy = False
            logs = {k: group.log_file(k).read_text(errors="replace") for k in keys}
            if healthy and all('"event": "started"' in text for text in logs.values()):
                return
            await asyncio.sleep(0.5)
    raise SystemExit(f"services not all started within {timeout:.0f}s")


# -- watching the stages --
async def partitions(brokers: Brokers, topic: str) -> list[TopicPartition]:
    return [TopicPartition(t, p) for t, p in await kafka.partitions_of(brokers.bootstrap, [topic],
                                                                       security=brokers.security)]


@dataclass
class Watch:
    """Each stage's position, read from Kafka as the services leave it (summed over partitions)."""

    brokers: Brokers
    run: Run
    anchored_by_partition: dict[int, int] = field(default_factory=dict)
    """Per clean partition, the offsets covered by anchors (last covered + 1)."""
    anchored_at: list[tuple[float, int, int]] = field(default_factory=list)
    """(when seen, clean partition, covered up to)."""
    learned: dict[str, int] = field(default_factory=dict)

    @property
    def anchored(self) -> int:
        return sum(self.anchored_by_partition.values())

    async def follow(self) -> None:
        anchors, metrics = self.run.topic("anchors"), self.run.topic("metrics")
        assigned = await partitions(self.brokers, anchors) + await partitions(self.brokers, metrics)
        consumer = kafka.consumer(self.brokers.bootstrap, security=self.brokers.security)
        await consumer.start()
        try:
            consumer.assign(assigned)
            await consumer.seek_to_beginning(*assigned)
            while True:
                for tp, messages in (await consumer.getmany(timeout_ms=200)).items():
                    for message in messages:
                        record = CODEC.decode(message.value)
                        if tp.topic == anchors:
                            p = record["partition"]
                            self.anchored_by_partition[p] = max(self.anchored_by_partition.get(p, 0),
                                                                record["last_offset"] + 1)
                            self.anchored_at.append((time.monotonic(), p, self.anchored_by_partition[p]))
                        else:  # a model's position only grows (replicas hand it over with its snapshot)
                            model = record["model_id"]
                            self.learned[model] = max(self.learned.get(model, 0), record["position"])
        finally:
            await consumer.stop()

    async def positions(self, consumer, admin, raw: list[TopicPartition], clean: list[TopicPartition]) -> dict[str, int]:
        ends = await consumer.end_offsets(raw + clean)
        committed = await admin.list_consumer_group_offsets(self.run.group("storage"))
        stored = sum(max(0, committed[tp].offset) for tp in clean if tp in committed)
        return {"ingested": sum(ends[tp] for tp in raw), "cleaned": sum(ends[tp] for tp in clean), "stored": stored,
                "anchored": self.anchored, "learned": min(self.learned.values(), default=0)}


# -- load --
async def post_at(run: Run, rate: float, seconds: float, batch: int, sampled: dict[str, float] | None = None,
                  concurrency: int = 4) -> tuple[int, int]:
    """Post events at `rate` per second for `seconds`; (accepted, refused). With `sampled`, the
    first event of every batch is timed: its id -> when its batch was accepted. Each poster keeps
    one connection: with ingestion replicas sharing the port, the kernel spreads the connections."""
    url, headers = f"http://127.0.0.1:{run.port}/v1/events", {"Authorization": f"Bearer {run.api_key}"}
    counter, accepted, refused = run.numbers, 0, 0
    rng = random.Random(run.run)
    started = time.monotonic()
    per_poster = rate / concurrency

    async def poster() -> None:
        nonlocal accepted, refused
        sent = 0
        async with httpx.AsyncClient(timeout=30) as http:
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

    await asyncio.gather(*(poster() for _ in range(concurrency)))
    return accepted, refused


async def clean_offsets(brokers: Brokers, topic: str, found: dict[str, tuple[int, int]], stop: asyncio.Event) -> None:
    """Find the clean partition and offset of every event id cleaned from now on."""
    assigned = await partitions(brokers, topic)
    consumer = kafka.consumer(brokers.bootstrap, security=brokers.security)
    await consumer.start()
    try:
        consumer.assign(assigned)
        await consumer.seek_to_end(*assigned)
        while not stop.is_set():
            for tp, messages in (await consumer.getmany(timeout_ms=200, max_records=5000)).items():
                for message in messages:
                    # Every id, not only those sampled so far: a clean record can come before the
                    # HTTP answer that makes its event a sample.
                    found[CODEC.decode(message.value)["event_id"]] = (tp.partition, message.offset)
    finally:
        await consumer.stop()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# -- one configuration --
@dataclass
class Result:
    """What one configuration sustained: each stage's events/s over the load window, and how far
    each stage was behind ingestion after the drain."""

    brokers: int
    replicas: int
    partitions: int
    rates: dict[str, float]
    lag_after_drain: dict[str, int]
    cpu_per_1k: dict[str, float]
    accepted: int
    refused: int


def partitions_for(replicas: int, given: int | None) -> int:
    """The raw and clean topics' partitions: as given, else 1 for one replica and 2 per replica for
    more (replicas beyond the partitions would sit idle; two each keeps the spread even when a
    replica's partitions are handed over)."""
    return given if given else (1 if replicas == 1 else 2 * replicas)


async def measure(args: argparse.Namespace, brokers: Brokers, replicas: int, partition_count: int) -> Result:
    settings = CommonSettings()
    run = Run(settings, partitions=partition_count)
    names = ["storage", "cleaning", "learning", "ledger", "ingestion"]
    print(f"== {brokers.count} broker{'s' if brokers.count > 1 else ''} ({brokers.bootstrap}) x {replicas} "
          f"replica{'s' if replicas > 1 else ''} per service; raw and clean topics of {partition_count} "
          f"partition{'s' if partition_count > 1 else ''}; run {run.run}")
    if partition_count < replicas:
        print(f"  note: {partition_count} partitions for {replicas} replicas: the replicas of cleaning, storage and "
              f"anchoring beyond {partition_count} sit idle (give --partitions {2 * replicas})")
    await kafka.provision(brokers.bootstrap, run.specs(), security=brokers.security)
    produced, consumed = await bare_kafka(brokers, run.topic("baseline"), args.baseline_events)
    print(f"bare Kafka (same run): produce {produced:,.0f} RawEvents/s, consume {consumed:,.0f}/s\n")

    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as scratch:
        (Path(scratch) / "models.toml").write_text(LOGREG_ONLY)
        group = ServiceGroup(env=run.env(Path(scratch), args.models), log_dir=Path(scratch) / "logs",
                             kafka_auth_dir=brokers.auth_dir)
        watch = Watch(brokers, run)
        follower: asyncio.Task | None = None
        consumer = kafka.consumer(brokers.bootstrap, security=brokers.security)
        await consumer.start()
        try:
            keys = group.start(names, replicas=replicas)
            follower = asyncio.create_task(watch.follow())
            raw, clean = await partitions(brokers, run.topic("raw")), await partitions(brokers, run.topic("clean"))
            async with kafka.admin(brokers.bootstrap, security=brokers.security) as admin:
                await wait_healthy(group, run.port, [k for k in keys if k not in group.keys("ingestion")])
                print(f"services up: {', '.join(keys)} (logs: {group.log_dir})")
                memory: dict[str, list] = {}
                record_memory(group, "up", memory)
                result = await throughput(args, run, watch, group, consumer, admin, raw, clean, produced)
                result.brokers, result.replicas = brokers.count, replicas
                record_memory(group, "after throughput", memory)
                await latency(args, run, watch, brokers)
                record_memory(group, "after latency", memory)
                when = memory.pop("_when")
                print("resident memory, MiB (each process with its child processes): "
                      + ", ".join(f"{w}" for w in when))
                for key, values in memory.items():
                    print(f"  {key:<12} " + "  ".join(f"{v:>8.0f}" for v in values))
                sizing(args, result)
                for key, code in group.exited().items():  # a replica that died is a finding, not noise
                    print(f"!! {key} exited with {code} during the run; its log's end:\n{group.log_tail(key, 20)}")
                return result
        finally:
            if follower is not None:
                follower.cancel()
            await consumer.stop()
            died = group.exited()  # before stopping: every process stopped has exited
            group.stop()
            if died:  # keep the logs past the scratch folder's removal
                kept = Path(tempfile.gettempdir()) / f"bench-e2e-logs-{run.run}"
                shutil.copytree(group.log_dir, kept)
                print(f"!! {', '.join(died)} exited during the run: logs kept in {kept}")
            client = mongo_client(settings.mongo_url)
            await client.drop_database(run.database)
            await client.close()
            print()


async def throughput(args, run: Run, watch: Watch, group: ServiceGroup, consumer, admin,
                     raw: list[TopicPartition], clean: list[TopicPartition], produced_baseline: float) -> Result:
    print(f"throughput: posting {args.rate:,.0f} events/s for {args.seconds:.0f} s in batches of {args.batch}")
    samples: list[tuple[float, dict[str, int]]] = []
    cpu_before = service_cpu(group)
    load = asyncio.create_task(post_at(run, args.rate, args.seconds, args.batch))
    started = time.monotonic()
    while not load.done():
        samples.append((time.monotonic() - started, await watch.positions(consumer, admin, raw, clean)))
        await asyncio.sleep(1.0)
    accepted, refused = load.result()
    window = samples[-1][0] - samples[0][0]
    end = samples[-1][1]
    drain_started = time.monotonic()
    while time.monotonic() - drain_started < args.drain:  # let the stages finish what was accepted
        now = await watch.positions(consumer, admin, raw, clean)
        if all(now[s] >= now["ingested"] for s in STAGES[1:]):
            break
        await asyncio.sleep(1.0)
    drained = await watch.positions(consumer, admin, raw, clean)
    cpu = {name: seconds - cpu_before[name] for name, seconds in service_cpu(group).items()}
    print(f"  accepted {accepted:,}, refused {refused:,} (503 = back-pressure)")
    print(f"  {'stage':<10} {'events/s':>10} {'x bare produce':>15} {'lag first third':>16} {'lag last third':>15}"
          f" {'after drain':>12} {'CPU s/1k ev':>12}")
    third = max(1, len(samples) // 3)
    rates, lags, cpu_per_1k = {}, {}, {}
    for i, stage in enumerate(STAGES):
        rates[stage] = (end[stage] - samples[0][1][stage]) / window if window > 0 else 0.0
        lags[stage] = drained["ingested"] - drained[stage]
        cpu_per_1k[stage] = cpu[SERVICE_OF[stage]] / max(1, drained[stage]) * 1000
        before = STAGES[i - 1] if i else stage
        first, last = (sum(s[before] - s[stage] for _, s in part) / len(part)
                       for part in (samples[:third], samples[-third:]))
        print(f"  {stage:<10} {rates[stage]:>10,.0f} {rates[stage] / produced_baseline:>15.2f}"
              f" {first:>16,.0f} {last:>15,.0f} {lags[stage]:>12,} {cpu_per_1k[stage]:>12.3f}")
    print(f"  (drained for {time.monotonic() - drain_started:.0f} s; lag = behind the stage before, in events;"
          f" CPU = all of the service's replicas)")
    return Result(0, 0, run.partitions, rates, lags, cpu_per_1k, accepted, refused)


async def latency(args, run: Run, watch: Watch, brokers: Brokers) -> None:
    if args.latency_seconds <= 0:
        return
    print(f"latency: posting {args.latency_rate:,.0f} events/s for {args.latency_seconds:.0f} s, first event of "
          f"each batch timed from accepted to anchored")
    sampled: dict[str, float] = {}
    found: dict[str, tuple[int, int]] = {}
    stop = asyncio.Event()
    finder = asyncio.create_task(clean_offsets(brokers, run.topic("clean"), found, stop))
    await post_at(run, args.latency_rate, args.latency_seconds, args.batch, sampled)
    deadline = time.monotonic() + args.drain

    def unanchored() -> bool:
        places = [found.get(event_id) for event_id in sampled]
        return any(place is None or watch.anchored_by_partition.get(place[0], 0) <= place[1] for place in places)

    while time.monotonic() < deadline and unanchored():
        await asyncio.sleep(0.5)
    stop.set()
    await finder
    latencies = []
    for event_id, accepted_at in sampled.items():
        place = found.get(event_id)
        seen = next((when for when, partition, covered in watch.anchored_at
                     if place is not None and partition == place[0] and covered > place[1]), None)
        if seen is not None:
            latencies.append(seen - accepted_at)
    print(f"  ingest -> anchored, {len(latencies)} of {len(sampled)} sampled events: p50 "
          f"{percentile(latencies, 0.5):.2f} s, p99 {percentile(latencies, 0.99):.2f} s, max "
          f"{max(latencies, default=float('nan')):.2f} s")


# -- what a real cluster needs (computed) --
def ledger_tx_per_second(rate: float, partitions: int, batch_records: int, batch_seconds: float) -> float:
    """Fabric transactions/s the anchoring loop submits for `rate` clean events/s spread evenly
    over `partitions` (records are keyed by event id).

    services/ledger/anchoring.py `Batcher`: each partition has its own open batch; it opens with
    its first record and closes when it holds `batch_records`, or once that first record has
    waited `batch_seconds` (checked after each poll: at once while records flow, every 100 ms at
    most when idle); one transaction each. A partition receiving r_p = rate / partitions records/s:
      - r_p * batch_seconds >= batch_records: full batches, r_p / batch_records a second;
      - below: a batch closes batch_seconds after it opened, holding r_p * batch_seconds records,
        and the next one opens with the next record, 1 / r_p later: batches of
        r_p * batch_seconds + 1 records, r_p / (r_p * batch_seconds + 1) a second, just under
        1 / batch_seconds (and about r_p, one record each, when records are rarer than that).
    Summed over the partitions: about max(rate / batch_records, partitions / batch_seconds).
    """
    if rate <= 0:
        return 0.0
    per_partition = rate / partitions
    return partitions * per_partition / min(batch_records, per_partition * batch_seconds + 1)


def simulated_ledger_tx_per_second(rate: float, partitions: int, batch_records: int, batch_seconds: float,
                                   seconds: float = 20.0, poll: float = 0.01) -> float:
    """The same, by running the ledger service's own `Batcher` on simulated time: records arrive
    evenly at `rate` on random partitions, and due batches are taken every `poll` seconds (the
    loop checks after each poll). Each partition's rate is its batches between its first and its
    last close, over that time (no boundary effects); summed over the partitions."""
    batcher, rng = Batcher("bench", batch_records, batch_seconds), random.Random(0)
    closes: dict[int, list[float]] = {p: [] for p in range(partitions)}
    step, offsets, next_poll, now = 1 / rate, [0] * partitions, poll, 0.0
    for _ in range(int(rate * seconds)):
        now += step
        while next_poll <= now:
            for batch in batcher.due(next_poll):
                closes[batch.partition].append(next_poll)
            next_poll += poll
        partition = rng.randrange(partitions)
        offsets[partition] += 1
        if batcher.add(partition, offsets[partition], "e", "00" * 32, now, tenant="t") is not None:
            closes[partition].append(now)
    return sum((len(times) - 1) / (times[-1] - times[0]) for times in closes.values() if len(times) > 1)


def expectations(args: argparse.Namespace) -> None:
    """Print what a real cluster needs at the ledger service's batch size (computed, not measured)."""
    ledger = LedgerServiceSettings()
    n, t, flight = ledger.ledger_batch_records, ledger.ledger_batch_seconds, ledger.ledger_batches_in_flight
    print(f"what a real cluster needs (computed from services/ledger, batch = {n:,} records or {t:g} s per "
          f"partition, {flight} batches in flight per anchoring replica):")
    rates = (1_000, 5_000, 10_000, 50_000, 100_000)
    counts = (1, 3, 6, 12, 24, 48)
    print("  ledger tx/s for the clean topic's partitions (columns) at a rate (rows); in brackets tx/s per 1,000 "
          "events/s")
    print(f"  {'events/s':>10} " + " ".join(f"{f'P={p}':>15}" for p in counts))
    for rate in rates:
        cells = []
        for p in counts:
            tx = ledger_tx_per_second(rate, p, n, t)
            cells.append(f"{tx:>6.1f} ({tx / rate * 1000:>5.2f})")
        print(f"  {rate:>10,} " + " ".join(f"{c:>15}" for c in cells))
    print("  the same simulated on the ledger service's own Batcher (20 s of records on random partitions, due batches "
          "taken every 10 ms):")
    for rate in rates[:3]:
        print(f"  {rate:>10,} " + " ".join(f"{simulated_ledger_tx_per_second(rate, p, n, t):>6.1f}{'':>9}"
                                           for p in counts))
    full = n / t
    print(f"  -> a partition fills its batches from {full:,.0f} events/s on: below that each partition costs "
          f"{1 / t:g} tx/s whatever it carries, so keep partitions <= rate / {full:,.0f} for 1 tx/s per 1,000 "
          f"events/s (at 10,000 events/s: 10 partitions or fewer); above, tx/s = rate / {n:,}.")
    commit = args.commit_seconds
    print(f"  -> an anchoring replica keeps at most {flight} batches in flight: at {commit:g} s from a batch closing "
          f"to its commit (endorse + order + commit; the orderer's BatchTimeout is part of it) it submits "
          f"<= {flight / commit:,.1f} tx/s, i.e. <= {flight * n / commit:,.0f} events/s with full batches "
          f"(--commit-seconds)")
    target = args.target_rate
    print(f"  -> partitions per replica: replicas of a group share its partitions, one partition to one replica, "
          f"so give each topic 2 x the replicas you plan (e.g. {2 * args.plan_replicas} for {args.plan_replicas}): "
          f"raising partitions later moves keys; anchoring at {target:,.0f} events/s on those "
          f"{2 * args.plan_replicas} partitions needs "
          f"{ledger_tx_per_second(target, 2 * args.plan_replicas, n, t):,.1f} tx/s, i.e. "
          f"{math.ceil(ledger_tx_per_second(target, 2 * args.plan_replicas, n, t) / (flight / commit))} anchoring "
          f"replica(s) at {flight / commit:,.1f} tx/s each, within the network's own tx/s")


def sizing(args: argparse.Namespace, result: Result) -> None:
    """Print the replicas each service would need for `--target-rate`, from this run's CPU per 1,000 events."""
    target = args.target_rate
    print(f"sizing for {target:,.0f} events/s (--target-rate) from this run's CPU per 1,000 events, one core per "
          f"replica, Kafka, MongoDB and Fabric not counted:")
    for stage in STAGES:
        need = target * result.cpu_per_1k[stage] / 1000
        print(f"  {SERVICE_OF[stage]:<10} {result.cpu_per_1k[stage]:.3f} CPU s per 1k -> {need:.2f} cores, "
              f"{max(1, math.ceil(need))} replica(s)"
              + ("  (one model learns on one replica: more replicas help only with more models)"
                 if stage == "learned" else ""))


# -- the matrix --
MATRIX = ((1, 1), (1, 2), (3, 1), (3, 2))
"""(brokers, replicas per service), in the order run: the single-broker ones first, then the
cluster is started once for both of its configurations."""


def print_matrix(results: list[Result]) -> None:
    base = results[0]
    print("scale-out matrix (same rate and seconds for each; ratio = this configuration / 1 broker x 1 replica "
          "in this run; lag = behind ingestion after the drain):")
    print(f"  {'configuration':<22} {'P':>3} " + " ".join(f"{stage:>16}" for stage in STAGES)
          + "  " + " ".join(f"{'lag ' + stage:>13}" for stage in STAGES[1:]))
    for r in results:
        name = f"{r.brokers} broker{'s' if r.brokers > 1 else ''} x {r.replicas} replica{'s' if r.replicas > 1 else ''}"
        cells = []
        for stage in STAGES:
            ratio = r.rates[stage] / base.rates[stage] if base.rates[stage] else float("nan")
            cells.append(f"{r.rates[stage]:>8,.0f} ({ratio:>4.2f})")
        print(f"  {name:<22} {r.partitions:>3} " + " ".join(f"{c:>16}" for c in cells)
              + "  " + " ".join(f"{r.lag_after_drain[stage]:>13,}" for stage in STAGES[1:]))
    print("  (events/s per stage over the load window; P = partitions of the raw and clean topics; with replicas the"
          " topics get 2 per replica unless --partitions says. A ratio shows capacity only when 1 x 1 falls behind"
          " the rate posted: below that every configuration just carries the load)")


async def main(args: argparse.Namespace) -> None:
    if not args.matrix:
        with ExitStack() as stack:
            brokers = stack.enter_context(three_brokers()) if args.brokers == 3 else shared_broker()
            await measure(args, brokers, args.replicas, partitions_for(args.replicas, args.partitions))
        expectations(args)
        return
    results = []
    with ExitStack() as stack:
        cluster = None
        for broker_count, replicas in MATRIX:
            if broker_count == 3 and cluster is None:
                cluster = stack.enter_context(three_brokers())
            brokers = cluster if broker_count == 3 else shared_broker()
            results.append(await measure(args, brokers, replicas, partitions_for(replicas, args.partitions)))
    print_matrix(results)
    expectations(args)


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
    parser.add_argument("--replicas", type=int, default=1, help="processes of each service (ServiceGroup)")
    parser.add_argument("--brokers", type=int, choices=(1, 3), default=1,
                        help="3: a three-node Kafka cluster of the bench's own (run under flock /tmp/cluster.lock)")
    parser.add_argument("--partitions", type=int, default=None,
                        help="of the raw and clean topics (default: 1 for one replica, 2 per replica for more)")
    parser.add_argument("--matrix", action="store_true",
                        help="run 1x1, 1x2, 3x1 and 3x2 (brokers x replicas) and print one table "
                             "(starts the three-node cluster: run under flock /tmp/cluster.lock)")
    parser.add_argument("--target-rate", type=float, default=10_000,
                        help="events/s the computed real-cluster sizing is for")
    parser.add_argument("--plan-replicas", type=int, default=3, help="replicas per service the sizing plans for")
    parser.add_argument("--commit-seconds", type=float, default=2.0,
                        help="assumed seconds from a batch closing to its commit on a real Fabric network")
    parser.add_argument("--expectations", action="store_true", help="print the computed expectations only")
    arguments = parser.parse_args()
    if arguments.replicas < 1:
        parser.error("--replicas must be at least 1")
    if arguments.expectations:
        expectations(arguments)
    else:
        asyncio.run(main(arguments))
