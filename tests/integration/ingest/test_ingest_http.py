"""POST /v1/events on a real service and the real Kafka: what is acknowledged is on the topic."""

from __future__ import annotations

import asyncio
import gzip
import json
import uuid
from collections import Counter
from datetime import datetime, timezone

import httpx
import pytest

from services.ingestion.app import IngestionService
from tests.integration.ingest.conftest import (
    KEYS,
    decoded_events,
    ingestion_settings,
    read_topic,
)

pytestmark = pytest.mark.integration
ACME = {"X-API-Key": KEYS["acme"]}


def event(**fields) -> dict:
    base = {"event_id": f"e-{uuid.uuid4().hex}", "source": "pos", "ts": 1_700_000_000_000,
            "features": {"amount": 12.5, "country": "FR", "card_present": True, "note": None}, "label": False}
    base.update(fields)
    return base


@pytest.fixture
async def client(service):
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}", timeout=30) as http:
        yield http


async def test_json_array_is_acknowledged_and_lands_decodable_with_tenant_from_key(client, service, bootstrap) -> None:
    events = [event(), event(ts="2024-02-29T12:00:00.250+01:00", label=3.5), event(label="gold")]
    answer = await client.post("/v1/events", json=events, headers={"Authorization": f"Bearer {KEYS['acme']}"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body == {"accepted": 3, "event_ids": [e["event_id"] for e in events], "rejected": []}

    landed = await decoded_events(bootstrap, service.settings.ingestion_raw_topic, set(body["event_ids"]))
    assert set(landed) == set(body["event_ids"])
    first = landed[events[0]["event_id"]]
    assert first["tenant"] == "acme" and first["source"] == "pos"
    assert first["features"] == {"amount": 12.5, "country": "FR", "card_present": True, "note": None}
    assert first["ts"] == datetime.fromtimestamp(1_700_000_000, timezone.utc)
    assert landed[events[1]["event_id"]]["ts"] == datetime(2024, 2, 29, 11, 0, 0, 250_000, timezone.utc)
    assert landed[events[2]["event_id"]]["label"] == "gold"


async def test_gzipped_ndjson_is_accepted(client, service, bootstrap) -> None:
    events = [event() for _ in range(50)]
    body = gzip.compress("\n".join(json.dumps(e) for e in events).encode())
    answer = await client.post("/v1/events", content=body, headers=ACME | {
        "Content-Encoding": "gzip", "Content-Type": "application/x-ndjson"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 50
    landed = await decoded_events(bootstrap, service.settings.ingestion_raw_topic, {e["event_id"] for e in events})
    assert len(landed) == 50


async def test_batch_is_accepted_in_part_and_rejections_name_index_field_and_why(client, service, bootstrap) -> None:
    good = [event(), event()]
    batch = [
        good[0],
        event(ts="yesterday"),                                   # 1: not a time
        event(features={"amount": [1, 2]}),                       # 2: nested value
        {"source": "pos", "ts": 1},                               # 3: missing event_id
        event(colour="red"),                                      # 4: unknown field
        event(tenant="globex"),                                   # 5: claims another tenant
        good[1],
        event(event_id=17),                                       # 7: wrong type
    ]
    answer = await client.post("/v1/events", json=batch, headers=ACME)
    assert answer.status_code == 207, answer.text
    body = answer.json()
    assert body["event_ids"] == [e["event_id"] for e in good]
    assert [(r["index"], r["field"]) for r in body["rejected"]] == [
        (1, "ts"), (2, "features.amount"), (3, "event_id"), (4, "colour"), (5, "tenant"), (7, "event_id")]
    assert "ISO-8601" in body["rejected"][0]["error"]
    assert "globex" in body["rejected"][4]["error"] and "acme" in body["rejected"][4]["error"]
    assert "must be a string" in body["rejected"][5]["error"]

    rejected_ids = {batch[i]["event_id"] for i in (1, 2, 4, 5)}
    landed = await decoded_events(bootstrap, service.settings.ingestion_raw_topic, {e["event_id"] for e in good} | rejected_ids)
    assert set(landed) == {e["event_id"] for e in good}


async def test_nan_and_infinity_are_rejected_by_field(client) -> None:
    body = ('[{"event_id": "n1", "source": "s", "ts": 1, "features": {"a": NaN}},'
            ' {"event_id": "n2", "source": "s", "ts": 1, "label": -Infinity},'
            ' {"event_id": "n3", "source": "s", "ts": 1, "features": {"b": 1e999}}]')
    answer = await client.post("/v1/events", content=body, headers=ACME | {"Content-Type": "application/json"})
    assert answer.status_code == 422
    assert [(r["index"], r["field"]) for r in answer.json()["rejected"]] == [
        (0, "features.a"), (1, "label"), (2, "features.b")]
    assert answer.json()["accepted"] == 0


@pytest.mark.parametrize("content_type", ["application/json", "application/x-ndjson"])
async def test_a_number_of_more_than_4300_digits_rejects_its_event_only(client, content_type) -> None:
    # Python converts at most 4,300 digits (a ValueError, not a JSONDecodeError): once a 500 for all.
    huge = "9" * 5000
    events = ['{"event_id": "d1", "source": "s", "ts": 1, "features": {"a": 1.5}}',
              f'{{"event_id": "d2", "source": "s", "ts": 1, "features": {{"big": {huge}}}}}',
              f'{{"event_id": "d3", "source": "s", "ts": {huge}}}']
    body = f"[{', '.join(events)}]" if content_type == "application/json" else "\n".join(events)
    answer = await client.post("/v1/events", content=body, headers=ACME | {"Content-Type": content_type})
    assert answer.status_code == 207, answer.text
    assert answer.json()["event_ids"] == ["d1"]
    assert [(r["index"], r["field"]) for r in answer.json()["rejected"]] == [(1, "features.big"), (2, "ts")]
    assert "5000 digits" in answer.json()["rejected"][0]["error"]


@pytest.mark.parametrize(
    ("headers", "why"),
    [({}, "missing API key"), ({"X-API-Key": "wrong"}, "unknown API key"),
     ({"Authorization": "Basic abc"}, "missing API key")],
)
async def test_missing_or_wrong_key_is_401(client, headers, why) -> None:
    answer = await client.post("/v1/events", json=[event()], headers=headers)
    assert answer.status_code == 401 and why in answer.json()["error"]
    assert answer.headers["WWW-Authenticate"] == "Bearer"


async def test_other_tenants_key_cannot_write_as_acme(client) -> None:
    answer = await client.post("/v1/events", json=[event(tenant="acme")], headers={"X-API-Key": KEYS["globex"]})
    assert answer.status_code == 422
    assert answer.json()["rejected"][0]["field"] == "tenant"


@pytest.mark.parametrize(
    ("content", "headers", "status", "says"),
    [
        (b"", {}, 400, "body is empty"),
        (b"   \n", {}, 400, "body is empty"),
        (b'[{"event_id": "x",', {"Content-Type": "application/json"}, 400, "not valid JSON"),
        (b"\xff\xfe\x00garbage", {}, 400, "not valid UTF-8"),
        (b"[]", {"Content-Type": "application/json"}, 400, "no events"),
        (b"not gzip at all", {"Content-Encoding": "gzip"}, 400, "not valid gzip"),
        (b"[]", {"Content-Encoding": "br"}, 415, "not supported"),
        (b"[" * 100_000, {"Content-Type": "application/json"}, 400, "nested too deeply"),
    ],
)
async def test_unusable_bodies_get_a_clear_error(client, content, headers, status, says) -> None:
    answer = await client.post("/v1/events", content=content, headers=ACME | headers)
    assert answer.status_code == status, answer.text
    assert says in answer.json()["error"]


async def test_100_mb_body_is_413_and_the_service_keeps_serving(client, service) -> None:
    limit = service.settings.ingestion_max_body_bytes
    huge = b"[" + b" " * (100 * 1024 * 1024) + b"]"
    try:
        answer = await client.post("/v1/events", content=huge, headers=ACME)
        assert answer.status_code == 413 and str(limit) in answer.json()["error"]
    except httpx.TransportError:
        pass  # the server may close the connection before the client finished sending 100 MB
    # Streamed without Content-Length: the limit holds while reading.
    async def chunks():
        for _ in range(100):
            yield b" " * (1024 * 1024)
    answer = await client.post("/v1/events", content=chunks(), headers=ACME)
    assert answer.status_code == 413, answer.text
    answer = await client.post("/v1/events", json=[event()], headers=ACME)
    assert answer.status_code == 200


async def test_gzip_bomb_is_413(client, service) -> None:
    bomb = gzip.compress(b" " * (50 * 1024 * 1024))
    assert len(bomb) < service.settings.ingestion_max_body_bytes
    answer = await client.post("/v1/events", content=bomb, headers=ACME | {"Content-Encoding": "gzip"})
    assert answer.status_code == 413 and "decompresses" in answer.json()["error"]


async def test_too_many_events_is_413(client, service) -> None:
    limit = service.settings.ingestion_max_events_per_request
    lines = "\n".join('{"event_id": "x%d", "source": "s", "ts": 1}' % i for i in range(limit + 1))
    answer = await client.post("/v1/events", content=lines, headers=ACME | {"Content-Type": "application/x-ndjson"})
    assert answer.status_code == 413 and str(limit) in answer.json()["error"]


async def test_full_pending_budget_answers_503_with_retry_after_then_recovers(bootstrap, unique) -> None:
    """Kafka slowed for real: the producer lingers 3 s over every batch, so two requests of 5 events
    fill a budget of 10 and the requests sent meanwhile are refused at once, not queued."""
    settings = ingestion_settings(f"test.budget.{unique}", max_pending_events=10, max_events_per_request=5,
                                  linger_seconds=3.0, retry_after_seconds=7)
    async with IngestionService(settings) as service, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}", timeout=30) as http:
        batches = [[event() for _ in range(5)] for _ in range(8)]
        answers = await asyncio.gather(*(http.post("/v1/events", json=batch, headers=ACME) for batch in batches))
        refused = [a for a in answers if a.status_code == 503]
        accepted = [a.json()["event_ids"] for a in answers if a.status_code == 200]
        assert len(refused) + len(accepted) == len(batches), [a.text for a in answers]
        assert refused and accepted, [a.status_code for a in answers]
        for answer in refused:
            assert answer.headers["Retry-After"] == "7"
            assert answer.json()["acknowledged"] == []
            assert "events are already waiting for Kafka (limit 10)" in answer.json()["error"]

        assert (await http.get("/healthz")).json()["pending_events"] == 0  # every acknowledgement gave back
        retry = [event() for _ in range(5)]
        answer = await http.post("/v1/events", json=retry, headers=ACME)
        assert answer.status_code == 200, answer.text
        accepted.append(answer.json()["event_ids"])

    on_topic = Counter(r.key.decode() for r in await read_topic(bootstrap, settings.ingestion_raw_topic))
    assert on_topic == {event_id: 1 for ids in accepted for event_id in ids}  # refused events never went out


async def test_healthz_and_metrics(client) -> None:
    assert (await client.get("/healthz")).json()["status"] == "ok"
    await client.post("/v1/events", json=[event()], headers=ACME)
    metrics = (await client.get("/metrics")).text
    assert 'streamledger_ingestion_events_accepted_total{interface="http"}' in metrics
    assert "streamledger_ingestion_request_seconds_bucket" in metrics


async def test_rejected_events_never_reach_the_topic(client, service, bootstrap) -> None:
    marker = f"bad-{uuid.uuid4().hex}"
    await client.post("/v1/events", json=[event(event_id=marker, ts=-5)], headers=ACME)
    keys = {r.key for r in await read_topic(bootstrap, service.settings.ingestion_raw_topic)}
    assert marker.encode() not in keys
