"""Records every service handles the same way: a consumed Kafka message and its dead letter."""

from __future__ import annotations

from typing import Hashable, NamedTuple


class Consumed(NamedTuple):
    """The parts of a consumed Kafka message a service needs (`tp` is the consumer's TopicPartition).

    A tuple: the learning service makes one per record, thousands per fetch.
    """

    tp: Hashable
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def dead_letter(message: Consumed, reason: str, error: str, now_ms: int, *, service: str,
                max_original_bytes: int = 256 * 1024, key: str | None = None) -> dict:
    """A DeadLetter record (schemas/DeadLetter.avsc) for `message`, which `service` could not handle.

    The original bytes are kept, cut to `max_original_bytes` (the full message stays in its topic).
    Its key is `key` when given (e.g. the event id a service read from the message), else the message's.
    """
    original = message.value or b""
    if len(original) > max_original_bytes:
        error += f" (original truncated from {len(original)} bytes; the full message stays in {message.topic})"
        original = original[:max_original_bytes]
    if key is None and message.key:
        key = message.key.decode("utf-8", errors="replace")
    return {
        "key": key,
        "source_topic": message.topic,
        "source_partition": message.partition,
        "source_offset": message.offset,
        "service": service,
        "reason": reason,
        "error": error,
        "original": original,
        "ts": now_ms,
    }
