"""Batching clean records into anchors: sizes, time, deterministic ids, proofs that verify."""

from __future__ import annotations

import hashlib

import pytest

from services.ledger.anchoring import AnchoringError, Batcher, check_topic
from streamledger.core.ids import batch_id, parse_batch_id
from streamledger.core.merkle import tree_from_text, verify_proof


def digest(i: int) -> str:
    return hashlib.sha256(f"record {i}".encode()).hexdigest()


def test_a_batch_closes_when_full_and_its_id_is_its_partition_and_offset_range() -> None:
    batcher = Batcher("events.clean", max_records=3, max_seconds=60)
    assert batcher.add(1, 10, "e10", digest(10), now=0.0, tenant="acme") is None
    assert batcher.add(1, 11, "e11", digest(11), now=0.1, tenant="acme") is None
    batch = batcher.add(1, 14, "e14", digest(14), now=0.2, tenant="acme")
    assert batch is not None and batch.batch_id == "events.clean:1:10-14" == batch_id("events.clean", 1, 10, 14)
    assert (batch.first_offset, batch.last_offset, len(batch.records)) == (10, 14, 3)
    assert batcher.drain() == []


def test_partitions_batch_separately_and_time_closes_a_batch() -> None:
    batcher = Batcher("events.clean", max_records=100, max_seconds=1.0)
    batcher.add(0, 0, "a", digest(0), now=0.0, tenant="acme")
    batcher.add(2, 5, "b", digest(1), now=0.5, tenant="acme")
    assert batcher.due(now=0.9) == []
    (due,) = batcher.due(now=1.0)
    assert due.partition == 0 and due.batch_id == "events.clean:0:0-0"
    assert [b.partition for b in batcher.drain()] == [2]


def test_the_same_input_gives_the_same_batches_and_roots() -> None:
    def run() -> list[tuple[str, bytes]]:
        batcher = Batcher("events.clean", max_records=7, max_seconds=60)
        closed = [b for i in range(30) if (b := batcher.add(0, i, f"e{i}", digest(i), now=0.0, tenant="acme"))]
        closed += batcher.drain()
        return [(b.batch_id, b.tree().root) for b in closed]
    assert run() == run()
    assert [bid for bid, _ in run()] == ["events.clean:0:0-6", "events.clean:0:7-13", "events.clean:0:14-20",
                                         "events.clean:0:21-27", "events.clean:0:28-29"]


def test_every_proof_document_verifies_against_the_batch_root_through_the_stored_tree() -> None:
    batcher = Batcher("events.clean", max_records=1000, max_seconds=60)
    for i in range(13):
        batcher.add(0, i, f"e{i}", digest(i), now=0.0, tenant="acme")
    (batch,) = batcher.drain()
    stored = batch.tree_document()
    assert stored["_id"] == batch.batch_id and stored["size"] == 13 and len(stored["leaves"]) == 13 * 64
    tree = tree_from_text(stored["leaves"])  # as the audit rebuilds it
    assert tree.root == batch.tree().root
    for doc in batch.proofs():
        assert "siblings" not in doc  # one tree per batch, not ten hashes per proof
        siblings = tree.proof(doc["index"])
        assert verify_proof(bytes.fromhex(doc["content_hash"]), doc["index"], doc["size"], siblings, tree.root)


@pytest.mark.parametrize(("text", "named"), [("ab" * 31, "multiple of 64"), ("zz" * 32, "not hex"), (None, "string")])
def test_an_unreadable_stored_tree_is_refused_naming_why(text, named) -> None:
    with pytest.raises(ValueError, match=named):
        tree_from_text(text)


def test_proofs_are_keyed_by_tenant_and_event_id() -> None:
    batcher = Batcher("events.clean", max_records=1000, max_seconds=60)
    batcher.add(0, 1, "e1", digest(1), now=0.0, tenant="acme")
    batcher.add(0, 2, "e1", digest(2), now=0.0, tenant="globex")
    (batch,) = batcher.drain()
    assert [(d["_id"], d["tenant"], d["event_id"], d["index"]) for d in batch.proofs()] == [
        ("4:acme:e1", "acme", "e1", 0), ("6:globex:e1", "globex", "e1", 1)]


def test_bad_records_are_refused_by_name() -> None:
    batcher = Batcher("events.clean")
    with pytest.raises(AnchoringError, match="'e1'.*content_hash"):
        batcher.add(0, 1, "e1", "not-hex", now=0.0, tenant="acme")
    with pytest.raises(AnchoringError, match="content_hash"):
        batcher.add(0, 1, "e1", "ab" * 31, now=0.0, tenant="acme")
    batcher.add(0, 5, "e5", digest(5), now=0.0, tenant="acme")
    with pytest.raises(AnchoringError, match="offset 5"):
        batcher.add(0, 5, "again", digest(6), now=0.0, tenant="acme")


def test_a_planned_batch_closes_at_its_recorded_end_whatever_the_limits() -> None:
    # Before a crash a batch closed by time at offset 4; after the restart more records are
    # there, yet the batch is formed again exactly as it was, then batching goes on as usual.
    batcher = Batcher("events.clean", max_records=3, max_seconds=1.0)
    batcher.plan(0, 0, 4)
    closed = [b for i in range(10) if (b := batcher.add(0, i, f"e{i}", digest(i), now=float(i), tenant="acme"))]
    assert [b.batch_id for b in closed] == ["events.clean:0:0-4", "events.clean:0:5-7"]
    assert batcher.open_from(0) == 8
    assert batcher.due(now=100.0)[0].batch_id == "events.clean:0:8-9"


def test_a_planned_batch_waits_for_its_last_record_however_long() -> None:
    batcher = Batcher("events.clean", max_records=1000, max_seconds=1.0)
    batcher.plan(2, 10, 12)
    batcher.add(2, 10, "a", digest(10), now=0.0, tenant="acme")
    assert batcher.due(now=60.0) == []
    assert batcher.add(2, 12, "c", digest(12), now=61.0, tenant="acme").batch_id == "events.clean:2:10-12"


def test_plans_must_come_in_order_and_forget_drops_a_partition() -> None:
    batcher = Batcher("events.clean")
    batcher.plan(0, 0, 9)
    with pytest.raises(ValueError, match="overlaps"):
        batcher.plan(0, 5, 20)
    with pytest.raises(ValueError, match="empty"):
        batcher.plan(0, 30, 29)
    batcher.add(0, 0, "a", digest(0), now=0.0, tenant="acme")
    batcher.forget(0)
    assert batcher.open_from(0) is None and batcher.drain() == []


def test_a_topic_is_anchorable_only_if_every_batch_id_of_it_is_one_the_contract_takes() -> None:
    check_topic("events.clean")
    check_topic("clean-" + "x" * 71)  # 77 characters: the longest id of it is 128
    for topic, why in (("_schemas", "start with a letter or digit"), ("clean-" + "x" * 72, "at most 128"),
                       ("a b", "only letters")):
        with pytest.raises(ValueError, match=why):
            check_topic(topic)


def test_a_batch_id_reads_back_as_its_topic_partition_and_offsets() -> None:
    assert parse_batch_id(batch_id("events.clean.x:y", 2, 10, 14)) == ("events.clean.x:y", 2, 10, 14)
    assert parse_batch_id("events.clean:2:10") is None
