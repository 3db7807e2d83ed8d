"""FerretDB of the local stack through PyMongo's async API, as the services use it."""

from __future__ import annotations

import pytest
from pymongo import ASCENDING, ReplaceOne
from pymongo.errors import DuplicateKeyError

pytestmark = pytest.mark.integration


async def test_insert_find_upsert_and_index(mongo_db) -> None:
    events = mongo_db["events"]
    await events.insert_many([{"_id": f"e{i}", "tenant": "acme", "ts": i, "v": i * 1.5} for i in range(100)])
    assert await events.count_documents({"tenant": "acme"}) == 100
    found = await events.find({"ts": {"$gte": 95}}).sort("ts", ASCENDING).to_list()
    assert [d["_id"] for d in found] == ["e95", "e96", "e97", "e98", "e99"]

    # Idempotent bulk upserts by key: replaying the same batch changes nothing.
    batch = [ReplaceOne({"_id": f"e{i}"}, {"tenant": "acme", "ts": i, "v": -1.0}, upsert=True) for i in range(90, 110)]
    first = await events.bulk_write(batch, ordered=False)
    second = await events.bulk_write(batch, ordered=False)
    assert first.upserted_count == 10 and second.upserted_count == 0
    assert await events.count_documents({}) == 110
    assert (await events.find_one({"_id": "e105"}))["v"] == -1.0

    name = await events.create_index([("tenant", ASCENDING), ("ts", ASCENDING)])
    indexes = await events.index_information()
    assert indexes[name]["key"] == [("tenant", ASCENDING), ("ts", ASCENDING)]

    with pytest.raises(DuplicateKeyError):
        await events.insert_one({"_id": "e1"})
