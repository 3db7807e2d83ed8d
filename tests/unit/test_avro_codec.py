"""The single-object codec: round trips, the wire format against the spec, and every error."""

from __future__ import annotations

import io
import json
import math
import struct
from datetime import datetime, timedelta, timezone

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamledger.avro import (
    HEADER_SIZE,
    SCHEMAS_DIR,
    AvroCodec,
    CodecError,
    IncompatibleSchemaError,
    InvalidRecordError,
    MalformedBodyError,
    NotSingleObjectError,
    SchemaRegistry,
    UnknownFingerprintError,
    UnknownSchemaError,
    _compile_reader,
    _compile_writer,
    _read_body,
    fingerprint_of,
)

REGISTRY = SchemaRegistry.from_dir()
CODEC = AvroCodec(REGISTRY)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

ALL_RECORDS = ["Anchor", "CleanEvent", "DeadLetter", "ModelMetrics", "ModelSnapshot", "Prediction", "RawEvent", "UsageRecord"]

timestamps = st.integers(min_value=0, max_value=4_102_444_800_000).map(lambda ms: EPOCH + timedelta(milliseconds=ms))
doubles = st.floats(allow_nan=False, allow_infinity=True)
feature_values = st.none() | doubles | st.text(max_size=20) | st.booleans()
raw_events = st.fixed_dictionaries(
    {
        "event_id": st.text(min_size=1, max_size=40),
        "tenant": st.text(min_size=1, max_size=20),
        "source": st.text(max_size=20),
        "ts": timestamps,
        "features": st.dictionaries(st.text(max_size=15), feature_values, max_size=8),
        "label": st.none() | st.booleans() | doubles | st.text(max_size=10),
    }
)


def raw_event(**overrides) -> dict:
    event = {"event_id": "e-1", "tenant": "acme", "source": "pos", "ts": EPOCH + timedelta(days=20000),
             "features": {"amount": 12.5, "country": "FR", "card_present": True, "note": None}, "label": False}
    event.update(overrides)
    return event


SAMPLES = {
    "RawEvent": raw_event(),
    "CleanEvent": {"event_id": "e-1", "tenant": "acme", "source": "pos", "ts": EPOCH, "features": {"x": 1.0, "c": "FR", "b": True},
                   "label": 1.5, "content_hash": "ab" * 32, "raw_partition": 3, "raw_offset": 2**40},
    "DeadLetter": {"key": "e-1", "source_topic": "events.raw", "source_partition": 0, "source_offset": 17, "service": "cleaning",
                   "reason": "unknown_fingerprint", "error": "unknown writer schema fingerprint 00", "original": b"\x00\xff", "ts": EPOCH},
    "ModelSnapshot": {"model_id": "fraud", "version": 7, "sha256": "cd" * 32, "format": "pickle",
                      "offsets": [{"topic": "events.clean", "partition": 0, "offset": 1000}], "events_seen": 1000,
                      "metrics": {"accuracy": 0.9}, "model": b"\x80\x04model", "created": EPOCH},
    "ModelMetrics": {"model_id": "fraud", "version": 7, "position": 1000, "metrics": {"accuracy": 0.9},
                     "drift": {"detector": "ADWIN", "position": 950, "metric_before": 0.9, "metric_after": 0.7}, "ts": EPOCH},
    "Prediction": {"request_id": "r-1", "model_id": "fraud", "model_version": 7, "client": None, "inputs": "{}", "outputs": "[0.2]",
                   "latency_ms": 1.25, "ts": EPOCH},
    "UsageRecord": {"hold_id": "h-1", "request_id": "r-1", "client": "bank", "model_id": "fraud", "model_version": 7, "units": 3,
                    "price": 10, "receipt_units": 3, "receipt_sequence": 2, "receipt_signature": "MEUCIQ==", "ts": EPOCH},
    "Anchor": {"batch_id": "b-1", "merkle_root": "ef" * 32, "count": 100, "topic": "events.clean", "partition": 0,
               "first_offset": 0, "last_offset": 99, "tx_id": None, "block": None, "ts": EPOCH},
}


def test_every_record_of_the_architecture_has_a_schema_with_docs() -> None:
    assert REGISTRY.names() == sorted(ALL_RECORDS)
    for path in SCHEMAS_DIR.glob("*.avsc"):
        schema = json.loads(path.read_text())
        assert schema["namespace"] == "io.streamledger" and schema["doc"], path.name
        assert all(field.get("doc") for field in schema["fields"]), path.name


