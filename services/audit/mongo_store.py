"""`MongoEvidenceStore`: the audit's reads of MongoDB (`events`, `proofs`, `models`), read-only.

    store = MongoEvidenceStore(mongo_client(settings.mongo_url)[settings.mongo_db])
    record = await store.event("acme", "evt-42")

Events and proofs are read by `scoped_id(tenant, event_id)`, the `_id` storage and the ledger
service give them (streamledger/core/scoped.py). A proof document carries no siblings: they are
computed from its batch's tree (`proof_trees`, the batch's leaves, read every time; the last few
trees built are kept with their leaves, so verifying many events of an unchanged batch hashes
its tree once). A proof written before `proof_trees` existed keeps the siblings it carries; one
whose tree is missing or unreadable is returned without siblings, which verification reports.

Any failure to read (server away, timeout, refused) is `StoreUnreachable`: the audit then
says it could not read storage rather than guessing.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from pymongo import DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from services.audit.ports import StoreUnreachable
from streamledger.core.merkle import MerkleTree, tree_from_text
from streamledger.core.scoped import scoped_id

TREES_KEPT = 64
"""Batch trees kept in memory (a batch of 1,000 records: about 130 KB)."""


class MongoEvidenceStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self.events = db["events"]
        self.proofs = db["proofs"]
        self.proof_trees = db["proof_trees"]
        self.models = db["models"]
        self.trees: OrderedDict[str, tuple[str, MerkleTree]] = OrderedDict()
        """The last trees built, with the leaves they were built from."""

    async def event(self, tenant: str, event_id: str) -> dict[str, Any] | None:
        return await self._find_one(self.events, scoped_id(tenant, event_id))

    async def proof(self, tenant: str, event_id: str) -> dict[str, Any] | None:
        """The event's proof document, with its siblings computed from its batch's tree."""
        proof = await self._find_one(self.proofs, scoped_id(tenant, event_id))
        if proof is None or "siblings" in proof:
            return proof
        tree, index = await self._tree(proof.get("batch_id")), proof.get("index")
        if tree is not None and type(index) is int and 0 <= index < tree.size:
            proof["siblings"] = [sibling.hex() for sibling in tree.proof(index)]
        return proof

    async def _tree(self, batch_id: Any) -> MerkleTree | None:
        """The batch's tree as stored now (read every time, so an edit is never hidden by the
        cache: only the hashing is saved while the stored leaves stay the same)."""
        if not isinstance(batch_id, str):
            return None
        document = await self._find_one(self.proof_trees, batch_id)
        leaves = document.get("leaves") if document is not None else None
        kept = self.trees.get(batch_id)
        if kept is not None and kept[0] == leaves:
            self.trees.move_to_end(batch_id)
            return kept[1]
        try:
            tree = tree_from_text(leaves)
        except ValueError:
            self.trees.pop(batch_id, None)
            return None
        self.trees[batch_id] = (leaves, tree)
        if len(self.trees) > TREES_KEPT:
            self.trees.popitem(last=False)
        return tree

    async def snapshot(self, model_id: str, version: int | None) -> dict[str, Any] | None:
        if version is not None:
            return await self._find_one(self.models, f"{model_id}:{version}")  # storage's _id for a snapshot
        try:
            async for document in self.models.find({"model_id": model_id}).sort("version", DESCENDING).limit(1):
                return document
        except PyMongoError as exc:
            raise StoreUnreachable(f"models: {exc}") from exc
        return None

    @staticmethod
    async def _find_one(collection, document_id: str) -> dict[str, Any] | None:
        try:
            return await collection.find_one({"_id": document_id})
        except PyMongoError as exc:
            raise StoreUnreachable(f"{collection.name}: {exc}") from exc
