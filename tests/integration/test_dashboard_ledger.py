"""The dashboard's ledger watcher on the real local Fabric network: what it reports of model
registrations, freezes, settlements and anchors this test commits through the gateway client,
what it reads with point lookups for things committed before it started, and an unreachable peer.

The dashboard reads as its own identity, `dashboard` (an auditor); the commits are made by
the identity each role needs: Org1's `Admin` mints, `registry` registers, `anchoring`
anchors, `settlement` settles the holds paid to Org1's `provider`, Org2's `User5` freezes and
signs the receipts they settle on.
The ledger keeps its state between runs, so every id is unique to the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from typing import Any

import pytest

from devstack.fabric import FabricNetwork
from services.dashboard.app import build_board, build_ledger_watch
from services.dashboard.board import Board
from services.dashboard.settings import DashboardSettings
from streamledger.core.receipts import hold_id, sign_receipt
from streamledger.ledger import LedgerClient
from streamledger.settings import LedgerSettings
from tests.integration.conftest import identity
from tests.integration.paying import in_an_hour, new_nonce, signer_of

pytestmark = [pytest.mark.integration, pytest.mark.fabric]


def settings(**overrides: Any) -> DashboardSettings:
    return DashboardSettings(dashboard_ledger=True, dashboard_ledger_poll_seconds=0.5,
                             dashboard_ledger_recheck_seconds=1.0, dashboard_ledger_retry_max_seconds=1.0,
                             **overrides)


@contextlib.asynccontextmanager
async def watching(dashboard: DashboardSettings, ledger: LedgerSettings) -> AsyncIterator[Board]:
    """A board fed by the ledger watcher as `serve dashboard` builds it (no Kafka needed)."""
    board = build_board(dashboard)
    watch = build_ledger_watch(dashboard, board, ledger)
    assert watch is not None
    stop = asyncio.Event()
    task = asyncio.create_task(watch.run(stop))
    try:
        yield board
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)  # stops promptly, and never died on its own


async def until(condition: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met within {timeout_s} s"
        await asyncio.sleep(0.1)


def frame(board: Board) -> dict[str, Any]:
    return board.frame(time.time())


def model_ledger(board: Board, model_id: str) -> dict[str, Any]:
    (model,) = [m for m in frame(board)["models"] if m["model_id"] == model_id]
    return model["ledger"]


def settlement(board: Board, hold_id: str) -> dict[str, Any]:
    (record,) = [r for r in frame(board)["usage"]["records"] if r["hold_id"] == hold_id]
    return record["settlement"]


def feed_entry(board: Board, hold_id: str, event: str) -> dict[str, Any] | None:
    return next((e for e in frame(board)["usage"]["feed"] if e["hold_id"] == hold_id and e["event"] == event), None)


def now() -> datetime:
    return datetime.now(timezone.utc)


def show_snapshot(board: Board, model_id: str, version: int, sha256: str) -> None:
    """What KafkaWatch hands the board for a ModelSnapshot on models.snapshots."""
    board.on_record(board.feeds.snapshots, {"model_id": model_id, "version": version, "sha256": sha256,
                                            "events_seen": 100, "created": now(), "format": "pickle",
                                            "offsets": [], "metrics": {}, "model": b""})


def show_usage(board: Board, hold_id: str, client: str) -> None:
    board.on_record(board.feeds.usage, {"hold_id": hold_id, "request_id": f"r-{hold_id}", "client": client,
                                        "model_id": "m", "model_version": 1, "units": 3, "price": 20, "ts": now()})


def show_anchor(board: Board, batch_id: str, root: str, tx_id: str, block: int) -> None:
    board.on_record(board.feeds.anchors, {"batch_id": batch_id, "merkle_root": root, "count": 42,
                                          "topic": board.feeds.clean, "partition": 0, "first_offset": 1000,
                                          "last_offset": 1041, "tx_id": tx_id, "block": block, "ts": now()})


@pytest.fixture
def suffix() -> str:
    return uuid.uuid4().hex[:10]


DASHBOARD = identity("dashboard")


@contextlib.asynccontextmanager
async def ledger_as(user: str, org: str = "Org1") -> AsyncIterator[LedgerClient]:
    async with LedgerClient.connect(identity(user, org)) as ledger:
        yield ledger


@pytest.fixture
async def admin(network: FabricNetwork) -> AsyncIterator[LedgerClient]:
    """Org1's admin: mints."""
    async with ledger_as("Admin") as ledger:
        yield ledger


