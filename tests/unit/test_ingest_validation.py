"""Validation, body parsing, API keys and backfill row mapping: pure code, no servers."""

from __future__ import annotations

import gzip
import json
import uuid
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingestion.auth import (
    ApiKeys,
    AuthenticationError,
    hash_key,
    key_from_headers,
)
from services.ingestion.backfill import (
    BackfillError,
    BackfillOptions,
    derived_event_id,
    read_rows,
    row_to_event,
)
from services.ingestion.encoding import encode_batch
from services.ingestion.payload import (
    BodyError,
    BodyTooLargeError,
    UnsupportedEncodingError,
    decode_content,
    parse_events,
)
from services.ingestion.sink import PendingBudget
from services.ingestion.validation import (
    InvalidEventError,
    UnparseableLine,
    validate_event,
)
from streamledger.avro import AvroCodec, SchemaRegistry

CODEC = AvroCodec(SchemaRegistry.from_dir())


def event(**fields) -> dict:
    base = {"event_id": "e1", "source": "pos", "ts": 1_700_000_000_000, "features": {"a": 1, "b": "x", "c": True, "d": None}}
    base.update(fields)
    return base


def rejection(bad: object, tenant: str = "acme") -> InvalidEventError:
    with pytest.raises(InvalidEventError) as info:
        validate_event(bad, tenant)
    return info.value


# -- validation ---------------------------------------------------------------------------

def test_valid_event_becomes_an_encodable_raw_event_owned_by_the_key_tenant() -> None:
    record = validate_event(event(), "acme")
    assert record == {"event_id": "e1", "tenant": "acme", "source": "pos", "ts": 1_700_000_000_000,
                      "features": {"a": 1.0, "b": "x", "c": True, "d": None}, "label": None}
    assert CODEC.decode(CODEC.encode("RawEvent", record))["features"] == record["features"]


def test_iso_timestamps_need_a_zone() -> None:
    assert validate_event(event(ts="2024-01-01T00:00:00Z"), "t")["ts"] == 1_704_067_200_000
    assert validate_event(event(ts="2024-01-01T01:00:00.5+01:00"), "t")["ts"] == 1_704_067_200_500
    assert "time zone" in rejection(event(ts="2024-01-01T00:00:00")).why


@pytest.mark.parametrize(
    ("bad", "field", "says"),
    [
        ([1, 2], "", "must be a JSON object"),
        (event(colour="red"), "colour", "unknown field"),
        ({"source": "s", "ts": 1}, "event_id", "required"),
        (event(source=None), "source", "required"),
        (event(event_id=5), "event_id", "must be a string"),
        (event(event_id="  "), "event_id", "must not be empty"),
        (event(event_id="x" * 300), "event_id", "limit of 256"),
        (event(event_id="\ud800"), "event_id", "lone surrogate"),
        (event(ts=True), "ts", "ISO-8601"),
        (event(ts=-1), "ts", "outside"),
        (event(ts=1.5), "ts", "whole number"),
        (event(ts="soon"), "ts", "not an ISO-8601"),
        (event(ts=[1]), "ts", "got an array"),
        (event(features=[1]), "features", "must be an object"),
        (event(features={"a": {"b": 1}}), "features.a", "got an object"),
        (event(features={"a": float("inf")}), "features.a", "not a finite number"),
        (event(features={"a": 10**400}), "features.a", "too large"),
        (event(label=[True]), "label", "got an array"),
        (event(tenant="globex"), "tenant", "belongs to 'acme'"),
    ],
)
def test_each_rejection_names_the_field_and_why(bad: object, field: str, says: str) -> None:
    error = rejection(bad)
    assert error.field == field and says in error.why, error


def test_nan_literals_from_json_are_named() -> None:
    events = parse_events(b'[{"event_id": "e", "source": "s", "ts": 1, "features": {"x": NaN}, "label": Infinity}]',
                          "application/json", 10)
    assert rejection(events[0]).field == "features.x"
    del events[0]["features"]
    assert "Infinity" in rejection(events[0]).why


@pytest.mark.parametrize("content_type", ["application/json", "application/x-ndjson"])
def test_a_number_too_long_to_convert_rejects_its_event_naming_the_field(content_type: str) -> None:
    huge = "9" * 5000  # Python refuses to convert more than 4,300 digits (a ValueError, not a JSONDecodeError)
    good = json.dumps(event(event_id="ok"))
    bad = json.dumps(event(event_id="huge")).replace('"features": {', f'"features": {{"big": -{huge}, ', 1)
    body = f"[{good}, {bad}]" if content_type == "application/json" else f"{good}\n{bad}\n"
    events = parse_events(body.encode(), content_type, 10)
    assert validate_event(events[0], "acme")["event_id"] == "ok"
    error = rejection(events[1])
    assert error.field == "features.big" and error.why == "a number of 5000 digits is too large for a double"
    batch = encode_batch(events, "acme", CODEC, max_event_bytes=100_000)
    assert batch.event_ids == ["ok"] and [(r.index, r.field) for r in batch.rejected] == [(1, "features.big")]


