"""Where `audit trace` reads besides the evidence store and the ledger: the raw topic (the record
ingested), MongoDB's `models` (snapshot offsets), the usage topic (predictions served) and the
model declarations file.

    lineage = KafkaMongoLineage(settings.kafka_bootstrap, raw_topic, usage_topic, mongo[db], models_file, 30.0)
    await lineage.raw_record(2, 1041)            # {"topic", "partition", "offset", "state", "record", ...}
    await lineage.snapshots(["phishing-logreg"])  # the models documents, no model bytes
    await lineage.usage_of_versions([("phishing-logreg", 7)], since_ms)

Every Kafka client is built by `streamledger.kafka` (so it carries the cluster's credentials);
a failure to read any of them is `StoreUnreachable`: the trace then says so rather than guessing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError, TopicAuthorizationFailedError
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from services.audit.ports import StoreUnreachable
from streamledger import kafka
from streamledger.avro import AvroCodec, CodecError, SchemaRegistry
from streamledger.core.models import DeclarationError, ModelDeclaration
from streamledger.declarations import load_declarations
from streamledger.kafka.usage import UsageUnreadable, usage_where

SNAPSHOT_FIELDS = {"model_id": 1, "version": 1, "sha256": 1, "offsets": 1, "created": 1, "events_seen": 1}


class KafkaMongoLineage:
    def __init__(self, bootstrap: str, raw_topic: str, usage_topic: str, db: AsyncDatabase, models_file: Path,
                 timeout_s: float, codec: AvroCodec | None = None) -> None:
        self.bootstrap = bootstrap
        self.raw_topic = raw_topic
        self.usage_topic = usage_topic
        self.models = db["models"]
        self.models_file = models_file
        self.timeout_s = timeout_s
        self.codec = codec or AvroCodec(SchemaRegistry.from_dir())

    def declared(self) -> Sequence[ModelDeclaration]:
        try:
            return load_declarations(self.models_file)
        except (DeclarationError, OSError) as exc:
            raise StoreUnreachable(f"model declarations: {exc}") from exc

    async def raw_record(self, partition: int, offset: int) -> dict[str, Any]:
        found: dict[str, Any] = {"topic": self.raw_topic, "partition": partition, "offset": offset, "state": "not_yet",
                                 "record": None, "error": None, "log_start": None}
        tp = TopicPartition(self.raw_topic, partition)
        reader = kafka.consumer(self.bootstrap, request_timeout_ms=int(self.timeout_s * 1000))
        try:
            async with asyncio.timeout(self.timeout_s):
                await reader.start()
                try:
                    reader.assign([tp])
                    start, end = (await reader.beginning_offsets([tp]))[tp], (await reader.end_offsets([tp]))[tp]
                    found["log_start"] = start
                    if offset < start:
                        found["state"] = "gone"
                    elif offset < end:
                        reader.seek(tp, offset)
                        message = await reader.getone(tp)
                        found["state"] = "present"
                        try:
                            found["record"] = self.codec.decode(message.value or b"", reader="RawEvent")
                        except CodecError as exc:
                            found["error"] = str(exc)
                finally:
                    await reader.stop()
        except TopicAuthorizationFailedError as exc:
            # The raw topic is the cleaning service's alone on a secured cluster (streamledger/kafka/topics.py):
            # the audit's own principal may not read it, an operator's may.
            found.update(state="denied", error=f"this Kafka principal may not read {self.raw_topic!r}: {exc}")
        except TimeoutError:
            raise StoreUnreachable(f"raw topic {self.raw_topic!r}[{partition}] was not read within "
                                   f"{self.timeout_s} s") from None
        except (KafkaError, OSError) as exc:
            raise StoreUnreachable(f"raw topic {self.raw_topic!r}[{partition}] could not be read: {exc}") from exc
        return found

    async def snapshots(self, model_ids: Sequence[str]) -> list[dict[str, Any]]:
        try:
            return [d async for d in self.models.find({"model_id": {"$in": list(model_ids)}}, SNAPSHOT_FIELDS)]
        except PyMongoError as exc:
            raise StoreUnreachable(f"models: {exc}") from exc

    async def usage_of_versions(self, versions: Sequence[tuple[str, int]], since_ms: int) -> list[dict[str, Any]]:
        wanted = set(versions)
        try:
            found = await usage_where(self.bootstrap, self.usage_topic,
                                      lambda r: (r.get("model_id"), r.get("model_version")) in wanted,
                                      since_ms=since_ms, codec=self.codec, timeout_s=self.timeout_s)
        except UsageUnreadable as exc:
            raise StoreUnreachable(f"usage: {exc}") from exc
        return found.records
