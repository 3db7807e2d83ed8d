"""A three-node Kafka cluster of the local stack (`stack up --kafka-brokers 3`), run by this module
on its own home and ports (29092, 29192, 29292; the shared stack's Kafka on 9092 is never
touched) and stopped at its end whatever happens: every topic the project creates gets 3
replicas and `min.insync.replicas=2`; with one node killed (kill -9) producers and consumers go
on; with two killed an acks=all producer gets no acknowledgement, the ingestion service answers
503, the inference service (paid mode: every call's usage record must reach Kafka) serves only
as many calls as its record queue holds and then answers UNAVAILABLE, and nothing acknowledged
(no event, no served call's usage) is lost once they are back.

The inference service runs in this process on holds of a fake of our own `HoldSource` (as
tests/integration/inference/test_inference_paid.py does): paid mode without Fabric."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc.aio as triton
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from tritonclient.utils import InferenceServerException

from devstack import Stack
from devstack.kafka import KafkaPart, kafka_nodes
from devstack.settings import StackSettings
from services.inference.app import Inference
from services.inference.authorization import Hold
from services.inference.settings import InferenceSettings
from services.ingestion.app import IngestionService
from services.ingestion.auth import hash_key
from services.ingestion.settings import IngestionSettings
from streamledger import kafka
from streamledger.core.receipts import HOLD_METADATA
from streamledger.kafka import topics
from streamledger.kafka.clients import KafkaSecurity, child_environment
from tests.integration.inference.support import (
    MODELS,
    PHISHING,
    codec,
    snapshot_record,
    train,
)
from tests.integration.inference.test_inference_paid import FakeHolds, Issuer

pytestmark = pytest.mark.integration

PORT, CONTROLLER_PORT, INTERNAL_PORT = 29092, 29093, 29094
"""Below Linux's ephemeral ports (32768-60999): a client still trying a stopped node of an earlier
cluster (a process orphaned by a killed test) can connect a socket to itself when the port it tries
is the one the kernel gave it, and then holds the port, so that the node cannot bind it."""
PORTS = {"STREAMLEDGER_STACK_KAFKA_PORT": str(PORT), "STREAMLEDGER_STACK_KAFKA_CONTROLLER_PORT": str(CONTROLLER_PORT),
         "STREAMLEDGER_STACK_KAFKA_INTERNAL_PORT": str(INTERNAL_PORT)}
CLI = str(Path(sys.executable).with_name("streamledger"))
TOPIC, GROUP = "events.raw.cluster-test", "streamledger-storage-cluster-test"
TWO_DOWN_TOPIC, INGESTED_TOPIC = f"{TOPIC}-two-down", f"{TOPIC}-ingested"
API_KEY = "key-cluster-test-0123456789"
INFERENCE_TOPICS = {"snapshots": f"{topics.SNAPSHOTS}.cluster-test", "usage": f"{topics.USAGE}.cluster-test",
                    "predictions": f"{topics.PREDICTIONS}.cluster-test"}
"""Under the table's names: the inference principal reads and writes them."""
RECORD_QUEUE = 5
"""The inference service's record queue (`inference_queue_size`): usage records offered and not yet
delivered; a paid call whose usage would not fit is refused with UNAVAILABLE."""


class Cluster:
    def __init__(self, home: Path) -> None:
        self.env = {"STREAMLEDGER_STACK_HOME": str(home), **PORTS}
        self.settings = StackSettings(home=home, kafka_brokers=3, kafka_port=PORT, kafka_controller_port=CONTROLLER_PORT,
                                      kafka_internal_port=INTERNAL_PORT, start_timeout=90)
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
                                                        for name in (TOPIC, TWO_DOWN_TOPIC, INGESTED_TOPIC)]
                                    + [topics.spec(role, INFERENCE_TOPICS[key]) for key, role in
                                       (("snapshots", topics.SNAPSHOTS), ("usage", topics.USAGE),
                                        ("predictions", topics.PREDICTIONS))],
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


