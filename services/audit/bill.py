"""The bill of one hold: its terms, the client's signed receipts, the usage behind them, the
settlement, and the model versions that were paid for.

    bill = await audit_bill(ledger, usage, lineage, "f898c8e3fcf5d04a8186f04a431e5a78")
    bill.status        # BillStatus.VERIFIED, DISPUTED, NOT_SETTLED_YET, NOT_FOUND, ...
    bill.as_dict()     # the JSON answer of the HTTP API (and the fields of the gRPC one)

Where each part comes from:
- terms, the receipt recorded, the settlement: the hold on the ledger (GetHold), the block of
  its closing transaction (qscc), and every write of its key (History of `hold:<id>`);
- receipts and usage: the usage topic's UsageRecords of the hold (request ids, model versions,
  units, and the receipt each carried); each distinct receipt, and the one on the ledger, is
  verified against the certificate that froze the hold (`streamledger.core.hold_receipts`);
- models: for each version used, its registration on the ledger (GetModel) against the stored
  snapshot's hash, and the anchored data it learned from: the snapshot records, per input
  partition, the next offset to read, so it learned from the records before it; MongoDB's
  `anchors` (written from ledger.anchors) gives the anchored batches there, and the last of
  them is checked on the ledger (GetAnchor).

Verdicts:
- VERIFIED: the hold is closed, every receipt verifies, and the charge is what the paid
  receipt covers (units x price, at most what was reserved); the rest was refunded.
- DISPUTED: `problems` says what does not stand: `receipt_invalid` (a receipt, on the ledger or
  in a usage record, that the hold's client did not sign, or that is malformed),
  `charge_without_receipt` (credit charged with no receipt recorded), `charge_exceeds_receipt`
  (more charged than the receipt's units x price, or than was reserved), `amounts_inconsistent`
  (charged + refunded is not the amount frozen).
- NOT_SETTLED_YET: the hold is open and nothing found so far is wrong (ask again later).
- NOT_FOUND: the ledger has no such hold.
- LEDGER_UNREACHABLE / STORE_UNREACHABLE (MongoDB or the usage topic): what was gathered is
  returned; never VERIFIED.
`notes` says what an auditor should see that is not a fault: usage beyond the receipt (the
provider's credit window, unpaid), a receipt for more than the usage found, a usage price other
than the hold's, a model version whose registration does not match.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from cryptography import x509

from services.audit.jsonable import jsonable
from services.audit.ports import (
    EvidenceStore,
    InvalidArgument,
    LedgerReader,
    LedgerUnreachable,
    StoreUnreachable,
)
from services.audit.provenance import compare_model
from streamledger.core.hold_receipts import check_receipts
from streamledger.core.ids import RECORD_ID

# The contract's record-id rule (chaincode/ledger/validate.go): a hold id outside it was never frozen.

USAGE_SLACK = timedelta(minutes=5)
"""Usage is read from this long before the hold's Freeze to this long after it closed (clocks of
the peers and brokers differ)."""
TERM_FIELDS = ("hold_id", "client", "provider", "amount", "price_per_unit", "authorized", "status", "expires_at",
               "settlement_window_seconds", "settle_by", "created_at", "freeze_tx_id")
OPEN = "OPEN"


class BillStatus(StrEnum):
    VERIFIED = "VERIFIED"
    DISPUTED = "DISPUTED"
    NOT_SETTLED_YET = "NOT_SETTLED_YET"
    NOT_FOUND = "NOT_FOUND"
    LEDGER_UNREACHABLE = "LEDGER_UNREACHABLE"
    STORE_UNREACHABLE = "STORE_UNREACHABLE"


class Reason(StrEnum):
    RECEIPT_INVALID = "receipt_invalid"
    CHARGE_WITHOUT_RECEIPT = "charge_without_receipt"
    CHARGE_EXCEEDS_RECEIPT = "charge_exceeds_receipt"
    AMOUNTS_INCONSISTENT = "amounts_inconsistent"


class UsageLog(Protocol):
    """The usage topic's side. May raise StoreUnreachable."""

    async def usage_of(self, hold_id: str, since_ms: int, until_ms: int | None = None) -> dict[str, Any]:
        """{"topic", "records": [UsageRecord + partition, offset], "skipped"} of the hold, written from
        `since_ms` (and before `until_ms`, when given)."""


