"""The dashboard's ledger watcher against a fake of its own `LedgerReader` interface:
history read back, point reads, an unreachable ledger shown and retried with backoff (and
given up after the bound), a dropped event stream resumed without handling an event twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from services.dashboard.board import Board, FeedTopics
from services.dashboard.ledger_view import LedgerView
from services.dashboard.ledger_watch import (
    LedgerEvent,
    LedgerWatch,
    LedgerWatchSettings,
)
from streamledger.fabric import EvaluateError, GatewayError
from streamledger.ledger import MissingRole
from streamledger.retry import RetryPolicy

FEEDS = FeedTopics(deadletter="dl", snapshots="snap", model_metrics="mm", usage="use", anchors="anc", clean="clean")
FAST = LedgerWatchSettings(history_blocks=3, poll_seconds=0.02, lookups_max=8,
                           retry=RetryPolicy(attempts=1000, initial_seconds=0.01, max_seconds=0.05))
DOWN = GatewayError("evaluate failed: UNAVAILABLE: connection refused", code=grpc.StatusCode.UNAVAILABLE)


class FakeLedger:
    """One fake Fabric channel: blocks of events and the state point reads answer from."""

    def __init__(self) -> None:
        self.up = True
        self.events: list[LedgerEvent] = []
        self.holds: dict[str, dict[str, Any]] = {}
        self.refused: set[str] = set()
        self.connects = 0
        self.closed = 0
        self.streams: list[tuple[int | None, str]] = []
        self.role_granted = True

    def add(self, name: str, payload: dict[str, Any]) -> LedgerEvent:
        block = len(self.events) + 1  # one event per block, block 0 is the genesis block
        event = LedgerEvent(block, f"tx{block}", name, json.dumps(payload).encode())
        self.events.append(event)
        return event

    def connect(self) -> FakeReader:
        self.connects += 1
        return FakeReader(self)


class FakeReader:
    def __init__(self, ledger: FakeLedger) -> None:
        self.ledger = ledger

    def _check(self) -> None:
        if not self.ledger.up:
            raise DOWN

    async def who_am_i(self) -> str:
        self._check()
        if not self.ledger.role_granted:
            raise MissingRole("ledger identity 'dashboard' (Org1MSP::CN=dashboard) does not hold the auditor role")
        return "Org1MSP::CN=Admin"

    async def height(self) -> int | None:
        self._check()
        return len(self.ledger.events) + 1

    async def get_model(self, model_id: str, version: int) -> dict[str, Any] | None:
        self._check()
        return None

    async def get_hold(self, hold_id: str) -> dict[str, Any] | None:
        self._check()
        if hold_id in self.ledger.refused:
            raise EvaluateError("evaluate failed: UNKNOWN: INVALID_ARGUMENT: hold_id", code=grpc.StatusCode.UNKNOWN)
        return self.ledger.holds.get(hold_id)

    async def get_anchor(self, batch_id: str) -> dict[str, Any] | None:
        self._check()
        return None

    async def events(self, start_block: int | None, after_transaction_id: str) -> AsyncIterator[LedgerEvent]:
        self._check()
        self.ledger.streams.append((start_block, after_transaction_id))
        position = len(self.ledger.events) if start_block is None else 0
        skipping = bool(after_transaction_id)
        while True:
            self._check()
            while position < len(self.ledger.events):
                event = self.ledger.events[position]
                position += 1
                if start_block is not None and event.block < start_block:
                    continue
                if skipping:
                    skipping = event.transaction_id != after_transaction_id
                    continue
                yield event
            await asyncio.sleep(0.005)  # the fake's own poll of its event list

    async def close(self) -> None:
        self.ledger.closed += 1


def frozen(hold_id: str) -> dict[str, Any]:
    return {"hold_id": hold_id, "client": "c", "provider": "p", "amount": 10, "status": "OPEN",
            "freeze_tx_id": "tx", "created_at": ""}


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def watching(ledger: FakeLedger) -> AsyncIterator[Board]:
    board = Board({}, FEEDS, {}, ledger=LedgerView(enabled=True, recheck_s=0.05))
    stop = asyncio.Event()
    task = asyncio.create_task(LedgerWatch(board, ledger.connect, FAST).run(stop))
    try:
        yield board
    finally:
        stop.set()
        await asyncio.wait_for(task, 2)  # stops promptly, and never died on its own


def summary(board: Board) -> dict[str, Any]:
    return board.frame(time.time())["ledger"]


async def test_reads_the_last_blocks_back_then_follows_and_answers_what_the_page_shows() -> None:
    ledger = FakeLedger()
    for i in range(6):
        ledger.add("HoldFrozen", frozen(f"old{i}"))
    ledger.holds["old0"] = {**frozen("old0"), "status": "SETTLED", "charged": 4, "refunded": 6}
    async with watching(ledger) as board:
        await until(lambda: summary(board)["counts"]["frozen"] == 3)
        assert ledger.streams == [(7 - 3, "")]  # height 7: the last 3 blocks
        assert [e["hold_id"] for e in board.frame(time.time())["usage"]["feed"]] == ["old5", "old4", "old3"]
        assert summary(board)["identity"] == "Org1MSP::CN=Admin"
        ledger.add("HoldSettled", {"hold_id": "old5", "client": "c", "provider": "p", "units": 2, "price": 3,
                                   "charged": 6, "refunded": 4, "tx_id": "tx7"})
        await until(lambda: summary(board)["counts"]["settled"] == 1)
        # a usage record whose hold was frozen before the blocks read back: asked with GetHold
        board.on_record("use", {"hold_id": "old0", "request_id": "r", "client": "c", "model_id": "m",
                                "model_version": 1, "units": 1, "price": 4, "ts": 0})
        await until(lambda: board.frame(time.time())["usage"]["records"][0]["settlement"]["status"] == "settled")
        assert summary(board)["status"] == "connected"


async def test_an_unreachable_ledger_is_shown_retried_with_backoff_and_resumed_without_repeats() -> None:
    ledger = FakeLedger()
    ledger.up = False
    async with watching(ledger) as board:
        await until(lambda: summary(board)["status"] == "unreachable")
        assert "UNAVAILABLE" in summary(board)["error"]
        await until(lambda: ledger.connects >= 3)  # retried, not given up
        ledger.add("HoldFrozen", frozen("h1"))
        ledger.up = True
        await until(lambda: summary(board)["counts"]["frozen"] == 1)
        assert summary(board)["status"] == "connected"
        ledger.add("HoldFrozen", frozen("h2"))
        await until(lambda: summary(board)["counts"]["frozen"] == 2)

        ledger.up = False  # the peer goes away mid-stream
        await until(lambda: summary(board)["status"] == "unreachable")
        ledger.add("HoldFrozen", frozen("h3"))
        ledger.up = True
        await until(lambda: summary(board)["counts"]["frozen"] == 3)
        assert ledger.streams[-1] == (2, "tx2")  # resumed after the last event handled
        await asyncio.sleep(0.1)  # a few more polls: no event is counted twice
        assert summary(board)["counts"]["frozen"] == 3
        assert [e["hold_id"] for e in board.frame(time.time())["usage"]["feed"]] == ["h3", "h2", "h1"]


async def test_a_read_the_ledger_refuses_marks_its_row_and_keeps_the_watcher_connected() -> None:
    ledger = FakeLedger()
    ledger.refused.add("bad/id")
    async with watching(ledger) as board:
        await until(lambda: summary(board)["status"] == "connected")
        board.on_record("use", {"hold_id": "bad/id", "request_id": "r", "client": "c", "model_id": "m",
                                "model_version": 1, "units": 1, "price": 4, "ts": 0})
        await until(lambda: board.frame(time.time())["usage"]["records"][0]["settlement"]["status"] == "refused")
        assert "INVALID_ARGUMENT" in board.frame(time.time())["usage"]["records"][0]["settlement"]["error"]
        assert ledger.connects == 1 and summary(board)["status"] == "connected"


async def test_an_undecodable_event_is_counted_and_the_stream_goes_on() -> None:
    ledger = FakeLedger()
    async with watching(ledger) as board:
        await until(lambda: summary(board)["status"] == "connected")
        ledger.events.append(LedgerEvent(1, "tx1", "HoldFrozen", b"not json"))
        ledger.add("HoldFrozen", {"hold_id": "no-fields"})
        ledger.add("HoldFrozen", frozen("after"))
        await until(lambda: summary(board)["counts"]["frozen"] == 1)
        assert summary(board)["undecodable"] == 2
        assert ledger.connects == 1


@pytest.mark.parametrize("error", [FileNotFoundError("no such file: .../msp/signcerts"), OSError("refused")])
async def test_a_ledger_not_set_up_yet_is_unreachable_not_fatal(error: Exception) -> None:
    def connect() -> FakeReader:
        raise error

    board = Board({}, FEEDS, {}, ledger=LedgerView(enabled=True))
    stop = asyncio.Event()
    task = asyncio.create_task(LedgerWatch(board, connect, FAST).run(stop))
    await until(lambda: summary(board)["status"] == "unreachable")
    assert str(error) in summary(board)["error"]
    stop.set()
    await asyncio.wait_for(task, 2)


async def test_a_ledger_away_for_longer_than_the_bound_ends_the_watcher_with_its_error() -> None:
    ledger = FakeLedger()
    ledger.up = False
    board = Board({}, FEEDS, {}, ledger=LedgerView(enabled=True))
    bounded = LedgerWatchSettings(retry=RetryPolicy(attempts=4, initial_seconds=0.01, max_seconds=0.01))
    with pytest.raises(GatewayError) as raised:
        await asyncio.wait_for(LedgerWatch(board, ledger.connect, bounded).run(asyncio.Event()), 2)
    assert raised.value is DOWN  # the last failure, unchanged
    assert ledger.connects == 4
    assert summary(board)["status"] == "unreachable"


class DroppingReader(FakeReader):
    """A session whose peer ends the event stream at once: connected, then lost."""

    async def events(self, start_block: int | None, after_transaction_id: str) -> AsyncIterator[LedgerEvent]:
        return
        yield


async def test_the_bound_counts_failures_in_a_row_a_connection_that_was_up_starts_a_new_count() -> None:
    ledger = FakeLedger()
    # Three times: connected, dropped, then two failed connects; never three failures in a row.
    plan = iter(["drops", "down", "down"] * 3 + ["stays"])

    def connect() -> FakeReader:
        ledger.connects += 1
        step = next(plan)
        if step == "down":
            raise DOWN
        return DroppingReader(ledger) if step == "drops" else FakeReader(ledger)

    bounded = LedgerWatchSettings(retry=RetryPolicy(attempts=3, initial_seconds=0.01, max_seconds=0.01))
    board = Board({}, FEEDS, {}, ledger=LedgerView(enabled=True))
    stop = asyncio.Event()
    task = asyncio.create_task(LedgerWatch(board, connect, bounded).run(stop))
    await until(lambda: ledger.connects == 10 and summary(board)["status"] == "connected")
    assert not task.done()
    stop.set()
    await asyncio.wait_for(task, 2)
    assert ledger.connects == 10


# -- at start: the identity's role --

async def test_an_identity_without_the_auditor_role_refuses_the_start() -> None:
    ledger = FakeLedger()
    ledger.role_granted = False
    watch = LedgerWatch(Board({}, FEEDS, {}, ledger=LedgerView(enabled=True, recheck_s=0.05)), ledger.connect, FAST)
    with pytest.raises(MissingRole, match="'dashboard' .* does not hold the auditor role"):
        await watch.check_identity()
    assert ledger.closed == ledger.connects == 1  # the probe's connection is closed


async def test_a_ledger_away_at_start_is_left_to_the_watcher_and_a_granted_role_passes() -> None:
    ledger = FakeLedger()
    watch = LedgerWatch(Board({}, FEEDS, {}, ledger=LedgerView(enabled=True, recheck_s=0.05)), ledger.connect, FAST)
    await watch.check_identity()
    ledger.up = False
    await watch.check_identity()  # only logged: `run` shows it on the page and keeps trying
    assert ledger.closed == ledger.connects == 2
