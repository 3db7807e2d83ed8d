"""The cleaning handler end to end on bytes: decode, clean, hash, dedup, dead letters."""

from __future__ import annotations

import math
import struct
from datetime import datetime, timezone

import pytest

from services.cleaning.cleaner import Cleaner
from services.cleaning.dedup import DedupWindow
from services.cleaning.rules import RuleBook
from streamledger.avro import MARKER, AvroCodec, SchemaRegistry
from streamledger.core.canonical import content_hash
from streamledger.core.records import Consumed

CODEC = AvroCodec(SchemaRegistry.from_dir())
NOW = 1_800_000_000_000


def raw_event(event_id: str = "e1", **features) -> dict:
    return {
        "event_id": event_id,
        "tenant": "acme",
        "source": "unit",
        "ts": datetime(2026, 1, 1, tzinfo=timezone.utc),
        "features": features or {"x": 0.1, "Amount": "12.50", "vip": "yes"},
        "label": True,
    }


def message(value: bytes | None, offset: int = 0, key: bytes | None = b"e1") -> Consumed:
    return Consumed(("events.raw", 0), "events.raw", 0, offset, key, value, timestamp_ms=NOW)


@pytest.fixture
def cleaner() -> Cleaner:
    return Cleaner(CODEC, RuleBook(), DedupWindow({}, window_ms=60_000), max_message_bytes=64 * 1024,
                   max_original_bytes=1024, clock_ms=lambda: NOW)


def test_a_valid_event_becomes_a_clean_event_with_its_hash_and_position(cleaner: Cleaner) -> None:
    outcome = cleaner.handle(message(CODEC.encode("RawEvent", raw_event()), offset=41))
    assert (outcome.kind, outcome.key) == ("clean", b"e1")
    clean = CODEC.decode(outcome.value)
    assert clean["features"] == {"x": 0.1, "amount": 12.5, "vip": True}
    assert (clean["raw_partition"], clean["raw_offset"]) == (0, 41)
    assert clean["content_hash"] == content_hash(clean)


def test_doubles_survive_the_whole_path_bit_for_bit(cleaner: Cleaner) -> None:
    values = [5e-324, -0.0, 0.1 + 0.2, 1.7976931348623157e308, -2.2250738585072014e-308, 1 / 3]
    features = {f"f{i}": v for i, v in enumerate(values)}
    outcome = cleaner.handle(message(CODEC.encode("RawEvent", raw_event(**features))))
    clean = CODEC.decode(outcome.value)["features"]
    assert [struct.pack(">d", clean[f"f{i}"]) for i in range(len(values))] == [struct.pack(">d", v) for v in values]


@pytest.mark.parametrize(
    ("value", "reason", "error"),
    [
        (b"not avro at all", "not_single_object", "not the single-object marker"),
        (MARKER + bytes(8) + b"\x02", "unknown_fingerprint", "unknown writer schema fingerprint 0000000000000000"),
        (MARKER + SchemaRegistry.from_dir().fingerprint("RawEvent") + b"\xff\xff", "malformed_body", "RawEvent body"),
        (None, "empty_message", "tombstone"),
    ],
)
def test_bytes_that_are_not_a_raw_event_become_dead_letters(cleaner: Cleaner, value, reason: str, error: str) -> None:
    outcome = cleaner.handle(message(value, offset=7, key=b"k7"))
    assert (outcome.kind, outcome.reason) == ("deadletter", reason)
    letter = CODEC.decode(outcome.value)
    assert letter["reason"] == reason and error in letter["error"]
    assert (letter["source_topic"], letter["source_partition"], letter["source_offset"]) == ("events.raw", 0, 7)
    assert letter["original"] == (value or b"") and letter["service"] == "cleaning" and letter["key"] == "k7"


def test_another_record_type_on_the_raw_topic_is_a_dead_letter(cleaner: Cleaner) -> None:
    anchor = {"batch_id": "b", "merkle_root": "00", "count": 1, "topic": "t", "partition": 0,
              "first_offset": 0, "last_offset": 0, "ts": NOW}
    outcome = cleaner.handle(message(CODEC.encode("Anchor", anchor)))
    assert (outcome.kind, outcome.reason) == ("deadletter", "incompatible_schema")