@dataclass
class PaidInference:
    """The inference service in paid mode and a client of it paying from one (fake) hold."""

    service: Inference
    client: triton.InferenceServerClient
    served: list[str] = field(default_factory=list)
    """Request ids of the calls answered (each must have its usage record on the topic)."""
    refused: list[str] = field(default_factory=list)
    """Request ids of the calls refused with UNAVAILABLE (none may have a usage record)."""

    async def call(self) -> str:
        """One paid call of one row; its status code ("OK", or the gRPC code it was refused with)."""
        request_id = f"cluster-{len(self.served) + len(self.refused)}"
        tensors = []
        for name in sorted(PHISHING[0][0]):
            tensor = triton.InferInput(name, [1], "FP64")
            tensor.set_data_from_numpy(np.array([PHISHING[0][0][name]], dtype=np.float64))
            tensors.append(tensor)
        try:
            await self.client.infer("phishing-logreg", tensors, request_id=request_id,
                                    headers={HOLD_METADATA: "hold-cluster"}, client_timeout=30)
        except InferenceServerException as exc:
            assert exc.status() == "StatusCode.UNAVAILABLE", exc
            assert "usage cannot be recorded right now" in exc.message(), exc.message()
            self.refused.append(request_id)
            return "UNAVAILABLE"
        self.served.append(request_id)
        return "OK"


@pytest.fixture
async def inference(cluster: Cluster, ingestion: IngestionService, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch):
    """The inference service, in this process, on the cluster as its own principal, in paid mode with a
    client's hold (a fake `HoldSource`) and a record queue of RECORD_QUEUE (predictions off)."""
    models = tmp_path / "models.toml"
    models.write_text(MODELS)
    snapshot = snapshot_record("phishing-logreg", 1, train(models, "phishing-logreg", PHISHING[:300]))
    async with kafka.producer(cluster.bootstrap, security=cluster.security, max_request_size=64 * 1024 * 1024) as out:
        await out.send_and_wait(INFERENCE_TOPICS["snapshots"], codec.encode("ModelSnapshot", snapshot),
                                key=b"phishing-logreg")
    org1, server_ca = Issuer(tmp_path, "ca.org1", "Org1"), Issuer(tmp_path, "ca.server", "Provider")
    server_cert, server_key, _ = server_ca.issue("localhost", server=True)
    client_cert, client_key, subject = org1.issue("cluster-client")
    holds = FakeHolds({"hold-cluster": Hold("hold-cluster", f"Org1MSP::{subject}", expires_at=time.time() + 3600,
                                            amount=1_000_000, price_per_unit=1, client_cert=client_cert.read_text())})
    # The service builds its Kafka clients as the environment says when it starts (its record writer
    # process; its snapshot reader, once its task runs): the cluster's credentials of `inference` and the
    # bootstrap that stack recorded (all three nodes) until its model is loaded. The ingestion service
    # beside it goes on acting as itself.
    with monkeypatch.context() as env:
        auth_dir = cluster.nodes[0].auth.folder
        for name, value in child_environment(username="inference", auth_dir=auth_dir).items():
            env.setenv(name, value)
        env.delenv("STREAMLEDGER_KAFKA_BOOTSTRAP")
        settings = InferenceSettings(
            inference_port=0, inference_host="localhost", inference_models_file=models,
            inference_snapshot_topic=INFERENCE_TOPICS["snapshots"], inference_usage_topic=INFERENCE_TOPICS["usage"],
            inference_predictions_topic=INFERENCE_TOPICS["predictions"], inference_predictions_sample=0.0,
            inference_queue_size=RECORD_QUEUE, inference_mode="paid", inference_snapshot_ledger=False,
            inference_credit_window_units=10_000, inference_tls_cert=server_cert, inference_tls_key=server_key,
            inference_client_cas={"Org1MSP": org1.cert_file})
        assert settings.kafka_bootstrap == cluster.bootstrap, "the default: every node of the cluster"
        service = Inference(settings, hold_source=holds)
        await service.__aenter__()
        client = triton.InferenceServerClient(f"localhost:{service.port}", ssl=True,
                                              root_certificates=str(server_ca.cert_file),
                                              private_key=str(client_key), certificate_chain=str(client_cert))
        try:
            async with asyncio.timeout(30):  # the snapshot is loaded once its topic is read
                while not await client.is_model_ready("phishing-logreg"):
                    await asyncio.sleep(0.05)
        except BaseException:
            await client.close()
            await service.__aexit__(None, None, None)
            raise
    try:
        yield PaidInference(service, client)
    finally:
        await client.close()
        await service.__aexit__(None, None, None)


