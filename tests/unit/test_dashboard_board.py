"""Unit tests of the dashboard's pure parts: rate windows, lag, staleness and the board's frame."""

from __future__ import annotations

from collections import deque
from datetime import datetime, timezone

import pytest

from services.dashboard.board import (
    MAX_MODELS,
    Board,
    FeedTopics,
    UnknownFeedTopicError,
)
from services.dashboard.health import GroupProgress, topic_status
from services.dashboard.lag import anchor_lag, group_lag
from services.dashboard.ledger_view import FEED_LENGTH as LEDGER_FEED_LENGTH
from services.dashboard.ledger_view import (
    MAX_HOLDS,
    MAX_REGISTRATIONS,
    LedgerView,
    Lookup,
)
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
    assert model["ledger"] == {"status": "off"}  # no ledger view given: the watcher is off


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
    assert frame["usage"] == {"records": [], "feed": [], "ledger": "off"}
    board.on_record("anc", {"batch_id": "b1", "merkle_root": "f" * 64, "count": 40, "topic": "clean",
                            "partition": 0, "first_offset": 0, "last_offset": 39, "tx_id": None, "block": None,
                            "ts": ts(0)})
    board.on_record("use", {"hold_id": "h1", "request_id": "r1", "client": "acme", "model_id": "m1",
                            "model_version": 1, "units": 3, "price": 7, "ts": ts(0)})
    frame = board.frame(0.0)
    assert frame["anchors"]["lag"] == 10
    assert frame["anchors"]["latest"][0]["batch_id"] == "b1"
    assert frame["usage"]["records"][0]["settlement"] == {"status": "off"}
    assert frame["anchors"]["latest"][0]["ledger"] == {"status": "off"}


def test_a_record_from_an_unknown_topic_is_refused_by_name() -> None:
    with pytest.raises(UnknownFeedTopicError, match="'elsewhere'"):
        make_board().on_record("elsewhere", {})


# -- ledger --------------------------------------------------------------------------------

ADMIN = "Org1MSP::CN=Admin@org1.streamledger.local"
CLIENT, PROVIDER = "Org1MSP::CN=User1@org1", "Org1MSP::CN=User2@org1"
SHA = "ab" * 32


def ledger_board(recheck_s: float = 10.0) -> Board:
    board = Board({"raw": "raw"}, FEEDS, {}, ledger=LedgerView(enabled=True, recheck_s=recheck_s))
    board.ledger.connected(0.0, ADMIN, height=7)
    return board


def snapshot(model_id: str, version: int, sha256: str = SHA) -> dict:
    return {"model_id": model_id, "version": version, "sha256": sha256, "events_seen": 10, "created": ts(0),
            "format": "pickle", "offsets": [], "metrics": {}, "model": b""}


def usage(hold_id: str) -> dict:
    return {"hold_id": hold_id, "request_id": f"r-{hold_id}", "client": CLIENT, "model_id": "m1",
            "model_version": 1, "units": 3, "price": 7, "ts": ts(0)}


def frozen(hold_id: str, amount: int = 100) -> dict:
    return {"hold_id": hold_id, "client": CLIENT, "provider": PROVIDER, "amount": amount, "authorized": 0,
            "charged": 0, "refunded": 0, "status": "OPEN", "expires_at": 2_000_000_000,
            "created_at": "2026-01-02T03:04:05.123456789Z", "closed_at": "", "freeze_tx_id": "tx-f", "close_tx_id": ""}


def settled(hold_id: str, units: int = 3, price: int = 20, amount: int = 100) -> dict:
    """The contract's HoldSettled payload (chaincode/ledger/settlement.go)."""
    return {"hold_id": hold_id, "client": CLIENT, "provider": PROVIDER, "units": units, "price_per_unit": price,
            "authorized": units * price, "charged": units * price, "refunded": amount - units * price,
            "receipt": None, "tx_id": "tx-s"}


def model_ledger(board: Board, now: float = 1.0) -> dict:
    (model,) = board.frame(now)["models"]
    return model["ledger"]


def test_watcher_off_says_so_everywhere_and_asks_nothing() -> None:
    board = Board({"raw": "raw"}, FEEDS, {}, ledger=LedgerView(enabled=False))
    board.on_record("snap", snapshot("m1", 1))
    board.on_record("use", usage("h1"))
    frame = board.frame(0.0)
    assert frame["ledger"]["status"] == "off" and frame["ledger"]["enabled"] is False
    assert frame["models"][0]["ledger"] == {"status": "off"}
    assert frame["usage"]["records"][0]["settlement"] == {"status": "off"}
    assert board.ledger_lookups(0.0) == []
    board.ledger.unreachable("GatewayError: refused")  # an off watcher never turns "unreachable"
    assert board.frame(0.0)["ledger"]["status"] == "off"


