"""How every service runs: until SIGINT or SIGTERM, then a clean stop."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Protocol


def run_until_signalled(run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """`asyncio.run(run(stop))`, where `stop` is set by SIGINT or SIGTERM.

    `run` must return soon after `stop` is set, having flushed what it holds.
    """

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(stop)

    asyncio.run(serve())


class Startable(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


async def serve_until(service: Startable, stop: asyncio.Event) -> None:
    """Start `service`, wait for `stop`, then stop it (also when waiting was cancelled)."""
    await service.start()
    try:
        await stop.wait()
    finally:
        await service.stop()


def child_environment() -> dict[str, str]:
    """The environment for a `python -m services...` child: this one, with an import path
    that finds everything this process imports (the same checkout, the same packages)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
