"""Duplicate events within a time window, over any mutable mapping.

An event is known by its key: `scoped_id(tenant, event_id)` (streamledger/core/scoped.py),
since event ids are chosen per tenant.

In the service the mapping is `app.Changelog` (written to a changelog topic, so the window
survives restarts); in tests it is a dict. Each entry remembers where the event was first
seen, so a message re-read after a crash (same partition and offset) is told apart from a
real duplicate (same key at another offset) and is emitted again rather than lost:

    window = DedupWindow({}, window_ms=60_000)
    window.observe("e1", partition=0, offset=7, at_ms=1_000)   # Seen.FIRST
    window.observe("e1", partition=0, offset=7, at_ms=1_000)   # Seen.REPLAY
    window.observe("e1", partition=0, offset=9, at_ms=2_000)   # Seen.DUPLICATE
    window.observe("e1", partition=0, offset=12, at_ms=90_000) # Seen.FIRST (window passed)
"""

from __future__ import annotations

from collections.abc import MutableMapping
from enum import StrEnum


class Seen(StrEnum):
    FIRST = "first"
    """Not seen within the window: keep the event (and remember it)."""
    REPLAY = "replay"
    """The very message seen before (re-delivered after a restart): keep it again."""
    DUPLICATE = "duplicate"
    """Another message with a key seen within the window: drop it."""


Entry = list[int]
"""[partition, offset, first-seen time in ms]: a list so it survives a JSON changelog."""


class DedupWindow:
    def __init__(self, store: MutableMapping[str, Entry], window_ms: int) -> None:
        if window_ms <= 0:
            raise ValueError(f"window_ms must be positive, got {window_ms}")
        self.store = store
        self.window_ms = window_ms

    def observe(self, key: str, partition: int, offset: int, at_ms: int) -> Seen:
        """Classify the message and remember it if it is the first within the window."""
        entry = self.store.get(key)
        if entry is not None:
            first_partition, first_offset, first_ms = entry
            if (first_partition, first_offset) == (partition, offset):
                return Seen.REPLAY
            if 0 <= at_ms - first_ms <= self.window_ms or at_ms < first_ms:
                # at_ms < first_ms: an earlier timestamp on a later offset is still a repeat.
                return Seen.DUPLICATE
        self.store[key] = [partition, offset, at_ms]
        return Seen.FIRST

    def expired(self, now_ms: int, partition: int | None = None) -> list[str]:
        """Keys whose window ended before `now_ms` (optionally only those of one partition: a
        partition's time is the timestamp of the last message read from it)."""
        horizon = now_ms - self.window_ms
        return [
            key
            for key, (entry_partition, _offset, first_ms) in list(self.store.items())
            if first_ms < horizon and (partition is None or entry_partition == partition)
        ]

    def expire(self, now_ms: int, partition: int | None = None) -> int:
        """Forget entries whose window ended; returns how many were removed."""
        stale = self.expired(now_ms, partition)
        for key in stale:
            del self.store[key]
        return len(stale)