@pytest.fixture
async def user(network: FabricNetwork) -> AsyncIterator[LedgerClient]:
    """A client of Org2."""
    async with ledger_as("User5", "Org2") as ledger:
        yield ledger


@pytest.fixture
async def operator(network: FabricNetwork) -> AsyncIterator[tuple[LedgerClient, LedgerClient]]:
    """The registry (registers models) and anchoring (anchors batches) identities."""
    async with ledger_as("registry") as registry, ledger_as("anchoring") as anchoring:
        yield registry, anchoring


@pytest.fixture
async def settler(network: FabricNetwork) -> AsyncIterator[LedgerClient]:
    """Provider acting for Org1's `provider` account."""
    async with ledger_as("settlement") as ledger:
        yield ledger


async def test_the_watcher_reports_registrations_freezes_settlements_and_anchors_as_they_commit(
        admin: LedgerClient, user: LedgerClient, operator: tuple[LedgerClient, LedgerClient],
        settler: LedgerClient, suffix: str) -> None:
    registry, anchoring = operator
    me = (await user.who_am_i())["Account"]
    provider = (await settler.who_am_i())["ActsFor"]
    await admin.mint(me, 500)
    # The dashboard reads as its own identity, an auditor: nothing it does needs more than reading.
    async with watching(settings(), DASHBOARD) as board:
        await until(lambda: frame(board)["ledger"]["status"] == "connected", what="ledger connected")
        assert "CN=dashboard@org1" in frame(board)["ledger"]["identity"]

        # Models: the current snapshot's hash registered, registered with another hash, not registered.
        good, other, missing = f"dash-ok-{suffix}", f"dash-other-{suffix}", f"dash-missing-{suffix}"
        digest = uuid.uuid4().hex * 2
        await registry.register_model(good, 1, uuid.uuid4().hex * 2)  # versions go up by one from 1
        registered = await registry.register_model(good, 2, digest)
        await registry.register_model(other, 1, uuid.uuid4().hex * 2)
        show_snapshot(board, good, 2, digest)
        show_snapshot(board, other, 1, digest)
        show_snapshot(board, missing, 1, digest)
        await until(lambda: model_ledger(board, good)["status"] == "registered", what="model registered")
        assert model_ledger(board, good)["tx_id"] == registered["tx_id"]
        await until(lambda: model_ledger(board, other)["status"] == "mismatch", what="hash mismatch")
        await until(lambda: model_ledger(board, missing)["status"] == "not_registered", what="not registered")

        # A freeze, then its settlement: the feed and the usage record's hold follow the ledger.
        nonce = new_nonce()
        hold = hold_id(me, nonce)
        show_usage(board, hold, me)
        await until(lambda: settlement(board, hold)["status"] == "not_found", what="hold not on the ledger yet")
        freeze = await user.contract.submit("Freeze", nonce, provider, 100, 20, in_an_hour(), 0)  # 20 a unit
        await until(lambda: feed_entry(board, hold, "frozen") is not None, what="freeze in the feed")
        entry = feed_entry(board, hold, "frozen")
        assert entry is not None
        assert (entry["client"], entry["provider"], entry["amount"], entry["tx_id"], entry["block"]) == (
            me, provider, 100, freeze.transaction_id, freeze.block_number)
        await until(lambda: settlement(board, hold)["status"] == "open", what="hold open")

        await settler.authorize(hold, 60)
        settled = await settler.settle(hold, sign_receipt(signer_of("User5"), hold, 3, 1))  # the client's receipt
        await until(lambda: feed_entry(board, hold, "settled") is not None, what="settlement in the feed")
        entry = feed_entry(board, hold, "settled")
        assert entry is not None
        assert (entry["charged"], entry["refunded"], entry["amount"], entry["tx_id"], entry["block"]) == (
            60, 40, 100, settled.transaction_id, settled.block_number)
        assert settlement(board, hold) == {"status": "settled", "amount": 100, "charged": 60, "refunded": 40,
                                           "tx_id": settled.transaction_id}
        assert frame(board)["usage"]["feed"][0]["hold_id"] == hold  # newest first

        # An anchor on ledger.anchors, confirmed by the ledger's BatchAnchored event.
        batch, root = f"dash-{suffix}:0:1000-1041", uuid.uuid4().hex * 2  # <topic>:<partition>:<first>-<last>
        anchored = await anchoring.anchor_batch(batch, root, 42, 1000, 1041)
        show_anchor(board, batch, root, anchored.transaction_id, anchored.block_number)
        await until(lambda: frame(board)["anchors"]["latest"][0]["ledger"]["status"] == "confirmed",
                    what="anchor confirmed")
        assert frame(board)["anchors"]["latest"][0]["ledger"]["block"] == anchored.block_number
        assert any(a["batch_id"] == batch and a["merkle_root"] == root for a in frame(board)["anchors"]["confirmed"])
        summary = frame(board)["ledger"]
        assert summary["status"] == "connected" and summary["last_block"] >= anchored.block_number
        assert summary["counts"]["settled"] >= 1 and summary["undecodable"] == 0


