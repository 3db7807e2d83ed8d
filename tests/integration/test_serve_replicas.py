"""Two replicas of the ingestion service on one machine, as `streamledger serve all --replicas 2`
runs them (`devstack.runner.ServiceGroup`, each `streamledger serve ingestion` as its own Kafka
principal): both listen on the same HTTP and gRPC ports (SO_REUSEPORT), the kernel gives each of
them some of the clients' connections, every event either acknowledged is on the topic, a
process that does not ask to share cannot take the port, and once one replica is killed (-9)
the other answers every new connection."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import grpc
import httpx
import pytest

from devstack.runner import ServiceGroup
from services.ingestion.auth import hash_key
from streamledger import kafka
from streamledger.kafka import topics
from streamledger.listen import listening_socket
from streamledger.protos import load
from tests.integration.test_ledger_seams import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

ingest_pb2, ingest_pb2_grpc = load("ingest.proto")
API_KEY = "key-replicas-0123456789"
CONNECTIONS = 16
"""Clients, each on a connection of its own: all on one replica would happen once in 2**15 runs."""


def established(pid: int, port: int) -> int:
    """The established TCP connections process `pid` holds on its local `port` (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port and inode in inodes:
                count += 1
    return count


@pytest.fixture
def replicas(stack, unique: str, tmp_path: Path):
    topic = f"{topics.RAW}.replicas-{unique}"  # under the table's name: the ingestion principal writes it
    group = ServiceGroup(env={
        "STREAMLEDGER_INGESTION_API_KEYS": json.dumps({"acme": [hash_key(API_KEY)]}),
        "STREAMLEDGER_INGESTION_HTTP_PORT": str(free_port()), "STREAMLEDGER_INGESTION_GRPC_PORT": str(free_port()),
        "STREAMLEDGER_INGESTION_RAW_TOPIC": topic, "STREAMLEDGER_INGESTION_RAW_PARTITIONS": "2",
    }, log_dir=tmp_path)
    try:
        assert group.start(["ingestion"], replicas=2) == ["ingestion-1", "ingestion-2"]
        deadline = time.monotonic() + 45
        for key in group.keys("ingestion"):
            while '"listening"' not in group.log_file(key).read_text(errors="replace"):
                assert not group.exited(), f"{key} exited:\n{group.log_tail(next(iter(group.exited())), 30)}"
                assert time.monotonic() < deadline, f"{key} never listened:\n{group.log_tail(key, 30)}"
                time.sleep(0.1)
        yield group, topic
    finally:
        group.stop(grace=10)


async def frames(prefix: str):
    """One gRPC frame of one event."""
    yield ingest_pb2.IngestRequest(events=[ingest_pb2.Event(event_id=prefix, source="replicas",
                                                            ts_millis=1_700_000_000_000,
                                                            features={"n": ingest_pb2.Value(number=1.0)})])


def events(prefix: str, n: int) -> list[dict]:
    return [{"event_id": f"{prefix}-{i}", "source": "replicas", "ts": 1_700_000_000_000, "features": {"n": float(i)}}
            for i in range(n)]


async def test_two_replicas_share_their_ports_and_each_gets_connections(replicas, bootstrap: str) -> None:
    group, topic = replicas
    env = group.launches["ingestion-1"][1]
    http_port, grpc_port = int(env["STREAMLEDGER_INGESTION_HTTP_PORT"]), int(env["STREAMLEDGER_INGESTION_GRPC_PORT"])
    pids = group.pids()
    acknowledged: set[str] = set()

    clients = [httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=30) for _ in range(CONNECTIONS)]
    # A channel of its own each (not gRPC's process-wide subchannel pool): a connection each.
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}", options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(CONNECTIONS)]
    try:
        answers = await asyncio.gather(*(c.post("/v1/events", json=events(f"http-{n}", 3), headers={"X-API-Key": API_KEY})
                                         for n, c in enumerate(clients)))
        assert [a.status_code for a in answers] == [200] * CONNECTIONS, [a.text for a in answers]
        acknowledged.update(i for a in answers for i in a.json()["event_ids"])
        replies = await asyncio.gather(*(
            ingest_pb2_grpc.IngestionStub(ch).Ingest(frames(f"grpc-{n}"), metadata=(("x-api-key", API_KEY),), timeout=30)
            for n, ch in enumerate(channels)))
        acknowledged.update(i for r in replies for i in r.event_ids)
        assert len(acknowledged) == CONNECTIONS * 4

        # Every connection is still open (keep-alive): where did the kernel put each?
        spread = {key: (established(pid, http_port), established(pid, grpc_port)) for key, pid in pids.items()}
        print(f"connections per replica (http, grpc): {spread}")
        assert sum(h for h, _ in spread.values()) == CONNECTIONS and sum(g for _, g in spread.values()) == CONNECTIONS
        assert all(h > 0 and g > 0 for h, g in spread.values()), f"a replica got no connection: {spread}"
    finally:
        await asyncio.gather(*(c.aclose() for c in clients), *(ch.close() for ch in channels))

    with pytest.raises(OSError):  # a process that does not ask to share gets neither port
        listening_socket("127.0.0.1", http_port).close()
    with pytest.raises(OSError):
        listening_socket("127.0.0.1", grpc_port).close()

    killed = time.monotonic()
    group.kill("ingestion-2")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=30,
                                 limits=httpx.Limits(max_keepalive_connections=0)) as fresh:
        statuses = [(await fresh.post("/v1/events", json=events(f"after-kill-{n}", 1),
                                      headers={"X-API-Key": API_KEY})) for n in range(CONNECTIONS)]
    assert [s.status_code for s in statuses] == [200] * CONNECTIONS, "a new connection went to the dead replica"
    acknowledged.update(i for s in statuses for i in s.json()["event_ids"])
    print(f"after the kill, {CONNECTIONS} new connections answered by the live replica in "
          f"{time.monotonic() - killed:.1f}s")

    on_topic: set[str] = set()
    async with kafka.consumer(bootstrap) as reader:
        async for batch in kafka.read_to_end(reader, bootstrap, topic):
            on_topic.update(r.key.decode() for r in batch)
    assert acknowledged <= on_topic, f"acknowledged yet not on the topic: {sorted(acknowledged - on_topic)[:5]}"
