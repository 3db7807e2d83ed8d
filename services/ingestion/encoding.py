"""Untrusted events -> Kafka-ready (event_id, Avro bytes) pairs and rejections. Pure: no I/O.

Every interface (HTTP, gRPC, file backfill) goes through `encode_batch`, so they accept and
reject exactly the same events with the same words, each rejection keeping the index the
caller knows the event by.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.ingestion.validation import (
    InvalidEventError,
    Rejection,
    UnparseableLine,
    validate_event,
)
from streamledger.avro import AvroCodec


@dataclass
class EncodedBatch:
    event_ids: list[str] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    """Single-object Avro RawEvents, one per id."""
    rejected: list[Rejection] = field(default_factory=list)


def encode_batch(events: list[Any], tenant: str, codec: AvroCodec, max_event_bytes: int,
                 first_index: int = 0) -> EncodedBatch:
    """Validate and encode `events` for `tenant`; event `i` is known as `first_index + i`."""
    batch = EncodedBatch()
    indexes: list[int] = []
    records: list[dict[str, Any]] = []
    for index, event in enumerate(events, start=first_index):
        if isinstance(event, UnparseableLine):
            batch.rejected.append(Rejection(index, "", event.error))
            continue
        try:
            records.append(validate_event(event, tenant))
        except InvalidEventError as exc:
            batch.rejected.append(Rejection(index, exc.field, exc.why))
        else:
            indexes.append(index)
    oversized = False
    for index, record, value in zip(indexes, records, codec.encode_many("RawEvent", records)):
        if len(value) > max_event_bytes:  # Kafka would refuse it, and with it its whole batch
            batch.rejected.append(Rejection(index, "", f"event is {len(value)} bytes once encoded, more than "
                                                       f"the limit of {max_event_bytes} bytes"))
            oversized = True
        else:
            batch.event_ids.append(record["event_id"])
            batch.values.append(value)
    if oversized:
        batch.rejected.sort(key=lambda r: r.index)
    return batch
