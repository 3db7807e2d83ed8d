"""How every service runs: started by `async with`, served until SIGINT or SIGTERM, then stopped.

    class Storage(Loop):                      # or any object with the `Service` methods
        async def run(self, stopping: asyncio.Event) -> None:
            ...                               # consume until `stopping` is set, flush, return

    def main() -> None:                       # `streamledger serve storage`
        serve("storage", StorageSettings, Storage)

`serve` loads the settings, configures logging and metrics, builds the service, enters it
(start), waits for a signal or for the service to end on its own, and leaves it (stop). A
service that cannot start, whatever the reason (a setting that does not validate, a
`StartError`, a server it cannot reach), is reported one way: one line on stderr naming the
service and the cause, and exit code 1. A service that fails while running is logged and
exits 1; a clean stop exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import io
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError

from streamledger import metrics
from streamledger.logging import configure_logging, get_logger

log = get_logger("lifecycle")
S = TypeVar("S")


class Service(Protocol):
    """What `serve` runs. Entering starts it (connect, subscribe, start its loops); leaving
    stops it (let in-flight work land, commit, close); `wait()` returns when it ended on its
    own, and raises what made it fail."""

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc_info: object) -> Any: ...

    async def wait(self) -> None: ...


class StartError(Exception):
    """A service cannot start; the message says what is wrong and which setting to change."""


class Loop:
    """A `Service` made of one coroutine, `run(stopping)`, that works until `stopping` is set and
    then returns having flushed what it holds (by default it only waits: a server whose work is
    done by handlers). `start()` and `stop()` are optional hooks around it."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Connect and prepare; raise `StartError` (or let a connection error through) to refuse."""

    async def run(self, stopping: asyncio.Event) -> None:
        await stopping.wait()

    async def stop(self) -> None:
        """Release what `start` acquired; runs after `run` returned."""

    async def __aenter__(self) -> Loop:
        await self.start()
        self._task = asyncio.create_task(self.run(self.stopping), name=type(self).__name__)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stopping.set()
        try:
            if self._task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        finally:
            await self.stop()

    async def wait(self) -> None:
        assert self._task is not None, "wait() on a Loop that was not started"
        await asyncio.shield(self._task)


def serve(name: str, load_settings: Callable[[], S], build: Callable[[S], Service]) -> None:
    """`streamledger serve NAME`: run the service `build(settings)` until SIGINT or SIGTERM.

    Exits the process: 0 after a clean stop, 1 when it could not start or failed.
    """
    try:
        settings = load_settings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors())
        _refuse(name, problems)
    configure_logging(getattr(settings, "log_level", "INFO"), getattr(settings, "kafka_log_level", "WARNING"))
    metrics.serve_metrics(getattr(settings, "metrics_port", 0), getattr(settings, "metrics_host", "127.0.0.1"))
    raise SystemExit(asyncio.run(_serve(name, settings, build)))


async def _serve(name: str, settings: S, build: Callable[[S], Service]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # SIGUSR2 shows where a process is: its tasks logged by the loop, and (faulthandler, which works
    # even while the loop is stuck) every thread's stack on stderr.
    loop.add_signal_handler(signal.SIGUSR2, log_tasks)
    faulthandler.register(signal.SIGUSR2, all_threads=True, chain=True)
    started = False

    def on_started() -> None:
        nonlocal started
        started = True
        log.info("started", extra={"service": name})

    try:
        await run_until(build(settings), stop, on_started)
    except Exception as exc:  # noqa: BLE001 - every failure is reported, one way for each phase
        if not started:
            _refuse(name, _describe(exc))
        log.error("failed", extra={"service": name, "errors": failures(exc)}, exc_info=exc)
        return 1
    log.info("stopped", extra={"service": name})
    return 0


def log_tasks() -> None:
    """Log each task of the running loop with the stack it waits on."""
    for task in asyncio.all_tasks():
        stack = io.StringIO()
        task.print_stack(file=stack)
        log.warning("task", extra={"task": task.get_name(), "stack": stack.getvalue()})


async def run_until(service: Service, stop: asyncio.Event, on_started: Callable[[], None] = lambda: None) -> None:
    """Start `service` (then call `on_started()`), run it until `stop` is set or it ends on its own,
    stop it; raise what made it fail or refused its start. What `serve` does with a signal for
    `stop`, for tests and benches that run a service in their own event loop."""
    async with service:
        on_started()
        ended = asyncio.create_task(service.wait())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({ended, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not ended.done():
            ended.cancel()
        elif ended.exception() is not None:
            raise ended.exception()


def failures(exc: BaseException) -> list[str]:
    """One line per error, task groups unwrapped."""
    if isinstance(exc, BaseExceptionGroup):
        return [line for inner in exc.exceptions for line in failures(inner)]
    return [_describe(exc)]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, StartError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _refuse(name: str, why: str) -> None:
    print(f"{name}: cannot start: {why}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def child_environment() -> dict[str, str]:
    """The environment for a `python -m ...` child: this one, with an import path that finds
    everything this process imports (the same checkout, the same packages)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