def test_batch_keeps_indexes_and_turns_unparseable_lines_into_rejections() -> None:
    events = [event(), UnparseableLine("line 2 is not valid JSON"), event(ts=None), event(event_id="e4")]
    batch = encode_batch(events, "t", CODEC, max_event_bytes=10_000, first_index=100)
    assert batch.event_ids == ["e1", "e4"]
    assert [CODEC.decode(v)["event_id"] for v in batch.values] == ["e1", "e4"]
    assert [(r.index, r.field) for r in batch.rejected] == [(101, ""), (102, "ts")]


def test_events_too_big_for_kafka_are_rejected_by_index() -> None:
    events = [event(event_id="big", features={"blob": "x" * 2000}), event(ts="x"), event()]
    batch = encode_batch(events, "t", CODEC, max_event_bytes=1000)
    assert batch.event_ids == ["e1"]
    assert [(r.index, r.field) for r in batch.rejected] == [(0, ""), (1, "ts")]
    assert "more than the limit of 1000 bytes" in batch.rejected[0].error


json_scalars = st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_scalars | st.lists(json_scalars, max_size=2), max_size=6))
def test_any_json_object_is_either_valid_and_encodable_or_rejected_with_a_field(obj: dict) -> None:
    try:
        record = validate_event(obj, "acme")
    except InvalidEventError as exc:
        assert exc.field in obj or exc.field.split(".")[0] in obj or exc.field in ("event_id", "source", "ts")
    else:
        CODEC.encode("RawEvent", record)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), json_scalars, max_size=6))
def test_valid_features_survive_validation_and_avro(features: dict) -> None:
    record = validate_event(event(features=features), "acme")
    assert CODEC.decode(CODEC.encode("RawEvent", record))["features"] == record["features"]


# -- bodies -------------------------------------------------------------------------------

def test_json_array_single_object_and_ndjson() -> None:
    assert len(parse_events(b'[{"a":1},{"a":2}]', "application/json", 10)) == 2
    assert parse_events(b'{"a":1}', "application/json", 10) == [{"a": 1}]
    lines = parse_events(b'{"a":1}\n\n{oops\n{"a":3}\n', "application/x-ndjson", 10)
    assert lines[0] == {"a": 1} and isinstance(lines[1], UnparseableLine) and "line 3" in lines[1].error
    assert parse_events(b'\xef\xbb\xbf{"a":1}\n{"a":2}', None, 10) == [{"a": 1}, {"a": 2}]  # BOM, sniffed NDJSON


@pytest.mark.parametrize(
    ("body", "says"),
    [(b"", "empty"), (b"\n \n", "empty"), (b"[]", "no events"), (b"[1,", "not valid JSON"),
     (b"caf\xe9", "not valid UTF-8"), (b"[" * 50_000, "nested too deeply")],
)
def test_unusable_bodies(body: bytes, says: str) -> None:
    with pytest.raises(BodyError, match=says) as info:
        parse_events(body, "application/json", 10)
    assert info.value.status == 400


def test_event_count_limit() -> None:
    with pytest.raises(BodyTooLargeError):
        parse_events(json.dumps([{}] * 11).encode(), "application/json", 10)
    with pytest.raises(BodyTooLargeError):
        parse_events(b"{}\n" * 11, "application/x-ndjson", 10)


def test_gzip_is_decoded_within_the_limit_and_bombs_are_refused() -> None:
    assert decode_content(gzip.compress(b"[1]"), "gzip", 100) == b"[1]"
    with pytest.raises(BodyTooLargeError):
        decode_content(gzip.compress(b" " * 10_000), "gzip", 100)
    with pytest.raises(BodyError, match="truncated"):
        decode_content(gzip.compress(b"[1]" * 100)[:-10], "gzip", 1000)
    with pytest.raises(UnsupportedEncodingError):
        decode_content(b"x", "br", 100)


# -- API keys -----------------------------------------------------------------------------

def test_keys_are_matched_by_digest_and_map_to_their_tenant() -> None:
    keys = ApiKeys({"acme": [hash_key("k1"), "sha256:" + hash_key("k2").upper()], "globex": [hash_key("k3")]})
    assert keys.tenant("k1") == keys.tenant("k2") == "acme" and keys.tenant("k3") == "globex"
    with pytest.raises(AuthenticationError, match="unknown"):
        keys.tenant("k4")
    with pytest.raises(AuthenticationError, match="missing"):
        keys.tenant(None)
    with pytest.raises(ValueError, match="acme"):
        ApiKeys({"acme": ["not-a-digest"]})


