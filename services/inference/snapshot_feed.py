"""Following the compacted snapshots topic: every ModelSnapshot, from the beginning, then live.

    await follow_snapshots(bootstrap, topic, codec, on_snapshot, caught_up, stop)

`caught_up` is set once the records that were in the topic at start have all been handed
to `on_snapshot`, so the server says ready only when it serves the latest models.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from streamledger.avro import AvroCodec, CodecError
from streamledger.logging import get_logger
from streamledger.kafka.clients import partitions_of

log = get_logger("inference")
MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024  # as the learning service writes them


async def follow_snapshots(
    bootstrap: str,
    topic: str,
    codec: AvroCodec,
    on_snapshot: Callable[[dict[str, Any]], Awaitable[None]],
    on_undecodable: Callable[[CodecError], None],
    caught_up: asyncio.Event,
    stop: asyncio.Event,
) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                fetch_max_bytes=MAX_SNAPSHOT_BYTES, max_partition_fetch_bytes=MAX_SNAPSHOT_BYTES)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t, p in await partitions_of(bootstrap, [topic])]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if end[tp] > 0}
        if not pending:
            caught_up.set()
        while not stop.is_set():
            try:
                batches = await consumer.getmany(timeout_ms=300)
            except KafkaError as exc:  # the broker is away: keep serving the models we have
                log.warning("snapshot_fetch_failed", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)
                continue
            for messages in batches.values():
                for message in messages:
                    if message.value is None:  # a tombstone: the model was deleted upstream
                        continue
                    try:
                        snapshot = codec.decode(message.value, reader="ModelSnapshot")
                    except CodecError as exc:
                        on_undecodable(exc)
                        continue
                    await on_snapshot(snapshot)
            if pending:
                pending = {tp for tp in pending if await consumer.position(tp) < end[tp]}
                if not pending:
                    caught_up.set()
    finally:
        await consumer.stop()
