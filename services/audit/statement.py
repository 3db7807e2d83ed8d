"""Account statements from the ledger: balance, holds, settlements and balance history.

    statement = await account_statement(ledger, "Org1MSP::CN=User1@org1.streamledger.local,...")
    statement.balance, statement.holds, statement.settlements, statement.totals

Everything comes from the contract (Balance, HoldsOf, History of `account:<id>`), never from
MongoDB. A settlement here is a closed hold (chaincode/ledger/holds.go): SETTLED pays
`charged` to the provider and refunds the rest to the client, RELEASED refunds it all;
`close_tx_id` is the transaction that closed it.
"""

from __future__ import annotations

import asyncio
import json
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

from services.audit.ports import InvalidArgument, LedgerReader, LedgerUnreachable

MAX_ACCOUNT_BYTES = 1024  # chaincode/ledger/validate.go maxAccountIDLen
OPEN = "OPEN"
HOLD_FIELDS = ("hold_id", "client", "provider", "amount", "authorized", "charged", "refunded", "status",
               "expires_at", "created_at", "closed_at", "freeze_tx_id", "close_tx_id")


class AccountStatus(StrEnum):
    FOUND = "FOUND"
    NOT_FOUND = "NOT_FOUND"
    LEDGER_UNREACHABLE = "LEDGER_UNREACHABLE"


@dataclass
class AccountStatement:
    account: str
    status: AccountStatus
    detail: str = ""
    balance: int | None = None
    holds: list[dict[str, Any]] = field(default_factory=list)
    settlements: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=lambda: {"frozen": 0, "paid": 0, "refunded": 0, "earned": 0})

    def as_dict(self) -> dict[str, Any]:
        return {"account": self.account, "status": self.status.value, "detail": self.detail, "balance": self.balance,
                "holds": self.holds, "settlements": self.settlements, "history": self.history, "totals": self.totals}


def check_account(account: Any) -> str:
    """The account id if the contract could hold it (the rule of chaincode/ledger/validate.go)."""
    if not isinstance(account, str) or not account:
        raise InvalidArgument("account", "must not be empty")
    try:
        size = len(account.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidArgument("account", f"contains {account[exc.start]!r}, which is not valid Unicode") from None
    if size > MAX_ACCOUNT_BYTES:
        raise InvalidArgument("account", f"is {size} bytes, more than the {MAX_ACCOUNT_BYTES} an account id may have")
    for char in account:
        if unicodedata.category(char) == "Cc" or char == "\U0010ffff":
            raise InvalidArgument("account", f"must not contain control characters or U+10FFFF, got {account!r}")
    return account


async def account_statement(ledger: LedgerReader, account: str) -> AccountStatement:
    account = check_account(account)
    try:
        balance, holds, history = await asyncio.gather(
            ledger.balance(account), ledger.holds_of(account), ledger.history(f"account:{account}"))
    except LedgerUnreachable as exc:
        return AccountStatement(account, AccountStatus.LEDGER_UNREACHABLE,
                                f"the ledger could not be read: {exc}", totals={})
    return build_statement(account, balance, holds, history)


def build_statement(account: str, balance: int | None, holds: Sequence[Mapping[str, Any]],
                    history: Sequence[Mapping[str, Any]]) -> AccountStatement:
    """The statement from the contract's answers, without I/O."""
    statement = AccountStatement(account, AccountStatus.FOUND, balance=balance)
    for hold in holds:
        role = "client" if hold.get("client") == account else "provider"
        entry = {"hold_id": hold.get("hold_id"), "role": role, **{k: hold.get(k) for k in HOLD_FIELDS if k != "hold_id"}}
        statement.holds.append(entry)
        amount, charged, refunded = (_int(hold.get(k)) for k in ("amount", "charged", "refunded"))
        if role == "client":
            if hold.get("status") == OPEN:
                statement.totals["frozen"] += amount
            statement.totals["paid"] += charged
            statement.totals["refunded"] += refunded
        else:
            statement.totals["earned"] += charged
        if hold.get("status") != OPEN:
            statement.settlements.append({
                "hold_id": hold.get("hold_id"), "role": role,
                "counterparty": hold.get("provider") if role == "client" else hold.get("client"),
                "status": hold.get("status"), "charged": charged, "refunded": refunded,
                "closed_at": hold.get("closed_at"), "tx_id": hold.get("close_tx_id")})
    statement.settlements.sort(key=lambda s: _instant(s["closed_at"]))
    statement.history = [{"tx_id": h.get("tx_id"), "timestamp": h.get("timestamp"),
                          "balance": _balance_of(h), "is_delete": bool(h.get("is_delete"))} for h in history]
    if balance is None and not statement.holds and not statement.history:
        statement.status = AccountStatus.NOT_FOUND
        statement.detail = f"the ledger has no account {account!r} and no hold naming it"
    else:
        closed = len(statement.settlements)
        statement.detail = (f"{len(statement.holds)} holds ({closed} closed), "
                            f"{len(statement.history)} balance changes on the ledger")
    return statement


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _instant(timestamp: Any) -> datetime:
    # RFC 3339 with a trimmed fraction does not sort as text ("05.12Z" < "05.1Z"): parse it.
    try:
        instant = datetime.fromisoformat(timestamp)
    except (TypeError, ValueError):
        return datetime.max.replace(tzinfo=timezone.utc)  # unknown times last
    return instant if instant.tzinfo else instant.replace(tzinfo=timezone.utc)


def _balance_of(entry: Mapping[str, Any]) -> int | None:
    """The balance an account history entry wrote (its value is the JSON account)."""
    if entry.get("is_delete"):
        return None
    try:
        value = json.loads(entry.get("value") or "null")
    except (TypeError, ValueError):
        return None
    balance = value.get("balance") if isinstance(value, dict) else None
    return balance if isinstance(balance, int) else None
