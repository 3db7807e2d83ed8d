"""LearnerSet: routing, offsets per model, dead letters, snapshots and resuming from them."""

from __future__ import annotations

import pytest
from river import datasets

from services.learning.learners import LearnerSet
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.core.models import parse_declaration
from streamledger.core.records import Consumed

codec = AvroCodec(SchemaRegistry.from_dir())
TOPIC = "events.clean"


def declare(model_id, source="phishing", task="binary", metrics=("Accuracy",)):
    pipeline = ([{"class": "preprocessing.StandardScaler"}, {"class": "linear_model.LogisticRegression"}]
                if task == "binary" else
                [{"class": "preprocessing.StandardScaler"}, {"class": "linear_model.LinearRegression"}])
    return parse_declaration({"id": model_id, "task": task, "source": source, "pipeline": pipeline,
                              "metrics": list(metrics)})


def clean_event(i, x, y, source="phishing"):
    return {"event_id": f"e{i}", "tenant": "acme", "source": source, "ts": 1_700_000_000_000 + i,
            "features": {k: float(v) for k, v in x.items()}, "label": y, "content_hash": "0" * 64,
            "raw_partition": 0, "raw_offset": i}


def consumed_stream(records, partition=0):
    """(Consumed, decoded) pairs as the app builds them from a fetched batch."""
    values = [codec.encode("CleanEvent", r) if isinstance(r, dict) else r for r in records]
    decoded = codec.decode_many(values, reader="CleanEvent")
    return [(Consumed((TOPIC, partition), TOPIC, partition, offset, f"e{offset}".encode(), value), event)
            for offset, (value, event) in enumerate(zip(values, decoded))]


PHISHING = [clean_event(i, x, y) for i, (x, y) in enumerate(datasets.Phishing())][:300]


def run(learners, stream):
    outputs = []
    for consumed, event in stream:
        outputs.extend(learners.handle(consumed, event))
    return outputs


def test_events_reach_only_the_models_that_take_their_source():
    learners = LearnerSet([declare("phish"), declare("trump", source="trump*", task="regression", metrics=("MAE",))])
    outputs = run(learners, consumed_stream(PHISHING[:100]))
    assert outputs == []
    assert learners.models["phish"].online.learned == 100
    assert learners.models["trump"].online.learned == 0
    # Both moved past every record, so neither re-reads them after a restart.
    assert learners.models["phish"].offsets == learners.models["trump"].offsets == {(TOPIC, 0): 100}


def test_bad_records_become_dead_letters_with_a_reason_and_the_stream_goes_on():
    bad_label = dict(PHISHING[1], label=0.7)
    stream = consumed_stream([PHISHING[0], b"not avro at all", bad_label, PHISHING[2]])
    learners = LearnerSet([declare("phish")])
    outputs = run(learners, stream)
    assert [o.record_name for o in outputs] == ["DeadLetter", "DeadLetter"]
    undecodable, invalid = (o.record for o in outputs)
    assert undecodable["reason"] == "not_single_object" and undecodable["original"] == b"not avro at all"
    assert undecodable["source_offset"] == 1 and undecodable["key"] == "e1"
    assert invalid["reason"] == "invalid_label" and invalid["key"] == "e1"
    assert "model 'phish': label: a binary model needs a boolean label, got double 0.7" in invalid["error"]
    assert learners.models["phish"].online.learned == 2
    assert learners.models["phish"].offsets == {(TOPIC, 0): 4}


def test_a_snapshot_records_offsets_hash_and_metrics():
    learners = LearnerSet([declare("phish")])
    run(learners, consumed_stream(PHISHING[:50]))
    tracked = learners.models["phish"]
    assert learners.due_snapshots(every_events=50, every_seconds=3600) == [tracked]
    snapshot = learners.snapshot(tracked)
    record = snapshot.record
    assert snapshot.key == "phish" and record["version"] == 1 and record["events_seen"] == 50
    assert record["offsets"] == [{"topic": TOPIC, "partition": 0, "offset": 50}]
    assert record["metrics"] == tracked.online.metric_values()
    codec.encode("ModelSnapshot", record)  # fits the schema
    learners.snapshot_written(tracked, record)
    assert learners.due_snapshots(every_events=1, every_seconds=0) == []
    assert learners.committed_offsets() == {(TOPIC, 0): 50}


def test_a_restart_skips_what_the_snapshot_reflects_and_ends_identical():
    stream = consumed_stream(PHISHING)
    uninterrupted = LearnerSet([declare("phish")])
    run(uninterrupted, stream)

    first = LearnerSet([declare("phish")])
    run(first, stream[:120])
    snapshot = first.snapshot(first.models["phish"]).record
    run(first, stream[120:170])  # learned, but lost in the crash: no snapshot covers it

    restarted = LearnerSet([declare("phish")])
    assert restarted.resume("phish", [snapshot]) == (1, [])
    assert restarted.start_offsets([(TOPIC, 0), (TOPIC, 1)]) == {(TOPIC, 0): 120, (TOPIC, 1): None}
    run(restarted, stream[100:])  # the consumer may re-deliver a little before the seek point
    final = restarted.snapshot(restarted.models["phish"]).record
    expected = uninterrupted.snapshot(uninterrupted.models["phish"]).record
    assert final["sha256"] == expected["sha256"] and final["events_seen"] == 300
    assert final["version"] == 2


