"""The dashboard's one retry loop (`reconnect.keep_connected`) on fakes: failures shown and
counted, tried again within the bound, given up after it, a stop honoured while waiting."""

from __future__ import annotations

import asyncio

import pytest

from services.dashboard.reconnect import keep_connected
from streamledger.retry import RetryPolicy

QUICK = RetryPolicy(attempts=3, initial_seconds=0.01, max_seconds=0.01)


class Down(Exception):
    pass


class Bug(Exception):
    pass


class FakeSession:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class FakeServer:
    """Answers connects as `plan` says: "down" raises `Down`, "bug" raises `Bug`, "up" opens a session."""

    def __init__(self, *plan: str) -> None:
        self.plan = list(plan)
        self.sessions: list[FakeSession] = []
        self.lost: list[BaseException] = []
        self.connects = 0

    async def connect(self) -> FakeSession:
        self.connects += 1
        step = self.plan.pop(0)
        if step == "down":
            raise Down(f"connect {self.connects}")
        if step == "bug":
            raise Bug("a bug of ours")
        self.sessions.append(FakeSession())
        return self.sessions[-1]


async def watch(server: FakeServer, follow, stop: asyncio.Event, policy: RetryPolicy = QUICK) -> None:
    await keep_connected(server.connect, follow, stop, policy, is_transient=lambda exc: isinstance(exc, Down),
                         lost=server.lost.append)


async def test_failed_connects_are_shown_and_tried_again_then_it_follows_until_stopped() -> None:
    server = FakeServer("down", "down", "up")
    stop = asyncio.Event()
    followed = asyncio.Event()

    async def follow(session: FakeSession, stopping: asyncio.Event) -> None:
        followed.set()
        await stopping.wait()

    task = asyncio.create_task(watch(server, follow, stop))
    await asyncio.wait_for(followed.wait(), 2)
    assert [str(exc) for exc in server.lost] == ["connect 1", "connect 2"]
    stop.set()
    await asyncio.wait_for(task, 2)
    assert len(server.sessions) == 1 and server.sessions[0].closed


async def test_after_the_bound_of_failed_connects_in_a_row_the_last_error_propagates() -> None:
    server = FakeServer("down", "down", "down", "up")

    async def follow(session: FakeSession, stopping: asyncio.Event) -> None:
        raise AssertionError("never connected")

    with pytest.raises(Down, match="connect 3"):
        await asyncio.wait_for(watch(server, follow, asyncio.Event()), 2)
    assert [str(exc) for exc in server.lost] == ["connect 1", "connect 2"]  # shown before each retry
    assert server.plan == ["up"] and server.sessions == []


async def test_a_session_that_drops_is_shown_closed_and_reconnected_with_a_fresh_count() -> None:
    # Two failed connects after each drop: with a bound of 3 in a row, never given up.
    server = FakeServer("up", "down", "down", "up", "down", "down", "up")
    stop = asyncio.Event()
    drops = 0

    async def follow(session: FakeSession, stopping: asyncio.Event) -> None:
        nonlocal drops
        if len(server.sessions) < 3:
            drops += 1
            raise Down(f"dropped {drops}")
        stop.set()

    await asyncio.wait_for(watch(server, follow, stop), 2)
    assert [str(exc) for exc in server.lost] == ["dropped 1", "connect 2", "connect 3",
                                                 "dropped 2", "connect 5", "connect 6"]
    assert [session.closed for session in server.sessions] == [True, True, True]


async def test_what_is_not_transient_propagates_at_once_and_the_session_is_closed() -> None:
    server = FakeServer("bug")
    with pytest.raises(Bug):
        await asyncio.wait_for(watch(server, lambda session, stopping: asyncio.sleep(0), asyncio.Event()), 2)
    assert server.lost == []

    server = FakeServer("up")

    async def follow(session: FakeSession, stopping: asyncio.Event) -> None:
        raise Bug("in follow")

    with pytest.raises(Bug, match="in follow"):
        await asyncio.wait_for(watch(server, follow, asyncio.Event()), 2)
    assert server.lost == [] and server.sessions[0].closed


async def test_a_stop_while_waiting_to_retry_returns_at_once() -> None:
    server = FakeServer("down", "up")
    stop = asyncio.Event()
    slow = RetryPolicy(attempts=3, initial_seconds=60, max_seconds=60)

    async def follow(session: FakeSession, stopping: asyncio.Event) -> None:
        raise AssertionError("stopped before reconnecting")

    task = asyncio.create_task(watch(server, follow, stop, slow))
    while not server.lost:
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 2)  # not the 60 s wait
    assert server.plan == ["up"]
