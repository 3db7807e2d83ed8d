"""The audit API's two faces on fakes of the core's ports, no server: the HTTP app driven in
memory (httpx's ASGI transport), the gRPC servicer with a stand-in call context."""

from __future__ import annotations

from urllib.parse import quote

import grpc
import httpx
import pytest

from services.audit.auditor import Auditor
from services.audit.grpc_api import REPORT_METADATA_KEY, AuditServicer, audit_pb2
from services.audit.http_api import build_http_app
from streamledger.access import BearerToken
from tests.unit.test_audit_provenance import register, store_snapshot
from tests.unit.test_audit_statement import ME, hold
from tests.unit.test_audit_verification import (
    FakeLedger,
    FakeStore,
    anchored_batch,
    clean_event,
)

TOKEN = "s3cret-auditor-token-0123456789"


@pytest.fixture
def world():
    store, ledger = FakeStore(), FakeLedger()
    ids = anchored_batch(store, ledger, 5)
    slashed = clean_event(9, "dir/with/slash")
    store.events[slashed["event_id"]] = slashed
    register(ledger, 1, "a" * 64)
    store_snapshot(store, 1, "a" * 64)
    ledger.balances[ME] = 10
    ledger.holds = [hold("h1", ME, "shop", 5, "SETTLED", charged=3, refunded=2, closed_at="2026-01-03T00:00:00Z")]
    return store, ledger, ids, slashed["event_id"]


def client(store, ledger, token: str | None = None) -> httpx.AsyncClient:
    app = build_http_app(Auditor(store, ledger), BearerToken(token))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://audit")


# -- HTTP --

async def test_http_verify_answers_every_verdict_with_200(world) -> None:
    store, ledger, ids, slashed = world
    store.events[ids[1]]["label"] = "edited"
    async with client(store, ledger) as http:
        ok = await http.get(f"/v1/verify/{ids[0]}", params={"tenant": "acme"})
        tampered = await http.get(f"/v1/verify/{ids[1]}", params={"tenant": "acme"})
        unknown = await http.get("/v1/verify/nope", params={"tenant": "acme"})
        pending = await http.get(f"/v1/verify/{quote(slashed, safe='')}", params={"tenant": "acme"})
    assert ok.status_code == tampered.status_code == unknown.status_code == pending.status_code == 200
    assert ok.json()["status"] == "VERIFIED" and ok.json()["anchor"]["block_number"] == 7
    assert (tampered.json()["status"], tampered.json()["reason"]) == ("TAMPERED", "record_changed")
    assert unknown.json()["status"] == "UNKNOWN"
    assert (pending.json()["status"], pending.json()["event_id"]) == ("NOT_ANCHORED_YET", slashed)


async def test_http_malformed_questions_are_400_naming_the_field(world) -> None:
    store, ledger, *_ = world
    async with client(store, ledger) as http:
        empty = await http.get("/v1/verify/", params={"tenant": "acme"})
        long = await http.get(f"/v1/verify/{'x' * 300}", params={"tenant": "acme"})
        version = await http.get("/v1/models/phishing-logreg", params={"version": "two"})
        model = await http.get("/v1/models/bad%20id")
        no_tenant = await http.get("/v1/verify/evt-1")
    assert "required" in no_tenant.json()["error"]
    for answer, field in ((empty, "event_id"), (long, "event_id"), (version, "version"), (model, "model_id"),
                          (no_tenant, "tenant")):
        assert answer.status_code == 400, answer.text
        assert answer.json()["status"] == "INVALID_ARGUMENT" and answer.json()["field"] == field


async def test_http_unreachable_ledger_is_503_with_the_evidence_so_far(world) -> None:
    store, ledger, ids, _ = world
    ledger.down = True
    async with client(store, ledger) as http:
        answer = await http.get(f"/v1/verify/{ids[0]}", params={"tenant": "acme"})
        model = await http.get("/v1/models/phishing-logreg")
        account = await http.get(f"/v1/accounts/{quote(ME, safe='')}")
    assert answer.status_code == 503 and answer.headers["retry-after"]
    assert answer.json()["status"] == "LEDGER_UNREACHABLE" and answer.json()["computed_root"]
    assert model.status_code == account.status_code == 503


async def test_http_model_and_account(world) -> None:
    store, ledger, *_ = world
    async with client(store, ledger) as http:
        model = await http.get("/v1/models/phishing-logreg", params={"version": 1})
        latest = await http.get("/v1/models/phishing-logreg")
        account = await http.get(f"/v1/accounts/{quote(ME, safe='')}")
    assert model.json()["status"] == latest.json()["status"] == "MATCH"
    assert account.status_code == 200
    body = account.json()
    assert (body["account"], body["balance"], body["settlements"][0]["charged"]) == (ME, 10, 3)


