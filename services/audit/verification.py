"""Verifying one stored record against the ledger: a verdict and its chain of evidence.

    verification = await verify(store, ledger, "acme", "evt-42")
    verification.status        # Status.VERIFIED, TAMPERED, NOT_ANCHORED_YET, UNKNOWN, DELETED, ...
    verification.as_dict()     # the JSON answer of the HTTP API (and the fields of the gRPC one)

A record is named by its tenant and event id: event ids are chosen by each tenant, so two
tenants may use the same one (storage and the ledger service key their documents by both,
streamledger/core/scoped.py).

The chain: the stored `events` document -> its content hash recomputed from the canonical
encoding (schemas/CANONICAL.md) -> the `proofs` document (the Merkle leaf is the content
hash anchored, plus the sibling path) -> the root that path yields -> the root the ledger
holds for the batch (GetAnchor: the ledger is the authority, MongoDB's `anchors` collection
never is) -> the Fabric transaction that anchored it and its block.

Verdicts:
- VERIFIED: the record hashes to the proof's leaf, the document's own content_hash agrees,
  and the proof leads to exactly the root on the ledger, for a tree of the anchored size.
- TAMPERED: some check failed; `reason` names the first (`problems` lists all):
  `record_changed` (the record no longer hashes to the anchored leaf),
  `stored_hash_changed` (the content is intact but its content_hash field was edited),
  `record_not_canonical` (a field was changed into something with no canonical encoding),
  `proof_malformed` (the proof document lacks a field, holds bad hex, or has the wrong shape),
  `proof_mismatch` (the proof does not lead to the ledger's root: a sibling, the index, the
  size or the leaf was altered, or its offset lies outside the anchored range).
- NOT_ANCHORED_YET: the record is stored but has no proof yet, or the proof's batch is not
  on the ledger yet (anchoring is asynchronous; ask again later).
- DELETED: a proof exists, so the ledger service anchored the record, but the stored record
  is gone. The proof is still checked against the ledger and reported as evidence.
- UNKNOWN: neither a record nor a proof has this id for this tenant.
- LEDGER_UNREACHABLE / STORE_UNREACHABLE: the audit could not be completed; whatever was
  gathered before is returned, and the checks done so far are in `problems`. Whenever a
  proof exists the verdict needs the ledger, so an unreachable ledger never yields VERIFIED.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from services.audit.jsonable import jsonable
from services.audit.ports import (
    EvidenceStore,
    InvalidArgument,
    LedgerReader,
    LedgerUnreachable,
    StoreUnreachable,
)
from streamledger.core.canonical import CanonicalEncodingError, content_hash
from streamledger.core.ids import RECORD_ID
from streamledger.core.merkle import HASH_SIZE, InvalidProof, compute_root

MAX_EVENT_ID_LENGTH = 256
"""As ingestion accepts (services/ingestion/validation.py): no stored record has a longer id."""

_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


class Status(StrEnum):
    VERIFIED = "VERIFIED"
    TAMPERED = "TAMPERED"
    NOT_ANCHORED_YET = "NOT_ANCHORED_YET"
    UNKNOWN = "UNKNOWN"
    DELETED = "DELETED"
    LEDGER_UNREACHABLE = "LEDGER_UNREACHABLE"
    STORE_UNREACHABLE = "STORE_UNREACHABLE"


class Reason(StrEnum):
    RECORD_CHANGED = "record_changed"
    STORED_HASH_CHANGED = "stored_hash_changed"
    RECORD_NOT_CANONICAL = "record_not_canonical"
    PROOF_MALFORMED = "proof_malformed"
    PROOF_MISMATCH = "proof_mismatch"


@dataclass(frozen=True)
class Problem:
    reason: Reason
    detail: str


@dataclass
class Verification:
    tenant: str
    event_id: str
    status: Status
    detail: str = ""
    problems: list[Problem] = field(default_factory=list)
    record: dict[str, Any] | None = None
    recomputed_hash: str | None = None
    stored_hash: str | None = None
    proof: dict[str, Any] | None = None
    computed_root: str | None = None
    anchor: dict[str, Any] | None = None
    """The ledger's anchor (GetAnchor) plus `block_number` and `tx_validation` of its transaction."""

    @property
    def reason(self) -> str:
        return self.problems[0].reason.value if self.problems else ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant, "event_id": self.event_id, "status": self.status.value, "reason": self.reason, "detail": self.detail,
            "problems": [{"reason": p.reason.value, "detail": p.detail} for p in self.problems],
            "record": self.record, "recomputed_hash": self.recomputed_hash, "stored_hash": self.stored_hash,
            "proof": self.proof, "computed_root": self.computed_root, "anchor": self.anchor,
        }


def check_event_id(event_id: Any) -> str:
    """The event id if it could name a stored record, else InvalidArgument saying why."""
    return _check_name("event_id", "an event id", event_id)


