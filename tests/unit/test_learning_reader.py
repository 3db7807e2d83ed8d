"""The learning reader: what crosses the connection, and a reader that cannot start."""

from __future__ import annotations

import pickle

import pytest

from services.learning.clean_event import SlimReader
from services.learning.reader import EventReader
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.child import ChildDied

codec = AvroCodec(SchemaRegistry.from_dir())


def clean_event(i: int) -> dict:
    return {"event_id": f"e{i}", "tenant": "acme", "source": "phishing", "ts": 1_700_000_000_000 + i,
            "features": {"a": float(i), "b": "x", "c": True}, "label": i % 2 == 0,
            "content_hash": "0" * 64, "raw_partition": 0, "raw_offset": i}


def test_slim_events_keep_what_models_read_and_name_each_decode_failure():
    values = codec.encode_many("CleanEvent", [clean_event(0), clean_event(1)])
    events, failures = SlimReader(codec).read([values[0], b"\xc3\x01junk", values[1]])
    assert events[0] == {"event_id": "e0", "tenant": "acme", "source": "phishing",
                         "features": {"a": 0.0, "b": "x", "c": True}, "label": True}
    assert events[1] is None and events[2]["event_id"] == "e1"
    reason, message = failures[1]
    assert reason == "not_single_object" and "shorter than" in message
    # Names are interned: the pickle carries each once, and values survive exactly.
    assert events[0]["features"].keys() == events[2]["features"].keys()
    assert next(iter(events[0]["features"])) is next(iter(events[2]["features"]))
    assert pickle.loads(pickle.dumps(events)) == events


async def test_a_reader_that_cannot_reach_kafka_fails_the_learner_with_the_reason():
    reader = EventReader("127.0.0.1:1", {("events.clean", 0): None}, 100, codec)
    with pytest.raises(ChildDied, match="learning reader process did not start: .*KafkaConnectionError") as died:
        async with reader:
            pass
    assert died.value.exit_code == 1


def codec_slim(value: bytes) -> dict | str:
    """What the learner gets from the codec alone: the slim event, or the reason it did not decode."""
    event = codec.decode_many([value], reader="CleanEvent")[0]
    if not isinstance(event, dict):
        return event.reason
    return {k: event[k] for k in ("event_id", "tenant", "source", "features", "label")}


def fast_slim(value: bytes) -> dict | str:
    events, failures = SlimReader(codec).read([value])
    return failures[0][0] if 0 in failures else events[0]


EVENTS = [
    clean_event(1),
    dict(clean_event(2), label=None, features={}),
    dict(clean_event(3), label=-2.5e300, features={"ü" * 70: -0.0, "x": 1e-310, "s": "ç" * 200, "t": False}),
    dict(clean_event(4), label="class-é", event_id="e" * 5000, tenant="t" * 64, source="",
         ts=-1, raw_partition=2**31 - 1, raw_offset=2**63 - 1),
    dict(clean_event(5), label=False, features={f"f{i}": float(i) for i in range(300)}),
]


@pytest.mark.parametrize("event", EVENTS, ids=range(len(EVENTS)))
def test_the_fast_path_reads_exactly_what_the_codec_decodes(event):
    value = codec.encode("CleanEvent", event)
    assert SlimReader(codec).fast  # the layout it reads is the latest CleanEvent: a schema change shows here
    assert fast_slim(value) == codec_slim(value)
    assert type(fast_slim(value)["label"]) is type(codec_slim(value)["label"])


def test_a_map_written_in_blocks_with_their_sizes_reads_as_the_codec_reads_it():
    value = codec.encode("CleanEvent", dict(clean_event(6), features={"a": 1.0, "b": 2.0}))
    plain = value.index(b"\x04\x02a")  # the map: 2 entries (zigzag 4), then "a" (length 1, zigzag 2)
    entries = value[plain + 1:value.index(b"\x00", value.index(b"\x02b") + 11)]
    blocked = value[:plain] + b"\x03" + bytes([len(entries) * 2]) + entries + value[plain + 1 + len(entries):]
    assert fast_slim(blocked) == codec_slim(blocked) == codec_slim(value)


@pytest.mark.parametrize("damage", ["truncated", "trailing", "bad_utf8", "label_branch", "feature_branch",
                                    "boolean_byte", "timestamp"])
def test_every_damaged_record_gets_the_codecs_verdict(damage):
    value = codec.encode("CleanEvent", dict(clean_event(7), label=True))
    # Its end: feature "c" (branch 2, boolean, 1), the map's end, label (branch 1, boolean, 1),
    # content_hash (length 64), raw_partition 0, raw_offset 7.
    assert value.endswith(b"\x04\x01\x00\x02\x01\x80\x01" + b"0" * 64 + b"\x00\x0e")
    at = value.index(b"acme")
    damaged = {"truncated": value[:-3], "trailing": value + b"\x00",
               "bad_utf8": value[:at] + b"\xff" + value[at + 1:],
               "label_branch": value[:-70] + b"\x0a" + value[-69:],
               "feature_branch": value[:-73] + b"\x06" + value[-72:],
               "boolean_byte": value[:-69] + b"\x07" + value[-68:],
               "timestamp": codec.encode("CleanEvent", dict(clean_event(7), ts=2**62))}[damage]
    assert fast_slim(damaged) == codec_slim(damaged)
