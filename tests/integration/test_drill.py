"""The scale-out drill (issue 24): 20,000 events through the whole system on a three-broker Kafka
cluster with two replicas of every pipeline service, while one broker and one replica of each
service are killed (kill -9) at random moments and restarted.

Kafka is a three-node cluster of this run (`stack up --kafka-brokers 3` on its own home and ports,
the `cluster` fixture of test_stack_kafka_cluster.py); FerretDB and the two-organisation Fabric
network are the shared stack's. Every service is `streamledger serve NAME`, twice, each replica
connecting to Kafka as its service's own principal, on topics, groups and a database of this run.
A paying client (an Org2 identity issued for the run) calls both inference replicas throughout,
signing receipts; the ledger replicas anchor and settle.

At the end:
- every event is stored exactly once in MongoDB and is on the clean topic (copies re-sent after a
  kill are allowed there: at least once), nothing is dead-lettered;
- every clean record is anchored in exactly one batch (per partition the batches on the ledger
  tile the offsets) and every event's proof verifies against its batch's root on the ledger;
- each model's snapshots form one lineage (versions and what each learned only go up) and its
  newest snapshot has learned exactly as many events as its input holds;
- credit is conserved (client + provider balances, no hold left open) and each hold is charged
  at most the rows the client received on it: no usage billed twice.

The seed of the kill schedule and the recovery time of each kill are printed
(`pytest -s`). `make test` runs the schedule of `SEED`, so that a failure is reproduced by running
it again; `DRILL_SEED=<n>` runs another, `DRILL_SEED=random` a new one each time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import subprocess
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from tritonclient.utils import InferenceServerException

from devstack.demo import inference_tls
from devstack.fabric import FabricNetwork
from devstack.runner import ServiceGroup
from devstack.settings import StackSettings
from services.ingestion.auth import hash_key
from streamledger import kafka
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.client import PaidInferenceClient
from streamledger.core.merkle import verify_proof
from streamledger.kafka import topics
from streamledger.ledger import LedgerClient
from tests.integration.conftest import identity, stored_proofs
from tests.integration.paying import issue_identity
from tests.integration.pipeline.conftest import wait_until
from tests.integration.test_ledger_seams import free_port
from tests.integration.test_stack_kafka_cluster import Cluster, cluster  # noqa: F401 - the fixture

pytestmark = [pytest.mark.integration, pytest.mark.fabric, pytest.mark.drill, pytest.mark.timeout(900)]

EVENTS = 20_000
RATE = 500
"""Events posted per second: the drill lasts about EVENTS / RATE seconds of posting."""
POST = 200
"""Events per HTTP request."""
TENANT = "drill"
SOURCES = ("a", "b", "c", "d")
"""One model per source (`models_file`), each learning a quarter of the events."""
FEATURES = ("x0", "x1", "x2", "x3")
SERVICES = ("ingestion", "cleaning", "storage", "learning", "ledger", "inference")
REPLICAS = 2
PARTITIONS = 4
"""Of the raw and clean topics: two per replica."""
PRICE, HOLD_AMOUNT, HOLD_SECONDS = 1, 60, 40
ROWS = 2
"""Rows per paid call."""
SEED = 61330155
"""The kill schedule `make test` runs (kills of storage, ledger, the broker, cleaning, inference,
ingestion and learning between 8 and 24 s into the posting)."""


# -- the system under the drill ---------------------------------------------------------------

def models_file(folder: Path, run: str) -> Path:
    models = "".join(f'''
[[model]]
id = "drill-{run}-{source}"
task = "binary"
tenant = "{TENANT}"
source = "{source}"
metrics = ["Accuracy"]
pipeline = [{{ class = "preprocessing.StandardScaler" }}, {{ class = "linear_model.LogisticRegression" }}]
''' for source in SOURCES)
    path = folder / "models.toml"
    path.write_text(models)
    return path


def events(run: str) -> list[dict[str, Any]]:
    rng = random.Random(run)
    made = []
    for i in range(EVENTS):
        x = {name: rng.uniform(-1, 1) for name in FEATURES}
        made.append({"event_id": f"drill-{run}-{i}", "tenant": TENANT, "source": SOURCES[i % len(SOURCES)],
                     "ts": int(time.time() * 1000), "features": x, "label": x["x0"] + 0.5 * x["x1"] > 0})
    return made


@dataclass
class Names:
    """The run's topics and groups, named under the topic table and each service's own namespace,
    so every replica works as its service's own principal (streamledger/kafka/acls.py)."""

    run: str

    def topic(self, table_name: str) -> str:
        return f"{table_name}.drill-{self.run}"

    def group(self, service: str, role: str = "") -> str:
        return f"streamledger-{service}{'-' + role if role else ''}-drill-{self.run}"

    def specs(self) -> list[kafka.TopicSpec]:
        wider = {topics.RAW: PARTITIONS, topics.CLEAN: PARTITIONS, topics.USAGE: 2}
        return [topics.spec(t, self.topic(t), partitions=wider.get(t, topics.TABLE[t].partitions))
                for t in (topics.RAW, topics.CLEAN, topics.DEADLETTER, topics.SNAPSHOTS, topics.MODEL_METRICS,
                          topics.PREDICTIONS, topics.USAGE, topics.ANCHORS)]

    def environment(self) -> dict[str, str]:
        t = self.topic
        return {
            "STREAMLEDGER_INGESTION_RAW_TOPIC": t(topics.RAW),
            "STREAMLEDGER_CLEANING_RAW_TOPIC": t(topics.RAW),
            "STREAMLEDGER_CLEANING_CLEAN_TOPIC": t(topics.CLEAN),
            "STREAMLEDGER_CLEANING_DEADLETTER_TOPIC": t(topics.DEADLETTER),
            "STREAMLEDGER_CLEANING_GROUP": self.group("cleaning"),
            "STREAMLEDGER_STORAGE_CLEAN_TOPIC": t(topics.CLEAN),
            "STREAMLEDGER_STORAGE_PREDICTIONS_TOPIC": t(topics.PREDICTIONS),
            "STREAMLEDGER_STORAGE_ANCHORS_TOPIC": t(topics.ANCHORS),
            "STREAMLEDGER_STORAGE_SNAPSHOTS_TOPIC": t(topics.SNAPSHOTS),
            "STREAMLEDGER_STORAGE_DEADLETTER_TOPIC": t(topics.DEADLETTER),
            "STREAMLEDGER_STORAGE_GROUP": self.group("storage"),
            "STREAMLEDGER_LEARNING_INPUT_TOPICS": json.dumps([t(topics.CLEAN)]),
            "STREAMLEDGER_LEARNING_GROUP_ID": self.group("learning"),
            "STREAMLEDGER_LEARNING_SNAPSHOT_TOPIC": t(topics.SNAPSHOTS),
            "STREAMLEDGER_LEARNING_METRICS_TOPIC": t(topics.MODEL_METRICS),
            "STREAMLEDGER_LEARNING_DEADLETTER_TOPIC": t(topics.DEADLETTER),
            "STREAMLEDGER_LEARNING_SNAPSHOT_EVERY_EVENTS": "1000",
            "STREAMLEDGER_LEARNING_SNAPSHOT_EVERY_SECONDS": "5",
            "STREAMLEDGER_LEDGER_CLEAN_TOPIC": t(topics.CLEAN),
            "STREAMLEDGER_LEDGER_ANCHORS_TOPIC": t(topics.ANCHORS),
            "STREAMLEDGER_LEDGER_USAGE_TOPIC": t(topics.USAGE),
            "STREAMLEDGER_LEDGER_DEADLETTER_TOPIC": t(topics.DEADLETTER),
            "STREAMLEDGER_LEDGER_ANCHOR_GROUP": self.group("ledger", "anchoring"),
            "STREAMLEDGER_LEDGER_SETTLEMENT_GROUP": self.group("ledger", "settlement"),
            "STREAMLEDGER_LEDGER_SETTLE_MARGIN_SECONDS": str(StackSettings().fabric_timewindow_seconds),
            "STREAMLEDGER_INFERENCE_SNAPSHOT_TOPIC": t(topics.SNAPSHOTS),
            "STREAMLEDGER_INFERENCE_PREDICTIONS_TOPIC": t(topics.PREDICTIONS),
            "STREAMLEDGER_INFERENCE_USAGE_TOPIC": t(topics.USAGE),
        }


