"""Paid mode's `HoldSource` in a child process: the ledger's holds read and reserved beside the
server, so that the Fabric Gateway client's CPU never runs on the event loop that serves requests.

    async with HoldProcess(HoldHello.of(LedgerSettings(), "inference")) as holds:   # a HoldSource
        hold = await holds.hold(hold_id)             # Hold(...) or None
        hold = await holds.reserve(hold_id, 500)     # 500 credit more reserved; the hold after it
        why = await holds.verify(client_cert_pem, receipt)   # None: the certificate's key signed it

Why: an `Authorize` costs the gateway client about 4 ms of CPU (protobuf, two ECDSA signatures,
the commit-status stream) and a `GetHold` about 1 ms, spread over several callbacks of the loop
that runs them. On the serving loop each callback delays the requests that arrive meanwhile:
a busy hold's reservations and re-reads showed in paid mode's 1-row p99. Receipts' signatures
are checked here too (`CreditMeter`'s background checks): an ECDSA verification (~70-300 us)
holds the GIL throughout, so in a thread of the server it stalled the serving loop as long. In
the child (`streamledger.child`, a fresh interpreter) each costs the serving process one message
each way.

The child runs `LedgerHoldSource` (ledger_holds.py) as the service's identity: every call is a
message `(call, "hold" | "reserve" | "verify", args...)` answered by `(call, True, hold)` or `(call, False,
error)`, calls run concurrently. The refusals cross as they are (`AuthorizationError`s,
`NothingToReserve`); anything else the child did not expect becomes `HoldUnavailable` naming it (the
caller may retry). If the child dies, every call waiting and every later one is `HoldUnavailable`,
`died` is set and `failure` says how (`ChildDied`): the service stops, as it does without its
record writer (app.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from services.inference.authorization import (
    AuthorizationError,
    Hold,
    HoldSource,
    HoldUnavailable,
    NothingToReserve,
)
from services.inference.ledger_holds import LedgerHoldSource
from streamledger import child
from streamledger.child import Child, ChildDied, Hello, Parent
from streamledger.core.receipts import InvalidReceipt, Receipt, ReceiptKey
from streamledger.ledger import LedgerClient
from streamledger.logging import get_logger
from streamledger.settings import LedgerSettings

log = get_logger("inference")
PROGRAM = "services.inference.hold_process"
_STOP_SECONDS = 30.0
"""How long the calls in flight at shutdown may take (a reservation waits for its commit)."""


class HoldHello(Hello):
    """The child's settings: where the ledger is, and the identity to act as."""

    ledger: dict[str, Any]
    """A `LedgerSettings` dump."""
    identity: str

    @classmethod
    def of(cls, ledger: LedgerSettings, identity: str, log_level: str = "INFO") -> HoldHello:
        return cls(ledger=ledger.model_dump(mode="json"), identity=identity, log_level=log_level)


