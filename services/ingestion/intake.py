"""The one path every interface takes: authenticate, validate, write, count.

Batches are accepted in part: valid events are written and acknowledged even when others
in the same request are rejected, and each rejection keeps the event's index so the
caller can fix and resend just those. A request is never half-acknowledged: either every
valid event is acknowledged by Kafka, or the caller gets 503 / UNAVAILABLE and retries
(safe, since event_ids make downstream writes idempotent).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.ingestion.auth import ApiKeys
from services.ingestion.encoding import encode_batch
from services.ingestion.metrics import EVENTS_ACCEPTED, EVENTS_REJECTED
from services.ingestion.sink import RawEventWriter
from services.ingestion.validation import Rejection
from streamledger.avro import AvroCodec


@dataclass
class IngestResult:
    event_ids: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"accepted": len(self.event_ids), "event_ids": self.event_ids,
                "rejected": [r.as_dict() for r in self.rejected]}


class Intake:
    def __init__(self, keys: ApiKeys, codec: AvroCodec, writer: RawEventWriter, max_event_bytes: int) -> None:
        self.keys = keys
        self.codec = codec
        self.writer = writer
        self.max_event_bytes = max_event_bytes

    def authenticate(self, key: str | None) -> str:
        """The tenant of an API key, or `AuthenticationError`."""
        return self.keys.tenant(key)

    async def accept(self, events: list[Any], tenant: str, interface: str, first_index: int = 0) -> IngestResult:
        """Validate `events` for `tenant`, write the valid ones, and return what happened.

        Raises `KafkaUnavailableError` when Kafka does not acknowledge in time.
        """
        batch = encode_batch(events, tenant, self.codec, self.max_event_bytes, first_index)
        EVENTS_REJECTED.labels(interface).inc(len(batch.rejected))
        event_ids = await self.writer.write(batch.event_ids, batch.values)
        EVENTS_ACCEPTED.labels(interface).inc(len(event_ids))
        return IngestResult(event_ids, batch.rejected)
