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


def clean_event(event_id: str, x: float) -> bytes:
    return CODEC.encode("CleanEvent", {
        "event_id": event_id, "tenant": "acme", "source": "unit", "ts": TS, "features": {"x": x},
        "label": None, "content_hash": "ab" * 32, "raw_partition": 0, "raw_offset": 1,
    })


def consumed(topic: str, offset: int, value: bytes | None, partition: int = 0) -> Consumed:
    return Consumed((topic, partition), topic, partition, offset, None, value)


def test_events_are_keyed_by_event_id_and_the_last_copy_wins() -> None:
    plan = plan_batch(
        [consumed("clean", 10, clean_event("e1", 1.0)), consumed("clean", 11, clean_event("e2", 2.0)),
         consumed("clean", 12, clean_event("e1", 3.0))],
        CODEC, ROUTES, now_ms=0,
    )
    events = plan.writes["events"]
    assert set(events) == {"e1", "e2"} and plan.document_count == 2
    assert events["e1"].document["features"] == {"x": 3.0} and events["e1"].document["_id"] == "e1"
    assert plan.commit_offsets == {("clean", 0): 13}


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
