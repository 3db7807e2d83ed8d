"""A three-node Kafka cluster of the local stack (`stack up --kafka-brokers 3`), run by this module
on its own home and ports (39092, 39192, 39292; the shared stack's Kafka on 9092 is never
touched) and stopped at its end whatever happens: every topic the project creates gets 3
replicas and `min.insync.replicas=2`; with one node killed (kill -9) producers and consumers go
on; with two killed an acks=all producer gets no acknowledgement and the ingestion service answers
503, and nothing acknowledged is lost once they are back."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from devstack import Stack
from devstack.kafka import KafkaPart, kafka_nodes
from devstack.settings import StackSettings
from services.ingestion.app import IngestionService
from services.ingestion.auth import hash_key
from services.ingestion.settings import IngestionSettings
from streamledger import kafka
from streamledger.kafka import topics
from streamledger.kafka.clients import KafkaSecurity

pytestmark = pytest.mark.integration

PORTS = {"STREAMLEDGER_STACK_KAFKA_PORT": "39092", "STREAMLEDGER_STACK_KAFKA_CONTROLLER_PORT": "39093",
         "STREAMLEDGER_STACK_KAFKA_INTERNAL_PORT": "39094"}
CLI = str(Path(sys.executable).with_name("streamledger"))
TOPIC, GROUP = "events.raw.cluster-test", "streamledger-storage-cluster-test"
TWO_DOWN_TOPIC, INGESTED_TOPIC = f"{TOPIC}-two-down", f"{TOPIC}-ingested"
API_KEY = "key-cluster-test-0123456789"


class Cluster:
    def __init__(self, home: Path) -> None:
        self.env = {"STREAMLEDGER_STACK_HOME": str(home), **PORTS}
        self.settings = StackSettings(home=home, kafka_brokers=3, kafka_port=39092, kafka_controller_port=39093,
                                      kafka_internal_port=39094, start_timeout=90)
        self.nodes = kafka_nodes(self.settings)
        self.stack = Stack(self.settings, say=lambda _msg: None, parts=[n.name for n in self.nodes])
        self.bootstrap = self.settings.kafka_bootstrap

    @property
    def security(self) -> KafkaSecurity:
        return self.nodes[0].admin_security()

    def kill(self, node: KafkaPart) -> None:
        pid = node.process.pid()
        assert pid is not None, f"{node.name} is not running"
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while node.process.pid() is not None:
            assert time.monotonic() < deadline, f"{node.name} (pid {pid}) outlived kill -9"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("kafka-cluster"))
    shared_libs = kafka_nodes(StackSettings())[0].libs  # the jars the shared stack fetched, if it did
    if shared_libs.is_dir():
        cluster.nodes[0].libs.parent.mkdir(parents=True)
        cluster.nodes[0].libs.symlink_to(shared_libs, target_is_directory=True)
    try:
        started = time.monotonic()
        cluster.stack.up()
        print(f"three-node cluster up in {time.monotonic() - started:.1f}s")
        # The tests' own topics, made while every node runs (so each gets its three replicas).
        asyncio.run(kafka.provision(cluster.bootstrap, [topics.spec(topics.RAW, name, partitions=3)
                                                        for name in (TOPIC, TWO_DOWN_TOPIC, INGESTED_TOPIC)],
                                    security=cluster.security))
        yield cluster
    finally:
        stopping = time.monotonic()
        cluster.stack.down()
        print(f"cluster down in {time.monotonic() - stopping:.1f}s")


async def eventually(probe, expected, timeout: float = 15):
    """`await probe()` until it returns `expected` or `timeout` passes; its last answer (a topic
    made a moment ago reaches each node's metadata a little later)."""
    deadline = time.monotonic() + timeout
    while (found := await probe()) != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    return found


async def topic_min_insync(cluster: Cluster, names: list[str]) -> dict[str, str]:
    """Each topic's `min.insync.replicas`, as far as the broker asked knows the topic."""
    async with kafka.admin(cluster.bootstrap, security=cluster.security) as admin:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
    return {name: value for response in responses for _error, _message, _type, name, entries in response.resources
            for key, value, *_ in entries if key == "min.insync.replicas"}


async def replicas(cluster: Cluster, names: list[str]) -> dict[str, list[tuple[int, int]]]:
    """Each topic's partitions as (replicas, in-sync replicas) counts."""
    async with kafka.admin(cluster.bootstrap, security=cluster.security) as admin:
        described = await admin.describe_topics(names)
    return {d["topic"]: [(len(p["replicas"]), len(p["isr"])) for p in d["partitions"]] for d in described}


async def test_the_topic_table_gets_three_replicas_and_status_shows_each_node(cluster: Cluster) -> None:
    table = list(topics.TABLE.values())
    await kafka.provision(cluster.bootstrap, table, security=cluster.security)
    names = [s.name for s in table]
    three = {s.name: [(3, 3)] * s.partitions for s in table}
    assert await eventually(lambda: replicas(cluster, names), three) == three
    two = dict.fromkeys(names, "2")
    assert await eventually(lambda: topic_min_insync(cluster, names), two) == two

    # Asked without the broker count: the cluster's nodes are found by their pid files.
    status = await asyncio.to_thread(subprocess.run, [CLI, "stack", "status"], capture_output=True, text=True,
                                     timeout=60, check=False, env={**os.environ, **cluster.env, "COLUMNS": "200"})
    rows = re.findall(r"\b(kafka(?:-\d)?)\W.*?(127\.0\.0\.1:\d+)\W+(\w+)", status.stdout)
    assert rows == [(n.name, f"127.0.0.1:{n.port}", "healthy") for n in cluster.nodes], status.stdout


async def send_all(producer, topic: str, values: list[bytes], timeout: float) -> float:
    """Send `values` and wait until every one is acknowledged; the seconds it took."""
    started = time.monotonic()
    futures = [await producer.send(topic, v, key=v) for v in values]
    async with asyncio.timeout(timeout):
        await asyncio.gather(*futures)
    return time.monotonic() - started


async def read_group(cluster: Cluster, topic: str, group: str, expected: int, timeout: float) -> list[bytes]:
    """Read `expected` records as consumer group `group` and commit them."""
    async with kafka.consumer(cluster.bootstrap, topic, group_id=group, security=cluster.security) as inbox:
        values: list[bytes] = []
        async with asyncio.timeout(timeout):
            while len(values) < expected:
                batches = await inbox.getmany(timeout_ms=500)
                values += [r.value for records in batches.values() for r in records]
                if batches:
                    await kafka.commit(inbox, {tp: records[-1].offset + 1 for tp, records in batches.items()})
    return values


async def read_all(cluster: Cluster, topic: str, keys: bool = False) -> list[bytes]:
    """Every record's value (or key) on `topic` now."""
    async with kafka.consumer(cluster.bootstrap, security=cluster.security) as reader:
        return [r.key if keys else r.value for records in
                [batch async for batch in kafka.read_to_end(reader, cluster.bootstrap, topic, security=cluster.security)]
                for r in records]


async def test_with_one_node_killed_producers_and_consumers_go_on(cluster: Cluster) -> None:
    three = {TOPIC: [(3, 3)] * 3}
    assert await eventually(lambda: replicas(cluster, [TOPIC]), three) == three
    first, second = ([f"{phase}-{i}".encode() for i in range(100)] for phase in ("all-up", "one-down"))
    async with kafka.producer(cluster.bootstrap, security=cluster.security) as producer:
        await send_all(producer, TOPIC, first, timeout=30)
        assert sorted(await read_group(cluster, TOPIC, GROUP, len(first), timeout=30)) == sorted(first)

        killed = cluster.nodes[2]
        cluster.kill(killed)
        assert {s.name: s.state for s in cluster.stack.status()}[killed.name] == "died"
        took = await send_all(producer, TOPIC, second, timeout=60)
        print(f"one node down: 100 records acknowledged {took:.1f}s after the kill")
    # The group goes on where it committed, whichever node coordinated it before.
    assert sorted(await read_group(cluster, TOPIC, GROUP, len(second), timeout=60)) == sorted(second)


@pytest.fixture
async def ingestion(cluster: Cluster, monkeypatch: pytest.MonkeyPatch):
    """The ingestion service, in this process, on the cluster as its own principal."""
    auth = cluster.nodes[0].auth
    for name in [n for n in os.environ if n.startswith("STREAMLEDGER_KAFKA_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("STREAMLEDGER_KAFKA_BOOTSTRAP", cluster.bootstrap)
    monkeypatch.setenv("STREAMLEDGER_KAFKA_SASL_USERNAME", "ingestion")
    monkeypatch.setenv("STREAMLEDGER_KAFKA_SASL_PASSWORD_FILE", str(auth.password_file("ingestion")))
    monkeypatch.setenv("STREAMLEDGER_KAFKA_SSL_CAFILE", str(auth.ca_cert))
    settings = IngestionSettings(ingestion_raw_topic=INGESTED_TOPIC, ingestion_http_port=0, ingestion_grpc_port=0,
                                 ingestion_api_keys={"acme": [hash_key(API_KEY)]}, ingestion_ack_timeout_seconds=3.0,
                                 ingestion_retry_after_seconds=1)
    async with IngestionService(settings) as service:
        yield service


class Poster:
    """Posts batches of events to the ingestion service; keeps what it acknowledged."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.sent = 0
        self.acknowledged: set[str] = set()
        self.statuses: list[int] = []

    async def post(self) -> int:
        batch = [{"event_id": f"cluster-{self.sent + i}", "source": "cluster", "ts": 1_700_000_000_000,
                  "features": {"n": 1.0}} for i in range(20)]
        self.sent += len(batch)
        answer = await self.http.post("/v1/events", json=batch, headers={"X-API-Key": API_KEY})
        self.statuses.append(answer.status_code)
        if answer.status_code == 200:
            self.acknowledged.update(answer.json()["event_ids"])
        elif answer.status_code == 503:
            assert answer.headers["Retry-After"] == "1"
            self.acknowledged.update(answer.json()["acknowledged"])  # partly acknowledged batches count too
        else:
            raise AssertionError(f"unexpected {answer.status_code}: {answer.text}")
        return answer.status_code


async def test_with_two_nodes_killed_nothing_is_acknowledged_and_nothing_acknowledged_is_lost(
        cluster: Cluster, ingestion: IngestionService) -> None:
    first, second, last = cluster.nodes
    if last.process.pid() is not None:  # run alone: the test above leaves the third node killed
        cluster.kill(last)
    before, during = ([f"{phase}-{i}".encode() for i in range(100)] for phase in ("one-down", "two-down"))
    async with (kafka.producer(cluster.bootstrap, security=cluster.security, request_timeout_ms=10_000) as producer,
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{ingestion.http_port}", timeout=30) as http):
        poster = Poster(http)
        await send_all(producer, TWO_DOWN_TOPIC, before, timeout=60)
        acked = list(before)
        for _ in range(5):
            assert await poster.post() == 200

        cluster.kill(second)
        killed = time.monotonic()
        pending = [await producer.send(TWO_DOWN_TOPIC, v, key=v) for v in during]
        killed_at = len(poster.statuses)
        async with asyncio.timeout(30):  # callers get back-pressure: 503 once the ack timeout (3 s) passes
            await asyncio.gather(*(poster.post() for _ in range(4)))
        print(f"two nodes down: 4 requests answered {poster.statuses[killed_at:]} in {time.monotonic() - killed:.1f}s")
        assert set(poster.statuses[killed_at:]) == {503}
        done, _ = await asyncio.wait(pending, timeout=1)
        assert not [f for f in done if f.exception() is None], "acknowledged with two of three nodes down"
        assert first.process.pid() is not None

        restarted = time.monotonic()
        await asyncio.to_thread(cluster.stack.up)
        print(f"two nodes restarted and answering in {time.monotonic() - restarted:.1f}s")
        # What the producer still held is delivered now, or failed for good: it counts as
        # acknowledged only if the broker said so.
        await asyncio.wait(pending, timeout=60)
        acked += [v for v, f in zip(during, pending, strict=True) if f.done() and f.exception() is None]
        back = time.monotonic()
        async with asyncio.timeout(60):  # the service's producer reconnects on its own
            while await poster.post() != 200:
                await asyncio.sleep(1)  # honour Retry-After
        print(f"ingestion answers 200 again {time.monotonic() - back:.1f}s after the cluster is back")

    read = await read_all(cluster, TWO_DOWN_TOPIC)
    print(f"producer: acknowledged {len(acked)}, read {len(read)} ({len(set(read))} distinct)")
    assert not set(acked) - set(read), "acknowledged records were lost"
    assert len(read) == len(set(read)), "the idempotent producer wrote a record twice"
    assert set(read) <= set(before + during)
    landed = {key.decode() for key in await read_all(cluster, INGESTED_TOPIC, keys=True)}
    print(f"ingestion: {poster.statuses.count(200)} x 200, {poster.statuses.count(503)} x 503, "
          f"{len(poster.acknowledged)} events acknowledged, {len(landed)} on the topic")
    assert not poster.acknowledged - landed, "events the ingestion service acknowledged were lost"
