"""The dedup window: first, replay and duplicate, expiry."""

from __future__ import annotations

import pytest

from services.cleaning.dedup import DedupWindow, Seen


def test_first_replay_duplicate_and_window_end() -> None:
    window = DedupWindow({}, window_ms=60_000)
    assert window.observe("e1", partition=0, offset=7, at_ms=1_000) is Seen.FIRST
    assert window.observe("e1", partition=0, offset=7, at_ms=1_000) is Seen.REPLAY
    assert window.observe("e1", partition=0, offset=9, at_ms=61_000) is Seen.DUPLICATE
    assert window.observe("e1", partition=1, offset=7, at_ms=2_000) is Seen.DUPLICATE
    assert window.observe("e1", partition=0, offset=12, at_ms=61_001) is Seen.FIRST
    assert window.observe("e1", partition=0, offset=12, at_ms=61_001) is Seen.REPLAY
    assert window.observe("e1", partition=0, offset=7, at_ms=1_000) is Seen.DUPLICATE  # the old copy, now


def test_an_earlier_timestamp_on_a_later_offset_is_a_duplicate() -> None:
    window = DedupWindow({}, window_ms=1_000)
    window.observe("e1", 0, 1, at_ms=50_000)
    assert window.observe("e1", 0, 2, at_ms=10_000) is Seen.DUPLICATE


def test_entries_survive_a_json_round_trip_of_the_store() -> None:
    import json

    store: dict = {}
    DedupWindow(store, 60_000).observe("e1", 2, 5, 100)
    restored = DedupWindow(json.loads(json.dumps(store)), 60_000)  # what a changelog restore gives
    assert restored.observe("e1", 2, 5, 100) is Seen.REPLAY
    assert restored.observe("e1", 2, 6, 200) is Seen.DUPLICATE


def test_expire_forgets_only_ended_windows_of_the_given_partition() -> None:
    store: dict = {}
    window = DedupWindow(store, window_ms=10)
    window.observe("old0", 0, 1, at_ms=0)
    window.observe("old1", 1, 1, at_ms=0)
    window.observe("new0", 0, 2, at_ms=95)
    assert window.expire(now_ms=100, partition=0) == 1
    assert set(store) == {"old1", "new0"}
    assert window.expire(now_ms=100) == 1
    assert set(store) == {"new0"}


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window_ms must be positive"):
        DedupWindow({}, 0)
