"""Reading the compacted snapshots topic back at start-up (the Kafka adapter of a restart)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streamledger.avro import AvroCodec, CodecError
from streamledger.kafka.clients import partitions_of


async def read_snapshots(
    bootstrap: str, topic: str, codec: AvroCodec, timeout_s: float = 30.0
) -> tuple[dict[str, list[dict[str, Any]]], list[CodecError]]:
    """Every ModelSnapshot in `topic` up to its current end, by model_id, and the undecodable ones.

    All versions still in the log are returned (compaction may not have run yet), so a
    newest snapshot that is refused can fall back to an older one.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=64 * 1024 * 1024)
    await consumer.start()
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    errors: list[CodecError] = []
    try:
        partitions = await partitions_of(bootstrap, [topic], timeout_s)
        tps = [TopicPartition(t, p) for t, p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if end[tp] > 0}
        async with asyncio.timeout(timeout_s):
            while pending:
                batches = await consumer.getmany(timeout_ms=500)
                for messages in batches.values():
                    values = [m.value for m in messages if m.value is not None]  # None: a deleted model
                    for snapshot in codec.decode_many(values, reader="ModelSnapshot"):
                        if isinstance(snapshot, CodecError):
                            errors.append(snapshot)
                        else:
                            found[snapshot["model_id"]].append(snapshot)
                pending = {tp for tp in pending if await consumer.position(tp) < end[tp]}
    finally:
        await consumer.stop()
    return dict(found), errors