class Replicas:
    """The services' processes: `ServiceGroup` (what `streamledger serve all --replicas 2` runs),
    its children connecting to the cluster with the cluster's credentials, each as its own
    principal; the replicas of ingestion and inference share one port each (SO_REUSEPORT)."""

    def __init__(self, brokers: Cluster, common: dict[str, str], logs: Path) -> None:
        self.ports = {"http": free_port(), "ingestion-grpc": free_port(), "inference": free_port()}
        self.group = ServiceGroup(env={**common, "STREAMLEDGER_LOG_LEVEL": "INFO",
                                       "STREAMLEDGER_INGESTION_HTTP_PORT": str(self.ports["http"]),
                                       "STREAMLEDGER_INGESTION_GRPC_PORT": str(self.ports["ingestion-grpc"]),
                                       "STREAMLEDGER_INFERENCE_PORT": str(self.ports["inference"])},
                                  log_dir=logs, kafka_auth_dir=brokers.nodes[0].auth.folder)

    def start(self) -> list[str]:
        return self.group.start(SERVICES, replicas=REPLICAS)

    def starts(self, key: str) -> int:
        """How many times `key` logged that it started."""
        log = self.group.log_file(key)
        return log.read_text(errors="replace").count('"event": "started"') if log.exists() else 0

    def alive(self, key: str) -> bool:
        return key in self.group.pids()

    def tail(self, key: str) -> str:
        return self.group.log_tail(key, 30)

    def stop(self, key: str, timeout: float = 60) -> int:
        """SIGTERM `key` and wait for its exit code."""
        process = self.group.processes[key]
        process.terminate()
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError(f"{key} did not stop within {timeout} s of SIGTERM:\n{self.tail(key)}") from None


