"""Model provenance: the hash registered on the ledger against the stored snapshot's hash.

    report = await audit_model(store, ledger, "phishing-logreg", 7)
    report.status      # ModelStatus.MATCH, MISMATCH, NOT_REGISTERED, NO_SNAPSHOT, UNKNOWN, ...

Without a version the audit takes the latest one either side knows: the highest of the
ledger's latest registration (GetModel version 0) and the newest snapshot in MongoDB's
`models`. So a newer snapshot that was never registered shows up as NOT_REGISTERED rather
than being hidden behind an older, matching version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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
from streamledger.core.ids import RECORD_ID

SNAPSHOT_FIELDS = ("model_id", "version", "sha256", "format", "created", "events_seen", "metrics")


class ModelStatus(StrEnum):
    MATCH = "MATCH"
    MISMATCH = "MISMATCH"
    NOT_REGISTERED = "NOT_REGISTERED"
    NO_SNAPSHOT = "NO_SNAPSHOT"
    UNKNOWN = "UNKNOWN"
    LEDGER_UNREACHABLE = "LEDGER_UNREACHABLE"
    STORE_UNREACHABLE = "STORE_UNREACHABLE"


@dataclass
class ModelReport:
    model_id: str
    version: int | None
    status: ModelStatus
    detail: str = ""
    registered: dict[str, Any] | None = None
    """GetModel's answer plus the `block_number` of its transaction."""
    snapshot: dict[str, Any] | None = None
    latest_registered: int | None = None
    latest_snapshot: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "version": self.version, "status": self.status.value,
                "detail": self.detail, "registered": self.registered, "snapshot": self.snapshot,
                "latest_registered": self.latest_registered, "latest_snapshot": self.latest_snapshot}


def check_model_id(model_id: Any) -> str:
    if not isinstance(model_id, str) or not RECORD_ID.fullmatch(model_id):
        raise InvalidArgument("model_id", "must be 1-128 letters, digits, '.', '_', ':' or '-', starting with a "
                                          f"letter or digit; got {model_id!r}")
    return model_id


def check_version(version: Any) -> int | None:
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidArgument("version", f"must be a positive integer, got {version!r}")
    return version


async def audit_model(store: EvidenceStore, ledger: LedgerReader, model_id: str,
                      version: int | None = None) -> ModelReport:
    """The report on `version` of `model_id`, or on its latest version when `version` is None."""
    model_id, version = check_model_id(model_id), check_version(version)
    latest_snapshot = snapshot = latest_registered = registered = block = None
    try:
        latest_snapshot = await store.snapshot(model_id, None)
        if version is not None:  # MongoDB first, so an unreachable ledger still leaves the snapshot as evidence
            snapshot = await _snapshot(store, model_id, version, latest_snapshot)
        latest_registered = await ledger.model(model_id, 0)
        if version is None:
            known = [_version(d) for d in (latest_registered, latest_snapshot) if d is not None]
            version = max((v for v in known if v is not None), default=None)
            if version is not None:
                snapshot = await _snapshot(store, model_id, version, latest_snapshot)
        if version is not None:
            registered = latest_registered if latest_registered is not None and _version(latest_registered) == version \
                else await ledger.model(model_id, version)
        if registered is not None and registered.get("tx_id"):
            block = await ledger.transaction_block(registered["tx_id"])
    except StoreUnreachable as exc:
        return ModelReport(model_id, version, ModelStatus.STORE_UNREACHABLE, f"MongoDB could not be read: {exc}")
    except LedgerUnreachable as exc:
        if version is None and latest_snapshot is not None:  # the newest stored snapshot is what was asked about
            version, snapshot = _version(latest_snapshot), dict(latest_snapshot)
        report = compare_model(model_id, version, None, snapshot, None, latest_snapshot)
        report.status = ModelStatus.LEDGER_UNREACHABLE
        report.detail = f"the ledger could not be read, so nothing is verified: {exc}"
        return report
    if registered is not None:
        registered = {**registered, "block_number": block.get("block_number") if block else None}
    return compare_model(model_id, version, registered, snapshot, latest_registered, latest_snapshot)


async def _snapshot(store: EvidenceStore, model_id: str, version: int,
                    latest: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if latest is not None and _version(latest) == version:
        return dict(latest)
    return await store.snapshot(model_id, version)


def compare_model(model_id: str, version: int | None, registered: Mapping[str, Any] | None,
                  snapshot: Mapping[str, Any] | None, latest_registered: Mapping[str, Any] | None,
                  latest_snapshot: Mapping[str, Any] | None) -> ModelReport:
    """The verdict from the ledger's registration and the stored snapshot of one version, without I/O."""
    report = ModelReport(
        model_id, version, ModelStatus.UNKNOWN,
        registered=jsonable(dict(registered)) if registered is not None else None,
        snapshot={k: jsonable(snapshot.get(k)) for k in SNAPSHOT_FIELDS} if snapshot is not None else None,
        latest_registered=_version(latest_registered) if latest_registered is not None else None,
        latest_snapshot=_version(latest_snapshot) if latest_snapshot is not None else None)
    which = f"model {model_id!r}" + (f" version {version}" if version is not None else "")
    if registered is None and snapshot is None:
        report.detail = f"neither the ledger nor MongoDB knows {which}"
    elif registered is None:
        report.status = ModelStatus.NOT_REGISTERED
        report.detail = f"a snapshot of {which} is stored, but the ledger has no registration of it"
    elif snapshot is None:
        report.status = ModelStatus.NO_SNAPSHOT
        report.detail = f"{which} is registered on the ledger (tx {registered.get('tx_id')}), but no snapshot is stored"
    elif registered.get("sha256") == snapshot.get("sha256"):
        report.status = ModelStatus.MATCH
        report.detail = f"the snapshot's hash is the one registered on the ledger in tx {registered.get('tx_id')}"
    else:
        report.status = ModelStatus.MISMATCH
        report.detail = (f"the stored snapshot's hash {snapshot.get('sha256')} differs from the hash "
                         f"{registered.get('sha256')} registered on the ledger in tx {registered.get('tx_id')}")
    return report


def _version(document: Mapping[str, Any]) -> int | None:
    value = document.get("version")
    return value if isinstance(value, int) and not isinstance(value, bool) else None
