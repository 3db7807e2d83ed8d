"""How each reader of the dashboard stays connected: the service's one retry loop.

    await keep_connected(connect, follow, stop, policy, is_transient=..., lost=show_and_count)

`connect()` opens a session (its clients, and a first answer from the server); `follow(session,
stop)` reads until `stop` is set. A failure is shown and counted (`lost(exc)`) and tried again
after `policy.delay`; `policy.attempts` failed connects in a row end the loop with the last
error (the dashboard then exits 1, as any service whose server stays away). A session that
was up and drops starts a new count. Nothing under it retries on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from streamledger.retry import RetryPolicy, Stopped, retry


class Session(Protocol):
    async def close(self) -> None: ...


S = TypeVar("S", bound=Session)


async def keep_connected(connect: Callable[[], Awaitable[S]], follow: Callable[[S, asyncio.Event], Awaitable[None]],
                         stop: asyncio.Event, policy: RetryPolicy, *, is_transient: Callable[[BaseException], bool],
                         lost: Callable[[BaseException], None]) -> None:
    """Connect and follow until `stop` is set; see the module's docstring."""
    while not stop.is_set():
        try:
            session = await retry(connect, policy, is_transient=is_transient, stop=stop,
                                  on_retry=lambda _attempt, exc, _delay: lost(exc))
        except Stopped:
            return
        try:
            await follow(session, stop)
        except Exception as exc:
            if not is_transient(exc):
                raise
            lost(exc)
            # Wait as after a first failed try, so a peer that accepts and drops at once is not hammered.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), policy.delay(0))
        finally:
            await session.close()