def check_tenant(tenant: Any) -> str:
    """The tenant if given and well formed, else InvalidArgument saying why (and how to give it)."""
    if tenant is None or (isinstance(tenant, str) and not tenant):
        raise InvalidArgument("tenant", "is required: event ids are unique only within a tenant, so name the "
                                        "tenant that sent the event (--tenant, ?tenant=, VerifyRequest.tenant)")
    return _check_name("tenant", "a tenant", tenant)


def _check_name(field: str, what: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(field, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidArgument(field, "must not be empty or only white space")
    if len(value) > MAX_EVENT_ID_LENGTH:
        raise InvalidArgument(field, f"is {len(value)} characters, more than the {MAX_EVENT_ID_LENGTH} "
                                     f"{what} may have")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgument(field, f"contains {value[exc.start]!r}, which is not valid Unicode") from None
    if "\x00" in value:
        raise InvalidArgument(field, "must not contain NUL characters")
    return value


async def verify(store: EvidenceStore, ledger: LedgerReader, tenant: str, event_id: str) -> Verification:
    """The verdict on `tenant`'s record `event_id` (InvalidArgument when either is missing or malformed)."""
    event_id = check_event_id(event_id)
    tenant = check_tenant(tenant)
    try:
        record, proof = await asyncio.gather(store.event(tenant, event_id), store.proof(tenant, event_id))
    except StoreUnreachable as exc:
        return Verification(tenant, event_id, Status.STORE_UNREACHABLE, f"MongoDB could not be read: {exc}")
    if record is None and proof is None:
        return Verification(tenant, event_id, Status.UNKNOWN,
                            f"no stored record and no Merkle proof has this id for tenant {tenant!r}")
    batch_id = proof.get("batch_id") if proof is not None else None
    anchor = block = None
    if isinstance(batch_id, str) and RECORD_ID.fullmatch(batch_id):
        try:
            anchor = await ledger.anchor(batch_id)
            if anchor is not None and anchor.get("tx_id"):
                block = await ledger.transaction_block(anchor["tx_id"])
        except LedgerUnreachable as exc:
            found = local_evidence(tenant, event_id, record, proof)
            found.status = Status.LEDGER_UNREACHABLE
            found.detail = f"the ledger could not be read, so nothing is verified: {exc}"
            return found
        except InvalidArgument as exc:  # the stored batch id passed our check but not the contract's
            found = local_evidence(tenant, event_id, record, proof)
            found.problems.append(Problem(Reason.PROOF_MALFORMED, f"the ledger refuses the proof's batch id: {exc}"))
            return _decide(found, None)
    return judge(tenant, event_id, record, proof, anchor, block)


def judge(tenant: str, event_id: str, record: Mapping[str, Any] | None, proof: Mapping[str, Any] | None,
          anchor: Mapping[str, Any] | None, block: Mapping[str, Any] | None) -> Verification:
    """The verdict from what storage and the ledger hold, without any I/O.

    `record` and `proof` are the stored documents (None when absent), `anchor` the ledger's
    anchor of the proof's batch (None when the ledger has none), `block` where the anchor's
    transaction was committed (None when unknown).
    """
    found, parsed = _local(tenant, event_id, record, proof)
    if anchor is not None:
        found.anchor = {**jsonable(dict(anchor)),
                        "block_number": block.get("block_number") if block else None,
                        "tx_validation": block.get("validation_code") if block else None}
        if parsed is not None:
            _check_against_ledger(found, parsed, anchor)
    return _decide(found, anchor)


def local_evidence(tenant: str, event_id: str, record: Mapping[str, Any] | None,
                   proof: Mapping[str, Any] | None) -> Verification:
    """Everything that needs no ledger: the record's hashes, the proof's root, and their checks."""
    return _local(tenant, event_id, record, proof)[0]


def _local(tenant: str, event_id: str, record: Mapping[str, Any] | None,
           proof: Mapping[str, Any] | None) -> tuple[Verification, _Proof | None]:
    found = Verification(tenant, event_id, Status.UNKNOWN, record=jsonable(dict(record)) if record is not None else None,
                         proof=jsonable(dict(proof)) if proof is not None else None)
    problems = found.problems
    if record is not None:
        stored = record.get("content_hash")
        found.stored_hash = stored if isinstance(stored, str) else None
        try:
            found.recomputed_hash = content_hash(record)
        except CanonicalEncodingError as exc:
            problems.append(Problem(Reason.RECORD_NOT_CANONICAL, f"the stored record has no canonical encoding: {exc}"))
    parsed = _parse_proof(proof, problems) if proof is not None else None
    if parsed is not None:
        try:
            found.computed_root = compute_root(parsed.leaf, parsed.index, parsed.size, parsed.siblings).hex()
        except InvalidProof as exc:
            problems.append(Problem(Reason.PROOF_MALFORMED, f"the proof has the wrong shape: {exc}"))
    recomputed = found.recomputed_hash
    if recomputed is not None and parsed is not None and recomputed != parsed.leaf.hex():
        problems.insert(0, Problem(Reason.RECORD_CHANGED,
                                   f"the stored record hashes to {recomputed}, but the leaf anchored for it "
                                   f"is {parsed.leaf.hex()}: the record was changed after anchoring"))
    elif recomputed is not None and found.stored_hash != recomputed:
        problems.append(Problem(Reason.STORED_HASH_CHANGED,
                                f"the document's content_hash field says {found.stored_hash!r}, but its content "
                                f"hashes to {recomputed}"))
    return found, parsed


@dataclass(frozen=True)
class _Proof:
    batch_id: str
    index: int
    size: int
    leaf: bytes
    siblings: list[bytes]
    offset: int | None


def _parse_proof(proof: Mapping[str, Any], problems: list[Problem]) -> _Proof | None:
    """The proof document's parts, or None after adding a proof_malformed problem naming the field."""
    def malformed(why: str) -> None:
        problems.append(Problem(Reason.PROOF_MALFORMED, f"the proof document {why}"))

    batch_id, index, size = proof.get("batch_id"), proof.get("index"), proof.get("size")
    leaf, siblings, offset = proof.get("content_hash"), proof.get("siblings"), proof.get("offset")
    if not isinstance(batch_id, str) or not RECORD_ID.fullmatch(batch_id):
        return malformed(f"has no valid batch_id (got {batch_id!r})")
    for name, value in (("index", index), ("size", size)):
        if isinstance(value, bool) or not isinstance(value, int):
            return malformed(f"has no integer {name} (got {value!r})")
    if offset is not None and (isinstance(offset, bool) or not isinstance(offset, int)):
        return malformed(f"has a non-integer offset (got {offset!r})")
    if not isinstance(leaf, str) or not _HEX_SHA256.fullmatch(leaf):
        return malformed(f"has no content_hash of 64 lower-case hex digits (got {leaf!r})")
    if not isinstance(siblings, list):
        return malformed(f"has no list of siblings (got {type(siblings).__name__})")
    for depth, sibling in enumerate(siblings):
        if not isinstance(sibling, str) or not _HEX_SHA256.fullmatch(sibling):
            return malformed(f"has siblings[{depth}] = {sibling!r}, not a {HASH_SIZE}-byte hash in hex")
    return _Proof(batch_id, index, size, bytes.fromhex(leaf), [bytes.fromhex(s) for s in siblings], offset)


def _check_against_ledger(found: Verification, parsed: _Proof, anchor: Mapping[str, Any]) -> None:
    problems, batch = found.problems, anchor.get("batch_id")
    if parsed.size != anchor.get("count"):
        problems.append(Problem(Reason.PROOF_MISMATCH, f"the proof is for a tree of {parsed.size} leaves, but batch "
                                                       f"{batch} was anchored with {anchor.get('count')}"))
    if found.computed_root is not None and found.computed_root != anchor.get("merkle_root"):
        problems.append(Problem(Reason.PROOF_MISMATCH, f"the proof leads to root {found.computed_root}, but the "
                                                       f"ledger's root of batch {batch} is {anchor.get('merkle_root')}"))
    first, last = anchor.get("first_offset"), anchor.get("last_offset")
    if parsed.offset is not None and isinstance(first, int) and isinstance(last, int) \
            and not first <= parsed.offset <= last:
        problems.append(Problem(Reason.PROOF_MISMATCH, f"the proof's offset {parsed.offset} lies outside batch "
                                                       f"{batch}'s anchored range {first}-{last}"))


def _decide(found: Verification, anchor: Mapping[str, Any] | None) -> Verification:
    where = ""
    if anchor is not None:
        block = found.anchor.get("block_number") if found.anchor else None
        where = f"batch {anchor.get('batch_id')} (tx {anchor.get('tx_id')}" + \
                (f", block {block})" if block is not None else ", block not found on the peer)")
    batch = found.proof.get("batch_id") if found.proof else None
    if found.record is None:
        found.status = Status.DELETED
        found.detail = (f"the stored record is gone, but its proof shows it was anchored in {where}" if where else
                        f"the stored record is gone; its proof names batch {batch!r}, which the ledger does not have")
    elif found.problems:
        found.status = Status.TAMPERED
        found.detail = found.problems[0].detail
    elif found.proof is None:
        found.status = Status.NOT_ANCHORED_YET
        found.detail = "the record is stored but has no Merkle proof yet: its batch has not been anchored"
    elif anchor is None:
        found.status = Status.NOT_ANCHORED_YET
        found.detail = f"the record has a proof for batch {batch}, which is not on the ledger yet"
    else:
        found.status = Status.VERIFIED
        found.detail = f"the record's hash is in {where}, whose root is on the ledger"
    return found

