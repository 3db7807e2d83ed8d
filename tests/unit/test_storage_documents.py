"""Storage mapping: topic -> collection and _id, last write wins, dead letters, offsets."""

from __future__ import annotations

from datetime import datetime, timezone

from services.storage import documents
from services.storage.documents import plan_batch
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.core.records import Consumed

CODEC = AvroCodec(SchemaRegistry.from_dir())
ROUTES = {
    "clean": documents.EVENTS,
    "snap": documents.MODELS,
    "dl": documents.DEAD_LETTERS,
    "pred": documents.PREDICTIONS,
    "anch": documents.ANCHORS,
}
TS = datetime(2026, 1, 1, tzinfo=timezone.utc)


def clean_event(event_id: str, x: float, tenant: str = "acme") -> bytes:
    return CODEC.encode("CleanEvent", {
        "event_id": event_id, "tenant": tenant, "source": "unit", "ts": TS, "features": {"x": x},
        "label": None, "content_hash": "ab" * 32, "raw_partition": 0, "raw_offset": 1,
    })


def consumed(topic: str, offset: int, value: bytes | None, partition: int = 0) -> Consumed:
    return Consumed((topic, partition), topic, partition, offset, None, value)


def test_events_are_keyed_by_tenant_and_event_id_and_the_last_copy_wins() -> None:
    plan = plan_batch(
        [consumed("clean", 10, clean_event("e1", 1.0)), consumed("clean", 11, clean_event("e2", 2.0)),
         consumed("clean", 12, clean_event("e1", 3.0))],
        CODEC, ROUTES, now_ms=0,
    )
    events = plan.writes["events"]
    assert set(events) == {"4:acme:e1", "4:acme:e2"} and plan.document_count == 2
    assert events["4:acme:e1"].document["features"] == {"x": 3.0}
    assert events["4:acme:e1"].document["_id"] == "4:acme:e1"
    assert plan.commit_offsets == {("clean", 0): 13}


def test_two_tenants_with_the_same_event_id_keep_a_document_each() -> None:
    plan = plan_batch([consumed("clean", 1, clean_event("e1", 1.0, tenant="acme")),
                       consumed("clean", 2, clean_event("e1", 2.0, tenant="acme:e1")),
                       consumed("clean", 3, clean_event("e1", 3.0, tenant="globex"))], CODEC, ROUTES, now_ms=0)
    events = plan.writes["events"]
    assert {i: w.document["features"]["x"] for i, w in events.items()} == {
        "4:acme:e1": 1.0, "7:acme:e1:e1": 2.0, "6:globex:e1": 3.0}


def test_predictions_are_keyed_by_client_and_request_id() -> None:
    def prediction(client: str | None, answer: str) -> bytes:
        return CODEC.encode("Prediction", {"request_id": "r1", "model_id": "m", "model_version": 1, "client": client,
                                           "inputs": "[]", "outputs": answer, "latency_ms": 1.0, "ts": TS})

    plan = plan_batch([consumed("pred", 1, prediction("alice", "1")), consumed("pred", 2, prediction("bob", "2")),
                       consumed("pred", 3, prediction(None, "3"))], CODEC, ROUTES, now_ms=0)
    assert {i: w.document["outputs"] for i, w in plan.writes["predictions"].items()} == {
        "5:alice:r1": "1", "3:bob:r1": "2", "0::r1": "3"}


def test_undecodable_messages_become_dead_letters_and_are_still_committed() -> None:
    plan = plan_batch(
        [consumed("clean", 5, b"garbage"), consumed("pred", 8, clean_event("e1", 1.0), partition=2)],
        CODEC, ROUTES, now_ms=123,
    )
    assert plan.writes == {}
    assert [(d["source_topic"], d["source_offset"], d["reason"]) for d in plan.dead_letters] == [
        ("clean", 5, "not_single_object"), ("pred", 8, "incompatible_schema")
    ]
    assert plan.dead_letters[0]["service"] == "storage" and plan.dead_letters[0]["original"] == b"garbage"
    assert plan.commit_offsets == {("clean", 0): 6, ("pred", 2): 9}


def test_snapshots_keep_metadata_only_one_document_per_version() -> None:
    def snapshot(version: int) -> bytes:
        return CODEC.encode("ModelSnapshot", {
            "model_id": "m", "version": version, "sha256": "cd" * 32, "offsets": [], "events_seen": 10,
            "metrics": {"accuracy": 0.9}, "model": b"\x00" * 5000, "created": TS,
        })

    plan = plan_batch([consumed("snap", 0, snapshot(1)), consumed("snap", 1, snapshot(2))], CODEC, ROUTES, 0)
    models = plan.writes["models"]
    assert set(models) == {"m:1", "m:2"}
    assert "model" not in models["m:2"].document and models["m:2"].document["model_bytes"] == 5000


def test_tombstones_are_committed_without_a_write() -> None:
    plan = plan_batch([consumed("snap", 4, None)], CODEC, ROUTES, 0)
    assert plan.writes == {} and plan.dead_letters == [] and plan.commit_offsets == {("snap", 0): 5}


def test_dead_letters_are_keyed_by_service_and_source_position() -> None:
    letter = CODEC.encode("DeadLetter", {
        "key": "e1", "source_topic": "events.raw", "source_partition": 1, "source_offset": 77, "service": "cleaning",
        "reason": "non_finite", "error": "feature 'x' is nan", "original": b"...", "ts": TS,
    })
    plan = plan_batch([consumed("dl", 0, letter)], CODEC, ROUTES, 0)
    assert list(plan.writes["deadletters"]) == ["cleaning:events.raw:1:77"]


def test_an_unrouted_topic_is_a_dead_letter() -> None:
    plan = plan_batch([consumed("elsewhere", 0, b"x")], CODEC, ROUTES, 0)
    assert plan.dead_letters[0]["reason"] == "unknown_topic" and "'elsewhere'" in plan.dead_letters[0]["error"]


def test_a_batch_planned_in_parts_is_one_plan_whose_later_copies_win() -> None:
    plan = plan_batch([consumed("clean", 10, clean_event("e1", 1.0)), consumed("clean", 11, b"junk")], CODEC, ROUTES, 0)
    assert plan_batch([consumed("clean", 12, clean_event("e1", 2.0)), consumed("snap", 3, None)],
                      CODEC, ROUTES, 0, plan) is plan
    assert {i: w.document["features"] for i, w in plan.writes["events"].items()} == {"4:acme:e1": {"x": 2.0}}
    assert [d["source_offset"] for d in plan.dead_letters] == [11]
    assert plan.commit_offsets == {("clean", 0): 13, ("snap", 0): 4}
    assert (plan.message_count, plan.byte_count) == (4, 2 * len(clean_event("e1", 1.0)) + len(b"junk"))
