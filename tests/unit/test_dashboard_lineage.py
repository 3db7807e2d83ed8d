"""The dashboard's issue-25 parts without servers: bills from the usage topic against the ledger's
settlements, each model's registered versions, "–" for a model that has learned nothing, the
learning service's group shown connected though it has no members, and the lineage and bill
panels' questions to the audit API (answers passed on, an audit away said so, the token kept)."""

from __future__ import annotations

import asyncio
import json

import httpx

from services.dashboard.audit_link import AuditLink
from services.dashboard.board import FEED_LENGTH, Board
from services.dashboard.ledger_view import LedgerView
from services.dashboard.web import create_app
from streamledger.access import BearerToken
from tests.unit.test_dashboard_board import (
    FEEDS,
    SHA,
    frozen,
    ledger_board,
    settled,
    snapshot,
    ts,
)


def paid_usage(hold_id: str, request_id: str, units: int, receipt: tuple[int, int], version: int = 3) -> dict:
    return {"hold_id": hold_id, "request_id": request_id, "client": "Org2MSP::CN=demo", "model_id": "m1",
            "model_version": version, "units": units, "price": 20, "ts": ts(0), "receipt_units": receipt[0],
            "receipt_sequence": receipt[1], "receipt_signature": "sig"}


def metrics(position: int, version: int = 1, at: int = 0) -> dict:
    return {"model_id": "m1", "version": version, "position": position, "ts": ts(at), "metrics": {"Accuracy": 0.0},
            "drift": None}


# -- bills -----------------------------------------------------------------------------------

def test_a_hold_settled_on_its_receipt_is_paid_and_counts_each_request_once() -> None:
    board = ledger_board()
    board.on_record("use", paid_usage("h1", "r1", 2, (0, 0)))
    board.on_record("use", paid_usage("h1", "r2", 1, (2, 1), version=4))
    board.on_record("use", paid_usage("h1", "r2", 1, (2, 1), version=4))  # delivered twice
    board.ledger.on_event(1.0, "HoldFrozen", frozen("h1"), "tx-f", 10)
    (bill,) = board.frame(1.0)["bills"]
    assert (bill["requests"], bill["units"], bill["receipt_units"], bill["receipt_sequence"]) == (2, 3, 2, 1)
    assert bill["models"] == ["m1 v3", "m1 v4"] and bill["verdict"] == "open"
    board.ledger.on_event(2.0, "HoldSettled", settled("h1", units=2, price=20), "tx-s", 11)
    (bill,) = board.frame(2.0)["bills"]
    assert (bill["verdict"], bill["expected_charge"], bill["settlement"]["charged"]) == ("paid", 40, 40)
    json.dumps(board.frame(2.0))  # no set leaks into the frame


def test_a_charge_other_than_the_receipt_says_so_and_an_unread_hold_is_unknown() -> None:
    board = ledger_board()
    board.on_record("use", paid_usage("h1", "r1", 3, (1, 1)))
    board.on_record("use", paid_usage("h2", "r1", 3, (3, 1)))
    board.ledger.on_event(1.0, "HoldSettled", settled("h1", units=3, price=20), "tx-s", 11)
    verdicts = {b["hold_id"]: b["verdict"] for b in board.frame(1.0)["bills"]}
    assert verdicts == {"h1": "charge_differs", "h2": "unknown"}
    assert [b["hold_id"] for b in board.frame(1.0)["bills"]] == ["h2", "h1"]  # the latest used first
    assert any(lookup.key == "h2" for lookup in board.ledger_lookups(1.0))


def test_bills_are_bounded() -> None:
    board = ledger_board()
    for i in range(FEED_LENGTH + 5):
        board.on_record("use", paid_usage(f"h{i}", "r", 1, (1, 1)))
    bills = board.frame(1.0)["bills"]
    assert len(bills) == FEED_LENGTH and bills[0]["hold_id"] == f"h{FEED_LENGTH + 4}"


# -- models ----------------------------------------------------------------------------------

def test_each_models_versions_carry_their_registration_newest_first() -> None:
    board = ledger_board()
    board.on_record("snap", snapshot("m1", 1))
    board.on_record("snap", snapshot("m1", 2, sha256="cd" * 32))
    board.ledger.on_model(1.0, "m1", 1, {"model_id": "m1", "version": 1, "sha256": SHA, "tx_id": "tx-1"})
    board.ledger.on_model(1.0, "m1", 2, {"model_id": "m1", "version": 2, "sha256": "cd" * 32, "tx_id": "tx-2"})
    (model,) = board.frame(1.0)["models"]
    assert [(v["version"], v["ledger"]["status"]) for v in model["versions"]] == [(2, "registered"), (1, "registered")]


def test_a_model_that_learned_nothing_has_no_metric_value_not_zero() -> None:
    board = ledger_board()
    board.on_record("mm", metrics(position=0))
    (model,) = board.frame(1.0)["models"]
    assert model["metric"] == "Accuracy" and model["value"] is None and model["learned"] == 0
    board.on_record("mm", metrics(position=5))
    (model,) = board.frame(1.0)["models"]
    assert model["value"] == 0.0 and model["learned"] == 5


# -- the learning service's group --