def test_model_registration_is_looked_up_for_the_current_snapshot_and_compared() -> None:
    board = ledger_board()
    board.on_record("mm", {"model_id": "m1", "version": 5, "position": 1, "metrics": {"MAE": 1.0}, "drift": None,
                           "ts": ts(0)})
    assert model_ledger(board) == {"status": "no_snapshot"}
    assert board.ledger_lookups(1.0) == []  # nothing to compare yet
    board.on_record("snap", snapshot("m1", 3))
    # metrics already count version 5, but the hash shown (and checked) is snapshot 3's
    assert board.ledger_lookups(1.0) == [Lookup("model", ("m1", 3))]
    assert model_ledger(board) == {"status": "checking", "version": 3}
    board.ledger.on_model(1.0, "m1", 3, {"model_id": "m1", "version": 3, "sha256": SHA, "tx_id": "tx-r"})
    assert model_ledger(board) == {"status": "registered", "version": 3, "registered_sha256": SHA, "tx_id": "tx-r"}
    assert board.ledger_lookups(100.0) == []  # registered is final: never asked again
    board.on_record("snap", snapshot("m1", 4, sha256="cd" * 32))
    board.ledger.on_model(2.0, "m1", 4, {"model_id": "m1", "version": 4, "sha256": SHA, "tx_id": "tx-x"})
    assert model_ledger(board)["status"] == "mismatch"
    assert model_ledger(board)["registered_sha256"] == SHA


def test_a_model_not_registered_yet_is_asked_again_after_recheck_or_told_by_its_event() -> None:
    board = ledger_board(recheck_s=10)
    board.on_record("snap", snapshot("m1", 2))
    board.ledger.on_model(1.0, "m1", 2, None)
    assert model_ledger(board) == {"status": "not_registered", "version": 2}
    assert board.ledger_lookups(5.0) == []
    assert board.ledger_lookups(11.0) == [Lookup("model", ("m1", 2))]
    board.ledger.on_event(12.0, "ModelRegistered", {"model_id": "m1", "version": 2, "sha256": SHA, "tx_id": "tx-r",
                                                    "registered_at": "", "submitter": ADMIN}, "tx-r", 9)
    assert model_ledger(board)["status"] == "registered"
    board.ledger.on_model(13.0, "m1", 2, None)  # an answer read before the commit arrives late
    assert model_ledger(board)["status"] == "registered"
    assert board.frame(13.0)["ledger"]["counts"]["registered"] == 1


def test_freezes_and_settlements_feed_and_the_usage_records_hold_status() -> None:
    board = ledger_board()
    board.on_record("use", usage("h1"))
    assert board.ledger_lookups(1.0) == [Lookup("hold", "h1")]
    board.ledger.on_event(1.0, "HoldFrozen", frozen("h1"), "tx-f", 10)
    assert board.ledger_lookups(1.0) == []  # the event told: no read needed
    (record,) = board.frame(1.0)["usage"]["records"]
    assert record["settlement"] == {"status": "open", "amount": 100, "charged": 0, "refunded": 0, "tx_id": "tx-f"}
    board.ledger.on_event(2.0, "HoldSettled", settled("h1"), "tx-s", 11)
    frame = board.frame(2.0)
    assert frame["usage"]["records"][0]["settlement"] == {"status": "settled", "amount": 100, "charged": 60,
                                                          "refunded": 40, "tx_id": "tx-s"}
    first, second = frame["usage"]["feed"]
    assert (first["event"], first["hold_id"], first["charged"], first["refunded"], first["amount"], first["block"],
            first["tx_id"], first["client"], first["provider"]) == ("settled", "h1", 60, 40, 100, 11, "tx-s", CLIENT,
                                                                    PROVIDER)
    assert (first["units"], first["price"]) == (3, 20)
    assert (second["event"], second["amount"], second["ts"]) == ("frozen", 100, pytest.approx(1767323045.123456))
    board.ledger.on_hold(3.0, "h1", frozen("h1"))  # a GetHold answer read before the settlement
    assert board.frame(3.0)["usage"]["records"][0]["settlement"]["status"] == "settled"
    summary = board.frame(3.0)["ledger"]
    assert (summary["counts"]["frozen"], summary["counts"]["settled"], summary["charged_total"]) == (1, 1, 60)
    assert (summary["last_block"], summary["height"], summary["events"]) == (11, 12, 2)