@pytest.mark.parametrize("name", ALL_RECORDS)
def test_each_record_round_trips(name: str) -> None:
    assert CODEC.decode(CODEC.encode(name, SAMPLES[name])) == SAMPLES[name]


@settings(max_examples=200, deadline=None)
@given(raw_events)
def test_raw_event_round_trips(event: dict) -> None:
    assert CODEC.decode(CODEC.encode("RawEvent", event)) == event


@settings(max_examples=50, deadline=None)
@given(st.lists(raw_events, max_size=20))
def test_batch_paths_agree_with_single_paths(events: list[dict]) -> None:
    datas = CODEC.encode_many("RawEvent", events)
    assert datas == [CODEC.encode("RawEvent", e) for e in events]
    assert CODEC.decode_many(datas) == events


@settings(max_examples=100, deadline=None)
@given(raw_events)
def test_body_is_plain_avro_any_implementation_can_read(event: dict) -> None:
    """Spec check: header = C3 01 + little-endian CRC-64-AVRO; body = plain Avro binary."""
    data = CODEC.encode("RawEvent", event)
    writer_json = json.loads((SCHEMAS_DIR / "RawEvent.avsc").read_text())
    assert data[:2] == b"\xc3\x01"
    assert data[2:HEADER_SIZE] == fingerprint_of(writer_json)
    body = io.BytesIO(data[HEADER_SIZE:])
    assert fastavro.schemaless_reader(body, fastavro.parse_schema(writer_json)) == event
    assert body.tell() == len(data) - HEADER_SIZE