class AnchorIndex(Protocol):
    """MongoDB's `anchors` (the ledger.anchors records). May raise StoreUnreachable."""

    async def anchored_before(self, topic: str, partition: int, offset: int) -> dict[str, Any]:
        """The anchored batches of a partition that start before `offset`: {"batches", "first", "last"}
        (first and last: the earliest and the latest such batch's document, None when there are none)."""


@dataclass
class Bill:
    hold_id: str
    status: BillStatus
    detail: str = ""
    problems: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    terms: dict[str, Any] | None = None
    receipts: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    settlement: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return self.problems[0]["reason"] if self.problems else ""

    def as_dict(self) -> dict[str, Any]:
        return {"hold_id": self.hold_id, "status": self.status.value, "reason": self.reason, "detail": self.detail,
                "problems": self.problems, "notes": self.notes, "terms": self.terms, "receipts": self.receipts,
                "usage": self.usage, "settlement": self.settlement, "history": self.history, "models": self.models}


def check_hold_id(hold_id: Any) -> str:
    if not isinstance(hold_id, str) or not RECORD_ID.fullmatch(hold_id):
        raise InvalidArgument("hold_id", "must be 1-128 letters, digits, '.', '_', ':' or '-', starting with a "
                                         f"letter or digit (a hold id is 32 hex digits); got {hold_id!r}")
    return hold_id


async def audit_bill(ledger: LedgerReader, usage: UsageLog, store: EvidenceStore, anchors: AnchorIndex,
                     hold_id: str) -> Bill:
    """The bill of `hold_id` (InvalidArgument when the id is malformed)."""
    hold_id = check_hold_id(hold_id)
    bill = Bill(hold_id, BillStatus.NOT_FOUND)
    try:
        hold = await ledger.hold(hold_id)
        if hold is None:
            bill.detail = f"the ledger has no hold {hold_id!r}"
            return bill
        bill.terms = terms_of(hold)
        found = await usage.usage_of(hold_id, _since_ms(hold), _until_ms(hold))
        judge_bill(bill, hold, found)
        writes = [_write(entry) for entry in await ledger.history(f"hold:{hold_id}")]
        bill.history = sorted(writes, key=lambda w: _moment(w["timestamp"]))  # the peer gives newest first
        if bill.settlement is not None and bill.settlement.get("tx_id"):
            block = await ledger.transaction_block(bill.settlement["tx_id"])
            bill.settlement["block_number"] = block.get("block_number") if block else None
            bill.settlement["tx_validation"] = block.get("validation_code") if block else None
        bill.models = [await _model(ledger, store, anchors, used) for used in models_used(found.get("records", []))]
    except LedgerUnreachable as exc:
        bill.status = BillStatus.LEDGER_UNREACHABLE
        bill.detail = f"the ledger could not be read, so nothing is verified: {exc}"
        return bill
    except StoreUnreachable as exc:
        bill.status = BillStatus.STORE_UNREACHABLE
        bill.detail = f"the usage topic or MongoDB could not be read, so nothing is verified: {exc}"
        return bill
    for model in bill.models:
        if model["status"] != "MATCH":
            bill.notes.append(f"model {model['model_id']} v{model['version']}: {model['status']} - {model['detail']}")
    return bill


def terms_of(hold: Mapping[str, Any]) -> dict[str, Any]:
    terms = {k: hold.get(k) for k in TERM_FIELDS}
    terms["client_cert"] = hold.get("client_cert")
    terms["client_cert_subject"] = _subject(hold.get("client_cert"))
    return terms


