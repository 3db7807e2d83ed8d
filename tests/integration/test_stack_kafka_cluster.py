"""A three-node Kafka cluster of the local stack (`stack up --kafka-brokers 3`), run by this module
on its own home and ports (39092, 39192, 39292; the shared stack's Kafka on 9092 is never
touched) and stopped at its end whatever happens: every topic the project creates gets 3
replicas and `min.insync.replicas=2`; with one node killed (kill -9) producers and consumers go
on; with two killed an acks=all producer gets no acknowledgement, and nothing acknowledged is
lost once they are back."""

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

import pytest
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from devstack import Stack
from devstack.kafka import KafkaPart, kafka_nodes
from devstack.settings import StackSettings
from streamledger import kafka
from streamledger.kafka import topics
from streamledger.kafka.clients import KafkaSecurity

pytestmark = pytest.mark.integration

PORTS = {"STREAMLEDGER_STACK_KAFKA_PORT": "39092", "STREAMLEDGER_STACK_KAFKA_CONTROLLER_PORT": "39093",
         "STREAMLEDGER_STACK_KAFKA_INTERNAL_PORT": "39094"}
CLI = str(Path(sys.executable).with_name("streamledger"))


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
        yield cluster
    finally:
        stopping = time.monotonic()
        cluster.stack.down()
        print(f"cluster down in {time.monotonic() - stopping:.1f}s")


async def topic_min_insync(cluster: Cluster, names: list[str]) -> dict[str, str]:
    async with kafka.admin(cluster.bootstrap, security=cluster.security) as admin:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
    found = {}
    for response in responses:
        for _error, _message, _type, name, entries in response.resources:
            found.update({name: value for key, value, *_ in entries if key == "min.insync.replicas"})
    return found


async def replicas(cluster: Cluster, names: list[str]) -> dict[str, list[tuple[int, int]]]:
    """Each topic's partitions as (replicas, in-sync replicas) counts."""
    async with kafka.admin(cluster.bootstrap, security=cluster.security) as admin:
        described = await admin.describe_topics(names)
    return {d["topic"]: [(len(p["replicas"]), len(p["isr"])) for p in d["partitions"]] for d in described}


async def test_the_topic_table_gets_three_replicas_and_status_shows_each_node(cluster: Cluster) -> None:
    table = list(topics.TABLE.values())
    await kafka.provision(cluster.bootstrap, table, security=cluster.security)
    names = [s.name for s in table]
    found = await replicas(cluster, names)
    assert found == {s.name: [(3, 3)] * s.partitions for s in table}
    assert await topic_min_insync(cluster, names) == dict.fromkeys(names, "2")

    # Asked without the broker count: the cluster's nodes are found by their pid files.
    status = subprocess.run([CLI, "stack", "status"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, **cluster.env, "COLUMNS": "200"})
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


async def read_all(cluster: Cluster, topic: str) -> list[bytes]:
    async with kafka.consumer(cluster.bootstrap, security=cluster.security) as reader:
        return [r.value for records in
                [batch async for batch in kafka.read_to_end(reader, cluster.bootstrap, topic, security=cluster.security)]
                for r in records]


TOPIC, GROUP = "events.raw.cluster-test", "streamledger-storage-cluster-test"


async def test_with_one_node_killed_producers_and_consumers_go_on(cluster: Cluster) -> None:
    await kafka.provision(cluster.bootstrap, [topics.spec(topics.RAW, TOPIC)], security=cluster.security)
    assert (await replicas(cluster, [TOPIC]))[TOPIC] == [(3, 3)] * 3
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


async def test_with_two_nodes_killed_nothing_is_acknowledged_and_nothing_acknowledged_is_lost(cluster: Cluster) -> None:
    topic = f"{TOPIC}-two-down"
    await kafka.provision(cluster.bootstrap, [topics.spec(topics.RAW, topic)], security=cluster.security)
    first, second, last = cluster.nodes
    if last.process.pid() is not None:  # run alone: the test above leaves the third node killed
        cluster.kill(last)
    before, during = ([f"{phase}-{i}".encode() for i in range(100)] for phase in ("one-down", "two-down"))
    async with kafka.producer(cluster.bootstrap, security=cluster.security, request_timeout_ms=10_000) as producer:
        await send_all(producer, topic, before, timeout=60)
        acked = list(before)

        cluster.kill(second)
        pending = [await producer.send(topic, v, key=v) for v in during]
        done, _ = await asyncio.wait(pending, timeout=6)
        assert not [f for f in done if f.exception() is None], "acknowledged with two of three nodes down"
        assert first.process.pid() is not None

        restarted = time.monotonic()
        await asyncio.to_thread(cluster.stack.up)
        print(f"two nodes restarted and answering in {time.monotonic() - restarted:.1f}s")
        # What the producer still held is delivered now, or failed for good: it counts as
        # acknowledged only if the broker said so.
        await asyncio.wait(pending, timeout=60)
        acked += [v for v, f in zip(during, pending, strict=True) if f.done() and f.exception() is None]

    read = await read_all(cluster, topic)
    print(f"acknowledged {len(acked)}, read {len(read)} ({len(set(read))} distinct)")
    assert not set(acked) - set(read), "acknowledged records were lost"
    assert len(read) == len(set(read)), "the idempotent producer wrote a record twice"
    assert set(read) <= set(before + during)
