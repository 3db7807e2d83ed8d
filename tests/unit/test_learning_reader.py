"""The learning reader: what crosses the connection, and a reader that cannot start."""

from __future__ import annotations

import pickle

import pytest

from services.learning.reader import EventReader, decode
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.child import ChildDied

codec = AvroCodec(SchemaRegistry.from_dir())


def clean_event(i: int) -> dict:
    return {"event_id": f"e{i}", "tenant": "acme", "source": "phishing", "ts": 1_700_000_000_000 + i,
            "features": {"a": float(i), "b": "x", "c": True}, "label": i % 2 == 0,
            "content_hash": "0" * 64, "raw_partition": 0, "raw_offset": i}


def test_slim_events_keep_what_models_read_and_name_each_decode_failure():
    values = codec.encode_many("CleanEvent", [clean_event(0), clean_event(1)])
    events, failures = decode(codec, [values[0], b"\xc3\x01junk", values[1]])
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
