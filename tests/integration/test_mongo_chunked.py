"""Chunked bulk writes: the FerretDB deadlock workaround keeps large replays working."""

from __future__ import annotations

import asyncio

import pytest
from pymongo import InsertOne, ReplaceOne
from pymongo.errors import BulkWriteError

from services.common.mongo import bulk_write_chunked

pytestmark = pytest.mark.integration


async def test_replaying_500_upserts_over_existing_documents_finishes(mongo_db) -> None:
    col = mongo_db["replay"]
    ops = [ReplaceOne({"_id": f"e{i}"}, {"v": i}, upsert=True) for i in range(500)]
    async with asyncio.timeout(60):  # unchunked, the second pass hangs FerretDB 1.24 forever
        await bulk_write_chunked(col, ops)
        await bulk_write_chunked(col, ops)
    assert await col.count_documents({}) == 500


async def test_errors_keep_their_positions_across_chunks(mongo_db) -> None:
    col = mongo_db["dups"]
    await col.insert_many([{"_id": "d70"}, {"_id": "d130"}])
    ops = [InsertOne({"_id": f"d{i}"}) for i in range(200)]
    with pytest.raises(BulkWriteError) as caught:
        await bulk_write_chunked(col, ops, chunk=64)
    assert sorted(e["index"] for e in caught.value.details["writeErrors"]) == [70, 130]
    assert await col.count_documents({}) == 200
