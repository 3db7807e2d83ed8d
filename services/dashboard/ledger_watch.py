"""The dashboard's read-only view of the Fabric ledger: the contract's events and a few point reads.

Data path, per connection:
    connect, WhoAmI (the ledger answers, and the identity, `dashboard` by default, holds the
    auditor role)                         -> board.ledger.connected
    chaincode events from `history_blocks` before the chain's height (after a drop: from the
    last block and transaction handled)   -> board.ledger.on_event
    every poll: the chain's height (a ping), then what the board shows but no event told
    (`board.ledger_lookups`: GetModel, GetHold, GetAnchor), at most `lookups_max` a poll
An unreachable peer is shown on the page (`board.ledger.unreachable`) and reconnected with
capped backoff (`reconnect.keep_connected`, bounded and counted: the one place the watcher
retries; the gateway client under it does not). The watcher only reads: it submits nothing
and never touches Kafka. At start (`check_identity`) an identity the ledger has not granted the
auditor role refuses the dashboard's start; a ledger that does not answer yet is left to `run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc

from services.dashboard.board import Board
from services.dashboard.ledger_view import Lookup
from services.dashboard.reconnect import keep_connected
from streamledger import metrics
from streamledger.fabric import GatewayError, IdentityError
from streamledger.ledger import LedgerClient, MissingRole
from streamledger.logging import get_logger
from streamledger.retry import NO_RETRY, RetryPolicy
from streamledger.settings import LedgerSettings

log = get_logger("dashboard")
T = TypeVar("T")
EVENTS = metrics.counter("dashboard", "ledger_events", "Chaincode events read from the ledger, by name", ("name",))
LOOKUPS = metrics.counter("dashboard", "ledger_lookups", "Point reads made on the ledger, by kind", ("kind",))
RECONNECTS = metrics.counter("dashboard", "ledger_reconnects", "Times the ledger watcher lost the ledger and started again")

CALL_TIMEOUT_S = 10.0
"""Bound on one read, so a hung peer shows as unreachable instead of freezing the panel."""
YIELD_EVERY = 200
"""Events handled between yields to the event loop while reading history back."""
IDENTITY = "dashboard"
"""The local ledger identity the watcher reads as (deploy/fabric/identities.yaml)."""
ROLE = "auditor"
"""What the watcher needs: reading every hold, model and anchor the page shows."""


@dataclass(frozen=True)
class LedgerEvent:
    block: int
    transaction_id: str
    name: str
    payload: bytes


class LedgerReader(Protocol):
    """What the watcher needs from the ledger (`FabricLedgerReader` over the gateway client)."""

    async def who_am_i(self) -> str:
        """The account this reader acts as; `MissingRole` when the ledger has not granted it `ROLE`."""

    async def height(self) -> int | None:
        """Blocks on the channel; None when the peer will not say."""

    async def get_model(self, model_id: str, version: int) -> dict[str, Any] | None: ...

    async def get_hold(self, hold_id: str) -> dict[str, Any] | None: ...

    async def get_anchor(self, batch_id: str) -> dict[str, Any] | None: ...

    def events(self, start_block: int | None, after_transaction_id: str) -> AsyncIterator[LedgerEvent]: ...

    async def close(self) -> None: ...


class LedgerStreamEnded(Exception):
    """The peer ended the event stream; the watcher reconnects."""


class FabricLedgerReader:
    """`LedgerReader` over `LedgerClient` (streamledger/ledger.py)."""

    def __init__(self, ledger: LedgerClient, channel: str, chaincode: str) -> None:
        self.ledger = ledger
        self.channel = channel
        self.chaincode = chaincode

    @classmethod
    def connect(cls, settings: LedgerSettings) -> FabricLedgerReader:
        # NO_RETRY: the watcher retries by reconnecting, so retries never nest.
        return cls(LedgerClient.connect(settings, retry=NO_RETRY, service_identity=IDENTITY), settings.fabric_channel,
                   settings.fabric_chaincode)

    async def who_am_i(self) -> str:
        return str((await self.ledger.require_role(ROLE)).get("Account", ""))

    async def height(self) -> int | None:
        try:
            return await self.ledger.chain_height()
        except GatewayError as exc:
            if exc.transient:
                raise
            return None  # not allowed to ask: events then start at the next block

    async def get_model(self, model_id: str, version: int) -> dict[str, Any] | None:
        return await self.ledger.get_model(model_id, version)

    async def get_hold(self, hold_id: str) -> dict[str, Any] | None:
        return await self.ledger.get_hold(hold_id)

    async def get_anchor(self, batch_id: str) -> dict[str, Any] | None:
        return await self.ledger.get_anchor(batch_id)

    async def events(self, start_block: int | None, after_transaction_id: str) -> AsyncIterator[LedgerEvent]:
        network = self.ledger.gateway.network(self.channel)
        async for event in network.chaincode_events(self.chaincode, start_block=start_block,
                                                    after_transaction_id=after_transaction_id):
            yield LedgerEvent(event.block_number, event.transaction_id, event.name, event.payload)

    async def close(self) -> None:
        await self.ledger.gateway.close()


@dataclass(frozen=True)
class LedgerWatchSettings:
    history_blocks: int = 1000
    poll_seconds: float = 2.0
    lookups_max: int = 16
    retry: RetryPolicy = RetryPolicy(attempts=40, initial_seconds=0.5, max_seconds=15.0, jitter=0.2)
    """Reconnection attempts in a row (then the last error propagates) and the waits between them."""


@dataclass
class LedgerSession:
    reader: LedgerReader
    start_block: int | None
    """Where the event stream starts: `history_blocks` back on a first connection, else where it dropped."""
    after_transaction_id: str

    async def close(self) -> None:
        await self.reader.close()


EXPECTED = (GatewayError, IdentityError, OSError, TimeoutError, grpc.RpcError, LedgerStreamEnded, MissingRole)
"""How a ledger being down, unreachable or not set up yet (or a role revoked while running)
shows (a warning); anything else is logged as a bug of ours, and retried alike."""


class LedgerWatch:
    def __init__(self, board: Board, connect: Callable[[], LedgerReader],
                 settings: LedgerWatchSettings = LedgerWatchSettings()) -> None:
        self.board = board
        self.connect = connect
        self.settings = settings
        self.resume: tuple[int, str] | None = None
        """(block, transaction id) of the last event handled, to resume the stream after a drop."""
        self.failures = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Watch until `stop` is set; an unreachable ledger is shown on the page and retried, up
        to `settings.retry.attempts` tries in a row (then the last error propagates)."""
        # Any failure is retried: a bug of ours must not blank the page either (it is logged).
        await keep_connected(self._connect, self._follow, stop, self.settings.retry,
                             is_transient=lambda exc: isinstance(exc, Exception), lost=self._lost)

    async def check_identity(self) -> None:
        """At start: the ledger's word on who the watcher reads as. `MissingRole` (the identity
        lacks `ROLE`) refuses the start; a ledger that cannot be reached now is only logged,
        as `run` shows it on the page and keeps trying."""
        try:
            reader = self.connect()
        except EXPECTED as exc:
            log.warning("ledger_unreachable_at_start", extra={"error": _describe(exc)})
            return
        try:
            await _bounded(reader.who_am_i())
        except MissingRole:
            raise
        except EXPECTED as exc:
            log.warning("ledger_unreachable_at_start", extra={"error": _describe(exc)})
        finally:
            with contextlib.suppress(Exception):
                await reader.close()

    def _lost(self, exc: BaseException) -> None:
        self.failures += 1
        RECONNECTS.inc()
        self.board.ledger.unreachable(_describe(exc))
        if isinstance(exc, EXPECTED):
            log.log(logging.WARNING if self.failures == 1 else logging.INFO, "ledger_unreachable",
                    extra={"error": _describe(exc), "attempt": self.failures})
        else:
            log.error("ledger_watch_failed", exc_info=exc, extra={"error": _describe(exc)})

    async def _connect(self) -> LedgerSession:
        """A reader whose ledger answered (who we are, the chain's height), and where its events start."""
        reader = self.connect()
        try:
            identity = await _bounded(reader.who_am_i())
            height = await _bounded(reader.height())
        except BaseException:
            with contextlib.suppress(Exception):
                await reader.close()
            raise
        self.board.ledger.connected(time.time(), identity, height)
        if self.failures:
            log.info("ledger_reconnected", extra={"after_failures": self.failures})
        self.failures = 0
        if self.resume is not None:
            return LedgerSession(reader, *self.resume)
        return LedgerSession(reader, None if height is None else max(0, height - self.settings.history_blocks), "")

    async def _follow(self, session: LedgerSession, stop: asyncio.Event) -> None:
        reader = session.reader
        tasks = [asyncio.create_task(self._events(reader, session.start_block, session.after_transaction_id)),
                 asyncio.create_task(self._poll(reader, stop)),
                 asyncio.create_task(stop.wait())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raise a loop's failure so `run` shows it and reconnects
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _events(self, reader: LedgerReader, start: int | None, after: str) -> None:
        handled = 0
        async for event in reader.events(start, after):
            self._take(event)
            self.resume = (event.block, event.transaction_id)
            handled += 1
            if handled % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # history read back in a burst must not starve the page
        raise LedgerStreamEnded("the peer ended the chaincode event stream")

    def _take(self, event: LedgerEvent) -> None:
        EVENTS.labels(event.name).inc()
        try:
            payload = json.loads(event.payload)
            self.board.ledger.on_event(time.time(), event.name, payload, event.transaction_id, event.block)
        except (ValueError, KeyError, TypeError) as exc:
            # An event we cannot read is counted and shown, never a reason to stop watching.
            self.board.ledger.on_undecodable_event()
            log.warning("undecodable_ledger_event", extra={"event_name": event.name, "block": event.block,
                                                          "tx_id": event.transaction_id, "error": _describe(exc)})

    async def _poll(self, reader: LedgerReader, stop: asyncio.Event) -> None:
        while not stop.is_set():
            height = await _bounded(reader.height())
            self.board.ledger.heartbeat(time.time(), height)
            for lookup in self.board.ledger_lookups(time.time(), self.settings.lookups_max):
                await self._lookup(reader, lookup)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.poll_seconds)

    async def _lookup(self, reader: LedgerReader, lookup: Lookup) -> None:
        LOOKUPS.labels(lookup.kind).inc()
        view = self.board.ledger
        try:
            if lookup.kind == "model":
                model_id, version = lookup.key
                record = await _bounded(reader.get_model(model_id, version))
                view.on_model(time.time(), model_id, version, record)
            elif lookup.kind == "hold":
                view.on_hold(time.time(), lookup.key, await _bounded(reader.get_hold(lookup.key)))
            else:
                view.on_anchor(time.time(), lookup.key, await _bounded(reader.get_anchor(lookup.key)))
        except GatewayError as exc:
            if exc.transient:
                raise
            # The ledger refused this one read (a malformed id, say): shown on its row, asked again later.
            error = exc.chaincode_message
            if lookup.kind == "model":
                view.on_model(time.time(), *lookup.key, None, error=error)
            elif lookup.kind == "hold":
                view.on_hold(time.time(), lookup.key, None, error=error)
            else:
                view.on_anchor(time.time(), lookup.key, None, error=error)


async def _bounded(read: Awaitable[T]) -> T:
    """`read`, or TimeoutError after CALL_TIMEOUT_S. (`asyncio.timeout`, not `wait_for`: in Python
    3.11 wait_for loses a cancellation that lands as the read completes, and the reconnect hangs.)"""
    async with asyncio.timeout(CALL_TIMEOUT_S):
        return await read


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
