"""Fixtures for the ingestion tests: a running service on a unique topic, and topic readers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streamledger.avro import AvroCodec, SchemaRegistry
from services.ingestion.app import IngestionService
from services.ingestion.auth import hash_key
from services.ingestion.settings import IngestionSettings

KEYS = {"acme": "key-acme-0123456789", "globex": "key-globex-9876543210"}
CODEC = AvroCodec(SchemaRegistry.from_dir())


def ingestion_settings(topic: str, **overrides) -> IngestionSettings:
    return IngestionSettings(raw_topic=topic, http_port=0, grpc_port=0, raw_partitions=3,
                             api_keys={tenant: [hash_key(key)] for tenant, key in KEYS.items()}, **overrides)


@pytest.fixture(scope="module")
async def service(stack) -> AsyncIterator[IngestionService]:
    """One service per test module on its own topic (tests tell their events apart by id)."""
    running = IngestionService(ingestion_settings(f"test.ingest.{uuid.uuid4().hex[:10]}", max_body_bytes=1024 * 1024))
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


async def read_topic(bootstrap: str, topic: str, timeout: float = 60.0) -> list:
    """Every record now in `topic`: reads each partition up to its end offset, no more, no less."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=10_000,
                                fetch_max_bytes=16 * 1024 * 1024)
    await consumer.start()
    records: list = []
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(await _partitions(bootstrap, topic))]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        async with asyncio.timeout(timeout):
            for tp in partitions:
                while await consumer.position(tp) < end[tp]:
                    batch = await consumer.getmany(tp, timeout_ms=500)
                    records.extend(batch.get(tp, []))
    finally:
        await consumer.stop()
    return records


async def _partitions(bootstrap: str, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert not described["error_code"], f"topic {topic} does not exist (error {described['error_code']})"
    return [p["partition"] for p in described["partitions"]]


async def decoded_events(bootstrap: str, topic: str, ids: set[str]) -> dict[str, dict]:
    """The decoded RawEvents on `topic` whose ids are in `ids`, by id."""
    return {
        record["event_id"]: record
        for record in (CODEC.decode(r.value) for r in await read_topic(bootstrap, topic) if r.key.decode() in ids)
    }
