"""Account statements (services/audit/statement.py) from the contract's answers."""

from __future__ import annotations

import json

import pytest

from services.audit.ports import InvalidArgument
from services.audit.statement import (
    AccountStatus,
    account_statement,
    build_statement,
    check_account,
)
from tests.unit.test_audit_verification import FakeLedger

ME = "Org1MSP::CN=User1@org1.streamledger.local,OU=client,L=San Francisco,ST=California,C=US"
SHOP = "provider-shop"


def hold(hold_id: str, client: str, provider: str, amount: int, status: str, charged: int = 0, refunded: int = 0,
         closed_at: str = "") -> dict:
    return {"hold_id": hold_id, "client": client, "provider": provider, "amount": amount, "authorized": charged,
            "charged": charged, "refunded": refunded, "status": status, "expires_at": 1_900_000_000,
            "created_at": "2026-01-01T00:00:00Z", "closed_at": closed_at, "freeze_tx_id": f"f-{hold_id}",
            "close_tx_id": f"c-{hold_id}" if status != "OPEN" else ""}


@pytest.fixture
def ledger() -> FakeLedger:
    ledger = FakeLedger()
    ledger.balances[ME] = 640
    ledger.holds = [
        hold("h-open", ME, SHOP, 100, "OPEN"),
        # Settled later than h-released, but its trimmed fraction sorts first as text.
        hold("h-settled", ME, SHOP, 200, "SETTLED", charged=150, refunded=50, closed_at="2026-01-03T10:00:05.12Z"),
        hold("h-released", ME, SHOP, 60, "RELEASED", refunded=60, closed_at="2026-01-03T10:00:05.1Z"),
        hold("h-earned", "someone-else", ME, 30, "SETTLED", charged=30, closed_at="2026-01-04T00:00:00Z"),
    ]
    ledger.histories[f"account:{ME}"] = [
        {"tx_id": "m1", "timestamp": "2026-01-01T00:00:00Z", "is_delete": False,
         "value": json.dumps({"id": ME, "balance": 1000})},
        {"tx_id": "f-h-open", "timestamp": "2026-01-01T00:01:00Z", "is_delete": False,
         "value": json.dumps({"id": ME, "balance": 640})},
    ]
    return ledger


async def test_balance_holds_settlements_history_and_totals(ledger) -> None:
    s = await account_statement(ledger, ME)
    assert s.status is AccountStatus.FOUND and s.balance == 640
    assert {h["hold_id"]: h["role"] for h in s.holds} == {"h-open": "client", "h-settled": "client",
                                                          "h-released": "client", "h-earned": "provider"}
    assert [x["hold_id"] for x in s.settlements] == ["h-released", "h-settled", "h-earned"]
    settled = s.settlements[1]
    assert (settled["charged"], settled["refunded"], settled["tx_id"], settled["counterparty"]) == \
        (150, 50, "c-h-settled", SHOP)
    assert s.settlements[2]["counterparty"] == "someone-else"
    assert s.totals == {"frozen": 100, "paid": 150, "refunded": 110, "earned": 30}
    assert [h["balance"] for h in s.history] == [1000, 640]
    assert sorted(ledger.calls) == ["Balance", "History", "HoldsOf"]


async def test_an_account_the_ledger_never_saw(ledger) -> None:
    s = await account_statement(ledger, "nobody")
    assert s.status is AccountStatus.NOT_FOUND and s.balance is None and s.holds == []


def test_a_provider_without_balance_of_its_own_is_found_by_its_holds() -> None:
    s = build_statement("p", None, [hold("h", "c", "p", 5, "OPEN")], [])
    assert s.status is AccountStatus.FOUND and s.totals["earned"] == 0 and s.totals["frozen"] == 0


def test_deleted_or_unreadable_history_entries_have_no_balance() -> None:
    s = build_statement("a", 1, [], [{"tx_id": "t", "timestamp": "x", "is_delete": True, "value": ""},
                                     {"tx_id": "u", "timestamp": "y", "is_delete": False, "value": "not json"}])
    assert [h["balance"] for h in s.history] == [None, None]


async def test_an_unreachable_ledger(ledger) -> None:
    ledger.down = True
    s = await account_statement(ledger, ME)
    assert s.status is AccountStatus.LEDGER_UNREACHABLE and s.balance is None


@pytest.mark.parametrize("bad, why", [("", "empty"), ("a\nb", "control"), ("x" * 1025, "1025 bytes"),
                                      ("é" * 513, "1026 bytes"), (None, "empty")])
def test_malformed_accounts_are_refused_by_name(bad, why) -> None:
    with pytest.raises(InvalidArgument) as refused:
        check_account(bad)
    assert refused.value.field == "account" and why in str(refused.value)