# -- reading the brokers ----------------------------------------------------------------------

async def read_topic(brokers: Cluster, topic: str) -> list:
    async with kafka.consumer(brokers.bootstrap, security=brokers.security,
                              max_fetch_bytes=topics.MAX_SNAPSHOT_BYTES) as reader:
        return [r for batch in [b async for b in kafka.read_to_end(reader, brokers.bootstrap, topic,
                                                                    security=brokers.security)] for r in batch]


async def end_offsets(brokers: Cluster, topic: str) -> dict[TopicPartition, int]:
    """Each partition's end offset, asked again while a node is down (the metadata may still name it)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return await _end_offsets(brokers, topic)
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def _end_offsets(brokers: Cluster, topic: str) -> dict[TopicPartition, int]:
    partitions = [TopicPartition(t, p) for t, p in
                  await kafka.partitions_of(brokers.bootstrap, [topic], security=brokers.security)]
    async with kafka.consumer(brokers.bootstrap, security=brokers.security) as reader:
        return await reader.end_offsets(partitions)


async def committed_past(brokers: Cluster, group: str, ends: dict[TopicPartition, int]) -> bool:
    """Whether `group` has committed every partition at least up to `ends` (not known yet while a
    node is down: False)."""
    with contextlib.suppress(KafkaError):
        return await _committed_past(brokers, group, ends)
    return False


async def _committed_past(brokers: Cluster, group: str, ends: dict[TopicPartition, int]) -> bool:
    async with kafka.admin(brokers.bootstrap, security=brokers.security) as admin:
        committed = await admin.list_consumer_group_offsets(group)
    return all(end == 0 or (tp in committed and committed[tp].offset >= end) for tp, end in ends.items())


async def fully_replicated(brokers: Cluster, names: list[str]) -> bool:
    with contextlib.suppress(KafkaError):
        return await _fully_replicated(brokers, names)
    return False


async def _fully_replicated(brokers: Cluster, names: list[str]) -> bool:
    async with kafka.admin(brokers.bootstrap, security=brokers.security) as admin:
        described = await admin.describe_topics(names)
    return all(len(p["isr"]) == 3 for d in described for p in d["partitions"])


# -- the load: events posted, paid calls ------------------------------------------------------

class Poster:
    """Posts the events in order, `POST` at a time at `RATE` per second, to the ingestion replicas'
    shared port (a connection each, so both are used); a request refused (503, a replica killed) is
    sent again, with the same event ids."""

    def __init__(self, port: int, api_key: str) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.acknowledged: set[str] = set()
        self.resent = 0

    async def post_all(self, made: list[dict[str, Any]]) -> None:
        started = time.monotonic()
        limits = httpx.Limits(max_keepalive_connections=0)  # a new connection each: the kernel spreads them
        async with httpx.AsyncClient(timeout=15, limits=limits) as http:
            for first in range(0, len(made), POST):
                chunk = made[first:first + POST]
                await asyncio.sleep(max(0.0, started + first / RATE - time.monotonic()))
                deadline = time.monotonic() + 120
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        answer = await http.post(f"http://127.0.0.1:{self.port}/v1/events", json=chunk, headers=self.headers)
                        if answer.status_code == 200:
                            self.acknowledged.update(answer.json()["event_ids"])
                            break
                    assert time.monotonic() < deadline, f"events {first}.. were refused for 120 s"
                    self.resent += 1
                    await asyncio.sleep(0.3)


@dataclass
class Payer:
    """A paying client calling the inference replicas' shared port: holds frozen as they run out
    (or expire), a receipt signed every few rows; counts the rows received on each hold."""

    client: PaidInferenceClient
    provider: str
    received: Counter = field(default_factory=Counter)
    refused: Counter = field(default_factory=Counter)

    def call(self, model_id: str) -> None:
        if self.client.hold_id is None:
            self.client.freeze(provider=self.provider, amount=HOLD_AMOUNT, price_per_unit=PRICE,
                               expires_in=HOLD_SECONDS)
        inputs = []
        for name in FEATURES:
            tensor = triton.InferInput(name, [ROWS], "FP64")
            tensor.set_data_from_numpy(np.array([0.1 * i for i in range(ROWS)]))
            inputs.append(tensor)
        try:
            self.client.infer(model_id, inputs)
        except InferenceServerException as exc:
            self.refused[exc.status() or "?"] += 1
            return
        self.received[self.client.hold_id] += ROWS


async def pay_while(payers: list[Payer], model_id: str, posting: asyncio.Task) -> None:
    """Paid calls, each payer in turn (a connection each: the kernel spreads them over the
    replicas), until posting is done."""
    while not posting.done():
        for payer in payers:
            await asyncio.to_thread(payer.call, model_id)
        await asyncio.sleep(0.2)


# -- the kills --------------------------------------------------------------------------------

@dataclass
class Kill:
    target: str
    at: float
    down: float
    recovered: str = ""


async def kill_and_restart(kill: Kill, brokers: Cluster, replicas: Replicas, started: float, recovery) -> None:
    await asyncio.sleep(max(0.0, started + kill.at - time.monotonic()))
    killed = time.monotonic()
    if kill.target == "broker":
        await asyncio.to_thread(brokers.kill, brokers.nodes[1])
        await asyncio.sleep(kill.down)
        await asyncio.to_thread(brokers.stack.up)
        kill.recovered = await recovery(kill.target, killed, 0)
    else:
        starts = replicas.starts(kill.target)
        await asyncio.to_thread(replicas.group.kill, kill.target)
        await asyncio.sleep(kill.down)
        replicas.group.restart(kill.target)
        kill.recovered = await recovery(kill.target, killed, starts)


async def test_the_drill(network: FabricNetwork, cluster: Cluster, mongo_db, unique: str,  # noqa: F811
                         tmp_path: Path) -> None:
    brokers = cluster
    chosen = os.environ.get("DRILL_SEED", str(SEED))
    seed = random.randrange(1 << 30) if chosen == "random" else int(chosen)
    rng = random.Random(seed)
    print(f"\ndrill seed {seed} (DRILL_SEED={seed} replays the kill schedule)")
    drill_started = time.monotonic()
    names = Names(unique)
    await kafka.provision(brokers.bootstrap, names.specs(), security=brokers.security)
    tls, paid = inference_tls()
    api_key = f"key-drill-{unique}"
    models = models_file(tmp_path, unique)
    model_ids = [f"drill-{unique}-{s}" for s in SOURCES]
    common = {
        **names.environment(),
        "STREAMLEDGER_MONGO_URL": "mongodb://127.0.0.1:27017",
        "STREAMLEDGER_MONGO_DB": mongo_db.name,
        "STREAMLEDGER_INGESTION_API_KEYS": json.dumps({TENANT: [hash_key(api_key)]}),
        "STREAMLEDGER_LEARNING_MODELS_FILE": str(models),
        "STREAMLEDGER_INFERENCE_MODELS_FILE": str(models),
        **paid,
    }
    replicas = Replicas(brokers, common, tmp_path / "logs")
    payers: list[Payer] = []
    try:
        keys = replicas.start()

        async def all_started() -> bool:
            assert not replicas.group.exited(), {k: replicas.tail(k) for k in replicas.group.exited()}
            return all(replicas.starts(k) for k in keys)
        await wait_until(all_started, 180, "every replica to start")
        print(f"{len(keys)} replicas started in {time.monotonic() - drill_started:.0f} s")

        # The paying client: issued for this run, granted the client role and credit.
        client_ledger = issue_identity(network, "Org2", f"drill-client-{unique}", tmp_path / "identities")
        async with LedgerClient.connect(client_ledger) as own:
            account = (await own.who_am_i())["Account"]
        async with LedgerClient.connect(identity("Admin", "Org2")) as org2_admin:
            await org2_admin.grant_role(account, "client")
        minted = 100_000
        async with LedgerClient.connect(identity("Admin")) as org1_admin:
            await org1_admin.mint(account, minted)
        provider = network.account_of("provider", "Org1")
        async with LedgerClient.connect(identity("audit")) as auditor:
            provider_before = await auditor.balance(provider)
        payers = [Payer(PaidInferenceClient(f"127.0.0.1:{replicas.ports['inference']}",
                                            msp_dir=client_ledger.fabric_msp_dir, msp_id="Org2MSP",
                                            server_ca=tls / "ca.crt", ledger=client_ledger, refreeze=True,
                                            sign_every_units=4), provider)
                  for _ in range(REPLICAS)]

        # The kills: one broker and one replica of each service, at random moments of the posting.
        span = EVENTS / RATE
        kills = [Kill("broker", rng.uniform(0.1, 0.7) * span, rng.uniform(5, 10))]
        kills += [Kill(f"{s}-{rng.randint(1, REPLICAS)}", rng.uniform(0.1, 0.9) * span, rng.uniform(1, 4))
                  for s in SERVICES]
        input_of = {"cleaning": (names.topic(topics.RAW), names.group("cleaning")),
                    "storage": (names.topic(topics.CLEAN), names.group("storage")),
                    "ledger": (names.topic(topics.CLEAN), names.group("ledger", "anchoring")),
                    "learning": (names.topic(topics.CLEAN), names.group("learning"))}

        async def recovery(target: str, killed: float, starts: int) -> str:
            """How long until the killed part is back and its work caught up: the broker's
            partitions all in sync again; a consumer started again and its group past all its input
            had at the kill (learning: its slowest model's position); ingestion and inference
            started again."""
            service = target.rsplit("-", 1)[0]
            if target == "broker":
                await wait_until(lambda: fully_replicated(brokers, [s.name for s in names.specs()]), 300,
                                 "the partitions in sync again")
                return f"{time.monotonic() - killed:.1f} s"
            ends = await end_offsets(brokers, input_of[service][0]) if service in input_of else {}

            async def back() -> bool:
                return replicas.alive(target) and replicas.starts(target) > starts
            await wait_until(back, 180, f"{target} to start again", lambda: replicas.tail(target))
            if ends:
                await wait_until(lambda: committed_past(brokers, input_of[service][1], ends), 300,
                                 f"{service} to catch up after the kill", lambda: replicas.tail(target))
            return f"{time.monotonic() - killed:.1f} s"

        made = events(unique)
        poster = Poster(replicas.ports["http"], api_key)
        started = time.monotonic()
        posting = asyncio.create_task(poster.post_all(made))
        paying = asyncio.create_task(pay_while(payers, model_ids[0], posting))
        await asyncio.gather(posting, paying, *(kill_and_restart(k, brokers, replicas, started, recovery)
                                                for k in kills))
        print(f"{EVENTS} events posted in {time.monotonic() - started:.0f} s ({poster.resent} requests sent again)")
        for kill in sorted(kills, key=lambda k: k.at):
            print(f"  kill -9 {kill.target:<12} at {kill.at:5.1f} s, down {kill.down:4.1f} s: "
                  f"recovered in {kill.recovered}")
        assert poster.acknowledged == {e["event_id"] for e in made}
        assert not replicas.group.exited(), {k: replicas.tail(k) for k in replicas.group.exited()}

        # Everything stored, anchored and learned.
        async def stored_and_anchored() -> bool:
            return (await mongo_db["events"].count_documents({}) >= EVENTS
                    and await mongo_db["proofs"].count_documents({}) >= EVENTS)
        await wait_until(stored_and_anchored, 300, "every event stored and proven")
        clean_ends = await end_offsets(brokers, names.topic(topics.CLEAN))
        for group in (names.group("storage"), names.group("ledger", "anchoring")):
            await wait_until(lambda g=group: committed_past(brokers, g, clean_ends), 120, f"{group} to commit")
        print(f"stored and anchored {time.monotonic() - started:.0f} s after the first post")

        # Learning: a last snapshot of every model at a clean stop, then its count against its input.
        for key in [k for k in keys if k.startswith(("learning-", "inference-"))]:
            assert replicas.stop(key) == 0, replicas.tail(key)
        codec = AvroCodec(SchemaRegistry.from_dir())
        clean = await read_topic(brokers, names.topic(topics.CLEAN))
        decoded = codec.decode_many([r.value for r in clean], reader="CleanEvent")
        learned_input = Counter(e["source"] for e in decoded)
        snapshots: dict[str, list[dict]] = defaultdict(list)
        for record in await read_topic(brokers, names.topic(topics.SNAPSHOTS)):
            if record.value is not None:
                snapshot = codec.decode_many([record.value], reader="ModelSnapshot")[0]
                snapshots[snapshot["model_id"]].append(snapshot)
        for model_id, written in snapshots.items():
            # One lineage: versions only go up, and so does what each learned. A replica killed
            # between registering a version and publishing it leaves that version unpublished;
            # the model's next holder numbers its own above it (a gap, never a fork).
            versions, seen = [s["version"] for s in written], [s["events_seen"] for s in written]
            assert versions == sorted(set(versions)), f"{model_id}: versions {versions}"
            assert seen == sorted(seen), f"{model_id}: events seen {seen} at versions {versions}"
        assert {m: snapshots[m][-1]["events_seen"] for m in model_ids if snapshots.get(m)} == \
            {f"drill-{unique}-{s}": learned_input[s] for s in SOURCES}

        # Stored exactly once; on the clean topic at least once; nothing dead-lettered.
        stored = Counter([d["event_id"] async for d in mongo_db["events"].find({}, {"event_id": 1})])
        assert set(stored) == {e["event_id"] for e in made} and set(stored.values()) == {1}
        copies = Counter(e["event_id"] for e in decoded)
        assert set(copies) == set(stored)
        print(f"clean topic: {len(decoded)} records for {EVENTS} events "
              f"({sum(copies.values()) - len(copies)} copies re-sent after kills)")
        assert await read_topic(brokers, names.topic(topics.DEADLETTER)) == []

        # Anchored in exactly one batch each, and every proof verifies on the ledger.
        plans = [d async for d in mongo_db["anchor_plans"].find({})]
        async with LedgerClient.connect(identity("audit")) as auditor:
            on_ledger = {p["batch_id"]: await auditor.get_anchor(p["batch_id"]) for p in plans}
            assert all(a is not None for a in on_ledger.values()), "a recorded batch never reached the ledger"
            clean_topic = names.topic(topics.CLEAN)
            for tp, end in clean_ends.items():
                ranges = sorted((a["first_offset"], a["last_offset"]) for bid, a in on_ledger.items()
                                if bid.startswith(f"{clean_topic}:{tp.partition}:"))
                assert ranges and ranges[0][0] == 0 and ranges[-1][1] == end - 1, (tp, ranges, end)
                for (_, last), (first, _) in itertools.pairwise(ranges):
                    assert first == last + 1, f"partition {tp.partition}: batches {ranges} overlap or leave a gap"
            proofs = await stored_proofs(mongo_db)
            assert {p["event_id"] for p in proofs} == set(stored)
            for proof in proofs:
                anchor = on_ledger[proof["batch_id"]]
                assert verify_proof(bytes.fromhex(proof["content_hash"]), proof["index"], proof["size"],
                                    [bytes.fromhex(s) for s in proof["siblings"]],
                                    bytes.fromhex(anchor["merkle_root"])), proof["event_id"]
            print(f"{len(on_ledger)} batches anchored, {len(proofs)} proofs verified")

            # Money: every hold settles; credit conserved; no hold charged beyond what was received.
            received: Counter = Counter()
            for payer in payers:
                received.update(payer.received)
            refused = sum((p.refused for p in payers), Counter())
            print(f"paid calls: {sum(received.values())} rows on {len(received)} holds, refused {dict(refused)}")
            assert sum(received.values()) > 0, "no paid call was served"
            holds = await auditor.holds_of(account)

            async def all_settled() -> bool:
                nonlocal holds
                holds = await auditor.holds_of(account)
                return all(h["status"] != "OPEN" for h in holds)
            await wait_until(all_settled, HOLD_SECONDS + 90, "every hold to settle")
            charged = {h["hold_id"]: h["charged"] for h in holds}
            assert all(charged[h] <= rows * PRICE for h, rows in received.items()), (charged, received)
            assert all(h["hold_id"] in received or h["charged"] == 0 for h in holds)
            client_after = await auditor.balance(account)
            provider_after = await auditor.balance(provider)
            assert client_after + (provider_after - provider_before) == minted
            print(f"{len(holds)} holds settled: {sum(charged.values())} charged for "
                  f"{sum(received.values())} rows received; credit conserved")
        print(f"drill done in {time.monotonic() - drill_started:.0f} s")
    finally:
        replicas.group.stop(grace=5)
        for payer in payers:
            payer.client.close()