class HoldProcess:
    """The serving side: a `HoldSource` whose calls the child answers."""

    def __init__(self, hello: HoldHello, program: str = PROGRAM) -> None:
        self.hello = hello
        self.program = program
        self.died = asyncio.Event()
        """Set if the child ended before `close`."""
        self.failure: ChildDied | None = None
        self._child: Child | None = None
        self._calls: dict[int, asyncio.Future] = {}
        self._next = 0
        self._receiving: asyncio.Task | None = None
        self._closing = False

    async def __aenter__(self) -> HoldProcess:
        """Start the child and wait until its ledger client is connected (`ChildDied` if it cannot)."""
        self._child = await Child.start(self.program, self.hello, name="ledger holds")
        self._receiving = asyncio.create_task(self._receive())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    async def hold(self, hold_id: str) -> Hold | None:
        return await self._call("hold", hold_id)

    async def reserve(self, hold_id: str, credit: int) -> Hold:
        return await self._call("reserve", hold_id, credit)

    async def verify(self, client_cert_pem: str, receipt: Receipt) -> str | None:
        """None if the key of `client_cert_pem` signed `receipt`, else why not (`HoldUnavailable` if the
        child is gone: the receipt is not checked, not found forged)."""
        return await self._call("verify", client_cert_pem, receipt)

    async def close(self) -> None:
        """Let the child answer the calls in flight, then end it."""
        self._closing = True
        if self._child is None:
            return
        self._child.finish()
        if self._receiving is not None:
            done, _ = await asyncio.wait({self._receiving}, timeout=_STOP_SECONDS)
            if not done:
                self._receiving.cancel()
                await asyncio.gather(self._receiving, return_exceptions=True)
        await self._child.close(timeout=_STOP_SECONDS)
        self._fail_waiting("the hold process was stopped")

    async def _call(self, *request: Any) -> Any:
        if self.failure is not None or self._child is None or self._closing:
            raise HoldUnavailable(f"the ledger cannot be reached right now: {self.failure or 'the server is stopping'}")
        self._next += 1
        call = self._next
        answer = self._calls[call] = asyncio.get_running_loop().create_future()
        self._child.send((call, *request))
        try:
            return await answer
        finally:
            self._calls.pop(call, None)

    async def _receive(self) -> None:
        try:
            while (message := await self._child.receive()) is not None:
                call, ok, value = message
                answer = self._calls.get(call)
                if answer is None or answer.done():  # its caller gave up (cancelled)
                    continue
                if ok:
                    answer.set_result(value)
                else:
                    answer.set_exception(value)
        except ChildDied as exc:
            if not self._closing:
                self.failure = exc
                log.error("hold_process_died", extra={"error": str(exc)})
                self.died.set()
        self._fail_waiting(str(self.failure or "the hold process was stopped"))

    def _fail_waiting(self, why: str) -> None:
        for answer in self._calls.values():
            if not answer.done():
                answer.set_exception(HoldUnavailable(f"the ledger cannot be reached right now: {why}"))
        self._calls.clear()


async def serve(hello: HoldHello, parent: Parent) -> None:
    """The child: each call from `parent` answered by `LedgerHoldSource` on a ledger client of its own."""
    async with LedgerClient.connect(LedgerSettings(**hello.ledger), service_identity=hello.identity) as ledger:
        parent.ready()
        await answer_calls(LedgerHoldSource(ledger), parent)


async def answer_calls(source: HoldSource, parent: Parent) -> None:
    """Answer each call from `parent` with `source`, concurrently, until the parent stops (the calls in
    flight then are answered first)."""
    answering: set[asyncio.Task] = set()
    while (message := await parent.receive()) is not None:
        task = asyncio.create_task(_answer(source, parent, *message))
        answering.add(task)
        task.add_done_callback(answering.discard)
    await asyncio.gather(*answering)


async def _answer(source: HoldSource, parent: Parent, call: int, kind: str, *args: Any) -> None:
    unexpected = None
    try:
        if kind == "hold":
            answer = (call, True, await source.hold(*args))
        elif kind == "reserve":
            answer = (call, True, await source.reserve(*args))
        elif kind == "verify":
            answer = (call, True, _verified(*args))
        else:
            raise ValueError(f"unknown call {kind!r}")
    except (AuthorizationError, NothingToReserve) as exc:
        exc.__cause__ = exc.__context__ = None  # the gateway's error stays here (ledger_holds logs what matters)
        answer = (call, False, exc)
    except Exception as exc:  # noqa: BLE001 - answered, so that the caller is not left waiting
        unexpected = exc
        answer = (call, False, HoldUnavailable(f"the ledger call {kind} failed unexpectedly: {exc!r}"))
    parent.send(answer)
    if unexpected is not None:
        log.error("hold_call_failed", extra={"call": kind, "arguments": repr(args), "error": repr(unexpected)})


_KEYS: dict[str, ReceiptKey] = {}
"""Client keys by certificate (PEM), each parsed once (a few thousand at most)."""


def _verified(client_cert_pem: str, receipt: Receipt) -> str | None:
    """None if the key of `client_cert_pem` signed `receipt`, else why not."""
    try:
        key = _KEYS.get(client_cert_pem)
        if key is None:
            key = ReceiptKey(client_cert_pem)
            if len(_KEYS) >= 4096:
                _KEYS.clear()
            _KEYS[client_cert_pem] = key
        key.verify(receipt)
    except InvalidReceipt as exc:
        return str(exc)
    return None


if __name__ == "__main__":
    child.run(serve, HoldHello)
