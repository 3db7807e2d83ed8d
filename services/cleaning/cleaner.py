"""The cleaning step as a pure handler: one raw Kafka message in, one `Outcome` out.

No I/O: the codec, the rule book and the dedup window are handed in, so the whole data
path is unit-tested without Kafka. `app.py` feeds it messages and sends what it returns.

    cleaner = Cleaner(AvroCodec(SchemaRegistry.from_dir()), RuleBook(), DedupWindow({}, 3_600_000))
    outcome = cleaner.handle(Consumed(tp, "events.raw", 0, 42, b"e1", value, timestamp_ms=1_700_000_000_000))
    outcome.kind   # "clean" | "deadletter" | "duplicate"
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from services.cleaning.dedup import DedupWindow, Seen
from services.cleaning.rules import Rejected, RuleBook, clean_event
from streamledger.avro import AvroCodec, CodecError
from streamledger.core.canonical import CanonicalEncodingError, content_hash
from streamledger.core.records import Consumed, dead_letter
from streamledger.core.scoped import scoped_id

SERVICE = "cleaning"


@dataclass(frozen=True)
class Outcome:
    kind: Literal["clean", "deadletter", "duplicate"]
    key: bytes
    value: bytes | None  # None for a dropped duplicate
    reason: str = ""  # dead-letter reason code


class Cleaner:
    def __init__(
        self,
        codec: AvroCodec,
        rules: RuleBook,
        dedup: DedupWindow,
        max_message_bytes: int = 256 * 1024,
        max_original_bytes: int = 256 * 1024,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.codec = codec
        self.rules = rules
        self.dedup = dedup
        self.max_message_bytes = max_message_bytes
        self.max_original_bytes = max_original_bytes
        self.clock_ms = clock_ms

    def handle(self, message: Consumed) -> Outcome:
        value = message.value
        if value is None:
            return self.dead_letter(message, None, "empty_message", "message has no value (a tombstone)")
        if len(value) > self.max_message_bytes:
            return self.dead_letter(
                message, None, "too_large",
                f"message is {len(value)} bytes, over the limit of {self.max_message_bytes}",
            )
        try:
            raw = self.codec.decode(value, reader="RawEvent")
        except CodecError as exc:
            return self.dead_letter(message, None, exc.reason, str(exc))
        event_id = raw["event_id"]
        try:
            record = clean_event(raw, self.rules.for_tenant(raw["tenant"]))
            record["content_hash"] = content_hash(record)
            record["raw_partition"] = message.partition
            record["raw_offset"] = message.offset
            clean = self.codec.encode("CleanEvent", record)
        except Rejected as exc:
            return self.dead_letter(message, event_id, exc.rule, f"event {event_id!r}: {exc}")
        except CanonicalEncodingError as exc:
            return self.dead_letter(message, event_id, "no_canonical_form", f"event {event_id!r}: {exc}")
        except CodecError as exc:
            return self.dead_letter(message, event_id, exc.reason, f"event {event_id!r}: {exc}")
        # Only events that made it this far count for dedup: a rejected first copy does not
        # shadow a valid second one. Event ids are the tenant's own: another tenant's event
        # with the same id is not a duplicate.
        at_ms = message.timestamp_ms if message.timestamp_ms is not None else self.clock_ms()
        seen = self.dedup.observe(scoped_id(raw["tenant"], event_id), message.partition, message.offset, at_ms)
        if seen is Seen.DUPLICATE:
            return Outcome("duplicate", event_id.encode(), None)
        return Outcome("clean", event_id.encode(), clean)

    def dead_letter(self, message: Consumed, event_id: str | None, reason: str, error: str) -> Outcome:
        """The message as a dead letter keyed by its event_id, else its key, else its position."""
        key = event_id or _text_key(message)
        letter = dead_letter(message, reason, error, self.clock_ms(), service=SERVICE,
                             max_original_bytes=self.max_original_bytes, key=key)
        return Outcome("deadletter", key.encode(), self.codec.encode("DeadLetter", letter), reason)


def _text_key(message: Consumed) -> str:
    if message.key:
        return message.key.decode("utf-8", errors="replace")
    return f"{message.topic}:{message.partition}:{message.offset}"