def test_a_rule_violation_is_a_dead_letter_with_the_rule_and_the_event(cleaner: Cleaner) -> None:
    outcome = cleaner.handle(message(CODEC.encode("RawEvent", raw_event("e9", x=math.inf)), key=None))
    letter = CODEC.decode(outcome.value)
    assert (outcome.kind, outcome.key, letter["reason"]) == ("deadletter", b"e9", "non_finite")
    assert letter["error"] == "event 'e9': feature 'x' is inf"


def test_an_oversized_message_is_dead_lettered_unread_with_a_truncated_original(cleaner: Cleaner) -> None:
    big = CODEC.encode("RawEvent", raw_event(**{f"feature_{i:06d}": float(i) for i in range(40_000)}))
    assert len(big) > 512 * 1024
    outcome = cleaner.handle(message(big, offset=3, key=None))
    letter = CODEC.decode(outcome.value)
    assert letter["reason"] == "too_large"
    assert f"message is {len(big)} bytes" in letter["error"] and "offset 3" in letter["error"]
    assert letter["original"] == big[:1024] and letter["key"] == "events.raw:0:3"


def test_duplicates_are_dropped_and_replays_are_emitted_again(cleaner: Cleaner) -> None:
    value = CODEC.encode("RawEvent", raw_event())
    first = cleaner.handle(message(value, offset=1))
    assert first.kind == "clean"
    assert cleaner.handle(message(value, offset=1)) == first  # re-read after a crash
    assert cleaner.handle(message(value, offset=2)).kind == "duplicate"


def test_the_same_event_id_from_another_tenant_is_not_a_duplicate(cleaner: Cleaner) -> None:
    ours = CODEC.encode("RawEvent", raw_event())
    theirs = CODEC.encode("RawEvent", {**raw_event(), "tenant": "globex"})
    assert cleaner.handle(message(ours, offset=1)).kind == "clean"
    other = cleaner.handle(message(theirs, offset=2))
    assert other.kind == "clean" and CODEC.decode(other.value)["tenant"] == "globex"
    assert cleaner.handle(message(theirs, offset=3)).kind == "duplicate"  # still a duplicate within globex


def test_a_rejected_copy_does_not_shadow_a_valid_one(cleaner: Cleaner) -> None:
    assert cleaner.handle(message(CODEC.encode("RawEvent", raw_event(x=math.nan)), offset=1)).kind == "deadletter"
    assert cleaner.handle(message(CODEC.encode("RawEvent", raw_event(x=1.0)), offset=2)).kind == "clean"


def test_a_message_without_a_timestamp_is_dated_by_the_clock_for_dedup() -> None:
    window = DedupWindow({}, window_ms=60_000)
    cleaner = Cleaner(CODEC, RuleBook(), window, clock_ms=lambda: NOW)
    value = CODEC.encode("RawEvent", raw_event())
    assert cleaner.handle(Consumed(("events.raw", 0), "events.raw", 0, 1, b"e1", value)).kind == "clean"
    assert window.store["4:acme:e1"] == [0, 1, NOW]  # scoped_id("acme", "e1")


def test_a_bug_in_the_handler_becomes_an_internal_error_dead_letter(cleaner: Cleaner, monkeypatch) -> None:
    from services.cleaning.metrics import handle_batch

    def broken(_raw, _rules):
        raise KeyError("features")

    monkeypatch.setattr("services.cleaning.cleaner.clean_event", broken)
    outcome, = handle_batch(cleaner, [message(CODEC.encode("RawEvent", raw_event()), offset=4)])
    letter = CODEC.decode(outcome.value)
    assert (outcome.kind, letter["reason"], letter["error"]) == ("deadletter", "internal_error", "KeyError: 'features'")
    assert letter["source_offset"] == 4 and letter["key"] == "e1"


def test_settings_are_read_under_the_cleaning_prefix(monkeypatch) -> None:
    from services.cleaning.settings import CleaningSettings

    monkeypatch.setenv("STREAMLEDGER_CLEANING_RAW_TOPIC", "mine")
    monkeypatch.setenv("STREAMLEDGER_CLEANING_DEDUP_WINDOW_SECONDS", "60")
    monkeypatch.setenv("STREAMLEDGER_CLEAN_TOPIC", "someone-elses")
    settings = CleaningSettings()
    assert (settings.cleaning_raw_topic, settings.cleaning_dedup_window_seconds) == ("mine", 60.0)
    assert settings.cleaning_clean_topic == "events.clean"
