"""`streamledger wallet`: a paying client's credit on the ledger, acting as its own Fabric identity.

    async with Wallet.open(LedgerSettings(fabric_msp_id="Org2MSP", fabric_user="User5")) as wallet:
        await wallet.balance()                          # {"account", "balance", "frozen", "open_holds"}
        hold = await wallet.freeze(provider, amount=100, price_per_unit=2, expires_at=in_an_hour)
        await wallet.holds()                            # HoldsOf(me): every hold naming me
        await wallet.receipts(hold["hold_id"])          # the ledger's receipt + the usage topic's, verified
        await wallet.release(hold["hold_id"])           # from settle_by on; pays what the receipt covers

Every answer is a dict with a `status` (OK, or VERIFIED / DISPUTED for `receipts`); what the
contract refuses becomes a `WalletError` whose `status` names it for a person and a script:
INSUFFICIENT_FUNDS, EXPIRED (an expiry in the past, or a hold past its expiry), FORBIDDEN (a
hold that is not yours), WINDOW_OPEN (a release before settle_by), NOT_FOUND (no such hold),
HOLD_CLOSED (already settled or released), INVALID_ARGUMENT (naming the field), CONFIGURATION
(no usable identity), LEDGER_UNREACHABLE and STORE_UNREACHABLE (the usage topic). `run_wallet`
prints an answer (rich, or `--json`) and returns the exit code, as the audit CLI does:
0 OK / VERIFIED; 1 refused (INSUFFICIENT_FUNDS, FORBIDDEN, HOLD_CLOSED, CONFLICT) or DISPUTED (a
receipt that does not verify); 2 INVALID_ARGUMENT, EXPIRED, CONFIGURATION; 3 WINDOW_OPEN (ask
again later); 4 NOT_FOUND; 5 LEDGER_UNREACHABLE, STORE_UNREACHABLE.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table
from rich.text import Text

from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.core import contract_errors
from streamledger.core.hold_receipts import check_receipts
from streamledger.fabric import GatewayError, IdentityError
from streamledger.kafka import topics
from streamledger.kafka.usage import UsageUnreadable, usage_of
from streamledger.ledger import LedgerClient
from streamledger.settings import LedgerSettings

T = TypeVar("T")
USAGE_SLACK_MS = 5 * 60 * 1000
"""Usage is read from this long before the hold's Freeze to this long after it closed (peer and
broker clocks differ)."""

EXIT_CODES = {
    "OK": 0, "VERIFIED": 0,
    "DISPUTED": 1, "INSUFFICIENT_FUNDS": 1, "FORBIDDEN": 1, "HOLD_CLOSED": 1, "CONFLICT": 1, "REFUSED": 1,
    "INVALID_ARGUMENT": 2, "EXPIRED": 2, "CONFIGURATION": 2,
    "WINDOW_OPEN": 3,
    "NOT_FOUND": 4,
    "LEDGER_UNREACHABLE": 5, "STORE_UNREACHABLE": 5,
}

# The contract's refusals, as the wallet names them.
_REFUSALS: dict[type[contract_errors.ContractError], str] = {
    contract_errors.InsufficientFunds: "INSUFFICIENT_FUNDS",
    contract_errors.HoldExpired: "EXPIRED",
    contract_errors.Forbidden: "FORBIDDEN",
    contract_errors.WindowOpen: "WINDOW_OPEN",
    contract_errors.NotFound: "NOT_FOUND",
    contract_errors.HoldClosed: "HOLD_CLOSED",
    contract_errors.AlreadySettled: "HOLD_CLOSED",
    contract_errors.InvalidArgument: "INVALID_ARGUMENT",
    contract_errors.Conflict: "CONFLICT",
}


class WalletError(Exception):
    """What the wallet could not do; `status` names it (see the module doc), `field` the argument at fault."""

    def __init__(self, status: str, message: str, field: str = "") -> None:
        self.status = status
        self.field = field
        super().__init__(message)

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "field": self.field, "error": str(self)}


def wallet_settings(msp_dir: str | None = None, msp_id: str | None = None, user: str | None = None,
                    org: str | None = None) -> LedgerSettings:
    """Ledger settings acting as an MSP folder (`msp_dir` + `msp_id`), or as a local user of the
    stack (`user` of `org`, e.g. User5 of Org2), else as STREAMLEDGER_FABRIC_* say."""
    if msp_dir and user:
        raise WalletError("INVALID_ARGUMENT", "give either --msp-dir (with --msp-id) or --user (with --org), not both",
                          "msp_dir")
    if msp_dir:
        if not msp_id:
            raise WalletError("INVALID_ARGUMENT", "--msp-dir needs --msp-id, the MSP id of its organisation "
                                                  "(e.g. Org2MSP)", "msp_id")
        return LedgerSettings(fabric_msp_id=msp_id, fabric_msp_dir=msp_dir)
    if user:
        org = org or "Org2"
        return LedgerSettings(fabric_msp_id=org if org.endswith("MSP") else f"{org}MSP", fabric_user=user)
    return LedgerSettings()


def expiry(text: str, now: float | None = None) -> int:
    """`--expires` as unix seconds: seconds from now ("3600") or an ISO-8601 time with a zone."""
    now = time.time() if now is None else now
    text = text.strip()
    if text.isdigit():
        seconds = int(text)
        if seconds < 1:
            raise WalletError("EXPIRED", "--expires must be at least 1 second from now", "expires")
        return int(now) + seconds
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise WalletError("INVALID_ARGUMENT", f"--expires is seconds from now (e.g. 3600) or an ISO-8601 time "
                                              f"with a zone (e.g. 2030-01-01T12:00:00Z); got {text!r}",
                          "expires") from None
    if when.tzinfo is None:
        raise WalletError("INVALID_ARGUMENT", f"--expires {text!r} has no time zone: add Z or +HH:MM", "expires")
    at = int(when.timestamp())
    if at <= now:
        raise WalletError("EXPIRED", f"--expires {text} is in the past: a hold must expire in the future", "expires")
    return at


class Wallet:
    def __init__(self, ledger: LedgerClient, account: str, *, kafka_bootstrap: str = "",
                 usage_topic: str = topics.USAGE, usage_timeout_s: float = 30.0) -> None:
        self.ledger = ledger
        self.account = account
        self.kafka_bootstrap = kafka_bootstrap
        self.usage_topic = usage_topic
        self.usage_timeout_s = usage_timeout_s

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: LedgerSettings, usage_topic: str = topics.USAGE) -> AsyncIterator[Wallet]:
        """A wallet acting as the identity `settings` name (WalletError CONFIGURATION when it cannot)."""
        try:
            ledger = LedgerClient.connect(settings)
        except (IdentityError, OSError, ValueError) as exc:
            raise WalletError("CONFIGURATION", f"no usable Fabric identity: {exc}") from None
        async with ledger:
            me = await _asked("WhoAmI", ledger.who_am_i())
            yield cls(ledger, me["Account"], kafka_bootstrap=settings.kafka_bootstrap, usage_topic=usage_topic)

    async def balance(self) -> dict[str, Any]:
        try:
            balance = await self.ledger.balance(self.account)
            known = True
        except GatewayError as exc:
            if not isinstance(exc.contract_error, contract_errors.NotFound):
                raise _translated("Balance", exc) from exc
            balance, known = 0, False  # never credited
        holds = await self.holds()
        open_holds = [h for h in holds["holds"] if h["role"] == "client" and h["status"] == "OPEN"]
        return {"status": "OK", "account": self.account, "balance": balance, "account_on_ledger": known,
                "frozen": sum(h["amount"] for h in open_holds), "open_holds": len(open_holds)}

    async def freeze(self, provider: str, amount: int, price_per_unit: int, expires_at: int,
                     settlement_window_seconds: int = 0) -> dict[str, Any]:
        for name, value in (("amount", amount), ("price", price_per_unit)):
            if value < 1:
                raise WalletError("INVALID_ARGUMENT", f"--{name} must be a positive integer, got {value}", name)
        hold = await _asked("Freeze", self.ledger.freeze(uuid.uuid4().hex, provider, amount, price_per_unit,
                                                         expires_at, settlement_window_seconds))
        return {"status": "OK", "hold": _hold_row(hold, self.account)}

    async def holds(self) -> dict[str, Any]:
        holds = await _asked("HoldsOf", self.ledger.holds_of(self.account))
        return {"status": "OK", "account": self.account, "holds": [_hold_row(h, self.account) for h in holds]}

    async def release(self, hold_id: str) -> dict[str, Any]:
        hold = await _asked("Release", self.ledger.release(hold_id), hold_id)
        return {"status": "OK", "hold": _hold_row(hold, self.account)}

    async def receipts(self, hold_id: str) -> dict[str, Any]:
        """The hold's receipts: the one recorded on the ledger and those its usage records carry, each
        verified against the certificate that froze it; DISPUTED when one does not verify."""
        hold = await _asked("GetHold", self.ledger.get_hold(hold_id), hold_id)
        if hold is None:
            raise WalletError("NOT_FOUND", f"the ledger has no hold {hold_id!r}", "hold_id")
        try:
            found = await usage_of(self.kafka_bootstrap, self.usage_topic, hold_id, since_ms=_since_ms(hold),
                                   until_ms=_until_ms(hold), codec=AvroCodec(SchemaRegistry.from_dir()),
                                   timeout_s=self.usage_timeout_s)
        except UsageUnreadable as exc:
            raise WalletError("STORE_UNREACHABLE", f"the usage topic could not be read, so its receipts are "
                                                   f"unknown: {exc}") from exc
        checked = [r.as_dict() for r in check_receipts(hold, found.records)]
        bad = [r for r in checked if not r["verified"]]
        return {"status": "DISPUTED" if bad else "VERIFIED", "hold": _hold_row(hold, self.account),
                "usage_topic": found.topic, "usage_records": len(found.records), "receipts": checked,
                "detail": (f"{len(bad)} of {len(checked)} receipts do not verify against the certificate that "
                           f"froze the hold" if bad else f"all {len(checked)} receipts verify against the "
                                                         f"certificate that froze the hold")}


def _hold_row(hold: dict[str, Any], me: str) -> dict[str, Any]:
    receipt = hold.get("receipt") or {}
    return {"hold_id": hold.get("hold_id"), "role": "client" if hold.get("client") == me else "provider",
            "client": hold.get("client"), "provider": hold.get("provider"), "amount": hold.get("amount"),
            "price_per_unit": hold.get("price_per_unit"), "authorized": hold.get("authorized"),
            "status": hold.get("status"), "expires_at": hold.get("expires_at"), "settle_by": hold.get("settle_by"),
            "receipt_units": receipt.get("units"), "receipt_sequence": receipt.get("sequence"),
            "charged": hold.get("charged"), "refunded": hold.get("refunded"), "created_at": hold.get("created_at"),
            "close_tx_id": hold.get("close_tx_id")}


async def _asked(function: str, call: Awaitable[T], hold_id: str = "") -> T:
    try:
        return await call
    except GatewayError as exc:
        raise _translated(function, exc, hold_id) from exc


def _translated(function: str, exc: GatewayError, hold_id: str = "") -> WalletError:
    refusal = exc.contract_error
    if refusal is None:
        return WalletError("LEDGER_UNREACHABLE", f"{function}: the ledger did not answer: {exc}")
    status = next((name for kind, name in _REFUSALS.items() if isinstance(refusal, kind)), "REFUSED")
    if status == "FORBIDDEN" and hold_id and refusal.field == "hold_id":
        return WalletError(status, f"hold {hold_id} is not yours: {refusal.detail}", "hold_id")
    return WalletError(status, f"{function} refused: {refusal.message}", refusal.field)


def _since_ms(hold: dict[str, Any]) -> int:
    try:
        created = datetime.fromisoformat(str(hold.get("created_at")))
    except ValueError:
        return 0
    return max(0, int(created.timestamp() * 1000) - USAGE_SLACK_MS)


def _until_ms(hold: dict[str, Any]) -> int | None:
    """A closed hold's usage was written before it closed (plus the slack); an open one's goes on."""
    if hold.get("status") == "OPEN":
        return None
    try:
        return int(datetime.fromisoformat(str(hold.get("closed_at"))).timestamp() * 1000) + USAGE_SLACK_MS
    except ValueError:
        return None


# -- the command line: ask, print, exit by status --

def run_wallet(action: str, ask: Callable[[Wallet], Awaitable[dict[str, Any]]], settings: Callable[[], LedgerSettings],
               as_json: bool, console: Console, usage_topic: str = topics.USAGE) -> int:
    """Run `ask` on a wallet acting as `settings()`, print its answer (or the error), return the exit code."""
    async def asked() -> dict[str, Any]:
        async with Wallet.open(settings(), usage_topic) as wallet:
            return await ask(wallet)

    try:
        answer = asyncio.run(asked())
    except WalletError as exc:
        answer = exc.as_dict()
    except ValueError as exc:  # settings that do not validate
        answer = {"status": "CONFIGURATION", "field": "", "error": str(exc)}
    if as_json:
        print(json.dumps(answer, indent=2, ensure_ascii=False))
    else:
        render(console, action, answer)
    return EXIT_CODES.get(answer["status"], 1)


_STYLE = {"OK": "bold green", "VERIFIED": "bold green", "DISPUTED": "bold red", "WINDOW_OPEN": "bold yellow",
          "NOT_FOUND": "bold yellow", "LEDGER_UNREACHABLE": "bold magenta", "STORE_UNREACHABLE": "bold magenta"}


def render(console: Console, action: str, answer: dict[str, Any]) -> None:
    status = answer["status"]
    if "error" in answer:
        console.print(Text.assemble((status, _STYLE.get(status, "bold red")), "  ", answer.get("error", "")))
        return
    if action == "balance":
        console.print(Text.assemble(("balance ", "bold"), (str(answer["balance"]), "bold green"),
                                    f"  · frozen in {answer['open_holds']} open holds: {answer['frozen']}"))
        console.print(answer["account"], style="dim", highlight=False)
        if not answer["account_on_ledger"]:
            console.print("the ledger has no account for you yet: nothing was ever credited to it", style="dim")
    elif action in ("freeze", "release"):
        hold = answer["hold"]
        console.print(Text.assemble(("frozen " if action == "freeze" else "released ", "bold green"),
                                    (str(hold["hold_id"]), "bold")))
        console.print(_hold_line(hold), highlight=False)
    elif action == "holds":
        holds = answer["holds"]
        table = Table(title=f"holds of {answer['account']}", show_header=True, header_style="bold")
        for column in ("hold", "role", "status", "amount", "price", "authorized", "receipt", "charged", "expires",
                       "settle by"):
            table.add_column(column, overflow="fold")
        for h in holds:
            table.add_row(str(h["hold_id"]), str(h["role"]), str(h["status"]), str(h["amount"]),
                          str(h["price_per_unit"]), str(h["authorized"]),
                          f"{h['receipt_units']} units (#{h['receipt_sequence']})" if h["receipt_sequence"] else "-",
                          str(h["charged"]), _when(h["expires_at"]), _when(h["settle_by"]))
        console.print(table)
        if not holds:
            console.print("no holds name you", style="dim")
    elif action == "receipts":
        hold = answer["hold"]
        console.print(Text.assemble((status, _STYLE.get(status, "bold")), "  ", ("hold ", "bold"),
                                    (str(hold["hold_id"]), "bold")))
        console.print(answer["detail"], highlight=False)
        console.print(_hold_line(hold), highlight=False)
        table = Table(show_header=True, header_style="bold")
        for column in ("sequence", "units", "seen on", "requests", "signature"):
            table.add_column(column, overflow="fold")
        for r in answer["receipts"]:
            table.add_row(str(r["sequence"]), str(r["units"]), ", ".join(r["sources"]), str(len(r["request_ids"])),
                          Text("✓ verifies", style="green") if r["verified"] else Text(f"✗ {r['problem']}",
                                                                                       style="red"))
        console.print(table)
        console.print(f"{answer['usage_records']} usage records on {answer['usage_topic']}", style="dim")


def _hold_line(hold: dict[str, Any]) -> str:
    line = (f"{hold['status']} · {hold['amount']} at {hold['price_per_unit']} a unit for {hold['provider']} · "
            f"authorized {hold['authorized']} · expires {_when(hold['expires_at'])}")
    if hold["status"] == "OPEN":
        return f"{line} · you may release it from {_when(hold['settle_by'])}"
    return f"{line} · charged {hold['charged']}, refunded {hold['refunded']} in tx {hold['close_tx_id']}"


def _when(seconds: Any) -> str:
    if not isinstance(seconds, int) or isinstance(seconds, bool):
        return str(seconds)
    return (datetime.fromtimestamp(seconds, UTC).replace(microsecond=0).isoformat()
            .replace("+00:00", "Z"))


__all__ = ["EXIT_CODES", "Wallet", "WalletError", "expiry", "run_wallet", "wallet_settings"]