def test_key_from_headers() -> None:
    assert key_from_headers({"authorization": "Bearer abc"}) == "abc"
    assert key_from_headers({"x-api-key": "xyz"}) == "xyz"
    assert key_from_headers({"authorization": "Basic abc"}) is None


def test_pending_budget_refuses_beyond_its_limit() -> None:
    budget = PendingBudget(10)
    assert budget.try_take(7) and not budget.try_take(4) and budget.try_take(3)
    budget.give_back(5)
    assert budget.pending == 5 and budget.try_take(5)


# -- backfill rows ------------------------------------------------------------------------

OPTIONS = BackfillOptions(tenant="acme", source="hist", ts_column="when", label_column="y")


def test_row_becomes_event_with_stable_derived_id() -> None:
    row = {"when": datetime(2024, 1, 1), "x": Decimal("1.5"), "d": datetime(2024, 1, 1).date(), "y": True}
    first = row_to_event(row, 7, "f.csv", OPTIONS)
    assert first == {"source": "hist", "event_id": derived_event_id(OPTIONS, "f.csv", 7), "ts": 1_704_067_200_000,
                     "label": True, "features": {"x": 1.5, "d": "2024-01-01"}}
    assert uuid.UUID(first["event_id"]).version == 5
    assert row_to_event(row, 7, "f.csv", OPTIONS)["event_id"] == first["event_id"]
    assert row_to_event(row, 8, "f.csv", OPTIONS)["event_id"] != first["event_id"]
    other_tenant = BackfillOptions(tenant="globex", source="hist", ts_column="when", label_column="y")
    assert derived_event_id(other_tenant, "f.csv", 7) != first["event_id"]


def test_csv_columns_are_typed_per_batch_and_mixed_columns_per_cell(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text("when,num,flag,mixed,empty\n1000,1.5,true,3,\n2024-01-01T00:00:00Z,2,false,abc,NA\n")
    (rows, fraction), = list(read_rows(path, OPTIONS))
    assert fraction == 1.0
    assert rows == [
        {"when": 1000, "num": 1.5, "flag": True, "mixed": 3.0, "empty": None},
        {"when": "2024-01-01T00:00:00Z", "num": 2.0, "flag": False, "mixed": "abc", "empty": None},
    ]


def test_parquet_and_jsonl_rows(tmp_path: Path) -> None:
    pq.write_table(pa.table({"when": [1, 2], "x": [0.5, None]}), tmp_path / "a.parquet")
    assert [r for rows, _ in read_rows(tmp_path / "a.parquet", OPTIONS) for r in rows] == [
        {"when": 1, "x": 0.5}, {"when": 2, "x": None}]
    (tmp_path / "a.jsonl").write_bytes(b'{"when": 1}\n\xff\n[1]\n')
    rows = [r for rows, _ in read_rows(tmp_path / "a.jsonl", OPTIONS) for r in rows]
    assert rows[0] == {"when": 1} and isinstance(rows[1], UnparseableLine) and rows[2] == [1]


def test_unknown_format_and_missing_file() -> None:
    with pytest.raises(BackfillError, match="unknown file type"):
        list(read_rows(Path("data.xlsx"), OPTIONS))
    with pytest.raises(BackfillError, match="no such file"):
        list(read_rows(Path("/nonexistent/data.csv"), OPTIONS))


def test_settings_refuse_a_request_limit_the_pending_budget_could_never_hold() -> None:
    from services.ingestion.settings import IngestionSettings

    with pytest.raises(ValueError, match="ingestion_max_events_per_request"):
        IngestionSettings(ingestion_max_events_per_request=100, ingestion_max_pending_events=10)
    assert IngestionSettings(ingestion_api_keys={"acme": [hash_key("k")]}).ingestion_http_port == 8080


def test_settings_are_read_under_the_ingestion_prefix(monkeypatch) -> None:
    from services.ingestion.settings import IngestionSettings

    monkeypatch.setenv("STREAMLEDGER_INGESTION_HTTP_PORT", "9999")
    monkeypatch.setenv("STREAMLEDGER_INGESTION_ACK_TIMEOUT_SECONDS", "2.5")
    monkeypatch.setenv("STREAMLEDGER_RAW_TOPIC", "someone-elses")
    settings = IngestionSettings()
    assert (settings.ingestion_http_port, settings.ingestion_ack_timeout_seconds) == (9999, 2.5)
    assert settings.ingestion_raw_topic == "events.raw"
