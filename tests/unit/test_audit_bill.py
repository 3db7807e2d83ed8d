"""`audit bill` without servers: receipts verified against the hold's certificate, the verdicts
(a charge with no receipt, a forged or malformed receipt), the models paid for and the data they
learned from, bad input, and unreachable sources; the answer through the CLI, HTTP and gRPC shapes."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from rich.console import Console

from services.audit.auditor import Auditor
from services.audit.bill import Bill, BillStatus, audit_bill, judge_bill, models_used
from services.audit.command import exit_code
from services.audit.grpc_api import audit_pb2, to_message
from services.audit.ports import InvalidArgument, LedgerUnreachable, StoreUnreachable
from services.audit.render_bill import render_bill
from streamledger.core.hold_receipts import check_receipts
from tests.unit.test_ledger_settlement import Client

HOLD_ID = "f898c8e3fcf5d04a8186f04a431e5a78"
CLIENT = Client("User5")
FORGER = Client("User6")
_SIGNED: dict[tuple[int, int, int], Any] = {}


def signed(signer: Client, units: int, sequence: int):
    """One signature per receipt, as a client signs it once and the server passes it on."""
    key = (id(signer), units, sequence)
    if key not in _SIGNED:
        _SIGNED[key] = signer.receipt(HOLD_ID, units, sequence)
    return _SIGNED[key]


def hold(status: str = "SETTLED", *, receipt: tuple[int, int] | None = (5, 2), charged: int = 10,
         refunded: int = 90, authorized: int = 60, signer: Client = CLIENT) -> dict[str, Any]:
    recorded = None
    if receipt is not None:
        r = signed(signer, *receipt)
        recorded = {"hold_id": HOLD_ID, "units": r.units, "sequence": r.sequence, "signature": r.signature,
                    "tx_id": "tx-receipt", "recorded_at": "2026-12-04T23:00:01Z"}
    return {"hold_id": HOLD_ID, "client": "Org2MSP::CN=User5", "client_cert": CLIENT.cert,
            "provider": "Org1MSP::CN=provider", "amount": 100, "price_per_unit": 2, "authorized": authorized,
            "receipt": recorded, "charged": charged if status != "OPEN" else 0,
            "refunded": refunded if status != "OPEN" else 0, "status": status, "expires_at": 1_800_000_000,
            "settlement_window_seconds": 30, "settle_by": 1_800_000_030, "created_at": "2026-12-04T23:00:00.123456789Z",
            "closed_at": "2026-12-04T23:01:00Z" if status != "OPEN" else "", "freeze_tx_id": "tx-freeze",
            "close_tx_id": "tx-close" if status != "OPEN" else ""}


def usage(request_id: str, units: int, receipt: tuple[int, int] | None, *, signer: Client = CLIENT,
          version: int = 3, offset: int = 0) -> dict[str, Any]:
    record = {"hold_id": HOLD_ID, "request_id": request_id, "client": "Org2MSP::CN=User5", "model_id": "m1",
              "model_version": version, "units": units, "price": 2, "receipt_units": 0, "receipt_sequence": 0,
              "receipt_signature": "", "ts": 1_767_000_000_000, "partition": 0, "offset": offset}
    if receipt is not None:
        r = signed(signer, *receipt)
        record.update(receipt_units=r.units, receipt_sequence=r.sequence, receipt_signature=r.signature)
    return record


HONEST_USAGE = [usage("r1", 3, None, offset=0), usage("r2", 2, (3, 1), offset=1), usage("r2", 2, (3, 1), offset=2)]


class FakeLedger:
    def __init__(self, hold: dict[str, Any] | None, *, down: bool = False) -> None:
        self._hold = hold
        self.down = down

    async def hold(self, hold_id: str) -> dict[str, Any] | None:
        if self.down:
            raise LedgerUnreachable("GetHold: peer unavailable")
        return self._hold

    async def history(self, key: str) -> list[dict[str, Any]]:
        assert key == f"hold:{HOLD_ID}"
        return [{"tx_id": "tx-close", "timestamp": "2026-12-04T23:01:00.5Z", "is_delete": False,  # newest first
                 "value": json.dumps(self._hold)},
                {"tx_id": "tx-freeze", "timestamp": "2026-12-04T23:00:00.123456789Z", "is_delete": False,
                 "value": json.dumps({**self._hold, "status": "OPEN", "receipt": None})}]

    async def transaction_block(self, tx_id: str) -> dict[str, Any] | None:
        return {"block_number": 42, "validation_code": "VALID"} if tx_id == "tx-close" else None

    async def model(self, model_id: str, version: int) -> dict[str, Any] | None:
        return {"model_id": model_id, "version": version, "sha256": "ab" * 32, "tx_id": "tx-model"}

    async def anchor(self, batch_id: str) -> dict[str, Any] | None:
        return {"batch_id": batch_id, "merkle_root": "cd" * 32}


class FakeUsage:
    def __init__(self, records: list[dict[str, Any]], *, down: bool = False) -> None:
        self.records = records
        self.down = down
        self.since: int | None = None
        self.until: int | None = None

    async def usage_of(self, hold_id: str, since_ms: int, until_ms: int | None = None) -> dict[str, Any]:
        if self.down:
            raise StoreUnreachable("usage: topic 'usage' could not be read")
        self.since, self.until = since_ms, until_ms
        return {"topic": "usage", "records": self.records, "skipped": 1}


class FakeStore:
    async def snapshot(self, model_id: str, version: int | None) -> dict[str, Any] | None:
        return {"model_id": model_id, "version": version, "sha256": "ab" * 32,
                "offsets": [{"topic": "events.clean", "partition": 0, "offset": 250}]}


class FakeAnchors:
    async def anchored_before(self, topic: str, partition: int, offset: int) -> dict[str, Any]:
        return {"batches": 3, "first": {"batch_id": "b0", "first_offset": 0, "last_offset": 99},
                "last": {"batch_id": "b2", "first_offset": 200, "last_offset": 299, "merkle_root": "cd" * 32}}


async def bill_of(ledger_hold: dict[str, Any] | None, records: list[dict[str, Any]], **kwargs: Any) -> Bill:
    usage_log = FakeUsage(records, down=kwargs.pop("usage_down", False))
    return await audit_bill(FakeLedger(ledger_hold, **kwargs), usage_log, FakeStore(), FakeAnchors(), HOLD_ID)


# -- receipts --

def test_each_distinct_receipt_is_listed_once_with_where_it_was_seen_and_verified() -> None:
    checked = check_receipts(hold(receipt=(5, 2)), [*HONEST_USAGE, usage("r3", 2, (5, 2))])
    assert [(r.units, r.sequence, r.verified, r.sources, r.request_ids) for r in checked] == [
        (3, 1, True, ["usage"], ["r2", "r2"]), (5, 2, True, ["ledger", "usage"], ["r3"])]
    assert checked[1].tx_id == "tx-receipt"


def test_a_receipt_signed_by_another_identity_or_malformed_does_not_verify() -> None:
    forged = usage("r9", 1, (9, 3), signer=FORGER)
    malformed = {**usage("r10", 1, None), "receipt_units": 4, "receipt_sequence": 4, "receipt_signature": "not b64!"}
    unsigned = {**usage("r11", 1, None), "receipt_units": 4, "receipt_sequence": 5}
    checked = {r.sequence: r for r in check_receipts(hold(), [forged, malformed, unsigned])}
    assert not checked[3].verified and "does not verify" in checked[3].problem
    assert not checked[4].verified and "base64" in checked[4].problem
    assert not checked[5].verified and "no signature" in checked[5].problem
    assert checked[2].verified  # the ledger's own


def test_an_unreadable_client_certificate_fails_every_receipt_rather_than_passing_it() -> None:
    checked = check_receipts({**hold(), "client_cert": "not a certificate"}, [])
    assert [(r.verified, "certificate" in r.problem) for r in checked] == [(False, True)]


# -- verdicts --

async def test_an_honest_settled_hold_is_verified_with_its_evidence() -> None:
    bill = await bill_of(hold(receipt=(5, 2), charged=10, refunded=90), HONEST_USAGE)
    assert bill.status is BillStatus.VERIFIED, bill.problems
    assert bill.settlement["tx_id"] == "tx-close" and bill.settlement["block_number"] == 42
    assert (bill.settlement["expected_charge"], bill.settlement["receipt_units"]) == (10, 5)
    assert (bill.usage["requests"], bill.usage["units"], bill.usage["duplicates"]) == (2, 5, 1)
    assert [w["status"] for w in bill.history] == ["OPEN", "SETTLED"]
    (model,) = bill.models
    assert (model["model_id"], model["version"], model["requests"], model["units"], model["status"]) == \
        ("m1", 3, 2, 5, "MATCH")
    assert model["learned_from"] == [{"topic": "events.clean", "partition": 0, "before_offset": 250, "batches": 3,
                                      "anchored_first": 0, "anchored_last": 249, "last_batch_id": "b2",
                                      "last_batch_on_ledger": True}]
    assert exit_code(bill.status.value) == 0


async def test_usage_is_read_from_before_the_freeze_to_after_the_close() -> None:
    usage_log = FakeUsage([])
    await audit_bill(FakeLedger(hold()), usage_log, FakeStore(), FakeAnchors(), HOLD_ID)
    created = datetime(2026, 12, 4, 23, 0, 0, 123456, tzinfo=UTC)  # hold()'s created_at
    closed = datetime(2026, 12, 4, 23, 1, 0, tzinfo=UTC)
    assert usage_log.since == int(created.timestamp() * 1000) - 5 * 60 * 1000
    assert usage_log.until == int(closed.timestamp() * 1000) + 5 * 60 * 1000
    await audit_bill(FakeLedger(hold("OPEN")), usage_log, FakeStore(), FakeAnchors(), HOLD_ID)
    assert usage_log.until is None  # an open hold's usage goes on


async def test_a_charge_with_no_receipt_behind_it_is_disputed() -> None:
    bill = await bill_of(hold(receipt=None, charged=10, refunded=90), HONEST_USAGE)
    assert (bill.status, bill.reason) == (BillStatus.DISPUTED, "charge_without_receipt")
    assert exit_code(bill.status.value) == 1


async def test_a_charge_beyond_the_receipt_or_the_reservation_is_disputed() -> None:
    bill = await bill_of(hold(receipt=(5, 2), charged=20, refunded=80), [])  # 5 x 2 = 10 receipted
    assert (bill.status, bill.reason) == (BillStatus.DISPUTED, "charge_exceeds_receipt")
    bill = await bill_of(hold(receipt=(5, 2), charged=10, refunded=80), [])
    assert bill.reason == "amounts_inconsistent"


async def test_a_forged_receipt_in_a_usage_record_is_disputed_naming_the_request() -> None:
    bill = await bill_of(hold(receipt=(5, 2)), [*HONEST_USAGE, usage("r-forged", 1, (9, 3), signer=FORGER)])
    assert (bill.status, bill.reason) == (BillStatus.DISPUTED, "receipt_invalid")
    assert "r-forged" in bill.detail and "does not verify" in bill.detail


async def test_a_forged_receipt_recorded_on_the_ledger_is_disputed() -> None:
    bill = await bill_of(hold(receipt=(5, 2), signer=FORGER), [])
    assert bill.reason == "receipt_invalid" and "on the ledger" in bill.detail


async def test_an_open_hold_is_not_settled_yet_unless_a_receipt_is_already_wrong() -> None:
    bill = await bill_of(hold("OPEN", receipt=None), HONEST_USAGE)
    assert bill.status is BillStatus.NOT_SETTLED_YET and bill.settlement is None
    assert exit_code(bill.status.value) == 3
    bill = await bill_of(hold("OPEN", receipt=None), [usage("r1", 1, (1, 1), signer=FORGER)])
    assert bill.status is BillStatus.DISPUTED


async def test_unpaid_usage_and_other_prices_are_notes_not_faults() -> None:
    bill = Bill(HOLD_ID, BillStatus.NOT_FOUND)
    records = [*HONEST_USAGE, {**usage("r4", 1, None), "price": 3}]
    judge_bill(bill, hold(receipt=(1, 1), charged=2, refunded=98), {"topic": "usage", "records": records})
    assert bill.status is BillStatus.VERIFIED
    assert any("unpaid" in n for n in bill.notes) and any("price" in n for n in bill.notes)


def test_models_used_count_each_request_once() -> None:
    records = [*HONEST_USAGE, usage("r5", 4, None, version=4)]
    assert models_used(records) == [{"model_id": "m1", "version": 3, "requests": 2, "units": 5},
                                    {"model_id": "m1", "version": 4, "requests": 1, "units": 4}]


# -- bad input and what cannot be read --

async def test_an_unknown_hold_is_not_found() -> None:
    bill = await bill_of(None, [])
    assert bill.status is BillStatus.NOT_FOUND and HOLD_ID in bill.detail
    assert exit_code(bill.status.value) == 4


@pytest.mark.parametrize("bad", ["", "has space", "x" * 129, "-starts-with-dash", None, 7])
async def test_a_malformed_hold_id_is_an_invalid_argument(bad) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await audit_bill(FakeLedger(hold()), FakeUsage([]), FakeStore(), FakeAnchors(), bad)
    assert refused.value.field == "hold_id"


async def test_an_unreachable_ledger_or_usage_topic_is_said_never_verified() -> None:
    bill = await bill_of(hold(), HONEST_USAGE, down=True)
    assert bill.status is BillStatus.LEDGER_UNREACHABLE and exit_code(bill.status.value) == 5
    bill = await bill_of(hold(), HONEST_USAGE, usage_down=True)
    assert bill.status is BillStatus.STORE_UNREACHABLE and "usage" in bill.detail
    assert bill.terms is not None and bill.terms["hold_id"] == HOLD_ID  # what was gathered is kept


async def test_an_auditor_without_usage_sources_refuses_bills() -> None:
    with pytest.raises(RuntimeError, match="cannot audit bills"):
        await Auditor(FakeStore(), FakeLedger(hold())).bill(HOLD_ID)


# -- the answer's shapes --

async def test_the_bill_parses_into_the_grpc_message_and_renders() -> None:
    bill = (await bill_of(hold(receipt=(5, 2)), [*HONEST_USAGE, usage("r-forged", 1, (9, 3), signer=FORGER)]))
    message = to_message(bill.as_dict(), audit_pb2.BillReport)
    assert message.status == audit_pb2.BillReport.DISPUTED and message.reason == "receipt_invalid"
    assert [r.verified for r in message.receipts] == [True, True, False]
    assert message.settlement.block_number == 42 and message.models[0].learned_from[0].anchored_last == 249
    assert json.loads(json.dumps(bill.as_dict()))["hold_id"] == HOLD_ID  # plain JSON

    out = io.StringIO()
    render_bill(Console(file=out, width=200), bill.as_dict())
    text = out.getvalue()
    assert "DISPUTED" in text and "receipt_invalid" in text and "r-forged" in text and "tx-close" in text
    assert "m1 v3" in text and "events.clean[0]" in text


async def test_an_open_unknown_or_unreachable_bill_renders_without_evidence_it_does_not_have() -> None:
    for bill in (await bill_of(None, []), await bill_of(hold(), [], down=True),
                 await bill_of(hold("OPEN", receipt=None), [])):
        out = io.StringIO()
        render_bill(Console(file=out, width=200), bill.as_dict())
        assert bill.status.value in out.getvalue()


# -- the HTTP and gRPC faces, and the CLI's --api request --

def bill_auditor(ledger_hold: dict[str, Any] | None, *, down: bool = False) -> Auditor:
    return Auditor(FakeStore(), FakeLedger(ledger_hold, down=down), FakeUsage(HONEST_USAGE), FakeAnchors())


async def test_http_bills_answer_like_the_other_audits() -> None:
    import httpx

    from services.audit.http_api import build_http_app
    from streamledger.access import BearerToken

    def client(auditor: Auditor) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=build_http_app(auditor, BearerToken(None))),
                                 base_url="http://audit")
    async with client(bill_auditor(hold())) as http:
        ok, bad = await http.get(f"/v1/bills/{HOLD_ID}"), await http.get("/v1/bills/-bad")
    assert (ok.status_code, ok.json()["status"], ok.json()["settlement"]["tx_id"]) == (200, "VERIFIED", "tx-close")
    assert (bad.status_code, bad.json()["field"]) == (400, "hold_id")
    async with client(bill_auditor(hold(), down=True)) as http:
        down = await http.get(f"/v1/bills/{HOLD_ID}")
    assert (down.status_code, down.json()["status"]) == (503, "LEDGER_UNREACHABLE")


async def test_grpc_bill_mirrors_the_json() -> None:
    from services.audit.grpc_api import AuditServicer
    from streamledger.access import BearerToken
    from tests.unit.test_audit_api import Aborted, FakeContext

    servicer = AuditServicer(bill_auditor(hold()), BearerToken(None))
    b = await servicer.Bill(audit_pb2.BillRequest(hold_id=HOLD_ID), FakeContext())
    assert b.status == audit_pb2.BillReport.VERIFIED and b.terms.price_per_unit == 2 and b.usage.units == 5
    missing = await AuditServicer(bill_auditor(None), BearerToken(None)).Bill(
        audit_pb2.BillRequest(hold_id=HOLD_ID), FakeContext())
    assert missing.status == audit_pb2.BillReport.NOT_FOUND
    context = FakeContext()
    with pytest.raises(Aborted):
        await servicer.Bill(audit_pb2.BillRequest(hold_id="no good"), context)
    assert "hold_id" in context.details


def test_the_cli_asks_the_api_for_a_bill_by_its_encoded_id() -> None:
    from services.audit.command import ask_api
    from tests.unit.test_audit_command import API, recording

    http, seen = recording({"status": "VERIFIED"})
    assert ask_api(http, API, None, "bill", {"hold_id": HOLD_ID})["status"] == "VERIFIED"
    assert seen[0].url.raw_path == f"/v1/bills/{HOLD_ID}".encode()
