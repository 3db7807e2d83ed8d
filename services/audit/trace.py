"""The trace of one event: from the record ingested to the bills that paid for predictions of the
models that learned from it.

    trace = await audit_trace(store, ledger, lineage, "acme", "evt-42", limit=20, page=1)
    trace.status       # the verdict on the event's own chain: VERIFIED, TAMPERED, NOT_ANCHORED_YET, ...
    trace.as_dict()    # the JSON answer of the HTTP API (and the fields of the gRPC one)

The chain, one link each, each with its evidence and a verdict:
- `ingested`: the raw record at the clean record's raw_partition/raw_offset of the raw topic
  (Kafka): PRESENT (same tenant and event id), MISMATCH (another record is there), GONE (the
  offset is below the partition's start: deleted by retention), UNREADABLE (the audit's Kafka
  principal may not read the raw topic: on a secured cluster only cleaning may), UNKNOWN (no
  stored record says where it was);
- `clean`, `proof`, `anchor`: `verify()` (services/audit/verification.py): the stored record and
  its content hash recomputed, its Merkle proof, the batch's root on the ledger;
- `transaction`: the anchoring transaction read by id from the peer (qscc GetTransactionByID):
  its validation code, block and the organisations (MSP ids) that endorsed it;
- `models`: every version of a model whose declaration takes the event's tenant and source and
  whose snapshot offsets cover the event (the snapshot's next offset for the event's clean
  partition is past the event's clean offset, which the proof gives), each with its ledger
  registration (`provenance.compare_model`: MATCH, MISMATCH, NOT_REGISTERED, ...);
- `usage`: the predictions those versions served (UsageRecords of the usage topic, counted once
  per request id) and the holds that paid for them, each with its state on the ledger (GetHold).

Models are listed `limit` versions a page (`page` from 1); the usage of the page's versions only.

Verdicts (`status`): `verify()`'s, except that a raw record that is another event's, or a model
version whose registration does not match its snapshot, makes a VERIFIED chain TAMPERED
(`problems` says which). LEDGER_UNREACHABLE / STORE_UNREACHABLE (MongoDB or Kafka) when a part
could not be read: what was gathered is returned, never VERIFIED.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from services.audit.jsonable import jsonable
from services.audit.ports import (
    EvidenceStore,
    InvalidArgument,
    LedgerReader,
    LedgerUnreachable,
    StoreUnreachable,
)
from services.audit.provenance import compare_model
from services.audit.verification import (
    Status,
    Verification,
    check_event_id,
    check_tenant,
    verify,
)
from streamledger.core.ids import RECORD_ID, parse_batch_id
from streamledger.core.models import ModelDeclaration

MAX_LIMIT = 200
DEFAULT_LIMIT = 20
USAGE_SLACK_MS = 5 * 60 * 1000
"""Usage of a version is read from this long before its snapshot was taken (clocks differ)."""


class Link(StrEnum):
    INGESTED = "ingested"
    CLEAN = "clean"
    PROOF = "proof"
    ANCHOR = "anchor"
    TRANSACTION = "transaction"
    MODELS = "models"
    USAGE = "usage"


class Lineage(Protocol):
    """What the trace reads besides the evidence store and the ledger. May raise StoreUnreachable."""

    def declared(self) -> Sequence[ModelDeclaration]:
        """The models the learning service runs (its models file); StoreUnreachable when it cannot be read."""

    async def raw_record(self, partition: int, offset: int) -> dict[str, Any]:
        """The raw topic's record at this position: {"topic", "partition", "offset", "state": "present" | "gone" | "denied"
        | "not_yet", "record": the decoded RawEvent or None, "error": why it does not decode, or None,
        "log_start": the partition's first offset}."""

    async def snapshots(self, model_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The `models` documents of these models (no model bytes): model_id, version, sha256, offsets, created."""

    async def usage_of_versions(self, versions: Sequence[tuple[str, int]], since_ms: int) -> list[dict[str, Any]]:
        """The usage records naming one of these (model_id, model_version), written from `since_ms`."""


@dataclass
class Trace:
    tenant: str
    event_id: str
    status: Status
    detail: str = ""
    problems: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)
    """One per link of the chain, in order: {"link", "verdict", "detail", "evidence"}."""
    verification: dict[str, Any] | None = None
    models: list[dict[str, Any]] = field(default_factory=list)
    holds: list[dict[str, Any]] = field(default_factory=list)
    page: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return self.problems[0]["reason"] if self.problems else ""

    def as_dict(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "event_id": self.event_id, "status": self.status.value,
                "reason": self.reason, "detail": self.detail, "problems": self.problems, "notes": self.notes,
                "links": self.links, "verification": self.verification, "models": self.models,
                "holds": self.holds, "page": self.page}


def check_page(limit: Any, page: Any) -> tuple[int, int]:
    """(limit, page) when both are whole numbers in range, else InvalidArgument naming the one at fault."""
    for name, value, high in (("limit", limit, MAX_LIMIT), ("page", page, None)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (high and value > high):
            raise InvalidArgument(name, f"must be a whole number from 1{f' to {high}' if high else ''}, got {value!r}")
    return limit, page


async def audit_trace(store: EvidenceStore, ledger: LedgerReader, lineage: Lineage, tenant: str, event_id: str,
                      limit: int = DEFAULT_LIMIT, page: int = 1) -> Trace:
    """The trace of `tenant`'s event `event_id` (InvalidArgument when an argument is malformed)."""
    event_id, tenant = check_event_id(event_id), check_tenant(tenant)
    limit, page = check_page(limit, page)
    verification = await verify(store, ledger, tenant, event_id)
    trace = Trace(tenant, event_id, verification.status, verification.detail,
                  problems=[{"reason": p.reason.value, "detail": p.detail} for p in verification.problems],
                  verification=verification.as_dict(), page={"limit": limit, "page": page, "versions": 0, "pages": 0})
    if verification.status in (Status.UNKNOWN, Status.STORE_UNREACHABLE, Status.LEDGER_UNREACHABLE):
        trace.links = [_link(Link.CLEAN, verification.status.value, verification.detail, None)]
        return trace
    try:
        trace.links.append(await _ingested(lineage, verification.record))
        trace.links.extend(_verified_links(verification))
        trace.links.append(await _transaction(ledger, verification))
        await _models_and_usage(trace, store, ledger, lineage, verification, limit, page)
    except LedgerUnreachable as exc:
        return _unreachable(trace, Status.LEDGER_UNREACHABLE, f"the ledger could not be read, so nothing is "
                                                              f"verified: {exc}")
    except StoreUnreachable as exc:
        return _unreachable(trace, Status.STORE_UNREACHABLE, f"MongoDB or Kafka could not be read, so nothing is "
                                                             f"verified: {exc}")
    return _decide(trace)


def _link(link: Link, verdict: str, detail: str, evidence: Any) -> dict[str, Any]:
    return {"link": link.value, "verdict": verdict, "detail": detail, "evidence": jsonable(evidence)}


def _unreachable(trace: Trace, status: Status, detail: str) -> Trace:
    trace.status, trace.detail = status, detail
    return trace


async def _ingested(lineage: Lineage, record: Mapping[str, Any] | None) -> dict[str, Any]:
    partition, offset = (record or {}).get("raw_partition"), (record or {}).get("raw_offset")
    if not (_whole(partition) and _whole(offset)):
        return _link(Link.INGESTED, "UNKNOWN", "no stored record says where the raw record was (raw_partition, "
                                               "raw_offset)", None)
    found = await lineage.raw_record(partition, offset)
    where = f"{found.get('topic')}[{partition}] offset {offset}"
    state, raw = found.get("state"), found.get("record")
    if state == "gone":
        return _link(Link.INGESTED, "GONE", f"{where} was deleted by retention (the partition now starts at "
                                            f"{found.get('log_start')})", found)
    if state == "denied":
        return _link(Link.INGESTED, "UNREADABLE", f"{where} could not be read: {found.get('error')}", found)
    if state != "present":
        return _link(Link.INGESTED, "UNKNOWN", f"{where} is past the partition's end: no such record", found)
    if raw is None:
        return _link(Link.INGESTED, "MISMATCH", f"{where} is no RawEvent: {found.get('error')}", found)
    same = raw.get("tenant") == record.get("tenant") and raw.get("event_id") == record.get("event_id") \
        and raw.get("source") == record.get("source")
    if not same:
        return _link(Link.INGESTED, "MISMATCH", f"{where} holds event {raw.get('event_id')!r} of tenant "
                                                f"{raw.get('tenant')!r}, not this one", found)
    return _link(Link.INGESTED, "PRESENT", f"ingested as {where}", found)


def _verified_links(v: Verification) -> list[dict[str, Any]]:
    """The links `verify()` checked: the clean record and its hash, the proof, the batch's root on the ledger."""
    kinds = {p.reason.value for p in v.problems}
    record_faults = kinds & {"record_changed", "stored_hash_changed", "record_not_canonical"}
    if v.record is None:
        clean = _link(Link.CLEAN, "DELETED", "the stored record is gone", None)
    elif record_faults:
        clean = _link(Link.CLEAN, "TAMPERED", next(p.detail for p in v.problems if p.reason.value in record_faults),
                      {"record": v.record, "recomputed_hash": v.recomputed_hash, "stored_hash": v.stored_hash})
    else:
        clean = _link(Link.CLEAN, "MATCH", f"the stored record hashes to {v.recomputed_hash}, its content_hash",
                      {"record": v.record, "recomputed_hash": v.recomputed_hash, "stored_hash": v.stored_hash})
    proof_faults = [p for p in v.problems if p.reason.value in ("proof_malformed", "proof_mismatch")]
    if v.proof is None:
        proof = _link(Link.PROOF, "NOT_ANCHORED_YET", "no Merkle proof yet: the batch has not been anchored", None)
    elif proof_faults:
        proof = _link(Link.PROOF, "TAMPERED", proof_faults[0].detail, {"proof": v.proof, "computed_root": v.computed_root})
    else:
        proof = _link(Link.PROOF, "MATCH", f"the proof leads to root {v.computed_root}",
                      {"proof": v.proof, "computed_root": v.computed_root})
    if v.anchor is None:
        anchor = _link(Link.ANCHOR, "NOT_ANCHORED_YET", "the ledger has no anchor of the proof's batch"
                       if v.proof is not None else "no batch to look up", None)
    elif proof_faults:
        anchor = _link(Link.ANCHOR, "TAMPERED", proof_faults[0].detail, v.anchor)
    else:
        anchor = _link(Link.ANCHOR, "MATCH", f"batch {v.anchor.get('batch_id')}'s root on the ledger is the "
                                             f"proof's root", v.anchor)
    return [clean, proof, anchor]


async def _transaction(ledger: LedgerReader, v: Verification) -> dict[str, Any]:
    tx_id = v.anchor.get("tx_id") if v.anchor else None
    if not isinstance(tx_id, str) or not tx_id:
        return _link(Link.TRANSACTION, "UNKNOWN", "no anchoring transaction to read", None)
    tx = await ledger.transaction(tx_id)
    if tx is None:
        return _link(Link.TRANSACTION, "NOT_FOUND", f"the peer has no transaction {tx_id}", {"tx_id": tx_id})
    evidence = {**tx, "block_number": v.anchor.get("block_number")}
    orgs = ", ".join(tx.get("endorsers") or []) or "nobody"
    return _link(Link.TRANSACTION, str(tx.get("validation_code")),
                 f"tx {tx_id} in block {v.anchor.get('block_number')}, endorsed by {orgs}", evidence)


def clean_position(v: Verification) -> tuple[str, int, int] | None:
    """(clean topic, partition, offset) of the event, from its proof (its batch id when the proof has no offset)."""
    proof = v.proof or {}
    topic, partition, offset = proof.get("topic"), proof.get("partition"), proof.get("offset")
    batch = parse_batch_id(str(proof.get("batch_id", "")))
    if batch and not (isinstance(topic, str) and _whole(partition)):
        topic, partition = batch[0], batch[1]
    if isinstance(topic, str) and _whole(partition) and _whole(offset):
        return topic, partition, offset
    return None


def covering(snapshots: Sequence[Mapping[str, Any]], topic: str, partition: int, offset: int) -> list[dict[str, Any]]:
    """The snapshots that reflect the record at (topic, partition, offset), by model and version."""
    found = []
    for s in snapshots:
        for o in s.get("offsets") or []:
            if isinstance(o, Mapping) and o.get("topic") == topic and o.get("partition") == partition \
                    and _whole(o.get("offset")) and o["offset"] > offset:
                found.append({**s, "covered_by_offset": o["offset"]})
    return sorted(found, key=lambda s: (str(s.get("model_id")), _int(s.get("version"))))


async def _models_and_usage(trace: Trace, store: EvidenceStore, ledger: LedgerReader, lineage: Lineage,
                            v: Verification, limit: int, page: int) -> None:
    record = v.record or {}
    position = clean_position(v)
    takers = [d.model_id for d in lineage.declared()
              if record and d.takes(str(record.get("tenant")), str(record.get("source")))]
    if not record:
        trace.links.append(_link(Link.MODELS, "UNKNOWN", "the stored record is gone, so its tenant and source, "
                                                         "which say which models take it, are unknown", None))
        return
    if position is None:
        trace.links.append(_link(Link.MODELS, "UNKNOWN", "the event's clean offset is known from its proof only, "
                                                         "and it has none yet", {"declared": takers}))
        return
    topic, partition, offset = position
    if not takers:
        trace.links.append(_link(Link.MODELS, "NONE", "no declared model takes events of tenant "
                                                      f"{record.get('tenant')!r} and source {record.get('source')!r}",
                                 {"declared": []}))
        return
    covered = covering(await lineage.snapshots(takers), topic, partition, offset)
    pages = -(-len(covered) // limit)
    trace.page.update(versions=len(covered), pages=pages)
    shown = covered[(page - 1) * limit: page * limit]
    for snapshot in shown:
        model_id, version = str(snapshot.get("model_id")), _int(snapshot.get("version"))
        registered = await ledger.model(model_id, version)
        report = compare_model(model_id, version, registered, snapshot, None, None)
        trace.models.append({"model_id": model_id, "version": version, "covered_by_offset": snapshot["covered_by_offset"],
                             "snapshot_created": jsonable(snapshot.get("created")), "status": report.status.value,
                             "detail": report.detail, "snapshot_sha256": snapshot.get("sha256"),
                             "registered_sha256": registered.get("sha256") if registered else None,
                             "registered_tx_id": registered.get("tx_id") if registered else None,
                             "predictions": 0, "units": 0, "holds": []})
    verdict = "COVERED" if covered else "NOT_YET"
    trace.links.append(_link(Link.MODELS, verdict,
                             f"{len(covered)} versions of {', '.join(takers)} learned from {topic}[{partition}] "
                             f"offset {offset}" if covered else
                             f"no snapshot of {', '.join(takers)} reflects {topic}[{partition}] offset {offset} yet",
                             {"declared": takers, "clean_topic": topic, "clean_partition": partition,
                              "clean_offset": offset, "versions": len(covered)}))
    if shown:
        await _usage(trace, ledger, lineage, shown)


async def _usage(trace: Trace, ledger: LedgerReader, lineage: Lineage, shown: Sequence[Mapping[str, Any]]) -> None:
    since = min((_ms(s.get("created")) for s in shown), default=0)
    records = await lineage.usage_of_versions([(m["model_id"], m["version"]) for m in trace.models],
                                              max(0, since - USAGE_SLACK_MS))
    by_version = {(m["model_id"], m["version"]): m for m in trace.models}
    holds: dict[str, dict[str, Any]] = {}
    counted: set[tuple[Any, Any]] = set()
    for r in records:
        model = by_version.get((str(r.get("model_id")), _int(r.get("model_version"))))
        request = (r.get("client"), r.get("request_id"))
        if model is None or request in counted:
            continue
        counted.add(request)
        model["predictions"] += 1
        model["units"] += _int(r.get("units"))
        hold_id = r.get("hold_id")
        if isinstance(hold_id, str) and hold_id:
            if hold_id not in model["holds"]:
                model["holds"].append(hold_id)
            entry = holds.setdefault(hold_id, {"hold_id": hold_id, "requests": 0, "units": 0, "versions": []})
            entry["requests"] += 1
            entry["units"] += _int(r.get("units"))
            version = f"{model['model_id']} v{model['version']}"
            if version not in entry["versions"]:
                entry["versions"].append(version)
    for hold_id, entry in holds.items():
        if not RECORD_ID.fullmatch(hold_id):  # a usage record naming no hold the contract could have frozen
            entry.update(status="MALFORMED_ID", charged=None, client=None, provider=None, close_tx_id=None)
            continue
        hold = await ledger.hold(hold_id)
        entry.update(status=hold.get("status") if hold else "NOT_FOUND",
                     charged=hold.get("charged") if hold else None, client=hold.get("client") if hold else None,
                     provider=hold.get("provider") if hold else None,
                     close_tx_id=hold.get("close_tx_id") if hold else None)
    trace.holds = sorted(holds.values(), key=lambda h: h["hold_id"])
    served = sum(m["predictions"] for m in trace.models)
    settled = sum(1 for h in trace.holds if h["status"] == "SETTLED")
    page = trace.page
    these = ("these versions" if page["pages"] == 1 else  # a page's usage is not all of it: say whose it is
             f"the {len(trace.models)} versions of page {page['page']} of {page['pages']}")
    trace.links.append(_link(Link.USAGE, "PAID" if trace.holds and settled == len(trace.holds) else
                             "SERVED" if served else "NONE",
                             f"{served} predictions by {these}, paid by {len(trace.holds)} holds "
                             f"({settled} settled)", {"predictions": served, "holds": len(trace.holds),
                                                      "settled": settled, "skipped": 0}))


def _decide(trace: Trace) -> Trace:
    if trace.status != Status.VERIFIED:
        return trace
    ingested = next((link for link in trace.links if link["link"] == Link.INGESTED), None)
    if ingested is not None and ingested["verdict"] == "MISMATCH":
        trace.problems.append({"reason": "raw_mismatch", "detail": ingested["detail"]})
    for model in trace.models:
        if model["status"] == "MISMATCH":
            trace.problems.append({"reason": "model_mismatch",
                                   "detail": f"model {model['model_id']} v{model['version']}: {model['detail']}"})
        elif model["status"] != "MATCH":
            trace.notes.append(f"model {model['model_id']} v{model['version']}: {model['status']} - {model['detail']}")
    if ingested is not None and ingested["verdict"] in ("GONE", "UNREADABLE"):
        trace.notes.append(ingested["detail"])
    if trace.problems:
        trace.status, trace.detail = Status.TAMPERED, trace.problems[0]["detail"]
    return trace


def _ms(created: Any) -> int:
    if isinstance(created, datetime):
        return int(created.timestamp() * 1000)
    return _int(created)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