def judge_bill(bill: Bill, hold: Mapping[str, Any], usage: Mapping[str, Any]) -> Bill:
    """The verdict from the hold on the ledger and its usage records, without I/O: fills the bill's
    receipts, usage, settlement, problems, notes, status and detail."""
    records = list(usage.get("records", []))
    checked = check_receipts(hold, records)
    bill.receipts = [r.as_dict() for r in checked]
    for r in checked:
        if not r.verified:
            where = " and ".join(r.sources)
            carried = f" (carried by requests {', '.join(r.request_ids[:5])})" if r.request_ids else ""
            _problem(bill, Reason.RECEIPT_INVALID, f"the receipt for {r.units} units, sequence {r.sequence}, "
                                                   f"on the {where}{carried} does not verify: {r.problem}")
    bill.usage = _usage_summary(usage, records)
    price, amount = _int(hold.get("price_per_unit")), _int(hold.get("amount"))
    paid = hold.get("receipt") if isinstance(hold.get("receipt"), Mapping) else None
    paid_units = _int(paid.get("units")) if paid else 0
    if bill.usage["units"] > paid_units:
        bill.notes.append(f"usage shows {bill.usage['units']} units served, the receipt on the ledger covers "
                          f"{paid_units}: {bill.usage['units'] - paid_units} units are unpaid (the provider's risk)")
    elif records and bill.usage["units"] < paid_units:
        bill.notes.append(f"the receipt on the ledger covers {paid_units} units, the usage found shows "
                          f"{bill.usage['units']} (usage before retention or a lost record?)")
    other_prices = sorted({r.get("price") for r in records if r.get("price") != price}, key=str)
    if other_prices:
        bill.notes.append(f"usage records name price {other_prices}, the hold's price per unit is {price}")
    status = hold.get("status")
    if status != OPEN:
        charged, refunded, authorized = _int(hold.get("charged")), _int(hold.get("refunded")), \
            _int(hold.get("authorized"))
        bill.settlement = {"status": status, "charged": charged, "refunded": refunded,
                           "closed_at": hold.get("closed_at"), "tx_id": hold.get("close_tx_id"),
                           "block_number": None, "tx_validation": None,
                           "receipt_units": paid_units if paid else None,
                           "receipt_sequence": _int(paid.get("sequence")) if paid else None,
                           "expected_charge": min(paid_units * price, authorized)}
        if charged > 0 and paid is None:
            _problem(bill, Reason.CHARGE_WITHOUT_RECEIPT, f"{charged} was charged, but the hold records no receipt "
                                                          "signed by its client")
        elif charged > paid_units * price or charged > authorized:
            _problem(bill, Reason.CHARGE_EXCEEDS_RECEIPT, f"{charged} was charged, but the receipt covers "
                                                          f"{paid_units} x {price} = {paid_units * price} and "
                                                          f"{authorized} was reserved")
        if charged + refunded != amount:
            _problem(bill, Reason.AMOUNTS_INCONSISTENT, f"charged {charged} + refunded {refunded} is not the "
                                                        f"{amount} frozen")
    return _decide(bill, status)


def _decide(bill: Bill, status: Any) -> Bill:
    verified = sum(1 for r in bill.receipts if r["verified"])
    if bill.problems:
        bill.status, bill.detail = BillStatus.DISPUTED, bill.problems[0]["detail"]
    elif status == OPEN:
        bill.status = BillStatus.NOT_SETTLED_YET
        bill.detail = (f"the hold is open (settle by {bill.terms and bill.terms.get('settle_by')}); its "
                       f"{verified} receipts so far verify")
    else:
        s = bill.settlement or {}
        bill.status = BillStatus.VERIFIED
        bill.detail = (f"{str(status).lower()} in tx {s.get('tx_id')}: charged {s.get('charged')} for "
                       f"{s.get('receipt_units') or 0} receipted units, refunded {s.get('refunded')}; all "
                       f"{verified} receipts verify against the client's certificate")
    return bill