async def test_http_token_is_checked_on_every_call_when_configured(world) -> None:
    store, ledger, ids, _ = world
    async with client(store, ledger, TOKEN) as http:
        missing = await http.get(f"/v1/verify/{ids[0]}", params={"tenant": "acme"})
        wrong = await http.get(f"/v1/verify/{ids[0]}", params={"tenant": "acme"}, headers={"Authorization": "Bearer nope"})
        metrics = await http.get("/metrics")
        right = await http.get(f"/v1/verify/{ids[0]}", params={"tenant": "acme"}, headers={"Authorization": f"Bearer {TOKEN}"})
        health = await http.get("/healthz")
    assert missing.status_code == wrong.status_code == metrics.status_code == 401
    assert right.status_code == 200 and right.json()["status"] == "VERIFIED"
    assert health.status_code == 200


async def test_http_is_read_only(world) -> None:
    store, ledger, ids, _ = world
    async with client(store, ledger) as http:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            assert (await http.request(method, f"/v1/verify/{ids[0]}")).status_code == 405


# -- gRPC --

class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self, metadata: tuple = ()) -> None:
        self.metadata = metadata
        self.code = self.details = None
        self.trailing: tuple = ()

    def invocation_metadata(self):
        return self.metadata

    async def abort(self, code, details="", trailing_metadata=()):
        self.code, self.details, self.trailing = code, details, trailing_metadata
        raise Aborted(details)


async def test_grpc_verify_model_account_mirror_the_json(world) -> None:
    store, ledger, ids, _ = world
    servicer = AuditServicer(Auditor(store, ledger), BearerToken(None))
    v = await servicer.Verify(audit_pb2.VerifyRequest(tenant="acme", event_id=ids[2]), FakeContext())
    assert v.status == audit_pb2.Verification.VERIFIED and v.anchor.block_number == 7 and v.tenant == "acme"
    assert v.record["event_id"] == ids[2] and v.proof["batch_id"] == v.anchor.batch_id
    assert v.computed_root == v.anchor.merkle_root and len(v.recomputed_hash) == 64
    m = await servicer.Model(audit_pb2.ModelRequest(model_id="phishing-logreg"), FakeContext())
    assert m.status == audit_pb2.ModelReport.MATCH and m.version == 1 and m.registered.block_number == 11
    a = await servicer.Account(audit_pb2.AccountRequest(account=ME), FakeContext())
    assert a.status == audit_pb2.AccountStatement.FOUND and a.balance == 10 and a.holds[0].role == "client"
    unknown = await servicer.Verify(audit_pb2.VerifyRequest(tenant="acme", event_id="nope"), FakeContext())
    assert unknown.status == audit_pb2.Verification.UNKNOWN and not unknown.HasField("record")


async def test_grpc_errors_and_the_partial_report(world) -> None:
    store, ledger, ids, _ = world
    servicer = AuditServicer(Auditor(store, ledger), BearerToken(TOKEN))
    context = FakeContext()
    with pytest.raises(Aborted):
        await servicer.Verify(audit_pb2.VerifyRequest(tenant="acme", event_id=ids[0]), context)
    assert context.code is grpc.StatusCode.UNAUTHENTICATED

    authorized = (("authorization", f"Bearer {TOKEN}"),)
    context = FakeContext(authorized)
    with pytest.raises(Aborted):
        await servicer.Verify(audit_pb2.VerifyRequest(tenant="acme", event_id=""), context)
    assert context.code is grpc.StatusCode.INVALID_ARGUMENT and "event_id" in context.details

    context = FakeContext(authorized)
    with pytest.raises(Aborted):
        await servicer.Verify(audit_pb2.VerifyRequest(event_id=ids[0]), context)  # no tenant
    assert context.code is grpc.StatusCode.INVALID_ARGUMENT and context.details.startswith("tenant: is required")

    context = FakeContext(authorized)
    with pytest.raises(Aborted):
        await servicer.Model(audit_pb2.ModelRequest(model_id="m", version=0), context)
    assert context.code is grpc.StatusCode.INVALID_ARGUMENT and "version" in context.details

    ledger.down = True
    context = FakeContext(authorized)
    with pytest.raises(Aborted):
        await servicer.Verify(audit_pb2.VerifyRequest(tenant="acme", event_id=ids[0]), context)
    assert context.code is grpc.StatusCode.UNAVAILABLE and context.details.startswith("LEDGER_UNREACHABLE")
    [(key, value)] = context.trailing
    partial = audit_pb2.Verification.FromString(value)
    assert key == REPORT_METADATA_KEY and partial.status == audit_pb2.Verification.LEDGER_UNREACHABLE
    assert partial.computed_root and not partial.HasField("anchor")


async def test_without_a_fabric_identity_the_audit_still_answers_ledger_unreachable(tmp_path) -> None:
    from services.audit.auditor import open_auditor
    from services.audit.ledger_reader import UnreachableLedger
    from services.audit.settings import AuditSettings
    from streamledger.settings import LedgerSettings

    async with open_auditor(AuditSettings(), LedgerSettings(fabric_msp_dir=tmp_path / "no-msp")) as auditor:
        assert isinstance(auditor.ledger, UnreachableLedger)
        statement = await auditor.account("anyone")  # asks only the ledger: no MongoDB needed
    assert statement.status.value == "LEDGER_UNREACHABLE" and "no-msp" in statement.detail
