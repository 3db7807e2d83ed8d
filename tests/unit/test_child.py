"""The child-process helper with real child processes: this module is also their program
(`python -m tests.unit.test_child FD`), each behaving as its hello says."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from streamledger import child
from streamledger.child import Child, ChildDied, Hello, Parent

MODULE = __name__


class EchoHello(Hello):
    """What the test child does: echo every message with `prefix`, or fail as told."""

    prefix: str = ""
    fail_before_ready: str = ""
    fail_on: str = ""
    """A message that makes it raise (after ready)."""
    stream: int = 0
    """Send this many messages of 1 MiB at once after ready, then echo."""


async def serve(hello: EchoHello, parent: Parent) -> None:
    if hello.fail_before_ready:
        raise ValueError(hello.fail_before_ready)
    parent.ready()
    for index in range(hello.stream):
        parent.send((index, bytes([index % 256]) * (1024 * 1024)))
    while (message := await parent.receive()) is not None:
        if message == hello.fail_on:
            raise RuntimeError(f"told to fail on {message!r}")
        parent.send((hello.prefix, message))


async def start(**hello) -> Child:
    return await Child.start(MODULE, EchoHello(**hello), name="echo", label=("test-child",))


async def test_messages_go_both_ways_and_finish_waits_for_every_answer():
    echo = await start(prefix="echo:")
    try:
        for n in range(100):
            echo.send({"n": n, "data": b"\x00" * n})
        answers = [await echo.receive(timeout=10) for _ in range(100)]
        assert answers == [("echo:", {"n": n, "data": b"\x00" * n}) for n in range(100)]
        echo.send("last")
        echo.finish()  # nothing more to send: the child answers what it owes, then exits 0
        assert await echo.receive(timeout=10) == ("echo:", "last")
        assert await echo.receive(timeout=10) is None
    finally:
        assert await echo.close() == 0


async def test_large_messages_cross_whole_and_in_order():
    echo = await start(stream=12)  # 12 MiB: more than the socket buffers hold, so the child waits on us
    try:
        for index in range(12):
            number, data = await echo.receive(timeout=10)
            assert number == index and data == bytes([index]) * (1024 * 1024)
        big = os.urandom(5 * 1024 * 1024)
        echo.send(big)
        await echo.drain()
        assert await echo.receive(timeout=10) == ("", big)
    finally:
        await echo.close()


async def test_nothing_within_the_timeout_is_a_timeout_error_and_the_child_stays():
    echo = await start()
    try:
        assert not echo.poll()
        with pytest.raises(TimeoutError):
            await echo.receive(timeout=0.05)
        echo.send("still there?")
        assert await echo.receive(timeout=10) == ("", "still there?")
    finally:
        await echo.close()


async def test_a_child_that_fails_to_start_raises_child_died_with_its_reason_and_exit_code():
    with pytest.raises(ChildDied, match=r"echo process did not start: ValueError\('no broker'\) \(exit code 1\)") as died:
        await start(fail_before_ready="no broker")
    assert died.value.exit_code == 1 and died.value.reason == "ValueError('no broker')"


async def test_a_child_that_fails_later_raises_child_died_on_the_next_receive_and_after():
    echo = await start(fail_on="boom")
    try:
        echo.send("boom")
        with pytest.raises(ChildDied, match=r"echo process exited: RuntimeError\(\"told to fail on 'boom'\"\) "
                                            r"\(exit code 1\)"):
            await echo.receive(timeout=10)
        with pytest.raises(ChildDied, match="exit code 1"):  # the same answer every time
            await echo.receive(timeout=10)
    finally:
        await echo.close()


async def test_a_killed_child_raises_child_died_with_the_signal_and_sends_are_not_errors():
    echo = await start()
    try:
        os.kill(echo.pid, signal.SIGKILL)
        with pytest.raises(ChildDied, match=r"echo process exited \(exit code -9\)") as died:
            await echo.receive(timeout=10)
        assert died.value.exit_code == -9
        echo.send("anyone?")  # reported by receive (above), never by send
    finally:
        await echo.close()


async def test_closing_ends_the_child_at_once_and_it_ignores_ctrl_c():
    echo = await start()
    os.kill(echo.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group: the parent decides
    echo.send("after ctrl-c")
    assert await echo.receive(timeout=10) == ("", "after ctrl-c")
    assert await asyncio.wait_for(echo.close(), 10) == 0


if __name__ == "__main__":
    child.run(serve, EchoHello)
