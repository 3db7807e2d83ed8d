"""Where `audit bill` reads besides the ledger: the usage topic (Kafka) and MongoDB's `anchors`.

    usage = KafkaUsageLog(settings.kafka_bootstrap, settings.audit_usage_topic, timeout_s=30)
    found = await usage.usage_of(hold_id, since_ms)          # {"topic", "records", "skipped"}
    anchors = MongoAnchorIndex(mongo[settings.mongo_db])
    await anchors.anchored_before("events.clean", 0, 1234)   # {"batches", "first", "last"}

A failure to read either is `StoreUnreachable`: the bill then says so rather than guessing.
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from services.audit.ports import StoreUnreachable
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.kafka.usage import UsageUnreadable, usage_of


class KafkaUsageLog:
    def __init__(self, bootstrap: str, topic: str, timeout_s: float, codec: AvroCodec | None = None) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.timeout_s = timeout_s
        self.codec = codec or AvroCodec(SchemaRegistry.from_dir())

    async def usage_of(self, hold_id: str, since_ms: int, until_ms: int | None = None) -> dict[str, Any]:
        try:
            found = await usage_of(self.bootstrap, self.topic, hold_id, since_ms=since_ms, codec=self.codec,
                                   timeout_s=self.timeout_s, until_ms=until_ms)
        except UsageUnreadable as exc:
            raise StoreUnreachable(f"usage: {exc}") from exc
        return {"topic": found.topic, "records": found.records, "skipped": found.skipped}


class MongoAnchorIndex:
    def __init__(self, db: AsyncDatabase) -> None:
        self.anchors = db["anchors"]

    async def anchored_before(self, topic: str, partition: int, offset: int) -> dict[str, Any]:
        query = {"topic": topic, "partition": partition, "first_offset": {"$lt": offset}}
        try:
            batches = await self.anchors.count_documents(query)
            first = await self._one(query, ASCENDING)
            last = await self._one(query, DESCENDING)
        except PyMongoError as exc:
            raise StoreUnreachable(f"anchors: {exc}") from exc
        return {"batches": batches, "first": first, "last": last}

    async def _one(self, query: dict[str, Any], order: int) -> dict[str, Any] | None:
        async for document in self.anchors.find(query).sort("first_offset", order).limit(1):
            return document
        return None