async def usage_request_ids(cluster: Cluster) -> list[str]:
    """The request id of every usage record on the test's usage topic."""
    return [codec.decode(value, reader="UsageRecord")["request_id"]
            for value in await read_all(cluster, INFERENCE_TOPICS["usage"])]


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
        cluster: Cluster, ingestion: IngestionService, inference: PaidInference) -> None:
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
        assert [await inference.call() for _ in range(3)] == ["OK"] * 3
        async with asyncio.timeout(30):  # with one node down, usage is delivered
            await inference.service.sink.drain()

        cluster.kill(second)
        killed = time.monotonic()
        pending = [await producer.send(TWO_DOWN_TOPIC, v, key=v) for v in during]
        killed_at = len(poster.statuses)
        async with asyncio.timeout(30):  # callers get back-pressure: 503 once the ack timeout (3 s) passes
            await asyncio.gather(*(poster.post() for _ in range(4)))
        print(f"two nodes down: 4 requests answered {poster.statuses[killed_at:]} in {time.monotonic() - killed:.1f}s")
        assert set(poster.statuses[killed_at:]) == {503}
        # A paid call is served while its usage record fits the record queue (the record writer sends it
        # again until Kafka has it); then calls are refused, and nothing unmetered is served.
        async with asyncio.timeout(30):
            calls = [await inference.call() for _ in range(RECORD_QUEUE + 3)]
        print(f"two nodes down: paid inference calls {calls}")
        assert calls == ["OK"] * RECORD_QUEUE + ["UNAVAILABLE"] * 3
        assert inference.service.sink.pending() == RECORD_QUEUE and inference.service.sink.alive
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
        async with asyncio.timeout(60):  # the record writer's redeliveries get through
            await inference.service.sink.drain()
        print(f"inference: usage held during the outage delivered {time.monotonic() - back:.1f}s after the "
              "cluster is back")
        assert await inference.call() == "OK"
        async with asyncio.timeout(30):
            await inference.service.sink.drain()

    read = await read_all(cluster, TWO_DOWN_TOPIC)
    print(f"producer: acknowledged {len(acked)}, read {len(read)} ({len(set(read))} distinct)")
    assert not set(acked) - set(read), "acknowledged records were lost"
    assert len(read) == len(set(read)), "the idempotent producer wrote a record twice"
    assert set(read) <= set(before + during)
    landed = {key.decode() for key in await read_all(cluster, INGESTED_TOPIC, keys=True)}
    print(f"ingestion: {poster.statuses.count(200)} x 200, {poster.statuses.count(503)} x 503, "
          f"{len(poster.acknowledged)} events acknowledged, {len(landed)} on the topic")
    assert not poster.acknowledged - landed, "events the ingestion service acknowledged were lost"
    usage = await usage_request_ids(cluster)
    print(f"inference: {len(inference.served)} calls served, {len(inference.refused)} refused; {len(usage)} usage "
          f"records ({len(set(usage))} distinct)")
    assert not set(inference.served) - set(usage), "usage of served calls was lost"
    assert not set(inference.refused) & set(usage), "a refused call was metered"
    assert set(usage) == set(inference.served)
