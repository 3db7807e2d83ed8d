"""The MongoDB side of the sink: bulk unordered upserts per collection, and indexes.

    sink = MongoSink(client[settings.mongo_db])
    await sink.ensure_indexes()
    rejected = await sink.write(plan)   # raises MongoUnavailable while the server is down

A write either is acknowledged, fails as a whole with `MongoUnavailable` (retry it: every
upsert is idempotent), or comes back with the documents the server refused for good.
"""

from __future__ import annotations

from dataclasses import dataclass

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, ConnectionFailure, PyMongoError

from services.storage.documents import INDEXES, BatchPlan, Consumed

_DUPLICATE_KEY = 11000
# Server states during a restart or failover, which a retry can cure.
_RETRYABLE_CODES = frozenset({91, 189, 10107, 11600, 11602, 13435, 13436, 6, 7, 89, 9001, 262})


class MongoUnavailable(RuntimeError):
    """MongoDB did not acknowledge a write for a reason a retry can cure."""


@dataclass(frozen=True)
class Rejection:
    collection: str
    document_id: str
    source: Consumed
    error: str


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, MongoUnavailable)


class MongoSink:
    def __init__(self, db: AsyncDatabase) -> None:
        self.db = db

    async def ensure_indexes(self) -> None:
        try:
            for collection, indexes in INDEXES.items():
                for keys in indexes:
                    await self.db[collection].create_index(keys)
        except ConnectionFailure as exc:
            raise MongoUnavailable(f"creating indexes: {exc}") from exc

    async def write(self, plan: BatchPlan) -> list[Rejection]:
        """Upsert every document of the plan; the ones MongoDB refuses for good are returned.

        The effect is one ReplaceOne(upsert=True) per document, done as: insert all; for the
        _ids that already exist, read them back and, only where the stored document differs,
        delete and insert it again. Why not ReplaceOne: FerretDB's SQLite backend upserts
        about 50 times slower than it inserts, and its update path was seen to lock a
        database for good when a reader ran at the same time. After a replay the stored
        documents are equal to the new ones, so a replay costs one read and no write.
        """
        rejected: list[Rejection] = []
        for collection, writes in plan.writes.items():
            ids = list(writes)
            existing = await self._insert(collection, ids, writes, rejected)
            if not existing:
                continue
            stale = await self._differing(collection, existing, writes)
            if stale:
                await self._delete(collection, stale)
                still = await self._insert(collection, stale, writes, rejected)
                if still:  # another writer inserted in between: retry the batch
                    raise MongoUnavailable(f"{collection}: {len(still)} documents were re-inserted concurrently")
        return rejected

    async def _differing(self, collection: str, ids: list[str], writes: dict) -> list[str]:
        try:
            stored = {d["_id"]: d async for d in self.db[collection].find({"_id": {"$in": ids}})}
        except ConnectionFailure as exc:
            raise MongoUnavailable(f"{collection}: {exc}") from exc
        return [i for i in ids if stored.get(i) != writes[i].document]

    async def _delete(self, collection: str, ids: list[str]) -> None:
        try:
            await self.db[collection].delete_many({"_id": {"$in": ids}})
        except ConnectionFailure as exc:
            raise MongoUnavailable(f"{collection}: {exc}") from exc

    async def _insert(self, collection: str, ids: list[str], writes: dict, rejected: list[Rejection]) -> list[str]:
        """Insert the documents of `ids`, unordered; returns the ids that met a duplicate key (11000).

        insert_many rather than bulk_write([InsertOne, ...]): the same one command, at half the
        client CPU per document."""
        try:
            await self.db[collection].insert_many([writes[i].document for i in ids], ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if exc.details.get("writeConcernErrors") or any(e.get("code") in _RETRYABLE_CODES for e in errors):
                raise MongoUnavailable(f"{collection}: {_summary(exc)}") from exc
            duplicates = []
            for error in errors:
                document_id = ids[error["index"]]
                if error.get("code") == _DUPLICATE_KEY:
                    duplicates.append(document_id)
                    continue
                rejected.append(
                    Rejection(collection, document_id, writes[document_id].source,
                              f"MongoDB refused {collection} document {document_id!r}: "
                              f"code {error.get('code')}: {error.get('errmsg')}")
                )
            return duplicates
        except ConnectionFailure as exc:
            raise MongoUnavailable(f"{collection}: {exc}") from exc
        except PyMongoError as exc:
            code = getattr(exc, "code", None)
            if code in _RETRYABLE_CODES or exc.has_error_label("RetryableWriteError"):
                raise MongoUnavailable(f"{collection}: {exc}") from exc
            raise
        return []


def _summary(exc: BulkWriteError) -> str:
    errors = exc.details.get("writeErrors", [])
    first = errors[0].get("errmsg") if errors else exc.details.get("writeConcernErrors")
    return f"{len(errors)} write errors, first: {first}"
