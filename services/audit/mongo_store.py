"""`MongoEvidenceStore`: the audit's reads of MongoDB (`events`, `proofs`, `models`), read-only.

    store = MongoEvidenceStore(mongo_client(settings.mongo_url)[settings.mongo_db])
    record = await store.event("acme", "evt-42")

Events and proofs are read by `scoped_id(tenant, event_id)`, the `_id` storage and the ledger
service give them (streamledger/core/scoped.py).

Any failure to read (server away, timeout, refused) is `StoreUnreachable`: the audit then
says it could not read storage rather than guessing.
"""

from __future__ import annotations

from typing import Any

from pymongo import DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from services.audit.ports import StoreUnreachable
from streamledger.core.scoped import scoped_id


class MongoEvidenceStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self.events = db["events"]
        self.proofs = db["proofs"]
        self.models = db["models"]

    async def event(self, tenant: str, event_id: str) -> dict[str, Any] | None:
        return await self._find_one(self.events, scoped_id(tenant, event_id))

    async def proof(self, tenant: str, event_id: str) -> dict[str, Any] | None:
        return await self._find_one(self.proofs, scoped_id(tenant, event_id))

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