def test_a_tampered_newest_snapshot_is_refused_and_an_older_one_used():
    learners = LearnerSet([declare("phish")])
    run(learners, consumed_stream(PHISHING[:100]))
    older = learners.snapshot(learners.models["phish"]).record
    learners.snapshot_written(learners.models["phish"], older)
    run(learners, consumed_stream(PHISHING[:200])[100:])
    newest = learners.snapshot(learners.models["phish"]).record
    newest["model"] = newest["model"].replace(b"LogisticRegression", b"LogisticRegressioN")

    restarted = LearnerSet([declare("phish")])
    version, refusals = restarted.resume("phish", [older, newest])
    assert version == 1
    assert [(r.version, r.error.reason) for r in refusals] == [(2, "snapshot_hash_mismatch")]
    assert restarted.models["phish"].offsets == {(TOPIC, 0): 100}
    assert restarted.models["phish"].version == 2  # the next snapshot is 3: never shadowed by the refused one

    alone = LearnerSet([declare("phish")])
    assert alone.resume("phish", [newest])[0] is None  # nothing verifies: start from the beginning
    assert alone.start_offsets([(TOPIC, 0)]) == {(TOPIC, 0): None}


def test_models_resume_from_different_offsets_and_the_consumer_seeks_to_the_smallest():
    learners = LearnerSet([declare("a"), declare("b")])
    stream = consumed_stream(PHISHING[:80])
    run(learners, stream[:30])
    snap_a = learners.snapshot(learners.models["a"]).record
    run(learners, stream[30:60])
    snap_b = learners.snapshot(learners.models["b"]).record

    restarted = LearnerSet([declare("a"), declare("b")])
    restarted.resume("a", [snap_a])
    restarted.resume("b", [snap_b])
    assert restarted.start_offsets([(TOPIC, 0)]) == {(TOPIC, 0): 30}
    run(restarted, stream[30:])
    assert restarted.models["a"].online.learned == restarted.models["b"].online.learned == 80


def test_a_drift_is_published_as_model_metrics():
    learners = LearnerSet([declare("phish")])
    flipped = [dict(e, event_id=f"f{i}", label=not e["label"]) for i, e in enumerate(PHISHING)]
    outputs = run(learners, consumed_stream(PHISHING + flipped))
    drifts = [o.record for o in outputs if o.record_name == "ModelMetrics"]
    assert drifts, "flipping every label must be detected"
    drift = drifts[0]["drift"]
    assert drift["detector"] == "ADWIN" and drift["position"] > 300
    assert drift["metric_after"] > drift["metric_before"]
    codec.encode("ModelMetrics", drifts[0])


@pytest.mark.parametrize("every_events, every_seconds, elapsed, due", [
    (10, 3600, 0, False), (5, 3600, 0, True), (10, 30, 31, True),
])
def test_snapshot_cadence_by_events_or_seconds(every_events, every_seconds, elapsed, due):
    now = [1000.0]
    learners = LearnerSet([declare("phish")], clock=lambda: now[0])
    run(learners, consumed_stream(PHISHING[:5]))
    now[0] += elapsed
    assert bool(learners.due_snapshots(every_events, every_seconds)) is due


def test_mini_batch_and_single_models_side_by_side_and_dead_letters_from_both():
    batched = parse_declaration({"id": "batched", "task": "binary", "batch_size": 64, "metrics": ["Accuracy"],
                                 "pipeline": [{"class": "preprocessing.StandardScaler"},
                                              {"class": "linear_model.LogisticRegression"}]})
    learners = LearnerSet([declare("single"), batched])
    bad = dict(PHISHING[5], event_id="bad", label="no")
    stream = consumed_stream(PHISHING[:5] + [bad] + PHISHING[6:300])
    outputs = []
    for start in range(0, 300, 37):  # fetches of an arbitrary size
        outputs.extend(learners.handle_batch(stream[start:start + 37]))
    letters = sorted(o.record["error"].split(":")[0] for o in outputs if o.record_name == "DeadLetter")
    assert letters == ["model 'batched'", "model 'single'"]
    assert learners.models["single"].online.learned == 299
    assert learners.models["batched"].online.learned == 256 and len(learners.models["batched"].online.pending) == 43
    assert learners.models["batched"].offsets == learners.models["single"].offsets == {(TOPIC, 0): 300}
