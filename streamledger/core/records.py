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
    timestamp_ms: int | None = None
    """The record's Kafka timestamp in epoch milliseconds, for a service that reads it."""


def dead_letter(message: Consumed, reason: str, error: str, now_ms: int, *, service: str,
                max_original_bytes: int = 256 * 1024, key: str | None = None) -> dict:
    """A DeadLetter record (schemas/DeadLetter.avsc) for `message`, which `service` could not handle.

    `key` is the dead letter's key (default: the message's key as text, or None). The original
    bytes are kept, cut to `max_original_bytes` (the full message stays in its topic).
    """
    original = message.value or b""
    if len(original) > max_original_bytes:
        error += (f" (original truncated from {len(original)} to {max_original_bytes} bytes; the full message "
                  f"is at {message.topic} partition {message.partition} offset {message.offset})")
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
