"""Following the compacted snapshots topic: every ModelSnapshot, from the beginning, then live.

    await follow_snapshots(bootstrap, topic, codec, on_snapshot, caught_up, stop)

`caught_up` is set once the records that were in the topic at start have all been handed
to `on_snapshot`, so the server says ready only when it serves the latest models.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.errors import KafkaError

from streamledger.avro import AvroCodec, CodecError
from streamledger.logging import get_logger
from streamledger import kafka
from streamledger.kafka import topics

log = get_logger("inference")


async def follow_snapshots(
    bootstrap: str,
    topic: str,
    codec: AvroCodec,
    on_snapshot: Callable[[dict[str, Any]], Awaitable[None]],
    on_undecodable: Callable[[CodecError], None],
    caught_up: asyncio.Event,
    stop: asyncio.Event,
) -> None:
    async def hand_over(records) -> None:
        for record in records:
            if record.value is None:  # a tombstone: the model was deleted upstream
                continue
            try:
                snapshot = codec.decode(record.value, reader="ModelSnapshot")
            except CodecError as exc:
                on_undecodable(exc)
                continue
            await on_snapshot(snapshot)

    async with kafka.consumer(bootstrap, max_fetch_bytes=topics.MAX_SNAPSHOT_BYTES) as consumer:
        async for records in kafka.read_to_end(consumer, bootstrap, topic, timeout_s=None):
            await hand_over(records)
        caught_up.set()
        while not stop.is_set():
            try:
                batches = await consumer.getmany(timeout_ms=300)
            except KafkaError as exc:  # the broker is away: keep serving the models we have
                log.warning("snapshot_fetch_failed", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)
                continue
            for records in batches.values():
                await hand_over(records)