def test_a_hold_read_from_the_ledger_and_a_released_or_missing_one() -> None:
    board = ledger_board(recheck_s=10)
    for hold in ("old", "gone", "missing", "bad id"):
        board.on_record("use", usage(hold))
    board.ledger.on_hold(1.0, "old", {**frozen("old"), "status": "SETTLED", "charged": 30, "refunded": 70,
                                      "close_tx_id": "tx-c"})
    board.ledger.on_event(1.0, "HoldFrozen", frozen("gone", 50), "tx-f", 4)
    board.ledger.on_event(1.0, "HoldReleased", {**frozen("gone", 50), "status": "RELEASED", "refunded": 50,
                                                "close_tx_id": "tx-rel", "closed_at": "2026-01-02T03:05:00Z"},
                          "tx-rel", 5)
    board.ledger.on_hold(1.0, "missing", None)
    board.ledger.on_hold(1.0, "bad id", None, error="INVALID_ARGUMENT: hold_id: must match ...")
    status = {r["hold_id"]: r["settlement"] for r in board.frame(1.0)["usage"]["records"]}
    assert (status["old"]["status"], status["old"]["charged"], status["old"]["tx_id"]) == ("settled", 30, "tx-c")
    assert (status["gone"]["status"], status["gone"]["refunded"]) == ("released", 50)
    assert status["missing"] == {"status": "not_found"}
    assert status["bad id"] == {"status": "refused", "error": "INVALID_ARGUMENT: hold_id: must match ..."}
    assert board.frame(1.0)["usage"]["feed"][0]["event"] == "released"
    assert board.ledger_lookups(5.0) == []
    assert set(board.ledger_lookups(12.0)) == {Lookup("hold", "missing"), Lookup("hold", "bad id")}


def test_unreachable_ledger_keeps_what_is_final_and_flags_what_could_change() -> None:
    board = ledger_board()
    board.on_record("snap", snapshot("m1", 1))
    board.on_record("snap", snapshot("m2", 1))
    board.ledger.on_model(1.0, "m1", 1, {"sha256": SHA, "tx_id": "tx-r"})
    board.ledger.on_model(1.0, "m2", 1, None)
    for hold in ("h-open", "h-done", "h-unknown"):
        board.on_record("use", usage(hold))
    board.ledger.on_event(1.0, "HoldFrozen", frozen("h-open"), "tx-1", 3)
    board.ledger.on_event(1.0, "HoldSettled", settled("h-done"), "tx-2", 4)
    board.ledger.unreachable("GatewayError: chaincode events failed: UNAVAILABLE: connection refused")
    frame = board.frame(30.0)
    assert frame["ledger"]["status"] == "unreachable" and frame["ledger"]["connected"] is False
    assert "UNAVAILABLE" in frame["ledger"]["error"]
    assert frame["ledger"]["last_contact_ago"] == 29.0
    models = {m["model_id"]: m["ledger"] for m in frame["models"]}
    assert models["m1"]["status"] == "registered"  # a registered hash never changes
    assert models["m2"]["status"] == "unreachable"
    holds = {r["hold_id"]: r["settlement"] for r in frame["usage"]["records"]}
    assert holds["h-done"]["status"] == "settled"
    assert (holds["h-open"]["status"], holds["h-open"]["last_known"]) == ("unreachable", "open")
    assert holds["h-unknown"]["status"] == "unreachable"
    assert board.ledger_lookups(30.0) == []  # nothing is asked of a ledger that does not answer
    board.ledger.heartbeat(31.0, height=9)
    assert board.frame(31.0)["ledger"]["status"] == "connected"
    # back: the hold never read, and the model not registered 30 s ago (past recheck), are asked
    assert set(board.ledger_lookups(31.0)) == {Lookup("hold", "h-unknown"), Lookup("model", ("m2", 1))}


