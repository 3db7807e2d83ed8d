"""Kafka stopped while requests flow: callers get 503 + Retry-After, and nothing acknowledged is lost.

Stops the shared Kafka, so it is marked `fault` (runs after every other test) and restarts
Kafka itself, whatever happens.
"""

from __future__ import annotations

import asyncio
import itertools

import httpx
import pytest

from devstack import Stack
from services.ingestion.app import IngestionService
from tests.integration.ingest.conftest import KEYS, ingestion_settings, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.fault]
ACME = {"X-API-Key": KEYS["acme"]}


@pytest.mark.timeout(420)
async def test_stopping_kafka_mid_request_gives_503_and_loses_no_acknowledged_event(stack, bootstrap, unique) -> None:
    service = IngestionService(ingestion_settings(f"test.fault.{unique}", ack_timeout_seconds=3.0, retry_after_seconds=1))
    await service.start()
    acknowledged: set[str] = set()
    statuses: list[int] = []
    counter = itertools.count()

    async def post(http: httpx.AsyncClient) -> httpx.Response:
        batch = [{"event_id": f"f-{unique}-{next(counter)}", "source": "fault", "ts": 1_700_000_000_000,
                  "features": {"n": 1.0}} for _ in range(20)]
        answer = await http.post("/v1/events", json=batch, headers=ACME)
        statuses.append(answer.status_code)
        if answer.status_code == 200:
            acknowledged.update(answer.json()["event_ids"])
        elif answer.status_code == 503:
            assert answer.headers["Retry-After"] == "1"
            acknowledged.update(answer.json()["acknowledged"])  # partly acknowledged batches count too
        else:
            raise AssertionError(f"unexpected {answer.status_code}: {answer.text}")
        return answer

    kafka = stack.part("kafka")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}", timeout=30) as http:
            for _ in range(20):
                assert (await post(http)).status_code == 200

            # Stop Kafka while a stream of requests is in flight.
            stopping = asyncio.create_task(asyncio.to_thread(kafka.process.stop))
            async with asyncio.timeout(120):
                while statuses.count(503) < 3:
                    await asyncio.gather(*(post(http) for _ in range(4)))
            await stopping
            assert kafka.process.pid() is None
            assert (await http.get("/healthz")).status_code == 200  # the service itself keeps serving

            await asyncio.to_thread(Stack(say=lambda _m: None).up)
            async with asyncio.timeout(180):  # the producer reconnects on its own
                while (await post(http)).status_code != 200:
                    await asyncio.sleep(1)  # honour Retry-After
    finally:
        await asyncio.to_thread(Stack(say=lambda _m: None).up)
        await service.stop()

    print(f"fault: {statuses.count(200)} x 200, {statuses.count(503)} x 503, {len(acknowledged)} events acknowledged")
    assert statuses.count(503) >= 3
    landed = {r.key.decode() for r in await read_topic(bootstrap, service.settings.ingestion_raw_topic, timeout=120)}
    lost = acknowledged - landed
    assert not lost, f"{len(lost)} acknowledged events are missing from Kafka, e.g. {sorted(lost)[:5]}"
    assert len(acknowledged) >= 20 * 21
