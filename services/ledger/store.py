"""What the ledger service keeps in MongoDB: anchoring plans, inclusion proofs, settlements.

    anchor_plans      _id `<topic>:<partition>:<first offset>` (`plan_key`): batch_id, topic,
                      partition, first/last offset, count, merkle_root. Written before
                      AnchorBatch, so a restart, or the replica that takes the partition
                      over, re-forms exactly the batches that may already be anchored (tx id
                      and block go to ledger.anchors). Keyed by where a batch starts, not by
                      its id, so that of two replicas cutting the same records differently
                      only the first to record its plan may anchor it (`PlanTaken`).
    proofs            _id scoped_id(tenant, event_id) (streamledger/core/scoped.py), as the
                      stored event: tenant, event_id, batch_id, index, size, content_hash,
                      offset, topic, partition: what `streamledger audit verify` checks,
                      with the siblings the audit computes from the batch's tree below
                      (documents written before proof_trees existed carry their `siblings`).
    proof_trees       _id batch_id: topic, partition, first_offset, size, and `leaves`, the
                      batch's content hashes in order as one hex string (merkle.leaves_text).
                      One document per batch instead of ten hashes in every proof: a
                      proof is about a third of the bytes it was.
    settlement_plans  _id hold_id: receipt (units, sequence, signature; null: settle on the
                      one recorded on the ledger), units and price it pays, amount expected,
                      usage_units, usage_records, duplicates, partition, through_offset,
                      settle_by, deadline. Written before Settle and deleted once its outcome
                      is stored, so a retry after a crash settles on the same receipt.
    settlements       _id hold_id: the plan plus tx_id, charged, refunded, paid_units, status
                      (SETTLED, REFUSED, or RELEASED/SETTLED with by_another when the hold
                      was closed by another transaction before this service settled it).

Documents are inserted, never updated (FerretDB's update path is its slow and fragile
one), and every insert is idempotent: replaying a batch or a settlement changes nothing.
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, InsertOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError

from services.ledger.anchoring import Batch

_DUPLICATE_KEY = 11000


class PlanTaken(Exception):
    """Another batch starting at the same offset was recorded first: only that one may be anchored."""

    def __init__(self, batch: Batch, recorded: dict[str, Any]) -> None:
        self.recorded = recorded
        super().__init__(f"batch {batch.batch_id} was not recorded: {recorded['batch_id']} starts at the same "
                         f"offset and was recorded first")


def plan_key(topic: str, partition: int, first_offset: int) -> str:
    """The one plan a partition may have from `first_offset` on."""
    return f"{topic}:{partition}:{first_offset}"


class StoreUnavailable(RuntimeError):
    """MongoDB did not answer; the operation can be retried as is."""


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, (StoreUnavailable, ConnectionFailure))


class LedgerStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self.plans = db["anchor_plans"]
        self.proofs = db["proofs"]
        self.proof_trees = db["proof_trees"]
        self.settlement_plans = db["settlement_plans"]
        self.settlements = db["settlements"]

    async def ensure_indexes(self) -> None:
        # What `plans_from` asks (proofs are only read by _id).
        await self.plans.create_index([("topic", ASCENDING), ("partition", ASCENDING), ("last_offset", ASCENDING)])

    # -- anchoring --
    async def plans_from(self, topic: str, partition: int, offset: int) -> list[dict[str, Any]]:
        """The recorded batches of a partition that end at or after `offset`, in offset order
        (one per range: plans recorded before they were keyed by first offset had their batch id
        as key, so a range replanned since is there twice)."""
        cursor = self.plans.find({"topic": topic, "partition": partition, "last_offset": {"$gte": offset}})
        ranges = {(d["first_offset"], d["last_offset"]): d async for d in cursor}
        return [ranges[r] for r in sorted(ranges)]

    async def record_plan(self, batch: Batch, merkle_root: str) -> None:
        """Record the batch about to be anchored; `PlanTaken` when another batch from the same
        offset was recorded first (that one is anchored, this one must not be)."""
        key = plan_key(batch.topic, batch.partition, batch.first_offset)
        document = {"_id": key, "batch_id": batch.batch_id, "topic": batch.topic, "partition": batch.partition,
                    "first_offset": batch.first_offset, "last_offset": batch.last_offset,
                    "count": len(batch.records), "merkle_root": merkle_root, "state": "planned"}
        try:
            await self.plans.insert_one(document)
        except DuplicateKeyError:
            stored = await self.plans.find_one({"_id": key})
            if stored is None:
                raise StoreUnavailable(f"plan {key} was refused as a duplicate but cannot be read") from None
            if stored["last_offset"] != batch.last_offset:
                raise PlanTaken(batch, stored) from None
            if stored["merkle_root"] != merkle_root:
                raise RuntimeError(f"batch {batch.batch_id} was planned before with root {stored['merkle_root']}, "
                                   f"now {merkle_root}: the input under that range changed") from None

    async def write_proofs(self, tree: dict[str, Any], documents: list[dict[str, Any]]) -> None:
        """Insert a batch's tree document, then its records' proof documents; ones already there (a
        replay, or an event seen twice) stay as they are."""
        await self._insert_new(self.proof_trees, [tree])
        await self._insert_new(self.proofs, documents)

    @staticmethod
    async def _insert_new(collection, documents: list[dict[str, Any]]) -> None:
        if not documents:
            return
        try:
            await collection.bulk_write([InsertOne(d) for d in documents], ordered=False)
        except BulkWriteError as exc:
            others = [e for e in exc.details.get("writeErrors", []) if e.get("code") != _DUPLICATE_KEY]
            if others or exc.details.get("writeConcernErrors"):
                raise StoreUnavailable(f"{collection.name}: {len(others)} writes refused, first: {others[:1]}") from exc

    # -- settlement --
    async def pending_settlements(self) -> list[dict[str, Any]]:
        return [doc async for doc in self.settlement_plans.find({})]

    async def settlement(self, hold_id: str) -> dict[str, Any] | None:
        return await self.settlements.find_one({"_id": hold_id})

    async def settled_through(self, hold_id: str) -> dict[str, Any] | None:
        """The settlement of a hold, or its plan while the outcome is not stored yet (another
        replica may be settling it): either says which usage it counted (partition, through_offset)."""
        return await self.settlement(hold_id) or await self.settlement_plans.find_one({"_id": hold_id})

    async def plan_settlement(self, plan: dict[str, Any]) -> dict[str, Any]:
        """Record a settlement about to be submitted; an earlier plan for the hold wins."""
        try:
            await self.settlement_plans.insert_one(plan)
        except DuplicateKeyError:
            pass
        return await self.settlement_plans.find_one({"_id": plan["_id"]})

    async def record_settlement(self, plan: dict[str, Any], outcome: dict[str, Any]) -> None:
        try:
            await self.settlements.insert_one({**plan, **outcome})
        except DuplicateKeyError:
            pass
        await self.settlement_plans.delete_one({"_id": plan["_id"]})
