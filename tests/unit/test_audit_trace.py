"""`audit trace` without servers (services/audit/trace.py): every link's verdict (the raw record
present, gone by retention, another event's; the clean record, proof and anchor as `verify()` judges
them; the transaction and its endorsers; the covering model versions and their registrations; the
predictions and the holds that paid), pagination, bad input, unreachable sources, and the answer
through the CLI, HTTP and gRPC shapes."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from rich.console import Console

from services.audit.auditor import Auditor
from services.audit.command import exit_code
from services.audit.grpc_api import audit_pb2, to_message
from services.audit.http_api import build_http_app
from services.audit.ledger_reader import processed_transaction
from services.audit.ports import InvalidArgument, LedgerUnreachable, StoreUnreachable
from services.audit.render_trace import render_trace
from services.audit.trace import audit_trace, clean_position, covering
from services.audit.verification import Status
from streamledger.access import BearerToken
from streamledger.core.models import parse_declaration
from tests.unit.test_audit_verification import (
    TOPIC,
    FakeLedger,
    FakeStore,
    anchored_batch,
)

DECLARED = [parse_declaration({"id": "pos-model", "task": "binary", "source": "pos",
                               "pipeline": [{"class": "linear_model.LogisticRegression"}]}),
            parse_declaration({"id": "other-model", "task": "binary", "source": "weather",
                               "pipeline": [{"class": "linear_model.LogisticRegression"}]})]
CREATED = datetime(2026, 12, 4, 23, 0, tzinfo=UTC)


class TraceLedger(FakeLedger):
    """The shared fake ledger, plus the transactions and holds the trace reads."""

    def __init__(self) -> None:
        super().__init__()
        self.transactions: dict[str, dict[str, Any]] = {}
        self.hold_by_id: dict[str, dict[str, Any]] = {}

    async def transaction(self, tx_id: str) -> dict[str, Any] | None:
        self._check("GetTransactionByID")
        return self.transactions.get(tx_id)

    async def hold(self, hold_id: str) -> dict[str, Any] | None:
        self._check("GetHold")
        return self.hold_by_id.get(hold_id)


class FakeLineage:
    def __init__(self) -> None:
        self.raw: dict[tuple[int, int], dict[str, Any]] = {}
        self.log_start = 0
        self.snapshot_docs: list[dict[str, Any]] = []
        self.usage: list[dict[str, Any]] = []
        self.down = False
        self.usage_asked: list[Any] = []

    def declared(self):
        return DECLARED

    def _check(self) -> None:
        if self.down:
            raise StoreUnreachable("Kafka is away")

    async def raw_record(self, partition: int, offset: int) -> dict[str, Any]:
        self._check()
        found = {"topic": "events.raw", "partition": partition, "offset": offset, "log_start": self.log_start,
                 "record": None, "error": None, "state": "not_yet"}
        if offset < self.log_start:
            return {**found, "state": "gone"}
        if (partition, offset) in self.raw:
            return {**found, "state": "present", "record": self.raw[(partition, offset)]}
        return found

    async def snapshots(self, model_ids):
        self._check()
        return [s for s in self.snapshot_docs if s["model_id"] in model_ids]

    async def usage_of_versions(self, versions, since_ms):
        self._check()
        self.usage_asked.append((sorted(versions), since_ms))
        return [u for u in self.usage if (u["model_id"], u["model_version"]) in set(versions)]


def snapshot(model_id: str, version: int, next_offset: int, sha: str | None = None) -> dict[str, Any]:
    return {"model_id": model_id, "version": version, "sha256": sha or f"{version:064x}", "created": CREATED,
            "offsets": [{"topic": TOPIC, "partition": 0, "offset": next_offset},
                        {"topic": TOPIC, "partition": 1, "offset": 10_000}]}


def usage(request_id: str, version: int, hold_id: str, units: int = 1, model_id: str = "pos-model") -> dict[str, Any]:
    return {"hold_id": hold_id, "request_id": request_id, "client": "Org2MSP::CN=demo", "model_id": model_id,
            "model_version": version, "units": units, "price": 2}


def world(size: int = 4) -> tuple[FakeStore, TraceLedger, FakeLineage, list[str]]:
    """A batch of `size` anchored events at clean offsets 0.., their raw records, three snapshots of
    pos-model (v1 learned offsets 0-1, v2 and v3 all), registered, and paid usage of v2 and v3."""
    store, ledger, lineage = FakeStore(), TraceLedger(), FakeLineage()
    ids = anchored_batch(store, ledger, size)
    for event_id in ids:
        record = store.events[event_id]
        lineage.raw[(record["raw_partition"], record["raw_offset"])] = {
            "event_id": event_id, "tenant": "acme", "source": "pos", "features": {}, "label": None}
    for tx_id in ledger.blocks:
        ledger.transactions[tx_id] = {"tx_id": tx_id, "channel": "streamledger", "validation_code": "VALID",
                                      "creator_msp": "Org1MSP", "endorsers": ["Org1MSP", "Org2MSP"]}
    for version, next_offset in ((1, 2), (2, size), (3, size + 5)):
        lineage.snapshot_docs.append(snapshot("pos-model", version, next_offset))
        ledger.models[("pos-model", version)] = {"model_id": "pos-model", "version": version,
                                                  "sha256": f"{version:064x}", "tx_id": f"tx-model-{version}"}
    lineage.snapshot_docs.append(snapshot("other-model", 1, 1000))  # does not take source "pos"
    lineage.usage = [usage("r1", 2, "hold-a", 2), usage("r1", 2, "hold-a", 2), usage("r2", 3, "hold-a"),
                     usage("r3", 3, "hold-b", 3), usage("r9", 1, "hold-c")]
    ledger.hold_by_id = {"hold-a": {"hold_id": "hold-a", "status": "SETTLED", "charged": 6, "client": "c",
                                    "provider": "p", "close_tx_id": "tx-settle"},
                         "hold-b": {"hold_id": "hold-b", "status": "OPEN", "charged": 0, "client": "c",
                                    "provider": "p", "close_tx_id": ""}}
    return store, ledger, lineage, ids


def links(trace) -> dict[str, dict[str, Any]]:
    return {link["link"]: link for link in trace.links}


# -- the whole chain --

async def test_a_verified_event_names_every_link_the_versions_that_learned_from_it_and_the_holds_that_paid() -> None:
    store, ledger, lineage, ids = world()
    trace = await audit_trace(store, ledger, lineage, "acme", ids[3])
    assert trace.status is Status.VERIFIED, trace.detail
    found = links(trace)
    assert list(found) == ["ingested", "clean", "proof", "anchor", "transaction", "models", "usage"]
    assert {k: v["verdict"] for k, v in found.items()} == {
        "ingested": "PRESENT", "clean": "MATCH", "proof": "MATCH", "anchor": "MATCH", "transaction": "VALID",
        "models": "COVERED", "usage": "SERVED"}
    assert found["transaction"]["evidence"]["endorsers"] == ["Org1MSP", "Org2MSP"]
    assert found["transaction"]["evidence"]["block_number"] == 7
    assert "Org1MSP, Org2MSP" in found["transaction"]["detail"]
    assert found["models"]["evidence"]["clean_offset"] == 3
    # v1 stopped before offset 2: it did not learn from offset 3; other-model does not take source "pos"
    assert [(m["model_id"], m["version"], m["status"]) for m in trace.models] == [
        ("pos-model", 2, "MATCH"), ("pos-model", 3, "MATCH")]
    v2, v3 = trace.models
    assert (v2["predictions"], v2["units"], v2["holds"]) == (1, 2, ["hold-a"])  # r1 counted once
    assert (v3["predictions"], v3["units"], v3["holds"]) == (2, 4, ["hold-a", "hold-b"])
    assert [(h["hold_id"], h["status"], h["requests"], h["versions"]) for h in trace.holds] == [
        ("hold-a", "SETTLED", 2, ["pos-model v2", "pos-model v3"]), ("hold-b", "OPEN", 1, ["pos-model v3"])]
    assert trace.page == {"limit": 20, "page": 1, "versions": 2, "pages": 1}
    assert found["usage"]["detail"] == "3 predictions by these versions, paid by 2 holds (1 settled)"
    json.dumps(trace.as_dict(), allow_nan=False)


async def test_an_early_event_is_covered_by_every_version_and_all_holds_settled_make_usage_paid() -> None:
    store, ledger, lineage, ids = world()
    ledger.hold_by_id["hold-b"]["status"] = "SETTLED"
    ledger.hold_by_id["hold-c"] = {"hold_id": "hold-c", "status": "SETTLED", "charged": 2}
    trace = await audit_trace(store, ledger, lineage, "acme", ids[0])
    assert [m["version"] for m in trace.models] == [1, 2, 3]
    assert links(trace)["usage"]["verdict"] == "PAID"
    assert [h["hold_id"] for h in trace.holds] == ["hold-a", "hold-b", "hold-c"]


async def test_versions_are_paginated_and_usage_is_read_for_the_page_only() -> None:
    store, ledger, lineage, ids = world()
    first = await audit_trace(store, ledger, lineage, "acme", ids[0], limit=2, page=1)
    second = await audit_trace(store, ledger, lineage, "acme", ids[0], limit=2, page=2)
    past = await audit_trace(store, ledger, lineage, "acme", ids[0], limit=2, page=3)
    assert [m["version"] for m in first.models] == [1, 2] and [m["version"] for m in second.models] == [3]
    assert first.page == {"limit": 2, "page": 1, "versions": 3, "pages": 2}
    assert links(first)["usage"]["detail"] == \
        "2 predictions by the 2 versions of page 1 of 2, paid by 2 holds (1 settled)"  # this page's, not all
    assert past.models == [] and past.holds == []
    assert lineage.usage_asked[1][0] == [("pos-model", 3)]
    assert lineage.usage_asked[0][1] == int(CREATED.timestamp() * 1000) - 5 * 60 * 1000


def test_coverage_is_the_snapshots_next_offset_past_the_events_offset_in_its_own_partition() -> None:
    docs = [snapshot("m", 1, 5), snapshot("m", 2, 6)]
    assert [s["version"] for s in covering(docs, TOPIC, 0, 5)] == [2]
    assert [s["version"] for s in covering(docs, TOPIC, 1, 5)] == [1, 2]
    assert covering(docs, "other.topic", 0, 0) == []


# -- each link's other verdicts --

async def test_a_raw_record_deleted_by_retention_is_gone_and_noted_but_the_chain_still_verifies() -> None:
    store, ledger, lineage, ids = world()
    lineage.log_start = 10_000
    trace = await audit_trace(store, ledger, lineage, "acme", ids[1])
    assert links(trace)["ingested"]["verdict"] == "GONE"
    assert trace.status is Status.VERIFIED and any("retention" in n for n in trace.notes)


async def test_another_events_raw_record_at_its_position_makes_the_trace_tampered() -> None:
    store, ledger, lineage, ids = world()
    record = store.events[ids[1]]
    lineage.raw[(record["raw_partition"], record["raw_offset"])]["event_id"] = "someone-else"
    trace = await audit_trace(store, ledger, lineage, "acme", ids[1])
    assert links(trace)["ingested"]["verdict"] == "MISMATCH"
    assert trace.status is Status.TAMPERED and trace.reason == "raw_mismatch"
    assert exit_code(trace.status.value) == 1


async def test_a_changed_record_fails_its_clean_link_and_the_trace_is_tampered() -> None:
    store, ledger, lineage, ids = world()
    store.events[ids[2]]["features"]["amount"] = 1e9
    trace = await audit_trace(store, ledger, lineage, "acme", ids[2])
    assert trace.status is Status.TAMPERED and trace.reason == "record_changed"
    assert links(trace)["clean"]["verdict"] == "TAMPERED"


async def test_a_proof_that_misses_the_ledgers_root_fails_the_proof_and_anchor_links() -> None:
    store, ledger, lineage, ids = world()
    store.proofs[ids[2]]["siblings"][0] = "ab" * 32
    trace = await audit_trace(store, ledger, lineage, "acme", ids[2])
    assert trace.status is Status.TAMPERED and trace.reason == "proof_mismatch"
    assert links(trace)["proof"]["verdict"] == links(trace)["anchor"]["verdict"] == "TAMPERED"


async def test_a_record_without_a_proof_is_not_anchored_yet_and_its_models_are_unknown() -> None:
    store, ledger, lineage, ids = world()
    del store.proofs[ids[0]]
    trace = await audit_trace(store, ledger, lineage, "acme", ids[0])
    assert trace.status is Status.NOT_ANCHORED_YET and exit_code(trace.status.value) == 3
    assert links(trace)["proof"]["verdict"] == "NOT_ANCHORED_YET"
    assert links(trace)["models"]["verdict"] == "UNKNOWN" and trace.models == []


async def test_a_deleted_record_is_deleted_and_claims_no_models() -> None:
    store, ledger, lineage, ids = world()
    del store.events[ids[0]]
    trace = await audit_trace(store, ledger, lineage, "acme", ids[0])
    assert trace.status is Status.DELETED
    assert links(trace)["ingested"]["verdict"] == "UNKNOWN" and links(trace)["models"]["verdict"] == "UNKNOWN"


async def test_a_transaction_the_peer_does_not_know_is_not_found() -> None:
    store, ledger, lineage, ids = world()
    ledger.transactions.clear()
    trace = await audit_trace(store, ledger, lineage, "acme", ids[0])
    assert links(trace)["transaction"]["verdict"] == "NOT_FOUND"


async def test_a_version_registered_with_another_hash_makes_the_trace_tampered() -> None:
    store, ledger, lineage, ids = world()
    ledger.models[("pos-model", 3)]["sha256"] = "f" * 64
    trace = await audit_trace(store, ledger, lineage, "acme", ids[0])
    assert trace.status is Status.TAMPERED and trace.reason == "model_mismatch"
    assert [m["status"] for m in trace.models] == ["MATCH", "MATCH", "MISMATCH"]


async def test_an_unregistered_version_is_noted_not_verified_away() -> None:
    store, ledger, lineage, ids = world()
    del ledger.models[("pos-model", 2)]
    trace = await audit_trace(store, ledger, lineage, "acme", ids[0])
    assert trace.status is Status.VERIFIED
    assert [m["status"] for m in trace.models] == ["MATCH", "NOT_REGISTERED", "MATCH"]
    assert any("v2: NOT_REGISTERED" in n for n in trace.notes)


async def test_no_snapshot_past_the_event_yet_and_no_model_for_its_source() -> None:
    store, ledger, lineage, ids = world()
    lineage.snapshot_docs = [snapshot("pos-model", 1, 0)]
    trace = await audit_trace(store, ledger, lineage, "acme", ids[0])
    assert links(trace)["models"]["verdict"] == "NOT_YET" and "usage" not in links(trace)
    for event_id in ids:
        store.events[event_id]["source"] = "unheard-of"
    lineage.raw = {k: {**v, "source": "unheard-of"} for k, v in lineage.raw.items()}
    trace = await audit_trace(store, ledger, lineage, "acme", ids[0])
    assert links(trace)["models"]["verdict"] == "NONE" and trace.models == []


async def test_an_unknown_hold_is_listed_as_not_found() -> None:
    store, ledger, lineage, ids = world()
    trace = await audit_trace(store, ledger, lineage, "acme", ids[0])
    assert {h["hold_id"]: h["status"] for h in trace.holds}["hold-c"] == "NOT_FOUND"


# -- bad input and unreachable sources: clear answers, never a false verdict --

async def test_an_unknown_event_or_tenant_is_unknown() -> None:
    store, ledger, lineage, ids = world()
    for tenant, event_id in (("acme", "no-such-event"), ("globex", ids[0])):
        trace = await audit_trace(store, ledger, lineage, tenant, event_id)
        assert trace.status is Status.UNKNOWN and exit_code(trace.status.value) == 4
        assert trace.models == [] and trace.holds == []


@pytest.mark.parametrize(("tenant", "event_id", "limit", "page", "field"), [
    ("", "evt-0", 20, 1, "tenant"), (None, "evt-0", 20, 1, "tenant"), ("acme", "", 20, 1, "event_id"),
    ("acme", "x" * 300, 20, 1, "event_id"), ("acme", "e\x00", 20, 1, "event_id"), ("acme", "evt-0", 0, 1, "limit"),
    ("acme", "evt-0", 201, 1, "limit"), ("acme", "evt-0", 20, 0, "page"), ("acme", "evt-0", True, 1, "limit"),
])
async def test_malformed_arguments_are_refused_naming_the_field(tenant, event_id, limit, page, field) -> None:
    store, ledger, lineage, _ = world()
    with pytest.raises(InvalidArgument) as caught:
        await audit_trace(store, ledger, lineage, tenant, event_id, limit, page)
    assert caught.value.field == field


@pytest.mark.parametrize("down", ["store", "kafka"])
async def test_an_unreadable_store_or_topic_is_store_unreachable_never_verified(down) -> None:
    store, ledger, lineage, ids = world()
    if down == "store":
        store.down = True
    else:
        lineage.down = True
    trace = await audit_trace(store, ledger, lineage, "acme", ids[0])
    assert trace.status is Status.STORE_UNREACHABLE and exit_code(trace.status.value) == 5


async def test_a_ledger_down_is_ledger_unreachable_never_verified() -> None:
    store, ledger, lineage, ids = world()
    ledger.down = True
    trace = await audit_trace(store, ledger, lineage, "acme", ids[0])
    assert trace.status is Status.LEDGER_UNREACHABLE and exit_code(trace.status.value) == 5


async def test_a_ledger_lost_half_way_keeps_what_was_gathered_and_is_unreachable() -> None:
    store, ledger, lineage, ids = world()

    async def hold_down(_hold_id: str):
        raise LedgerUnreachable("GetHold: peer unavailable")
    ledger.hold = hold_down
    trace = await audit_trace(store, ledger, lineage, "acme", ids[0])
    assert trace.status is Status.LEDGER_UNREACHABLE and "GetHold" in trace.detail
    assert links(trace)["clean"]["verdict"] == "MATCH"


def test_the_clean_position_comes_from_the_proof_or_its_batch_id() -> None:
    from services.audit.verification import Verification
    v = Verification("acme", "e", Status.VERIFIED, proof={"batch_id": "events.clean:2:10-19", "offset": 12})
    assert clean_position(v) == ("events.clean", 2, 12)
    assert clean_position(Verification("acme", "e", Status.VERIFIED, proof={"batch_id": "x"})) is None


def test_a_processed_transaction_names_its_validation_its_creator_and_its_endorsing_orgs() -> None:
    from fabric_protos.common import common_pb2
    from fabric_protos.msp import identities_pb2
    from fabric_protos.peer import proposal_response_pb2, transaction_pb2

    def identity(msp: str) -> bytes:
        return identities_pb2.SerializedIdentity(mspid=msp, id_bytes=b"cert").SerializeToString()
    action = transaction_pb2.ChaincodeActionPayload(action=transaction_pb2.ChaincodeEndorsedAction(endorsements=[
        proposal_response_pb2.Endorsement(endorser=identity("Org2MSP")),
        proposal_response_pb2.Endorsement(endorser=identity("Org1MSP"))]))
    tx = transaction_pb2.Transaction(actions=[transaction_pb2.TransactionAction(payload=action.SerializeToString())])
    header = common_pb2.Header(
        channel_header=common_pb2.ChannelHeader(tx_id="tx-1", channel_id="streamledger").SerializeToString(),
        signature_header=common_pb2.SignatureHeader(creator=identity("Org1MSP")).SerializeToString())
    payload = common_pb2.Payload(header=header, data=tx.SerializeToString())
    raw = transaction_pb2.ProcessedTransaction(
        transactionEnvelope=common_pb2.Envelope(payload=payload.SerializeToString()),
        validationCode=transaction_pb2.VALID).SerializeToString()
    assert processed_transaction(raw) == {"tx_id": "tx-1", "channel": "streamledger", "validation_code": "VALID",
                                          "creator_msp": "Org1MSP", "endorsers": ["Org1MSP", "Org2MSP"]}
    with pytest.raises(LedgerUnreachable):
        processed_transaction(b"\xff\xff not a proto")


# -- the same answer through the CLI, HTTP and gRPC shapes --

async def test_the_answer_renders_for_a_person_and_parses_into_the_grpc_message() -> None:
    store, ledger, lineage, ids = world()
    answer = (await audit_trace(store, ledger, lineage, "acme", ids[0], limit=2)).as_dict()
    out = io.StringIO()
    render_trace(Console(file=out, width=200), answer)
    text = out.getvalue()
    for expected in ("VERIFIED", "ingested", "PRESENT", "Org1MSP, Org2MSP", "pos-model v2", "hold-a", "--page 2"):
        assert expected in text
    message = to_message(json.loads(json.dumps(answer)), audit_pb2.TraceReport)
    assert message.status == audit_pb2.TraceReport.VERIFIED
    assert [m.version for m in message.models] == [1, 2] and message.page.pages == 2
    assert json_format.MessageToDict(message.links[4].evidence)["endorsers"] == ["Org1MSP", "Org2MSP"]


async def test_the_http_api_answers_the_trace_with_its_codes() -> None:
    store, ledger, lineage, ids = world()
    app = build_http_app(Auditor(store, ledger, lineage=lineage), BearerToken(None))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://audit") as client:
        ok = await client.get(f"/v1/trace/{ids[0]}", params={"tenant": "acme", "limit": 1, "page": 3})
        assert ok.status_code == 200 and ok.json()["status"] == "VERIFIED"
        assert [m["version"] for m in ok.json()["models"]] == [3]
        bad = await client.get(f"/v1/trace/{ids[0]}", params={"tenant": "acme", "limit": "many"})
        assert bad.status_code == 400 and bad.json()["field"] == "limit"
        untenanted = await client.get(f"/v1/trace/{ids[0]}")
        assert untenanted.status_code == 400 and untenanted.json()["field"] == "tenant"
        ledger.down = True
        down = await client.get(f"/v1/trace/{ids[0]}", params={"tenant": "acme"})
        assert down.status_code == 503 and down.json()["status"] == "LEDGER_UNREACHABLE"


@pytest.mark.parametrize(("args", "field"), [
    ({"tenant": "", "event_id": "evt-0"}, "tenant"), ({"tenant": "acme", "event_id": ""}, "event_id"),
    ({"tenant": "acme", "event_id": "evt-0", "limit": 0, "page": 1}, "limit"),
    ({"tenant": "acme", "event_id": "evt-0", "limit": 5, "page": -1}, "page"),
])
def test_the_cli_refuses_malformed_input_before_connecting_with_exit_code_2(args, field, capsys) -> None:
    from services.audit.command import run_audit
    code = run_audit("trace", args, True, None, None, Console(file=io.StringIO()))
    answer = json.loads(capsys.readouterr().out)
    assert code == 2 and answer["status"] == "INVALID_ARGUMENT" and answer["field"] == field


def test_the_cli_asks_the_api_for_the_trace_with_its_page() -> None:
    from services.audit.command import ask_api
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(200, json={"status": "VERIFIED"})
    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        answer = ask_api(client, "http://audit/", None, "trace",
                         {"tenant": "acme", "event_id": "a/b", "limit": 5, "page": 2})
    assert answer == {"status": "VERIFIED"}
    assert seen[0].path == "/v1/trace/a%2Fb" or seen[0].raw_path.startswith(b"/v1/trace/a%2Fb")
    assert dict(seen[0].params) == {"tenant": "acme", "limit": "5", "page": "2"}


async def test_a_raw_topic_the_principal_may_not_read_is_unreadable_and_noted() -> None:
    store, ledger, lineage, ids = world()

    async def denied(partition: int, offset: int) -> dict[str, Any]:
        return {"topic": "events.raw", "partition": partition, "offset": offset, "state": "denied",
                "record": None, "error": "TopicAuthorizationFailedError", "log_start": None}
    lineage.raw_record = denied
    trace = await audit_trace(store, ledger, lineage, "acme", ids[0])
    assert links(trace)["ingested"]["verdict"] == "UNREADABLE"
    assert trace.status is Status.VERIFIED and any("could not be read" in n for n in trace.notes)


async def test_the_grpc_trace_mirrors_the_json_refuses_bad_pages_and_sends_the_partial_trace() -> None:
    from services.audit.grpc_api import REPORT_METADATA_KEY, AuditServicer
    from tests.unit.test_audit_api import Aborted, FakeContext

    store, ledger, lineage, ids = world()
    servicer = AuditServicer(Auditor(store, ledger, lineage=lineage), BearerToken(None))
    t = await servicer.Trace(audit_pb2.TraceRequest(tenant="acme", event_id=ids[0], limit=2, page=2), FakeContext())
    assert t.status == audit_pb2.TraceReport.VERIFIED and [m.version for m in t.models] == [3]
    assert t.page.pages == 2 and [h.hold_id for h in t.holds] == ["hold-a", "hold-b"]
    assert t.verification.anchor.block_number == 7
    context = FakeContext()
    with pytest.raises(Aborted):
        await servicer.Trace(audit_pb2.TraceRequest(tenant="acme", event_id=ids[0], limit=0), context)
    assert context.code.name == "INVALID_ARGUMENT" and context.details.startswith("limit")
    lineage.down = True
    context = FakeContext()
    with pytest.raises(Aborted):
        await servicer.Trace(audit_pb2.TraceRequest(tenant="acme", event_id=ids[0]), context)
    assert context.code.name == "UNAVAILABLE" and context.details.startswith("STORE_UNREACHABLE")
    [(key, value)] = context.trailing
    partial = audit_pb2.TraceReport.FromString(value)
    assert key == REPORT_METADATA_KEY and partial.status == audit_pb2.TraceReport.STORE_UNREACHABLE
    assert partial.verification.status == audit_pb2.Verification.VERIFIED


async def test_a_usage_record_naming_a_malformed_hold_id_is_listed_not_asked_of_the_ledger() -> None:
    store, ledger, lineage, ids = world()
    lineage.usage.append(usage("r7", 2, "bad hold/id"))
    trace = await audit_trace(store, ledger, lineage, "acme", ids[0])
    assert trace.status is Status.VERIFIED
    assert {h["hold_id"]: h["status"] for h in trace.holds}["bad hold/id"] == "MALFORMED_ID"
    assert ledger.calls.count("GetHold") == 3  # hold-a, hold-b, hold-c
