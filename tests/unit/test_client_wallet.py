"""`streamledger wallet` without servers: --expires, the identity options, the contract's refusals
named for a person (and their exit codes), receipts verified, and the readable output."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from streamledger.client import wallet as wallet_module
from streamledger.client.wallet import (
    EXIT_CODES,
    Wallet,
    WalletError,
    expiry,
    render,
    run_wallet,
    wallet_settings,
)
from streamledger.fabric.errors import EndorseError, EvaluateError
from streamledger.kafka.usage import HoldUsage, UsageUnreadable
from tests.unit.test_audit_bill import FORGER, HOLD_ID, hold, usage

ME = "Org2MSP::CN=User5"
NOW = 1_800_000_000.0


# -- arguments --

def test_expires_is_seconds_from_now_or_an_iso_time_with_a_zone() -> None:
    assert expiry("3600", now=NOW) == 1_800_003_600
    assert expiry("2030-01-01T00:00:00Z", now=NOW) == 1_893_456_000
    assert expiry("2030-01-01T01:00:00+01:00", now=NOW) == 1_893_456_000


@pytest.mark.parametrize("text, status", [
    ("0", "EXPIRED"), ("2020-01-01T00:00:00Z", "EXPIRED"), ("soon", "INVALID_ARGUMENT"),
    ("2030-01-01T00:00:00", "INVALID_ARGUMENT"), ("-5", "INVALID_ARGUMENT"),
])
def test_a_bad_or_past_expiry_is_refused_naming_the_option(text, status) -> None:
    with pytest.raises(WalletError) as refused:
        expiry(text, now=NOW)
    assert (refused.value.status, refused.value.field) == (status, "expires")


def test_the_identity_is_an_msp_folder_or_a_local_user(tmp_path: Path) -> None:
    by_folder = wallet_settings(str(tmp_path), "Org2MSP")
    assert (by_folder.fabric_msp_dir, by_folder.fabric_msp_id) == (tmp_path, "Org2MSP")
    local = wallet_settings(user="User5", org="Org2")
    assert (local.fabric_user, local.fabric_msp_id) == ("User5", "Org2MSP")
    assert wallet_settings(user="User5", org="Org2MSP").fabric_msp_id == "Org2MSP"
    with pytest.raises(WalletError, match="--msp-id"):
        wallet_settings(str(tmp_path))
    with pytest.raises(WalletError, match="not both"):
        wallet_settings(str(tmp_path), "Org2MSP", user="User5")


def test_no_usable_identity_is_a_configuration_error_exit_2(tmp_path: Path, capsys) -> None:
    code = run_wallet("balance", lambda w: w.balance(), lambda: wallet_settings(str(tmp_path / "nope"), "Org2MSP"),
                      True, Console())
    answer = json.loads(capsys.readouterr().out)
    assert (code, answer["status"]) == (2, "CONFIGURATION") and "identity" in answer["error"]


# -- the contract's answers --

def refusal(kind: type, text: str) -> Exception:
    return kind(f"chaincode response 500, {text}")


class FakeLedger:
    """The LedgerClient calls the wallet makes, answering from a table or raising a refusal."""

    def __init__(self, **answers: Any) -> None:
        self.answers = answers
        self.calls: list[tuple] = []

    def __getattr__(self, name: str):
        async def call(*args: Any) -> Any:
            self.calls.append((name, *args))
            answer = self.answers[name]
            if isinstance(answer, Exception):
                raise answer
            return answer
        return call


async def test_balance_with_what_open_holds_freeze() -> None:
    ledger = FakeLedger(balance=70, holds_of=[{**hold("OPEN", receipt=None), "client": ME},
                                              {**hold(), "client": ME}, {**hold("OPEN"), "client": "someone"}])
    answer = await Wallet(ledger, ME).balance()
    assert (answer["balance"], answer["frozen"], answer["open_holds"], answer["account_on_ledger"]) == (70, 100, 1, True)


async def test_an_account_never_credited_has_balance_0() -> None:
    ledger = FakeLedger(balance=refusal(EvaluateError, 'NOT_FOUND: "account": no account'), holds_of=[])
    answer = await Wallet(ledger, ME).balance()
    assert (answer["balance"], answer["account_on_ledger"]) == (0, False)


async def test_freeze_submits_a_fresh_nonce_and_returns_the_hold() -> None:
    ledger = FakeLedger(freeze={**hold("OPEN", receipt=None), "client": ME})
    answer = await Wallet(ledger, ME).freeze("Org1MSP::CN=provider", 100, 2, 1_800_000_000)
    (name, nonce, *args), = ledger.calls
    assert name == "freeze" and len(nonce) == 32 and args == ["Org1MSP::CN=provider", 100, 2, 1_800_000_000, 0]
    assert answer["hold"]["hold_id"] == HOLD_ID and answer["hold"]["role"] == "client"
    with pytest.raises(WalletError) as refused:
        await Wallet(ledger, ME).freeze("Org1MSP::CN=provider", 0, 2, 1_800_000_000)
    assert (refused.value.status, refused.value.field) == ("INVALID_ARGUMENT", "amount")


@pytest.mark.parametrize("call, error, status, code", [
    ("freeze", 'INSUFFICIENT_FUNDS: "amount": account "me" has 5, needs 100', "INSUFFICIENT_FUNDS", 1),
    ("freeze", 'INVALID_ARGUMENT: "expires_at": must be in the future', "INVALID_ARGUMENT", 2),
    ("release", 'WINDOW_OPEN: "hold_id": the client may release hold "h" from 1800000030 on', "WINDOW_OPEN", 3),
    ("release", 'FORBIDDEN: "hold_id": only the client of hold "h" may release it', "FORBIDDEN", 1),
    ("release", 'NOT_FOUND: "hold_id": no hold "h"', "NOT_FOUND", 4),
    ("release", 'ALREADY_SETTLED: "hold_id": hold "h" was already settled', "HOLD_CLOSED", 1),
    ("release", 'HOLD_EXPIRED: "hold_id": hold "h" expired', "EXPIRED", 2),
])
async def test_the_contracts_refusals_are_named_with_their_exit_codes(call, error, status, code) -> None:
    wallet = Wallet(FakeLedger(**{call: refusal(EndorseError, error)}), ME)
    with pytest.raises(WalletError) as refused:
        if call == "freeze":
            await wallet.freeze("Org1MSP::CN=provider", 100, 2, 1_800_000_000)
        else:
            await wallet.release(HOLD_ID)
    assert refused.value.status == status and EXIT_CODES[status] == code
    if status == "FORBIDDEN":
        assert f"hold {HOLD_ID} is not yours" in str(refused.value)


async def test_a_ledger_that_does_not_answer_is_unreachable_exit_5() -> None:
    wallet = Wallet(FakeLedger(holds_of=EvaluateError("connection refused")), ME)
    with pytest.raises(WalletError) as refused:
        await wallet.holds()
    assert refused.value.status == "LEDGER_UNREACHABLE" and EXIT_CODES["LEDGER_UNREACHABLE"] == 5


# -- receipts --

def with_usage(monkeypatch, records: list[dict[str, Any]] | Exception) -> None:
    async def usage_of(bootstrap, topic, hold_id, *, since_ms, until_ms, codec, timeout_s):
        if isinstance(records, Exception):
            raise records
        return HoldUsage(topic, records)
    monkeypatch.setattr(wallet_module, "usage_of", usage_of)


async def test_receipts_from_the_ledger_and_the_usage_topic_each_verified(monkeypatch) -> None:
    with_usage(monkeypatch, [usage("r1", 2, (3, 1)), usage("r2", 2, (5, 2))])
    answer = await Wallet(FakeLedger(get_hold={**hold(receipt=(5, 2)), "client": ME}), ME).receipts(HOLD_ID)
    assert answer["status"] == "VERIFIED" and answer["usage_records"] == 2
    assert [(r["units"], r["sequence"], r["sources"]) for r in answer["receipts"]] == [
        (3, 1, ["usage"]), (5, 2, ["ledger", "usage"])]


async def test_a_receipt_signed_by_someone_else_is_disputed(monkeypatch) -> None:
    with_usage(monkeypatch, [usage("r1", 2, (9, 3), signer=FORGER)])
    answer = await Wallet(FakeLedger(get_hold=hold(receipt=(5, 2))), ME).receipts(HOLD_ID)
    assert answer["status"] == "DISPUTED" and EXIT_CODES["DISPUTED"] == 1
    assert "1 of 2" in answer["detail"]


async def test_receipts_of_an_unknown_hold_or_an_unreadable_usage_topic(monkeypatch) -> None:
    with pytest.raises(WalletError) as refused:
        await Wallet(FakeLedger(get_hold=None), ME).receipts(HOLD_ID)
    assert refused.value.status == "NOT_FOUND"
    with_usage(monkeypatch, UsageUnreadable("broker away"))
    with pytest.raises(WalletError) as refused:
        await Wallet(FakeLedger(get_hold=hold()), ME).receipts(HOLD_ID)
    assert refused.value.status == "STORE_UNREACHABLE" and "broker away" in str(refused.value)


# -- readable output --

def rendered(action: str, answer: dict[str, Any]) -> str:
    out = io.StringIO()
    render(Console(file=out, width=240), action, answer)
    return out.getvalue()


async def test_each_answer_renders_for_a_person(monkeypatch) -> None:
    with_usage(monkeypatch, [usage("r1", 2, (9, 3), signer=FORGER)])
    row = {**hold("OPEN", receipt=None), "client": ME}
    ledger = FakeLedger(balance=70, holds_of=[row], freeze=row, release={**hold(), "client": ME}, get_hold=hold())
    w = Wallet(ledger, ME)
    assert "balance 70" in rendered("balance", await w.balance())
    assert HOLD_ID in rendered("freeze", await w.freeze("Org1MSP::CN=provider", 100, 2, 1_800_000_000))
    holds = rendered("holds", await w.holds())
    assert HOLD_ID in holds and "OPEN" in holds
    assert "charged 10, refunded 90" in rendered("release", await w.release(HOLD_ID))
    text = rendered("receipts", await w.receipts(HOLD_ID))
    assert "DISPUTED" in text and "does not verify" in text and "✓ verifies" in text
    assert "WINDOW_OPEN" in rendered("release", WalletError("WINDOW_OPEN", "from 1800000030 on").as_dict())