def test_a_group_without_members_is_connected_while_it_commits_or_learning_publishes_metrics() -> None:
    board = Board({"clean": "clean"}, FEEDS, {"g-learn": "learning", "g-other": "storage"}, stale_after_s=10,
                  window_s=60, ledger=LedgerView(enabled=False))
    board.observe_offsets(0.0, {("clean", 0): 100})
    board.observe_group(0.0, "g-learn", {("clean", 0): 50}, members=0)
    board.observe_group(0.0, "g-other", {("clean", 0): 50}, members=0)
    board.observe_group(100.0, "g-learn", {("clean", 0): 50}, members=0)
    board.observe_group(100.0, "g-other", {("clean", 0): 50}, members=0)
    groups = {g["group"]: g for g in board.frame(100.0)["groups"]}
    assert not groups["g-learn"]["connected"] and groups["g-learn"]["status"] == "down"
    board.on_record("mm", metrics(position=60, at=95_000))  # learning publishes: alive, though no member
    groups = {g["group"]: g for g in board.frame(100.0)["groups"]}
    assert groups["g-learn"]["connected"] and groups["g-learn"]["status"] == "stale"
    assert not groups["g-other"]["connected"] and groups["g-other"]["status"] == "down"
    board.observe_group(101.0, "g-other", {("clean", 0): 60}, members=0)  # commits progress
    groups = {g["group"]: g for g in board.frame(101.0)["groups"]}
    assert groups["g-other"]["connected"] and groups["g-other"]["status"] == "ok"


# -- the audit API, through the dashboard --

def audit_api(seen: list[httpx.Request], status: int = 200, body: dict | None = None) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json=body if body is not None else {"status": "VERIFIED", "links": []})
    return httpx.MockTransport(handler)


async def ask(app, path: str, headers: dict | None = None) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dash") as client:
        return await client.get(path, headers=headers or {})


async def test_the_lineage_panel_asks_the_audit_api_for_the_trace_with_the_auditor_token() -> None:
    seen: list[httpx.Request] = []
    link = AuditLink("http://audit:8090/", "audit-secret", 5, transport=audit_api(seen))
    app = create_app(Board({}, FEEDS, {}), 1.0, asyncio.Event(), BearerToken("dash-secret"), audit=link)
    assert (await ask(app, "/api/trace?tenant=acme&event_id=a/b")).status_code == 401  # the dashboard's own rule
    answer = await ask(app, "/api/trace?tenant=acme&event_id=a/b&limit=5&page=2",
                       {"Authorization": "Bearer dash-secret"})
    assert answer.status_code == 200 and answer.json()["status"] == "VERIFIED"
    (request,) = seen
    assert request.url.raw_path.startswith(b"/v1/trace/a%2Fb")
    assert dict(request.url.params) == {"tenant": "acme", "limit": "5", "page": "2"}
    assert request.headers["authorization"] == "Bearer audit-secret"
    bill = await ask(app, "/api/bills/h1", {"Authorization": "Bearer dash-secret"})
    assert bill.status_code == 200 and seen[-1].url.path == "/v1/bills/h1"


async def test_the_audits_refusals_pass_through_and_an_audit_away_is_unreachable_not_a_verdict() -> None:
    refused = AuditLink("http://audit", None, 5, transport=audit_api(
        [], 400, {"status": "INVALID_ARGUMENT", "field": "tenant", "error": "tenant: is required"}))
    app = create_app(Board({}, FEEDS, {}), 1.0, asyncio.Event(), audit=refused)
    answer = await ask(app, "/api/trace?event_id=e1")
    assert answer.status_code == 400 and answer.json()["field"] == "tenant"

    def down(_request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")
    away = AuditLink("http://audit", None, 5, transport=httpx.MockTransport(down))
    answer = await ask(create_app(Board({}, FEEDS, {}), 1.0, asyncio.Event(), audit=away), "/api/trace?tenant=a&event_id=e")
    assert answer.status_code == 502 and answer.json()["status"] == "API_UNREACHABLE"
    assert "connection refused" in answer.json()["error"]
    none = await ask(create_app(Board({}, FEEDS, {}), 1.0, asyncio.Event()), "/api/bills/h1")
    assert none.status_code == 503 and none.json()["status"] == "API_UNREACHABLE"


def test_a_dead_groups_old_offsets_seen_at_start_do_not_make_it_connected() -> None:
    board = Board({"clean": "clean"}, FEEDS, {}, stale_after_s=10, window_s=60, ledger=LedgerView(enabled=False))
    board.observe_offsets(0.0, {("clean", 0): 100})
    board.observe_group(0.0, "g", {("clean", 0): 50}, members=0)
    board.observe_group(1.0, "g", {("clean", 0): 50}, members=0)
    assert not board.frame(1.0)["groups"][0]["connected"]


def test_a_member_less_group_that_stopped_committing_is_down_again_after_stale_after() -> None:
    board = Board({"clean": "clean"}, FEEDS, {}, stale_after_s=10, window_s=60, ledger=LedgerView(enabled=False))
    board.observe_offsets(0.0, {("clean", 0): 100})
    board.observe_group(0.0, "g", {("clean", 0): 50}, members=0)
    board.observe_group(1.0, "g", {("clean", 0): 60}, members=0)
    assert board.frame(1.0)["groups"][0]["connected"]
    board.observe_group(20.0, "g", {("clean", 0): 60}, members=0)
    group = board.frame(20.0)["groups"][0]
    assert not group["connected"] and group["status"] == "down"
