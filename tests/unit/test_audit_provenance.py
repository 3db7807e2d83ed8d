"""Model provenance (services/audit/provenance.py): the ledger's registered hash against the
stored snapshot's, for a given version and for the latest one either side knows."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from services.audit.ports import InvalidArgument
from services.audit.provenance import ModelStatus, audit_model
from tests.unit.test_audit_verification import FakeLedger, FakeStore

MODEL = "phishing-logreg"


def register(ledger: FakeLedger, version: int, sha: str, model_id: str = MODEL) -> None:
    tx = f"tx-{model_id}-{version}"
    ledger.models[(model_id, version)] = {"model_id": model_id, "version": version, "sha256": sha, "tx_id": tx,
                                          "registered_at": "2026-01-02T03:04:05Z", "submitter": "Org1MSP::CN=Admin"}
    ledger.blocks[tx] = {"block_number": 10 + version, "validation_code": "VALID"}


def store_snapshot(store: FakeStore, version: int, sha: str, model_id: str = MODEL) -> None:
    store.models[f"{model_id}:{version}"] = {
        "_id": f"{model_id}:{version}", "model_id": model_id, "version": version, "sha256": sha, "format": "pickle",
        "created": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc), "events_seen": 1000 * version,
        "metrics": {"accuracy": 0.9}, "offsets": [], "model_bytes": 1234}


@pytest.fixture
def sides() -> tuple[FakeStore, FakeLedger]:
    store, ledger = FakeStore(), FakeLedger()
    for version, sha in ((1, "a" * 64), (2, "b" * 64)):
        register(ledger, version, sha)
        store_snapshot(store, version, sha)
    return store, ledger


async def test_a_registered_snapshot_matches_with_its_transaction_and_block(sides) -> None:
    store, ledger = sides
    report = await audit_model(store, ledger, MODEL, 1)
    assert report.status is ModelStatus.MATCH and report.version == 1
    assert report.registered["sha256"] == report.snapshot["sha256"] == "a" * 64
    assert (report.registered["tx_id"], report.registered["block_number"]) == (f"tx-{MODEL}-1", 11)
    assert report.snapshot["created"] == "2026-01-02T03:04:05.000Z"
    assert (report.latest_registered, report.latest_snapshot) == (2, 2)


async def test_the_latest_version_when_none_is_given(sides) -> None:
    store, ledger = sides
    report = await audit_model(store, ledger, MODEL)
    assert (report.status, report.version) == (ModelStatus.MATCH, 2)


async def test_a_snapshot_whose_hash_was_changed_is_a_mismatch(sides) -> None:
    store, ledger = sides
    store.models[f"{MODEL}:2"]["sha256"] = "c" * 64
    report = await audit_model(store, ledger, MODEL, 2)
    assert report.status is ModelStatus.MISMATCH
    assert "c" * 64 in report.detail and "b" * 64 in report.detail


async def test_a_newer_unregistered_snapshot_is_what_the_latest_audit_reports(sides) -> None:
    store, ledger = sides
    store_snapshot(store, 3, "d" * 64)
    report = await audit_model(store, ledger, MODEL)
    assert (report.status, report.version) == (ModelStatus.NOT_REGISTERED, 3)
    assert report.registered is None and (report.latest_registered, report.latest_snapshot) == (2, 3)


async def test_registered_but_not_stored(sides) -> None:
    store, ledger = sides
    register(ledger, 5, "e" * 64)
    report = await audit_model(store, ledger, MODEL)
    assert (report.status, report.version) == (ModelStatus.NO_SNAPSHOT, 5)
    assert report.snapshot is None and report.registered["block_number"] == 15


async def test_unknown_models_and_versions(sides) -> None:
    store, ledger = sides
    assert (await audit_model(store, ledger, "nobody")).status is ModelStatus.UNKNOWN
    assert (await audit_model(store, ledger, MODEL, 99)).status is ModelStatus.UNKNOWN


async def test_an_unreachable_ledger_is_said_so_with_the_snapshot_as_evidence(sides) -> None:
    store, ledger = sides
    ledger.down = True
    report = await audit_model(store, ledger, MODEL, 2)
    assert report.status is ModelStatus.LEDGER_UNREACHABLE and report.registered is None
    assert report.snapshot["sha256"] == "b" * 64


async def test_an_unreachable_store(sides) -> None:
    store, ledger = sides
    store.down = True
    assert (await audit_model(store, ledger, MODEL)).status is ModelStatus.STORE_UNREACHABLE


@pytest.mark.parametrize("model_id, version, field", [
    ("", None, "model_id"), ("has space", None, "model_id"), ("-leading", None, "model_id"),
    ("x" * 129, None, "model_id"), (MODEL, 0, "version"), (MODEL, -3, "version"), (MODEL, True, "version"),
])
async def test_malformed_questions_name_the_field(sides, model_id, version, field) -> None:
    store, ledger = sides
    with pytest.raises(InvalidArgument) as refused:
        await audit_model(store, ledger, model_id, version)
    assert refused.value.field == field


async def test_without_a_version_and_the_ledger_down_the_newest_snapshot_is_the_evidence(sides) -> None:
    store, ledger = sides
    ledger.down = True
    report = await audit_model(store, ledger, MODEL)
    assert (report.status, report.version, report.snapshot["sha256"]) == (ModelStatus.LEDGER_UNREACHABLE, 2, "b" * 64)
