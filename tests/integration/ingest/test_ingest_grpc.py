"""The gRPC client stream on a real service and the real Kafka, and the `_schemas` topic."""

from __future__ import annotations

import json
import uuid

import grpc
import pytest

from streamledger import kafka
from streamledger.avro import SCHEMAS_DIR, SchemaRegistry, fingerprint_of
from streamledger.protos import load
from tests.integration.ingest.conftest import CODEC, KEYS, decoded_events, read_topic

pytestmark = pytest.mark.integration
pb2, pb2_grpc = load("ingest.proto")


def proto_event(**fields) -> "pb2.Event":
    base = dict(event_id=f"g-{uuid.uuid4().hex}", source="pos", ts_millis=1_700_000_000_000,
                features={"amount": pb2.Value(number=3.5), "country": pb2.Value(text="FR"),
                          "card_present": pb2.Value(flag=True), "note": pb2.Value()},
                label=pb2.Value(flag=False))
    base.update(fields)
    return pb2.Event(**{k: v for k, v in base.items() if v is not None})


@pytest.fixture
async def channel(service):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as ch:
        yield ch


async def _frames(*frames):
    for frame in frames:
        yield frame


async def test_stream_of_frames_is_acknowledged_and_lands(channel, service, bootstrap) -> None:
    frames = [pb2.IngestRequest(events=[proto_event() for _ in range(100)]) for _ in range(3)]
    stub = pb2_grpc.IngestionStub(channel)
    answer = await stub.Ingest(_frames(*frames), metadata=[("x-api-key", KEYS["acme"])], timeout=30)
    sent = [e.event_id for f in frames for e in f.events]
    assert answer.accepted == 300 and list(answer.event_ids) == sent and not answer.rejected

    landed = await decoded_events(bootstrap, service.settings.ingestion_raw_topic, set(sent))
    assert set(landed) == set(sent)
    one = landed[sent[0]]
    assert one["tenant"] == "acme"
    assert one["features"] == {"amount": 3.5, "country": "FR", "card_present": True, "note": None}
    assert one["label"] is False


async def test_rejections_carry_the_index_in_the_whole_stream(channel, service, bootstrap) -> None:
    good = proto_event()
    frames = [
        pb2.IngestRequest(events=[proto_event(), proto_event(event_id="")]),              # 1: missing id
        pb2.IngestRequest(events=[good, proto_event(ts_millis=None)]),                     # 3: missing time
        pb2.IngestRequest(events=[proto_event(tenant="globex"),                            # 4: other tenant
                                  proto_event(features={"x": pb2.Value(number=float("nan"))})]),  # 5: NaN
    ]
    stub = pb2_grpc.IngestionStub(channel)
    answer = await stub.Ingest(_frames(*frames), metadata=[("authorization", f"Bearer {KEYS['acme']}")], timeout=30)
    assert answer.accepted == 2
    assert [(r.index, r.field) for r in answer.rejected] == [
        (1, "event_id"), (3, "ts_millis"), (4, "tenant"), (5, "features.x")]
    rejected_id = frames[2].events[0].event_id
    landed = await decoded_events(bootstrap, service.settings.ingestion_raw_topic, {good.event_id, rejected_id})
    assert set(landed) == {good.event_id}


@pytest.mark.parametrize("metadata", [[], [("x-api-key", "wrong")]])
async def test_missing_or_wrong_key_is_unauthenticated(channel, metadata) -> None:
    stub = pb2_grpc.IngestionStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Ingest(_frames(pb2.IngestRequest(events=[proto_event()])), metadata=metadata, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_garbage_frames_fail_the_stream_and_the_service_keeps_serving(channel) -> None:
    raw = channel.stream_unary("/streamledger.ingest.v1.Ingestion/Ingest",
                               request_serializer=lambda b: b, response_deserializer=pb2.IngestResponse.FromString)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw(_frames(b"\xff\xff\xff\xff\x0f garbage"), metadata=[("x-api-key", KEYS["acme"])], timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "frame 0" in info.value.details()

    stub = pb2_grpc.IngestionStub(channel)
    answer = await stub.Ingest(_frames(pb2.IngestRequest(events=[proto_event()])),
                               metadata=[("x-api-key", KEYS["acme"])], timeout=10)
    assert answer.accepted == 1


async def test_too_many_events_in_one_stream_is_invalid_argument(channel, service) -> None:
    limit = service.settings.ingestion_max_events_per_request
    frames = [pb2.IngestRequest(events=[proto_event() for _ in range(1000)]) for _ in range(limit // 1000 + 1)]
    stub = pb2_grpc.IngestionStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Ingest(_frames(*frames), metadata=[("x-api-key", KEYS["acme"])], timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and str(limit) in info.value.details()


async def test_full_pending_budget_is_unavailable(channel, service) -> None:
    budget = service.writer.budget
    budget.pending += budget.limit
    try:
        stub = pb2_grpc.IngestionStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Ingest(_frames(pb2.IngestRequest(events=[proto_event()])),
                              metadata=[("x-api-key", KEYS["acme"])], timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        budget.pending -= budget.limit


async def test_schemas_topic_round_trip_teaches_a_reader_a_new_writer(bootstrap, unique) -> None:
    topic = f"test.schemas.{unique}"
    await kafka.provision(bootstrap, [kafka.TopicSpec(topic)])
    writer_side = SchemaRegistry.from_dir()
    v2 = json.loads((SCHEMAS_DIR / "evolution" / "RawEvent.v2.avsc").read_text())
    writer_side.register(v2)
    async with kafka.producer(bootstrap) as producer:
        await writer_side.publish(producer, topic=topic)
        await producer.send_and_wait(topic, key=b"0000000000000000", value=json.dumps(v2).encode())  # forged key

    records = await read_topic(bootstrap, topic)
    assert {r.key for r in records} >= {fingerprint_of(v2).hex().encode(), CODEC.registry.fingerprint("RawEvent").hex().encode()}

    reader_side = SchemaRegistry.from_dir()
    assert fingerprint_of(v2) not in reader_side
    assert await reader_side.load_from_topic(bootstrap, topic=topic) == 1  # only v2 is new; the forged key is ignored
    assert fingerprint_of(v2) in reader_side
    assert await SchemaRegistry.from_dir().load_from_topic(bootstrap, topic=f"absent.{unique}") == 0


async def test_service_published_its_raw_event_schema(service, bootstrap) -> None:
    records = await read_topic(bootstrap, "_schemas")
    fp = CODEC.registry.fingerprint("RawEvent")
    assert fp.hex().encode() in {r.key for r in records}
