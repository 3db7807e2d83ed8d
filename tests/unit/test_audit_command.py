"""`streamledger audit ...` without servers: exit codes by verdict, rendering, and the --api
mode's requests (percent-encoded paths, the token, the API's errors) on a mock transport."""

from __future__ import annotations

import io
import json

import httpx
import pytest
from rich.console import Console

from services.audit import command
from services.audit.command import ask_api, exit_code
from services.audit.render import render_account, render_model, render_verification
from tests.unit.test_audit_statement import ME

API = "http://audit.test:8090"


@pytest.mark.parametrize("status, code", [
    ("VERIFIED", 0), ("MATCH", 0), ("FOUND", 0), ("TAMPERED", 1), ("DELETED", 1), ("MISMATCH", 1),
    ("INVALID_ARGUMENT", 2), ("UNAUTHENTICATED", 2), ("NOT_ANCHORED_YET", 3), ("UNKNOWN", 4), ("NOT_REGISTERED", 4),
    ("NOT_FOUND", 4), ("LEDGER_UNREACHABLE", 5), ("STORE_UNREACHABLE", 5), ("API_UNREACHABLE", 5), ("SURPRISE", 1),
])
def test_exit_codes(status, code) -> None:
    assert exit_code(status) == code


def recording(answer: dict, status: int = 200) -> tuple[httpx.Client, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json=answer)
    return httpx.Client(transport=httpx.MockTransport(handler)), seen


def test_the_api_is_asked_with_encoded_paths_and_the_token() -> None:
    http, seen = recording({"status": "VERIFIED"})
    assert ask_api(http, API + "/", "tok", "verify", {"tenant": "acme co", "event_id": "a/b c"})["status"] == "VERIFIED"
    ask_api(http, API, None, "account", {"account": ME})
    ask_api(http, API, None, "model", {"model_id": "m1", "version": 3})
    ask_api(http, API, None, "model", {"model_id": "m1", "version": None})
    assert seen[0].url.raw_path == b"/v1/verify/a%2Fb%20c?tenant=acme+co" and seen[0].headers["authorization"] == "Bearer tok"
    assert seen[1].url.raw_path.startswith(b"/v1/accounts/Org1MSP%3A%3ACN%3DUser1") and "authorization" not in seen[1].headers
    assert seen[2].url.raw_path == b"/v1/models/m1?version=3" and seen[3].url.raw_path == b"/v1/models/m1"


def test_verify_without_a_tenant_exits_2_naming_it(capsys) -> None:
    http, seen = recording({"status": "VERIFIED"})
    ask_api(http, API, None, "verify", {"tenant": None, "event_id": "x"})
    assert seen[0].url.raw_path == b"/v1/verify/x"  # the API then answers INVALID_ARGUMENT naming the tenant

    code = command.run_audit("verify", {"tenant": None, "event_id": "x"}, True, None, None, Console())
    answer = json.loads(capsys.readouterr().out)
    assert code == 2 and (answer["status"], answer["field"]) == ("INVALID_ARGUMENT", "tenant")


def test_api_answers_that_are_not_audit_answers() -> None:
    http, _ = recording({"detail": "Not Found"}, 404)
    assert ask_api(http, API, None, "verify", {"event_id": "x"})["status"] == "API_UNREACHABLE"
    http, _ = recording({"status": "UNAUTHENTICATED"}, 401)
    answer = ask_api(http, API, None, "verify", {"event_id": "x"})
    assert answer["status"] == "UNAUTHENTICATED" and answer["error"]


def test_run_audit_against_an_api_that_is_not_there_exits_5(capsys) -> None:
    code = command.run_audit("verify", {"event_id": "x"}, True, "http://127.0.0.1:1", None, Console())
    assert code == 5 and json.loads(capsys.readouterr().out)["status"] == "API_UNREACHABLE"


def printed(render, answer: dict) -> str:
    out = io.StringIO()
    render(Console(file=out, width=200, color_system=None), answer)
    return out.getvalue()


def test_a_person_reads_the_verdict_and_each_step() -> None:
    text = printed(render_verification, {
        "event_id": "e1", "status": "TAMPERED", "reason": "record_changed", "detail": "the record was changed",
        "problems": [{"reason": "record_changed", "detail": "the record was changed"}],
        "record": {"event_id": "e1", "tenant": "t", "source": "s", "ts": "2026-01-01T00:00:00.000Z",
                   "features": {"a": 1.0}, "label": None},
        "recomputed_hash": "1" * 64, "stored_hash": "2" * 64,
        "proof": {"batch_id": "b:0:0-1", "index": 0, "size": 2, "content_hash": "2" * 64, "siblings": ["3" * 64]},
        "computed_root": "4" * 64,
        "anchor": {"batch_id": "b:0:0-1", "merkle_root": "4" * 64, "count": 2, "tx_id": "tx9", "block_number": 12,
                   "tx_validation": "VALID"}})
    assert text.startswith("TAMPERED  e1")
    for expected in ("recomputed hash", "✗ = proof leaf", "✓ = ledger root", "tx9", "12", "sibling 0",
                     "record_changed"):
        assert expected in text


def test_model_and_account_renderings() -> None:
    model = printed(render_model, {"model_id": "m", "version": 2, "status": "MISMATCH", "detail": "differs",
                                   "registered": {"sha256": "a" * 64, "tx_id": "t", "block_number": 3},
                                   "snapshot": {"sha256": "b" * 64}, "latest_registered": 2, "latest_snapshot": 2})
    assert model.startswith("MISMATCH  m v2") and "✗ = snapshot" in model
    account = printed(render_account, {
        "account": "acct", "status": "FOUND", "detail": "", "balance": 7,
        "holds": [{"hold_id": "h1", "role": "client", "provider": "p", "status": "SETTLED", "amount": 5,
                   "charged": 3, "refunded": 2, "close_tx_id": "ctx"}],
        "settlements": [{"hold_id": "h1", "status": "SETTLED", "charged": 3, "refunded": 2, "closed_at": "z",
                         "tx_id": "ctx"}],
        "history": [{"timestamp": "t", "balance": 7, "tx_id": "m1", "is_delete": False}],
        "totals": {"frozen": 0, "paid": 3, "refunded": 2, "earned": 0}})
    assert "balance 7" in account and "ctx" in account and "h1" in account


def test_a_ca_file_that_cannot_be_used_is_a_configuration_error_naming_the_setting(capsys, tmp_path) -> None:
    code = command.run_audit("verify", {"event_id": "x"}, True, "https://127.0.0.1:1", None, Console(),
                             ca=tmp_path / "missing.pem")
    answer = json.loads(capsys.readouterr().out)
    assert code == 2 and answer["status"] == "CONFIGURATION" and "STREAMLEDGER_AUDIT_API_CA" in answer["error"]
    (tmp_path / "junk.pem").write_text("not a certificate")
    assert command.run_audit("verify", {"event_id": "x"}, True, "https://127.0.0.1:1", None, Console(),
                             ca=tmp_path / "junk.pem") == 2
