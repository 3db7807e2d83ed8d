"""The issue's fault test: kill -9 the cleaner and the sink, stop MongoDB for 10 s, lose nothing.

Events are produced while the services run; mid-run the cleaner and then the sink are
killed with SIGKILL and restarted, then FerretDB is stopped for 10 s and started again.
Afterwards MongoDB must hold exactly the valid events, each with the content hash the
reference (tests/integration/pipeline/reference.py) computes outside the pipeline, and
exactly the invalid messages as dead letters with their reasons.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from devstack import Stack
from streamledger import kafka
from streamledger.avro import AvroCodec, SchemaRegistry
from tests.integration.pipeline import reference
from tests.integration.pipeline.conftest import create_topics, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.timeout(420)]

CODEC = AvroCodec(SchemaRegistry.from_dir())
EVENTS = int(os.environ.get("STREAMLEDGER_FAULT_TEST_EVENTS", "50000"))
"""The issue asks for 50,000; a smaller count (env STREAMLEDGER_FAULT_TEST_EVENTS) runs the same steps faster."""
INVALID_EVERY = 97  # every 97th message is invalid (alternating non-finite feature and foreign bytes)
OUTAGE_SECONDS = 10


def input_messages() -> tuple[list[tuple[bytes, bytes]], dict[str, str], dict[int, str]]:
    """(key, value) messages in order, expected hash per valid event id, expected reason per bad offset."""
    messages, hashes, bad = [], {}, {}
    for n in range(EVENTS):
        if n % INVALID_EVERY == INVALID_EVERY - 1:
            if (n // INVALID_EVERY) % 2:
                bad[n] = "non_finite"
                messages.append((f"bad-{n}".encode(), CODEC.encode("RawEvent", reference.non_finite_event(n))))
            else:
                bad[n] = "not_single_object"
                messages.append((f"foreign-{n}".encode(), f"id={n};not avro".encode()))
            continue
        raw, digest = reference.valid_event(n, tenant=("acme", "globex")[n % 2])
        hashes[raw["event_id"]] = digest
        messages.append((raw["event_id"].encode(), CODEC.encode("RawEvent", raw)))
    return messages, hashes, bad


async def test_no_loss_through_kills_and_a_mongo_outage(bootstrap, mongo_db, pipeline_env, services) -> None:
    started = time.monotonic()
    raw_topic = pipeline_env["STREAMLEDGER_CLEANING_RAW_TOPIC"]
    await create_topics(bootstrap, [raw_topic])
    messages, hashes, bad = input_messages()
    events, letters = mongo_db["events"], mongo_db["deadletters"]
    cleaning, storage = services("cleaning"), services("storage")

    async def produce(part: list[tuple[bytes, bytes]]) -> None:
        async with kafka.producer(bootstrap) as producer:
            for start in range(0, len(part), 2000):
                for key, value in part[start:start + 2000]:
                    await producer.send(raw_topic, key=key, value=value)
                await producer.flush()
                await asyncio.sleep(0.05)  # a live stream, not one burst

    # No MongoDB reads before the sink has created its collections.
    await storage.logged('"event": "started"')
    split = int(len(messages) * 0.6)
    producing = asyncio.create_task(produce(messages[:split]))

    def logs() -> str:
        return f"--- cleaning ---\n{cleaning.tail()}\n--- storage ---\n{storage.tail()}"

    async def stored_at_least(fraction: float) -> bool:
        assert cleaning.alive() and storage.alive(), logs()
        return await events.count_documents({}) >= fraction * len(hashes)

    await wait_until(lambda: stored_at_least(0.10), 120, "10% of the events stored", logs)
    cleaning.kill9()
    cleaning.start()

    await wait_until(lambda: stored_at_least(0.30), 120, "30% of the events stored", logs)
    storage.kill9()
    storage.start()
    await storage.logged('"event": "started"')

    await wait_until(lambda: stored_at_least(0.50), 120, "50% of the events stored", logs)
    await producing
    # The rest of the input arrives while MongoDB is down, so the sink has writes to hold back.
    stack = Stack(say=lambda _msg: None)  # synchronous, runs its own event loops: use a thread
    outage_started = time.monotonic()
    try:
        assert await asyncio.to_thread(stack.part("ferretdb").process.stop), "FerretDB did not stop"
        await produce(messages[split:])
        await storage.logged('"event": "mongo_unavailable"', timeout=60)  # waiting, not dropping
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - outage_started)))  # the outage itself
        assert storage.alive(), storage.tail()
    finally:
        await asyncio.to_thread(stack.up)

    async def complete() -> bool:
        assert cleaning.alive() and storage.alive(), logs()
        return (await events.count_documents({}) >= len(hashes)
                and await letters.count_documents({}) >= len(bad))

    await wait_until(complete, 180, f"{len(hashes)} events and {len(bad)} dead letters stored", logs)

    stored = {doc["event_id"]: doc["content_hash"]
              async for doc in events.find({}, {"event_id": 1, "content_hash": 1})}
    assert len(stored) == len(hashes)
    assert stored == hashes
    dead = {doc["source_offset"]: doc["reason"] async for doc in letters.find({}, {"source_offset": 1, "reason": 1})}
    assert dead == bad

    assert cleaning.stop() == 0, cleaning.tail()
    assert storage.stop() == 0, storage.tail()
    print(f"fault test: {EVENTS} messages ({len(hashes)} valid, {len(bad)} invalid) "
          f"in {time.monotonic() - started:.0f}s")