def _crc64_avro(text: str) -> int:
    """The reference algorithm from the Avro specification, written out independently."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in text.encode():
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def test_fingerprint_is_crc64_avro_little_endian() -> None:
    # Known answer from the Avro project's schema test data: "null" -> 7195948357588979594.
    assert fingerprint_of('"null"') == struct.pack("<q", 7195948357588979594)
    for name in ALL_RECORDS:
        canonical = fastavro.schema.to_parsing_canonical_form(json.loads((SCHEMAS_DIR / f"{name}.avsc").read_text()))
        assert REGISTRY.fingerprint(name) == struct.pack("<Q", _crc64_avro(canonical))


def test_nan_and_infinity_survive_as_doubles() -> None:
    decoded = CODEC.decode(CODEC.encode("RawEvent", raw_event(features={"a": math.nan, "b": math.inf}, label=-math.inf)))
    assert math.isnan(decoded["features"]["a"]) and decoded["features"]["b"] == math.inf and decoded["label"] == -math.inf


def test_defaults_fill_omitted_optional_fields() -> None:
    event = raw_event()
    del event["label"], event["features"]
    assert CODEC.decode(CODEC.encode("RawEvent", event)) | {} == event | {"features": {}, "label": None}


# -- errors --------------------------------------------------------------------------------

def test_short_or_unmarked_messages_are_not_single_object() -> None:
    data = CODEC.encode("RawEvent", raw_event())
    for bad in (b"", b"\xc3\x01\x00", b"{}" + data[2:], b"\x00" * 40):
        with pytest.raises(NotSingleObjectError) as info:
            CODEC.decode(bad)
        assert info.value.reason == "not_single_object"


def test_unknown_fingerprint_names_it() -> None:
    data = CODEC.encode("RawEvent", raw_event())
    forged = data[:2] + bytes.fromhex("0123456789abcdef") + data[HEADER_SIZE:]
    with pytest.raises(UnknownFingerprintError, match="0123456789abcdef") as info:
        CODEC.decode(forged)
    assert info.value.reason == "unknown_fingerprint" and info.value.fingerprint.hex() == "0123456789abcdef"


def test_truncated_garbage_and_trailing_bodies_are_malformed() -> None:
    data = CODEC.encode("RawEvent", raw_event())
    for bad in (data[:-3], data[:HEADER_SIZE] + b"\xff" * 30, data + b"\x00"):
        with pytest.raises(MalformedBodyError) as info:
            CODEC.decode(bad)
        assert info.value.reason == "malformed_body"


def test_a_body_cut_short_gets_the_same_message_each_time() -> None:
    """fastavro names the stream it read by its address; the message names "the body" instead."""
    data = CODEC.encode("CleanEvent", SAMPLES["CleanEvent"] | {"label": 0.5, "features": {"x": 1.5}})

    def message(cut: int) -> str:
        with pytest.raises(MalformedBodyError) as info:
            CODEC.decode(data[:cut])
        return str(info.value)

    cuts = range(HEADER_SIZE, len(data))
    assert all(message(cut) == message(cut) and " at 0x" not in message(cut) for cut in cuts)
    assert any("cannot read double from the body" in message(cut) for cut in cuts)


def test_decode_many_returns_errors_in_place_without_raising() -> None:
    good = CODEC.encode("RawEvent", raw_event())
    results = CODEC.decode_many([good, b"junk", good[:2] + b"\x00" * 8 + good[10:], good[:-1], good])
    assert [r.reason if isinstance(r, CodecError) else "ok" for r in results] == [
        "ok", "not_single_object", "unknown_fingerprint", "malformed_body", "ok"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"ts": "yesterday"}, "ts"),
        ({"tenant": None}, "tenant"),
        ({"features": {"a": [1, 2]}}, "features"),
        ({"label": {"nested": 1}}, "label"),
        ({"ts": 2**80}, "ts"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_records_name_the_field(change: dict, field: str) -> None:
    with pytest.raises(InvalidRecordError, match=field) as info:
        CODEC.encode("RawEvent", raw_event(**change))
    assert info.value.reason == "invalid_record"


def test_missing_required_field_is_named() -> None:
    event = raw_event()
    del event["source"]
    with pytest.raises(InvalidRecordError, match="source"):
        CODEC.encode("RawEvent", event)


def test_encode_many_names_the_record_index() -> None:
    with pytest.raises(InvalidRecordError, match=r"record 1: .*ts"):
        CODEC.encode_many("RawEvent", [raw_event(), raw_event(ts="x")])


def test_unknown_record_name() -> None:
    with pytest.raises(UnknownSchemaError, match="Nope"):
        CODEC.encode("Nope", {})


# -- evolution -----------------------------------------------------------------------------

V2 = json.loads((SCHEMAS_DIR / "evolution" / "RawEvent.v2.avsc").read_text())


def _registry_with_v2_latest() -> SchemaRegistry:
    """A registry as a service built on the next version would have it: v2 is the latest RawEvent."""
    registry = SchemaRegistry.from_dir()
    fp = registry.register(V2)
    registry._latest["RawEvent"] = fp  # noqa: SLF001 - simulates a schemas/ dir at the next version
    return registry


def test_reader_on_next_version_reads_data_of_previous_version() -> None:
    old = CODEC.encode("RawEvent", raw_event())
    new_codec = AvroCodec(_registry_with_v2_latest())
    assert new_codec.decode(old, reader="RawEvent") == raw_event() | {"received": None, "tags": {}}


def test_reader_on_previous_version_reads_data_of_next_version_once_it_learns_the_writer() -> None:
    new_codec = AvroCodec(_registry_with_v2_latest())
    new = new_codec.encode("RawEvent", raw_event(received=EPOCH, tags={"batch": "7"}))
    with pytest.raises(UnknownFingerprintError):
        CODEC.decode(new)  # the old reader has never seen v2 ...
    old_registry = SchemaRegistry.from_dir()
    old_registry.register(json.dumps(V2))  # ... until it learns v2 from `_schemas`
    assert AvroCodec(old_registry).decode(new, reader="RawEvent") == raw_event()


def test_incompatible_reader_is_a_clear_error() -> None:
    data = CODEC.encode("Prediction", SAMPLES["Prediction"])
    with pytest.raises(IncompatibleSchemaError):
        CODEC.decode(data, reader="UsageRecord")


def test_learning_from_schemas_topic_rejects_a_key_that_is_not_the_fingerprint() -> None:
    registry = SchemaRegistry.from_dir()
    value = json.dumps(V2).encode()
    assert not registry._learn(b"0000000000000000", value)  # noqa: SLF001
    assert not registry._learn(fingerprint_of(V2).hex().encode(), b"not json")  # noqa: SLF001
    assert registry._learn(fingerprint_of(V2).hex().encode(), value)  # noqa: SLF001
    assert fingerprint_of(V2) in registry


# -- the compiled fast path: exactly fastavro's bytes and records, or fastavro itself ----------

def _fastavro_encode(name: str, record: dict) -> bytes:
    fp = REGISTRY.fingerprint(name)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, REGISTRY.writer(fp), record, strict_allow_default=True)
    return b"\xc3\x01" + fp + buffer.getvalue()


def _fastavro_decode(data: bytes) -> dict | tuple[type, str]:
    """What the generic path returns for these bytes, or the error class and message it raises."""
    try:
        return _read_body(data, REGISTRY.writer(bytes(data[2:HEADER_SIZE])), None)
    except CodecError as exc:
        return type(exc), str(exc)


def _codec_decode(data: bytes) -> dict | tuple[type, str]:
    try:
        return CODEC.decode(data)
    except CodecError as exc:
        return type(exc), str(exc)


clean_events = st.fixed_dictionaries(
    {
        "event_id": st.text(max_size=40),
        "tenant": st.text(max_size=20),
        "source": st.text(max_size=20),
        "ts": timestamps | st.integers(min_value=-(2**63), max_value=2**63 - 1),
        "features": st.dictionaries(st.text(max_size=15), doubles | st.floats() | st.text(max_size=20) | st.booleans(),
                                    max_size=8),
        "label": st.none() | st.booleans() | doubles | st.text(max_size=10),
        "content_hash": st.text(max_size=64),
        "raw_partition": st.integers(min_value=-(2**31), max_value=2**31 - 1),
        "raw_offset": st.integers(min_value=-(2**63), max_value=2**63 - 1),
    }
)


@pytest.mark.parametrize("name", ["RawEvent", "CleanEvent"])
def test_the_hot_records_have_a_fast_path(name: str) -> None:
    schema = REGISTRY.schema(name)
    assert _compile_reader(schema) is not None and _compile_writer(schema) is not None


@pytest.mark.parametrize("name", ALL_RECORDS)
def test_fast_path_writes_and_reads_what_fastavro_does_for_every_record(name: str) -> None:
    data = CODEC.encode(name, SAMPLES[name])
    assert data == _fastavro_encode(name, SAMPLES[name])
    assert CODEC.decode(data) == _fastavro_decode(data) == SAMPLES[name]


@settings(max_examples=300, deadline=None)
@given(clean_events)
def test_fast_path_writes_and_reads_clean_events_as_fastavro_does(event: dict) -> None:
    data = CODEC.encode("CleanEvent", event)
    assert data == _fastavro_encode("CleanEvent", event)
    assert repr(_codec_decode(data)) == repr(_fastavro_decode(data))  # repr: NaN features compare equal


@settings(max_examples=300, deadline=None)
@given(raw_events, st.data())
def test_fast_path_reads_damaged_bytes_as_fastavro_does(event: dict, data: st.DataObject) -> None:
    """Any byte changed, bytes cut or added: the same record, or the same error and message."""
    message = bytearray(CODEC.encode("RawEvent", event))
    body = range(HEADER_SIZE, len(message))
    for _ in range(data.draw(st.integers(1, 3))):
        message[data.draw(st.sampled_from(body))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(HEADER_SIZE, len(message)))
    damaged = bytes(message[:cut]) + data.draw(st.binary(max_size=3))
    assert repr(_codec_decode(damaged)) == repr(_fastavro_decode(damaged))


@pytest.mark.parametrize(
    "body",
    [
        b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # a varint over 9 bytes
        b"\x01",  # a negative string length
        b"\x02\xff",  # not UTF-8
    ],
)
def test_fast_path_leaves_unusual_bytes_to_fastavro(body: bytes) -> None:
    data = b"\xc3\x01" + REGISTRY.fingerprint("RawEvent") + body + CODEC.encode("RawEvent", raw_event())[HEADER_SIZE + 4:]
    assert repr(_codec_decode(data)) == repr(_fastavro_decode(data))


@pytest.mark.parametrize(
    "change",
    [
        {"ts": datetime(2024, 1, 1)},  # naive: fastavro's local-time rule
        {"ts": 2**63},  # beyond a long
        {"raw_partition": 2**31},  # beyond an int
        {"label": 1},  # an int where the union has a double
        {"features": {"x": 1}},
        {"features": {"x": None}},
        {"event_id": "\ud800"},  # a lone surrogate
        {"extra": 1},
    ],
)
def test_fast_path_leaves_unusual_records_to_fastavro(change: dict) -> None:
    record = SAMPLES["CleanEvent"] | change
    try:
        expected = _fastavro_encode("CleanEvent", record)
    except Exception:  # noqa: BLE001 - fastavro refuses it: the codec says so in its own error
        with pytest.raises(InvalidRecordError):
            CODEC.encode("CleanEvent", record)
    else:
        assert CODEC.encode("CleanEvent", record) == expected


def test_missing_fields_with_defaults_are_left_to_fastavro() -> None:
    record = {k: v for k, v in SAMPLES["CleanEvent"].items() if k not in ("features", "label")}
    assert CODEC.encode("CleanEvent", record) == _fastavro_encode("CleanEvent", record)
