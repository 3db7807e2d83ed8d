"""MongoDB access shared by the services: one client factory and chunked bulk writes.

FerretDB 1.24 on SQLite deadlocks on a single `update` command of 100 or more statements
that hit existing documents (each statement holds one of the backend's 100 pooled
connections until the command ends). Bulk writes are therefore sent in chunks well under
that; against a real MongoDB the chunking only costs a few extra round trips.
"""

from __future__ import annotations

from collections.abc import Sequence

from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

MAX_STATEMENTS_PER_COMMAND = 64


def mongo_client(url: str, **overrides) -> AsyncMongoClient:
    """An async client that fails fast instead of hanging when the server is away."""
    options = dict(serverSelectionTimeoutMS=5000, connectTimeoutMS=5000, socketTimeoutMS=60_000,
                   maxPoolSize=16)
    options.update(overrides)
    return AsyncMongoClient(url, **options)


async def bulk_write_chunked(collection: AsyncCollection, operations: Sequence,
                             chunk: int = MAX_STATEMENTS_PER_COMMAND) -> None:
    """`collection.bulk_write(operations, ordered=False)` in chunks.

    Every chunk is attempted; if some fail, one BulkWriteError is raised whose
    `details["writeErrors"]` indices refer to positions in `operations`, as a single
    bulk_write would report them.
    """
    errors: list[dict] = []
    concern_errors: list[dict] = []
    for start in range(0, len(operations), chunk):
        try:
            await collection.bulk_write(operations[start:start + chunk], ordered=False)
        except BulkWriteError as exc:
            for error in exc.details.get("writeErrors", []):
                errors.append({**error, "index": error["index"] + start})
            concern_errors.extend(exc.details.get("writeConcernErrors", []))
    if errors or concern_errors:
        raise BulkWriteError({"writeErrors": errors, "writeConcernErrors": concern_errors,
                              "nInserted": 0, "nUpserted": 0, "nMatched": 0, "nModified": 0,
                              "nRemoved": 0, "upserted": []})