def test_anchors_on_the_topic_are_checked_against_the_ledger() -> None:
    board = ledger_board()
    for batch, root in (("b-ok", "1" * 64), ("b-bad", "2" * 64), ("b-new", "3" * 64)):
        board.on_record("anc", {"batch_id": batch, "merkle_root": root, "count": 10, "topic": "clean", "partition": 0,
                                "first_offset": 0, "last_offset": 9, "tx_id": "tx", "block": 3, "ts": ts(0)})
    assert {lookup.key for lookup in board.ledger_lookups(1.0)} == {"b-ok", "b-bad", "b-new"}
    board.ledger.on_event(1.0, "BatchAnchored", {"batch_id": "b-ok", "merkle_root": "1" * 64, "count": 10,
                                                 "first_offset": 0, "last_offset": 9, "tx_id": "tx-a",
                                                 "anchored_at": "2026-01-02T03:04:05Z", "submitter": ADMIN}, "tx-a", 8)
    board.ledger.on_anchor(1.0, "b-bad", {"batch_id": "b-bad", "merkle_root": "f" * 64, "count": 10, "tx_id": "tx-b"})
    board.ledger.on_anchor(1.0, "b-new", None)
    anchors = board.frame(1.0)["anchors"]
    status = {a["batch_id"]: a["ledger"] for a in anchors["latest"]}
    assert status["b-ok"] == {"status": "confirmed", "ledger_root": "1" * 64, "tx_id": "tx-a", "block": 8}
    assert (status["b-bad"]["status"], status["b-bad"]["ledger_root"]) == ("root_mismatch", "f" * 64)
    assert status["b-new"] == {"status": "pending"}
    (confirmed,) = anchors["confirmed"]
    assert (confirmed["batch_id"], confirmed["block"], confirmed["count"], confirmed["last_offset"]) == ("b-ok", 8, 10, 9)
    assert anchors["ledger"] == "connected"


def test_lookups_are_bounded_per_poll_and_not_repeated() -> None:
    board = ledger_board()
    for i in range(30):
        board.on_record("use", usage(f"h{i % 10}"))  # 10 distinct holds, each shown thrice
    due = board.ledger_lookups(1.0, limit=4)
    assert len(due) == 4 and len({lookup.key for lookup in due}) == 4
    assert len(board.ledger_lookups(1.0, limit=100)) == 10


def test_ledger_memory_is_bounded() -> None:
    board = ledger_board()
    for i in range(MAX_HOLDS + 300):
        board.ledger.on_event(1.0, "HoldFrozen", frozen(f"h{i}"), f"tx{i}", i)
    for i in range(MAX_REGISTRATIONS + 50):
        board.ledger.on_event(1.0, "ModelRegistered", {"model_id": f"m{i}", "version": 1, "sha256": SHA}, "tx", i)
    assert len(board.ledger.holds) == MAX_HOLDS
    assert len(board.ledger.models) == MAX_REGISTRATIONS
    assert len(board.frame(1.0)["usage"]["feed"]) == LEDGER_FEED_LENGTH
    assert board.frame(1.0)["usage"]["feed"][0]["hold_id"] == f"h{MAX_HOLDS + 299}"
    assert "h0" not in board.ledger.holds  # the least recently written went first


def test_an_event_missing_its_fields_is_refused_and_unknown_events_are_only_counted() -> None:
    view = LedgerView(enabled=True)
    with pytest.raises(KeyError):
        view.on_event(1.0, "HoldSettled", {"hold_id": "h1"}, "tx", 3)
    view.on_event(1.0, "SomethingNew", {"anything": 1}, "tx", 4)
    assert view.summary(1.0)["events"] == 2 and view.feed == deque()


def test_a_snapshot_the_ledger_does_not_vouch_for_stays_counted_after_a_registered_one_replaces_it() -> None:
    board = ledger_board()
    board.on_record("snap", snapshot("m1", 1))
    board.ledger.on_model(1.0, "m1", 1, {"model_id": "m1", "version": 1, "sha256": SHA, "tx_id": "tx-1"})
    assert board.frame(1.0)["models"][0]["unvouched"] == 0
    forged = "ef" * 32
    board.on_record("snap", snapshot("m1", 2, sha256=forged))  # self-consistent on Kafka, not on the ledger
    assert Lookup("model", ("m1", 2)) in board.ledger_lookups(1.0)
    board.ledger.on_model(1.0, "m1", 2, None)
    assert board.frame(1.0)["models"][0]["unvouched"] == 1
    # The learner registers its own version 2 and publishes it: shown as registered, the forgery still counted.
    board.ledger.on_event(2.0, "ModelRegistered", {"model_id": "m1", "version": 2, "sha256": "cd" * 32,
                                                   "tx_id": "tx-2", "registered_at": "", "submitter": ADMIN}, "tx-2", 9)
    board.on_record("snap", snapshot("m1", 2, sha256="cd" * 32))
    model = board.frame(2.0)["models"][0]
    assert model["ledger"]["status"] == "registered" and model["unvouched"] == 1
