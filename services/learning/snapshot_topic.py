"""Reading the compacted snapshots topic back at start-up (the Kafka adapter of a restart)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from streamledger.avro import AvroCodec, CodecError
from streamledger import kafka
from streamledger.kafka import topics


async def read_snapshots(
    bootstrap: str, topic: str, codec: AvroCodec, timeout_s: float = 30.0
) -> tuple[dict[str, list[dict[str, Any]]], list[CodecError]]:
    """Every ModelSnapshot in `topic` up to its current end, by model_id, and the undecodable ones.

    All versions still in the log are returned (compaction may not have run yet), so a
    newest snapshot that is refused can fall back to an older one.
    """
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    errors: list[CodecError] = []
    async with kafka.consumer(bootstrap, max_fetch_bytes=topics.MAX_SNAPSHOT_BYTES) as consumer:
        async for records in kafka.read_to_end(consumer, bootstrap, topic, timeout_s):
            values = [r.value for r in records if r.value is not None]  # None: a deleted model
            for snapshot in codec.decode_many(values, reader="ModelSnapshot"):
                if isinstance(snapshot, CodecError):
                    errors.append(snapshot)
                else:
                    found[snapshot["model_id"]].append(snapshot)
    return dict(found), errors