async def test_what_was_committed_before_the_watcher_started_is_read_with_point_lookups(
        admin: LedgerClient, user: LedgerClient, operator: tuple[LedgerClient, LedgerClient],
        settler: LedgerClient, suffix: str) -> None:
    registry, _ = operator
    me = (await user.who_am_i())["Account"]
    provider = (await settler.who_am_i())["ActsFor"]
    await admin.mint(me, 200)
    model, digest = f"dash-early-{suffix}", uuid.uuid4().hex * 2
    await registry.register_model(model, 1, digest)
    settling, staying_open = new_nonce(), new_nonce()
    settled_hold, open_hold = hold_id(me, settling), hold_id(me, staying_open)
    await user.freeze(settling, provider, 50, 30, in_an_hour())
    await settler.authorize(settled_hold, 30)
    settled = await settler.settle(settled_hold, sign_receipt(signer_of("User5"), settled_hold, 1, 1))
    await user.freeze(staying_open, provider, 20, 5, in_an_hour())
    async with watching(settings(dashboard_ledger_history_blocks=0), DASHBOARD) as board:
        await until(lambda: frame(board)["ledger"]["status"] == "connected", what="ledger connected")
        show_snapshot(board, model, 1, digest)
        show_usage(board, settled_hold, me)
        show_usage(board, open_hold, me)
        await until(lambda: model_ledger(board, model)["status"] == "registered", what="model registered")
        await until(lambda: settlement(board, settled_hold)["status"] == "settled", what="hold settled")
        assert (settlement(board, settled_hold)["charged"], settlement(board, settled_hold)["tx_id"]) == (
            30, settled.transaction_id)
        await until(lambda: settlement(board, open_hold)["status"] == "open", what="hold open")
        assert feed_entry(board, settled_hold, "settled") is None  # no history was read back


async def test_an_unreachable_peer_is_shown_and_retried(network: FabricNetwork) -> None:
    async with watching(settings(), identity("dashboard", fabric_peer_endpoint="127.0.0.1:1")) as board:
        await until(lambda: frame(board)["ledger"]["status"] == "unreachable", what="ledger unreachable")
        assert "UNAVAILABLE" in frame(board)["ledger"]["error"]
        show_usage(board, "h-any", "someone")
        assert settlement(board, "h-any")["status"] == "unreachable"
