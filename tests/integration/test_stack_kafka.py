"""Kafka of the local stack, used the way the services use it (aiokafka) and by kcat."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from devstack.settings import StackSettings
from streamledger import kafka

pytestmark = pytest.mark.integration


async def consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, **kafka.connection(), auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    records: list = []
    try:
        async with asyncio.timeout(timeout):
            while len(records) < expected:
                batch = await consumer.getmany(timeout_ms=500)
                for messages in batch.values():
                    records.extend(messages)
    finally:
        await consumer.stop()
    return records


async def test_idempotent_round_trip_keeps_order_and_payload(bootstrap: str, unique: str) -> None:
    topic = f"test.roundtrip.{unique}"
    await kafka.provision(bootstrap, [kafka.TopicSpec(topic)])
    values = [json.dumps({"n": i, "pad": "x" * 180}).encode() for i in range(500)]
    async with kafka.producer(bootstrap) as producer:
        # Idempotence (which implies acks=all): the broker gave this producer an id.
        assert producer._txn_manager is not None and producer._txn_manager.producer_id >= 0
        futures = [await producer.send(topic, value, key=str(i).encode()) for i, value in enumerate(values)]
        offsets = [(await f).offset for f in futures]
    assert offsets == list(range(500))
    records = await consume_all(bootstrap, topic, 500)
    assert [r.value for r in records] == values
    assert [r.key for r in records] == [str(i).encode() for i in range(500)]


async def test_topic_with_partitions_spreads_keys(bootstrap: str, unique: str) -> None:
    topic = f"test.partitions.{unique}"
    await kafka.provision(bootstrap, [kafka.TopicSpec(topic, partitions=4)])
    await kafka.provision(bootstrap, [kafka.TopicSpec(topic, partitions=4)])  # second call is a no-op
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka.connection())
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert len(described[0]["partitions"]) == 4
    async with kafka.producer(bootstrap) as producer:
        sent = [await (await producer.send(topic, b"v", key=f"k{i}".encode())) for i in range(200)]
    assert {m.partition for m in sent} == {0, 1, 2, 3}
    # Same key, same partition: what per-key ordering relies on.
    async with kafka.producer(bootstrap) as producer:
        again = [await (await producer.send(topic, b"v", key=f"k{i}".encode())) for i in range(200)]
    assert [m.partition for m in again] == [m.partition for m in sent]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **kafka.connection())
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(4)])
    finally:
        await consumer.stop()
    assert sum(ends.values()) == 400


def kcat_bootstrap(bootstrap: str) -> str:
    """Where kcat connects. Debian 12's kcat (librdkafka 2.0.2) fails SCRAM against this broker
    (aiokafka and Kafka's own clients pass with the same password), so on a secured stack it
    uses the bench's PLAINTEXT listener (STREAMLEDGER_STACK_KAFKA_PLAINTEXT_PORT) or is skipped."""
    stack = StackSettings()
    if not stack.kafka_secure:
        return bootstrap
    if not stack.kafka_plaintext_port:
        pytest.skip("kcat (librdkafka 2.0.2) cannot authenticate with SCRAM here; set "
                    "STREAMLEDGER_STACK_KAFKA_PLAINTEXT_PORT to test it on the bench listener")
    return f"127.0.0.1:{stack.kafka_plaintext_port}"


async def test_kcat_reads_what_we_produced(bootstrap: str, unique: str) -> None:
    kcat = shutil.which("kcat")
    assert kcat, "kcat is missing: `make install` runs deploy/system-deps.sh, which installs it"
    topic = f"test.kcat.{unique}"
    await kafka.provision(bootstrap, [kafka.TopicSpec(topic)])
    async with kafka.producer(bootstrap) as producer:
        for i in range(3):
            await (await producer.send(topic, f"hello-{i}".encode(), key=f"key-{i}".encode()))
    result = await asyncio.to_thread(
        subprocess.run,
        [kcat, "-b", kcat_bootstrap(bootstrap), "-C", "-t", topic, "-o", "beginning", "-c", "3", "-e", "-q", "-f", "%k=%s\n"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["key-0=hello-0", "key-1=hello-1", "key-2=hello-2"]
    listing = subprocess.run([kcat, "-b", kcat_bootstrap(bootstrap), "-L"], capture_output=True, text=True, timeout=30)
    assert "1 brokers:" in listing.stdout and kcat_bootstrap(bootstrap) in listing.stdout