def models_used(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each (model_id, model_version) the usage names, with its requests and units (once per request id)."""
    used: dict[tuple[str, int], dict[str, Any]] = {}
    counted: set[str] = set()
    for r in records:
        if r.get("request_id") in counted:
            continue
        counted.add(r.get("request_id"))
        entry = used.setdefault((str(r.get("model_id")), _int(r.get("model_version"))),
                                {"model_id": str(r.get("model_id")), "version": _int(r.get("model_version")),
                                 "requests": 0, "units": 0})
        entry["requests"] += 1
        entry["units"] += _int(r.get("units"))
    return sorted(used.values(), key=lambda m: (m["model_id"], m["version"]))


async def _model(ledger: LedgerReader, store: EvidenceStore, anchors: AnchorIndex,
                 used: dict[str, Any]) -> dict[str, Any]:
    model_id, version = used["model_id"], used["version"]
    registered = await ledger.model(model_id, version) if version >= 1 and RECORD_ID.fullmatch(model_id) else None
    snapshot = await store.snapshot(model_id, version) if version >= 1 else None
    report = compare_model(model_id, version, registered, snapshot, None, None)
    learned = None
    if snapshot is not None and isinstance(snapshot.get("offsets"), list):
        learned = [await _learned_from(ledger, anchors, o) for o in snapshot["offsets"] if isinstance(o, Mapping)]
    return {**used, "status": report.status.value, "detail": report.detail,
            "registered_sha256": registered.get("sha256") if registered else None,
            "registered_tx_id": registered.get("tx_id") if registered else None,
            "snapshot_sha256": snapshot.get("sha256") if snapshot else None,
            "learned_from": learned}


async def _learned_from(ledger: LedgerReader, anchors: AnchorIndex, position: Mapping[str, Any]) -> dict[str, Any]:
    """What a snapshot learned from in one partition (every record before `offset`), and how much of it is anchored."""
    topic, partition, before = str(position.get("topic")), _int(position.get("partition")), \
        _int(position.get("offset"))
    found = await anchors.anchored_before(topic, partition, before)
    first, last = found.get("first"), found.get("last")
    entry = {"topic": topic, "partition": partition, "before_offset": before, "batches": found.get("batches", 0),
             "anchored_first": first.get("first_offset") if first else None,
             "anchored_last": min(_int(last.get("last_offset")), before - 1) if last else None,
             "last_batch_id": last.get("batch_id") if last else None, "last_batch_on_ledger": None}
    batch = entry["last_batch_id"]
    if isinstance(batch, str) and RECORD_ID.fullmatch(batch):
        anchor = await ledger.anchor(batch)
        entry["last_batch_on_ledger"] = anchor is not None and anchor.get("merkle_root") == last.get("merkle_root")
    return entry


def _usage_summary(usage: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    seen: set[Any] = set()
    rows, units, duplicates = [], 0, 0
    for r in records:
        duplicate = r.get("request_id") in seen
        seen.add(r.get("request_id"))
        duplicates += duplicate
        units += 0 if duplicate else _int(r.get("units"))
        rows.append(jsonable({"request_id": r.get("request_id"), "model_id": r.get("model_id"),
                              "model_version": r.get("model_version"), "units": r.get("units"),
                              "price": r.get("price"), "ts": _instant(r.get("ts")), "receipt_units": r.get("receipt_units"),
                              "receipt_sequence": r.get("receipt_sequence"), "partition": r.get("partition"),
                              "offset": r.get("offset"), "duplicate": duplicate}))
    return {"topic": usage.get("topic"), "records": rows, "requests": len(seen), "units": units,
            "duplicates": duplicates, "skipped": _int(usage.get("skipped"))}


def _write(entry: Mapping[str, Any]) -> dict[str, Any]:
    """One committed write of the hold's key: its tx, time, and the hold's state after it."""
    try:
        value = json.loads(entry.get("value") or "null")
    except (TypeError, ValueError):
        value = None
    value = value if isinstance(value, dict) else {}
    receipt = value.get("receipt") if isinstance(value.get("receipt"), dict) else None
    return {"tx_id": entry.get("tx_id"), "timestamp": entry.get("timestamp"), "status": value.get("status"),
            "authorized": value.get("authorized"), "receipt_units": receipt.get("units") if receipt else None,
            "receipt_sequence": receipt.get("sequence") if receipt else None,
            "charged": value.get("charged"), "is_delete": bool(entry.get("is_delete"))}


def _problem(bill: Bill, reason: Reason, detail: str) -> None:
    bill.problems.append({"reason": reason.value, "detail": detail})


def _since_ms(hold: Mapping[str, Any]) -> int:
    try:
        created = datetime.fromisoformat(str(hold.get("created_at")))
    except ValueError:
        return 0  # an unreadable time: read the whole topic rather than miss usage
    return max(0, int((created - USAGE_SLACK).timestamp() * 1000))


def _until_ms(hold: Mapping[str, Any]) -> int | None:
    """A closed hold's usage is all written before it closed (plus the slack); an open one's is not."""
    if hold.get("status") == OPEN:
        return None
    try:
        closed = datetime.fromisoformat(str(hold.get("closed_at")))
    except ValueError:
        return None
    return int((closed + USAGE_SLACK).timestamp() * 1000)


def _moment(timestamp: Any) -> datetime:
    try:
        moment = datetime.fromisoformat(str(timestamp))
    except ValueError:
        return datetime.max.replace(tzinfo=UTC)  # unknown times last
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _instant(ts: Any) -> Any:
    """A usage time as ISO-8601: Avro gives a datetime; a record built by hand may hold epoch ms."""
    if isinstance(ts, int) and not isinstance(ts, bool):
        return datetime.fromtimestamp(ts / 1000, UTC)
    return ts


def _subject(pem: Any) -> str | None:
    if not isinstance(pem, str) or not pem:
        return None
    try:
        return x509.load_pem_x509_certificate(pem.encode()).subject.rfc4514_string()
    except ValueError:
        return None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
