"""Fixtures for the ingestion tests: a running service on a unique topic, and topic readers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from services.ingestion.app import IngestionService
from services.ingestion.auth import hash_key
from services.ingestion.settings import IngestionSettings
from streamledger import kafka
from streamledger.avro import AvroCodec, SchemaRegistry

KEYS = {"acme": "key-acme-0123456789", "globex": "key-globex-9876543210"}
CODEC = AvroCodec(SchemaRegistry.from_dir())


def ingestion_settings(topic: str, **overrides) -> IngestionSettings:
    """Settings on `topic` with free ports and both tenants' keys; `overrides` name fields without
    their `ingestion_` prefix (`max_pending_events=10`)."""
    fields = dict(raw_topic=topic, http_port=0, grpc_port=0, raw_partitions=3,
                  api_keys={tenant: [hash_key(key)] for tenant, key in KEYS.items()}, **overrides)
    return IngestionSettings(**{f"ingestion_{name}": value for name, value in fields.items()})


@pytest.fixture(scope="module")
async def service(stack) -> AsyncIterator[IngestionService]:
    """One service per test module on its own topic (tests tell their events apart by id)."""
    async with IngestionService(ingestion_settings(f"test.ingest.{uuid.uuid4().hex[:10]}",
                                                   max_body_bytes=1024 * 1024)) as running:
        yield running


async def read_topic(bootstrap: str, topic: str, timeout: float = 60.0) -> list:
    """Every record now in `topic`: reads each partition up to its end offset, no more, no less."""
    records: list = []
    async with kafka.consumer(bootstrap, max_poll_records=10_000, max_fetch_bytes=16 * 1024 * 1024) as reader:
        async for batch in kafka.read_to_end(reader, bootstrap, topic, timeout_s=timeout):
            records.extend(batch)
    return records


async def decoded_events(bootstrap: str, topic: str, ids: set[str]) -> dict[str, dict]:
    """The decoded RawEvents on `topic` whose ids are in `ids`, by id."""
    return {
        record["event_id"]: record
        for record in (CODEC.decode(r.value) for r in await read_topic(bootstrap, topic) if r.key.decode() in ids)
    }
