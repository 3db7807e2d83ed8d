"""The audit's verification core (services/audit/verification.py) on fakes of its two ports:
every verdict, every tamper reason, and never VERIFIED without the ledger's root.

The fakes here (FakeStore, FakeLedger, anchored_batch) are shared by the other audit unit tests.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.audit.mongo_store import MongoEvidenceStore
from services.audit.ports import InvalidArgument, LedgerUnreachable, StoreUnreachable
from services.audit.verification import Reason, Status, check_event_id, judge, verify
from services.ledger.anchoring import Batcher
from streamledger.core.canonical import content_hash
from streamledger.core.merkle import MerkleTree, leaf_hash, verify_proof
from streamledger.core.scoped import scoped_id

TOPIC = "events.clean"


class FakeStore:
    """EvidenceStore over dicts; `down` makes every read fail as MongoDB being away would."""

    def __init__(self) -> None:
        self.events: dict[str, dict[str, Any]] = {}
        self.proofs: dict[str, dict[str, Any]] = {}
        self.models: dict[str, dict[str, Any]] = {}
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnreachable("fake store is down")

    async def event(self, tenant: str, event_id: str) -> dict[str, Any] | None:
        self._check()
        return copy.deepcopy(_of_tenant(self.events.get(event_id), tenant))

    async def proof(self, tenant: str, event_id: str) -> dict[str, Any] | None:
        self._check()
        return copy.deepcopy(_of_tenant(self.proofs.get(event_id), tenant))

    async def snapshot(self, model_id: str, version: int | None) -> dict[str, Any] | None:
        self._check()
        if version is not None:
            return self.models.get(f"{model_id}:{version}")
        mine = [m for m in self.models.values() if m["model_id"] == model_id]
        return max(mine, key=lambda m: m["version"]) if mine else None


class FakeLedger:
    """LedgerReader over dicts, counting calls; `down` makes every query LedgerUnreachable."""

    def __init__(self) -> None:
        self.anchors: dict[str, dict[str, Any]] = {}
        self.blocks: dict[str, dict[str, Any]] = {}
        self.models: dict[tuple[str, int], dict[str, Any]] = {}
        self.balances: dict[str, int] = {}
        self.holds: list[dict[str, Any]] = []
        self.histories: dict[str, list[dict[str, Any]]] = {}
        self.down = False
        self.calls: list[str] = []

    def _check(self, name: str) -> None:
        self.calls.append(name)
        if self.down:
            raise LedgerUnreachable(f"{name}: fake peer is down")

    async def anchor(self, batch_id: str) -> dict[str, Any] | None:
        self._check("GetAnchor")
        return self.anchors.get(batch_id)

    async def transaction_block(self, tx_id: str) -> dict[str, Any] | None:
        self._check("GetBlockByTxID")
        return self.blocks.get(tx_id)

    async def model(self, model_id: str, version: int) -> dict[str, Any] | None:
        self._check("GetModel")
        if version == 0:
            mine = [m for (mid, _), m in self.models.items() if mid == model_id]
            return max(mine, key=lambda m: m["version"]) if mine else None
        return self.models.get((model_id, version))

    async def balance(self, account: str) -> int | None:
        self._check("Balance")
        return self.balances.get(account)

    async def holds_of(self, account: str) -> list[dict[str, Any]]:
        self._check("HoldsOf")
        return [h for h in self.holds if account in (h["client"], h["provider"])]

    async def history(self, key: str) -> list[dict[str, Any]]:
        self._check("History")
        return self.histories.get(key, [])


def _of_tenant(document: dict[str, Any] | None, tenant: str) -> dict[str, Any] | None:
    """The fake keys documents by event id alone; a document of another tenant is not found."""
    return document if document is not None and document.get("tenant") == tenant else None


def clean_event(i: int, prefix: str = "evt") -> dict[str, Any]:
    """An `events` document as storage writes it (ts a UTC datetime), with its real content hash."""
    record = {"event_id": f"{prefix}-{i}", "tenant": "acme", "source": "pos",
              "ts": datetime(2026, 1, 2, 3, 4, 5, (i % 1000) * 1000, tzinfo=timezone.utc),
              "features": {"amount": 10.5 + i, "country": "FR", "card_present": i % 2 == 0},
              "label": "fraud" if i % 3 == 0 else None, "raw_partition": 0, "raw_offset": 100 + i}
    record["content_hash"] = content_hash(record)
    record["_id"] = scoped_id(record["tenant"], record["event_id"])
    return record


def anchored_batch(store: FakeStore, ledger: FakeLedger, size: int, partition: int = 0, first_offset: int = 0,
                   prefix: str = "evt", block: int = 7) -> list[str]:
    """Store `size` events with proofs, and anchor their batch on the fake ledger; the event ids."""
    batcher = Batcher(TOPIC, max_records=size)
    batch = None
    records = [clean_event(i, prefix) for i in range(size)]
    for offset, record in enumerate(records, start=first_offset):
        store.events[record["event_id"]] = record
        batch = batcher.add(partition, offset, record["event_id"], record["content_hash"], now=0.0,
                            tenant=record["tenant"])
    assert batch is not None
    tree = batch.tree()
    for proof in batch.proofs():  # as the Mongo store returns them: siblings computed from the batch's tree
        store.proofs[proof["event_id"]] = {**proof, "topic": TOPIC, "partition": partition,
                                           "siblings": [s.hex() for s in tree.proof(proof["index"])]}
    tx_id = f"tx-{batch.batch_id}"
    ledger.anchors[batch.batch_id] = {
        "batch_id": batch.batch_id, "merkle_root": tree.root.hex(), "count": size,
        "first_offset": batch.first_offset, "last_offset": batch.last_offset, "tx_id": tx_id,
        "anchored_at": "2026-01-02T03:04:06.5Z", "submitter": "Org1MSP::CN=Admin"}
    ledger.blocks[tx_id] = {"block_number": block, "tx_index": 0, "validation_code": "VALID",
                            "data_hash": "00" * 32, "previous_hash": "11" * 32}
    return [r["event_id"] for r in records]


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def ledger() -> FakeLedger:
    return FakeLedger()


# -- VERIFIED and the chain of evidence --

async def test_every_record_of_an_odd_sized_batch_verifies_with_the_whole_chain(store, ledger) -> None:
    ids = anchored_batch(store, ledger, 7)
    for event_id in ids:
        v = await verify(store, ledger, "acme", event_id)
        assert v.status is Status.VERIFIED, v.detail
        assert v.problems == [] and v.reason == ""
        record = store.events[event_id]
        assert v.recomputed_hash == v.stored_hash == record["content_hash"] == v.proof["content_hash"]
        anchor = ledger.anchors[v.proof["batch_id"]]
        assert v.computed_root == anchor["merkle_root"] == v.anchor["merkle_root"]
        assert (v.anchor["tx_id"], v.anchor["block_number"], v.anchor["tx_validation"]) == (anchor["tx_id"], 7, "VALID")
        assert v.record["ts"].endswith("Z") and v.record["event_id"] == event_id


async def test_a_single_record_batch_verifies(store, ledger) -> None:
    [only] = anchored_batch(store, ledger, 1)
    v = await verify(store, ledger, "acme", only)
    assert v.status is Status.VERIFIED and v.proof["siblings"] == []


async def test_the_answer_is_plain_json(store, ledger) -> None:
    [event_id, *_] = anchored_batch(store, ledger, 3)
    store.events[event_id]["features"]["weird"] = float("nan")  # tampered into something JSON cannot carry
    answer = (await verify(store, ledger, "acme", event_id)).as_dict()
    text = json.dumps(answer, allow_nan=False)
    assert json.loads(text)["status"] == "TAMPERED"
    assert set(answer) == {"tenant", "event_id", "status", "reason", "detail", "problems", "record", "recomputed_hash",
                           "stored_hash", "proof", "computed_root", "anchor"}


async def test_a_block_the_peer_cannot_find_leaves_the_number_unset_but_the_root_still_decides(store, ledger) -> None:
    [event_id] = anchored_batch(store, ledger, 1)
    ledger.blocks.clear()
    v = await verify(store, ledger, "acme", event_id)
    assert v.status is Status.VERIFIED and v.anchor["block_number"] is None
    assert "block not found" in v.detail


# -- TAMPERED, each reason --

async def test_editing_one_record_makes_exactly_that_one_tampered(store, ledger) -> None:
    ids = anchored_batch(store, ledger, 10)
    store.events[ids[4]]["features"]["amount"] = 1_000_000.0
    verdicts = {i: (await verify(store, ledger, "acme", i)) for i in ids}
    assert [i for i, v in verdicts.items() if v.status is not Status.VERIFIED] == [ids[4]]
    v = verdicts[ids[4]]
    assert v.status is Status.TAMPERED and v.reason == Reason.RECORD_CHANGED
    assert v.recomputed_hash != v.proof["content_hash"] and v.stored_hash == v.proof["content_hash"]


async def test_a_record_edited_with_its_hash_rewritten_is_still_caught(store, ledger) -> None:
    ids = anchored_batch(store, ledger, 4)
    record = store.events[ids[1]]
    record["label"] = "legit"
    record["content_hash"] = content_hash(record)
    v = await verify(store, ledger, "acme", ids[1])
    assert (v.status, v.reason) == (Status.TAMPERED, Reason.RECORD_CHANGED)


async def test_only_the_content_hash_field_edited(store, ledger) -> None:
    ids = anchored_batch(store, ledger, 4)
    store.events[ids[2]]["content_hash"] = "ab" * 32
    v = await verify(store, ledger, "acme", ids[2])
    assert (v.status, v.reason) == (Status.TAMPERED, Reason.STORED_HASH_CHANGED)
    assert v.recomputed_hash == v.proof["content_hash"]  # the content itself is intact


async def test_a_field_changed_into_something_without_canonical_form(store, ledger) -> None:
    ids = anchored_batch(store, ledger, 3)
    store.events[ids[0]]["ts"] = "yesterday"
    v = await verify(store, ledger, "acme", ids[0])
    assert (v.status, v.reason) == (Status.TAMPERED, Reason.RECORD_NOT_CANONICAL)
    assert "ts" in v.detail


async def test_an_altered_sibling_does_not_lead_to_the_ledgers_root(store, ledger) -> None:
    ids = anchored_batch(store, ledger, 9)
    proof = store.proofs[ids[3]]
    proof["siblings"][1] = ("0" if proof["siblings"][1][0] != "0" else "1") + proof["siblings"][1][1:]
    v = await verify(store, ledger, "acme", ids[3])
    assert (v.status, v.reason) == (Status.TAMPERED, Reason.PROOF_MISMATCH)
    assert v.computed_root != v.anchor["merkle_root"] and "root" in v.detail
    assert (await verify(store, ledger, "acme", ids[2])).status is Status.VERIFIED  # its neighbour is untouched


async def test_record_and_leaf_rewritten_together_fail_at_the_ledgers_root(store, ledger) -> None:
    ids = anchored_batch(store, ledger, 5)
    record = store.events[ids[0]]
    record["features"]["amount"] = 0.0
    record["content_hash"] = content_hash(record)
    store.proofs[ids[0]]["content_hash"] = record["content_hash"]
    v = await verify(store, ledger, "acme", ids[0])
    assert (v.status, v.reason) == (Status.TAMPERED, Reason.PROOF_MISMATCH)


@pytest.mark.parametrize("edit", [
    lambda p: p.update(index=(p["index"] + 1) % p["size"]),
    lambda p: p.update(size=p["size"] + 1),
    lambda p: p.update(offset=10_000),
    lambda p: p["siblings"].reverse(),
])
async def test_altered_proof_fields(store, ledger, edit) -> None:
    ids = anchored_batch(store, ledger, 6)
    edit(store.proofs[ids[1]])
    v = await verify(store, ledger, "acme", ids[1])
    assert v.status is Status.TAMPERED
    assert v.reason in (Reason.PROOF_MISMATCH, Reason.PROOF_MALFORMED)


@pytest.mark.parametrize("edit, names", [
    (lambda p: p["siblings"].__setitem__(0, "zz" * 32), "siblings[0]"),
    (lambda p: p.pop("siblings"), "siblings"),
    (lambda p: p.update(index="3"), "index"),
    (lambda p: p.update(content_hash="AB" * 32), "content_hash"),
    (lambda p: p["siblings"].append("00" * 32), "longer"),
])
async def test_malformed_proof_documents_name_what_is_wrong(store, ledger, edit, names) -> None:
    ids = anchored_batch(store, ledger, 5)
    edit(store.proofs[ids[0]])
    v = await verify(store, ledger, "acme", ids[0])
    assert (v.status, v.reason) == (Status.TAMPERED, Reason.PROOF_MALFORMED)
    assert names in v.detail


async def test_a_proof_with_an_impossible_batch_id_is_tampered_without_asking_the_ledger(store, ledger) -> None:
    ids = anchored_batch(store, ledger, 2)
    store.proofs[ids[0]]["batch_id"] = "no spaces allowed"
    ledger.calls.clear()
    v = await verify(store, ledger, "acme", ids[0])
    assert (v.status, v.reason) == (Status.TAMPERED, Reason.PROOF_MALFORMED)
    assert ledger.calls == []


async def test_another_records_proof_copied_over_is_caught(store, ledger) -> None:
    ids = anchored_batch(store, ledger, 4)
    store.proofs[ids[1]] = {**store.proofs[ids[2]], "_id": ids[1]}
    v = await verify(store, ledger, "acme", ids[1])
    assert (v.status, v.reason) == (Status.TAMPERED, Reason.RECORD_CHANGED)


# -- DELETED, UNKNOWN, NOT_ANCHORED_YET --

async def test_a_deleted_record_with_its_proof_is_deleted_and_the_proof_still_checks(store, ledger) -> None:
    ids = anchored_batch(store, ledger, 3)
    del store.events[ids[1]]
    v = await verify(store, ledger, "acme", ids[1])
    assert v.status is Status.DELETED and v.record is None
    assert v.computed_root == v.anchor["merkle_root"] and v.problems == []
    assert "gone" in v.detail and v.anchor["tx_id"] in v.detail


async def test_an_unknown_id_is_unknown_and_the_ledger_is_not_asked(store, ledger) -> None:
    anchored_batch(store, ledger, 2)
    ledger.calls.clear()
    v = await verify(store, ledger, "acme", "never-seen")
    assert v.status is Status.UNKNOWN and ledger.calls == []


async def test_a_stored_record_without_proof_is_not_anchored_yet(store, ledger) -> None:
    record = clean_event(1, "pending")
    store.events[record["event_id"]] = record
    v = await verify(store, ledger, "acme", record["event_id"])
    assert v.status is Status.NOT_ANCHORED_YET and v.recomputed_hash == record["content_hash"]


async def test_a_proof_whose_batch_is_not_on_the_ledger_yet(store, ledger) -> None:
    ids = anchored_batch(store, ledger, 3)
    ledger.anchors.clear()
    v = await verify(store, ledger, "acme", ids[0])
    assert v.status is Status.NOT_ANCHORED_YET and v.anchor is None and "not on the ledger" in v.detail


async def test_an_unanchored_record_whose_hash_field_was_edited_is_tampered(store, ledger) -> None:
    record = clean_event(1, "pending")
    record["content_hash"] = "00" * 32
    store.events[record["event_id"]] = record
    v = await verify(store, ledger, "acme", record["event_id"])
    assert (v.status, v.reason) == (Status.TAMPERED, Reason.STORED_HASH_CHANGED)


# -- unreachable servers and malformed ids --

async def test_an_unreachable_ledger_is_said_so_never_verified(store, ledger) -> None:
    ids = anchored_batch(store, ledger, 3)
    store.events[ids[2]]["label"] = "changed"
    ledger.down = True
    for event_id in ids:
        v = await verify(store, ledger, "acme", event_id)
        assert v.status is Status.LEDGER_UNREACHABLE, v.status
        assert v.anchor is None and "could not be read" in v.detail
        assert v.recomputed_hash and v.computed_root  # the evidence gathered before the ledger
    v = await verify(store, ledger, "acme", ids[2])
    assert v.reason == Reason.RECORD_CHANGED  # local checks still reported


async def test_a_deleted_record_with_the_ledger_down_is_unreachable_not_deleted(store, ledger) -> None:
    ids = anchored_batch(store, ledger, 2)
    del store.events[ids[0]]
    ledger.down = True
    assert (await verify(store, ledger, "acme", ids[0])).status is Status.LEDGER_UNREACHABLE


async def test_an_unreachable_store(store, ledger) -> None:
    store.down = True
    v = await verify(store, ledger, "acme", "evt-1")
    assert v.status is Status.STORE_UNREACHABLE and "MongoDB" in v.detail


@pytest.mark.parametrize("bad, why", [
    ("", "empty"), ("   ", "empty"), ("x" * 257, "257 characters"), ("a\ud800b", "Unicode"),
    ("a\x00b", "NUL"), (42, "string"),
])
async def test_malformed_event_ids_are_refused_by_name(store, ledger, bad, why) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await verify(store, ledger, "acme", bad)
    assert refused.value.field == "event_id" and why in str(refused.value)


async def test_another_tenants_event_id_is_unknown(store, ledger) -> None:
    ids = anchored_batch(store, ledger, 2)
    v = await verify(store, ledger, "globex", ids[0])
    assert v.status is Status.UNKNOWN and v.tenant == "globex" and "'globex'" in v.detail
    assert (await verify(store, ledger, "acme", ids[0])).as_dict()["tenant"] == "acme"


@pytest.mark.parametrize("bad, why", [(None, "required"), ("", "required"), ("  ", "empty"), ("t" * 257, "257"),
                                      ("a\x00b", "NUL"), (7, "string")])
async def test_a_missing_or_malformed_tenant_is_refused_by_name(store, ledger, bad, why) -> None:
    [event_id] = anchored_batch(store, ledger, 1)
    with pytest.raises(InvalidArgument) as refused:
        await verify(store, ledger, bad, event_id)
    assert refused.value.field == "tenant" and why in str(refused.value)


class Documents:
    """A collection read by `_id`, as the Mongo store reads it."""

    def __init__(self, name: str, documents: list[dict[str, Any]]) -> None:
        self.name, self.documents = name, {d["_id"]: d for d in documents}

    async def find_one(self, query: dict[str, Any]) -> dict[str, Any] | None:
        document = self.documents.get(query["_id"])
        return None if document is None else dict(document)


async def test_the_mongo_store_reads_events_and_proofs_by_tenant_and_event_id() -> None:
    ours, theirs = clean_event(1), {**clean_event(1), "tenant": "acme:evt"}
    theirs["_id"] = scoped_id("acme:evt", theirs["event_id"])
    db = {"events": Documents("events", [ours, theirs]), "proofs": Documents("proofs", []),
          "proof_trees": Documents("proof_trees", []), "models": Documents("models", [])}
    store = MongoEvidenceStore(db)  # type: ignore[arg-type]
    assert (await store.event("acme", "evt-1"))["tenant"] == "acme"
    assert (await store.event("acme:evt", "evt-1"))["tenant"] == "acme:evt"
    assert await store.event("acme:evt-1", "") is None and await store.proof("acme", "evt-1") is None


def stored_batch(size: int = 5) -> tuple[dict[str, Documents], list[dict[str, Any]], Any]:
    batcher = Batcher(TOPIC, max_records=size)
    for i in range(size):
        record = clean_event(i)
        batch = batcher.add(0, i, record["event_id"], record["content_hash"], now=0.0, tenant=record["tenant"])
    proofs = list(batch.proofs())
    db = {"events": Documents("events", []), "proofs": Documents("proofs", proofs),
          "proof_trees": Documents("proof_trees", [batch.tree_document()]), "models": Documents("models", [])}
    return db, proofs, batch.tree()


async def test_the_mongo_store_computes_a_proofs_siblings_from_its_batchs_stored_tree() -> None:
    db, proofs, tree = stored_batch()
    store = MongoEvidenceStore(db)  # type: ignore[arg-type]
    for proof in proofs:
        read = await store.proof(proof["tenant"], proof["event_id"])
        assert read["siblings"] == [s.hex() for s in tree.proof(proof["index"])]
        assert verify_proof(bytes.fromhex(read["content_hash"]), read["index"], read["size"],
                            [bytes.fromhex(s) for s in read["siblings"]], tree.root)


async def test_an_edited_stored_tree_is_seen_at_once_whatever_was_read_before() -> None:
    db, proofs, tree = stored_batch()
    store = MongoEvidenceStore(db)  # type: ignore[arg-type]
    first = proofs[0]
    before = await store.proof(first["tenant"], first["event_id"])  # the tree is built and kept
    stored = db["proof_trees"].documents[first["batch_id"]]
    stored["leaves"] = "00" * 32 + stored["leaves"][64:]  # a leaf on its path altered
    after = await store.proof(proofs[1]["tenant"], proofs[1]["event_id"])
    assert after["siblings"][0] == leaf_hash(bytes(32)).hex() != before["siblings"][0]
    assert not verify_proof(bytes.fromhex(after["content_hash"]), after["index"], after["size"],
                            [bytes.fromhex(s) for s in after["siblings"]], tree.root)


@pytest.mark.parametrize("damage", [lambda trees, key: trees.pop(key),
                                    lambda trees, key: trees[key].update(leaves="zz"),
                                    lambda trees, key: trees[key].pop("leaves")])
async def test_a_proof_whose_tree_is_gone_or_unreadable_has_no_siblings(damage) -> None:
    db, proofs, _ = stored_batch()
    damage(db["proof_trees"].documents, proofs[0]["batch_id"])
    read = await MongoEvidenceStore(db).proof(proofs[0]["tenant"], proofs[0]["event_id"])  # type: ignore[arg-type]
    assert "siblings" not in read  # verification then reports the proof malformed, naming "siblings" (above)


async def test_a_proof_written_with_its_siblings_keeps_them() -> None:
    db, proofs, _ = stored_batch()
    old = {**proofs[0], "siblings": ["ab" * 32]}
    db["proofs"].documents[old["_id"]] = old
    read = await MongoEvidenceStore(db).proof(old["tenant"], old["event_id"])  # type: ignore[arg-type]
    assert read["siblings"] == ["ab" * 32]


def test_ids_that_ingestion_accepts_pass() -> None:
    for good in ("e1", "x" * 256, "a/b?c#d", "événement", "with space"):
        assert check_event_id(good) == good


# -- properties --

@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 70), data=st.data())
def test_any_leaf_verifies_and_any_flipped_bit_of_its_path_is_caught(size: int, data) -> None:
    leaves = [bytes([i % 256, i // 256]) * 16 for i in range(size)]
    tree = MerkleTree(leaves)
    index = data.draw(st.integers(0, size - 1))
    siblings = [s.hex() for s in tree.proof(index)]
    proof = {"_id": "e", "batch_id": "events.clean:0:0-9", "index": index, "size": size,
             "content_hash": leaves[index].hex(), "offset": 0, "siblings": siblings}
    anchor = {"batch_id": "events.clean:0:0-9", "merkle_root": tree.root.hex(), "count": size,
              "first_offset": 0, "last_offset": 9, "tx_id": "t"}
    record = None  # the leaf alone is judged here: a missing record makes it DELETED, with the proof checked
    assert judge("acme", "e", record, proof, anchor, None).problems == []
    if siblings:
        depth = data.draw(st.integers(0, len(siblings) - 1))
        bit = data.draw(st.integers(0, 255))
        flipped = bytearray(bytes.fromhex(siblings[depth]))
        flipped[bit // 8] ^= 1 << (bit % 8)
        bad = {**proof, "siblings": [*siblings[:depth], flipped.hex(), *siblings[depth + 1:]]}
        assert [p.reason for p in judge("acme", "e", record, bad, anchor, None).problems] == [Reason.PROOF_MISMATCH]
