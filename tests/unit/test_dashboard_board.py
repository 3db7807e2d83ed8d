"""Unit tests of the dashboard's pure parts: rate windows, lag, staleness and the board's frame."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from services.dashboard.board import LEDGER_NOT_CONNECTED, MAX_MODELS, Board, FeedTopics, UnknownFeedTopicError
from services.dashboard.health import GroupProgress, topic_status
from services.dashboard.lag import anchor_lag, group_lag
from services.dashboard.rates import OffsetRate

FEEDS = FeedTopics(deadletter="dl", snapshots="snap", model_metrics="mm", usage="use", anchors="anc", clean="clean")


def make_board() -> Board:
    return Board({"raw": "raw", "clean": "clean"}, FEEDS, {"g-clean": "cleaning"}, stale_after_s=10, window_s=60)


# -- rates ---------------------------------------------------------------------------------

def test_rate_is_offset_growth_over_time() -> None:
    rate = OffsetRate(window_s=60)
    for second, end in enumerate([100, 110, 130, 160]):
        rate.observe(1000.0 + second, end)
    assert rate.rate(span_s=2) == pytest.approx((160 - 110) / 2)
    assert rate.series() == [(1001.0, 10.0), (1002.0, 20.0), (1003.0, 30.0)]
    assert rate.total == 160


def test_rate_needs_two_samples_and_never_goes_negative() -> None:
    rate = OffsetRate()
    assert rate.rate() == 0.0
    rate.observe(1.0, 500)
    assert rate.rate() == 0.0
    rate.observe(2.0, 10)  # topic deleted and re-created
    assert rate.rate() == 0.0
    assert rate.series() == [(2.0, 0.0)]


def test_rate_window_is_bounded_and_ignores_clock_steps_back() -> None:
    rate = OffsetRate(window_s=10)
    for second in range(100):
        rate.observe(float(second), second * 5)
    assert len(rate.samples) == 11
    rate.observe(50.0, 10_000)
    assert rate.total == 99 * 5


def test_quiet_for_counts_from_the_last_growth() -> None:
    rate = OffsetRate()
    rate.observe(0.0, 5)
    assert rate.quiet_for(3.0) is None  # never grew while watched
    rate.observe(1.0, 7)
    rate.observe(2.0, 7)
    assert rate.quiet_for(12.0) == pytest.approx(11.0)


# -- lag -----------------------------------------------------------------------------------

def test_group_lag_per_topic_over_committed_partitions() -> None:
    committed = {("a", 0): 5, ("a", 1): 10, ("b", 0): 3, ("gone", 0): 4}
    end = {("a", 0): 8, ("a", 1): 10, ("b", 0): 2, ("c", 0): 100}
    # ("b", 0) committed past the end counts 0; ("gone", 0) has no known end; c never committed
    assert group_lag(committed, end) == {"a": 3, "b": 0}


def test_anchor_lag_is_none_until_something_was_anchored() -> None:
    end = {("clean", 0): 10, ("clean", 1): 4, ("raw", 0): 99}
    assert anchor_lag({}, end, "clean") is None
    # partition 0 anchored through offset 5 (6 records), partition 1 never: all 4 pending
    assert anchor_lag({("clean", 0): 5}, end, "clean") == 4 + 4


# -- staleness -----------------------------------------------------------------------------

@pytest.mark.parametrize(("quiet_for", "total", "expected"), [
    (None, 0, "empty"), (None, 12, "quiet"), (2.0, 12, "flowing"), (10.0, 12, "quiet"),
])
def test_topic_status(quiet_for: float | None, total: int, expected: str) -> None:
    assert topic_status(quiet_for, total, stale_after_s=10) == expected


def test_group_with_lag_and_no_commits_turns_stale_then_down() -> None:
    progress = GroupProgress()
    progress.observe(0.0, committed_total=100, lag=0)
    assert progress.status(0.0, members=1, stale_after_s=10) == "ok"
    progress.observe(5.0, committed_total=100, lag=50)
    assert progress.status(5.0, members=1, stale_after_s=10) == "ok"  # not yet stale_after
    progress.observe(11.0, committed_total=100, lag=80)
    assert progress.status(11.0, members=1, stale_after_s=10) == "stale"
    assert progress.status(11.0, members=0, stale_after_s=10) == "down"
    assert progress.stalled_for(11.0) == pytest.approx(11.0)


def test_group_that_commits_is_ok_even_with_lag_and_no_members() -> None:
    progress = GroupProgress()
    for second in range(30):  # a hand-assigning consumer (no members) catching up
        progress.observe(float(second), committed_total=second * 10, lag=1000 - second * 10)
    assert progress.status(29.0, members=0, stale_after_s=10) == "ok"


def test_group_lag_history_is_bounded() -> None:
    progress = GroupProgress(window_s=5)
    for second in range(50):
        progress.observe(float(second), committed_total=0, lag=second)
    assert len(progress.lag_history) == 6
    assert progress.lag == 49


# -- board ---------------------------------------------------------------------------------

def test_frame_throughput_and_group_lag() -> None:
    board = make_board()
    board.observe_offsets(0.0, {("raw", 0): 10, ("raw", 1): 10, ("clean", 0): 0})
    board.observe_offsets(1.0, {("raw", 0): 20, ("raw", 1): 30, ("clean", 0): 0})
    board.observe_group(1.0, "g-clean", {("raw", 0): 20, ("raw", 1): 25}, members=1, state="Stable")
    frame = board.frame(1.5)
    raw, clean = frame["throughput"]
    assert (raw["rate"], raw["total"], raw["status"]) == (30.0, 50, "flowing")
    assert (clean["total"], clean["status"]) == (0, "empty")
    (group,) = frame["groups"]
    assert (group["service"], group["lag"], group["by_topic"], group["status"]) == ("cleaning", 5, {"raw": 5}, "ok")
    assert frame["kafka"]["connected"] is True


def test_frame_before_any_read_and_when_kafka_is_down() -> None:
    board = make_board()
    frame = board.frame(0.0)
    assert frame["throughput"][0]["status"] == "unknown"
    assert frame["kafka"]["connected"] is False
    board.observe_offsets(1.0, {("raw", 0): 1})
    board.kafka_unreachable("KafkaConnectionError: refused")
    assert board.frame(2.0)["kafka"] == {"connected": False, "error": "KafkaConnectionError: refused",
                                          "last_read_ago": 1.0}


def ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def test_model_metrics_drift_and_snapshot() -> None:
    board = make_board()
    for position, accuracy in [(100, 0.9), (200, 0.92), (300, 0.6)]:
        drift = {"detector": "ADWIN", "position": 300, "metric_before": 0.92, "metric_after": 0.6} if position == 300 else None
        board.on_record("mm", {"model_id": "m1", "version": position // 100, "position": position,
                               "metrics": {"Accuracy": accuracy, "LogLoss": 0.3}, "drift": drift, "ts": ts(position)})
    board.on_record("snap", {"model_id": "m1", "version": 3, "sha256": "ab" * 32, "events_seen": 300,
                             "created": ts(1000), "format": "pickle", "offsets": [], "metrics": {}, "model": b""})
    (model,) = board.frame(1.0)["models"]
    assert model["metric"] == "Accuracy"
    assert model["series"] == [[100, 0.9], [200, 0.92], [300, 0.6]]
    assert model["drifts"] == [{"position": 300, "detector": "ADWIN", "before": 0.92, "after": 0.6}]
    assert (model["version"], model["sha256"], model["events_seen"]) == (3, "ab" * 32, 300)
    assert model["ledger"] == LEDGER_NOT_CONNECTED


def test_models_are_bounded() -> None:
    board = make_board()
    for i in range(MAX_MODELS + 5):
        board.on_record("mm", {"model_id": f"m{i}", "version": 1, "position": 1, "metrics": {"MAE": 1.0},
                               "drift": None, "ts": ts(0)})
    assert len(board.frame(0.0)["models"]) == MAX_MODELS


def test_dead_letters_newest_first_bounded_and_truncated() -> None:
    board = make_board()
    for i in range(30):
        board.on_record("dl", {"key": f"e{i}", "source_topic": "raw", "source_partition": 0, "source_offset": i,
                               "service": "cleaning", "reason": "missing_field", "error": "x" * 1000,
                               "original": b"...", "ts": ts(i)})
    letters = board.frame(0.0)["dead_letters"]
    assert len(letters) == 20
    assert letters[0]["key"] == "e29"
    assert len(letters[0]["error"]) == 300
    assert "original" not in letters[0]


def test_anchors_and_usage_feeds() -> None:
    board = make_board()
    board.observe_offsets(0.0, {("clean", 0): 50, ("anc", 0): 1})
    frame = board.frame(0.0)
    assert frame["anchors"]["lag"] is None and frame["anchors"]["latest"] == []
    assert frame["usage"] == {"records": [], "ledger": LEDGER_NOT_CONNECTED}
    board.on_record("anc", {"batch_id": "b1", "merkle_root": "f" * 64, "count": 40, "topic": "clean",
                            "partition": 0, "first_offset": 0, "last_offset": 39, "tx_id": None, "block": None,
                            "ts": ts(0)})
    board.on_record("use", {"hold_id": "h1", "request_id": "r1", "client": "acme", "model_id": "m1",
                            "model_version": 1, "units": 3, "price": 7, "ts": ts(0)})
    frame = board.frame(0.0)
    assert frame["anchors"]["lag"] == 10
    assert frame["anchors"]["latest"][0]["batch_id"] == "b1"
    assert frame["usage"]["records"][0]["settlement"] == LEDGER_NOT_CONNECTED


def test_a_record_from_an_unknown_topic_is_refused_by_name() -> None:
    with pytest.raises(UnknownFeedTopicError, match="'elsewhere'"):
        make_board().on_record("elsewhere", {})
