"""The audit API on the real stack: FerretDB and the local Fabric network, no fakes.

A module-scoped world: clean events written to a fresh database through storage's own path
(Avro CleanEvents -> `plan_batch` -> `MongoSink`), their batch anchored on the ledger with
`AnchorBatch` (Batcher + MerkleTree, as the ledger service does), the proof documents
stored, and the audit service running on free ports. Then every record verifies over HTTP,
gRPC and the CLI (in-process and --api); editing, altering or deleting stored documents is
reported as such, and restored afterwards; a ledger on a closed port is LEDGER_UNREACHABLE.
Model and account audits run against registrations, holds and settlements made here.

Each party acts as its own identity (deploy/fabric/identities.yaml): the audit service and
CLI as `audit` (auditor: reads everything), anchors as `anchoring`, registrations as
`registry`, credit minted by Org1's `Admin`, holds frozen by Org2's client `User5` (which
signs the receipt settled on) and settled by a provider identity issued for the run (so its
account statement is exact).

The ledger keeps its state between runs, so every batch, model, hold and account id
carries a fresh suffix, and the anchored batch uses a test topic name, never events.clean.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import grpc
import httpx
import pytest
from pymongo import AsyncMongoClient

from devstack.fabric import FabricNetwork
from services.audit.app import AuditService
from services.audit.grpc_api import REPORT_METADATA_KEY, audit_pb2, audit_pb2_grpc
from services.audit.settings import AuditSettings
from services.ledger.anchoring import Batcher
from services.storage import documents
from services.storage.sink import MongoSink
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.core.canonical import content_hash
from streamledger.core.merkle import leaf_hash
from streamledger.core.receipts import hold_id, sign_receipt
from streamledger.core.scoped import scoped_id
from streamledger.fabric import Committed
from streamledger.ledger import LedgerClient
from streamledger.settings import CommonSettings
from tests.integration.conftest import identity
from tests.integration.paying import in_an_hour, issue_identity, new_nonce, signer_of
from tests.tls_certs import self_signed

pytestmark = [pytest.mark.integration, pytest.mark.fabric, pytest.mark.timeout(300)]

EVENTS = 101  # an odd size: some levels of the tree carry an unpaired node up
CLI = str(Path(sys.executable).with_name("streamledger"))
CODEC = AvroCodec(SchemaRegistry.from_dir())
TOKEN = "integration-auditor-" + uuid.uuid4().hex
TENANT = "acme"
"""Every record here is this tenant's: `audit verify` names it (event ids are per tenant)."""
AUDITOR = identity("audit")
"""The audit service's own identity: the auditor role reads every account, hold and history."""


@dataclass
class World:
    suffix: str
    db_name: str
    db: object
    ids: list[str]
    pending_id: str
    batch_id: str
    committed: Committed
    admin: LedgerClient
    client: LedgerClient
    service: AuditService

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.service.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.service.grpc_port}"


async def store_through_storage(db, topic: str, route: documents.Route, records: list[dict]) -> None:
    """Write records as the storage service does: Avro single-object messages -> plan -> MongoSink."""
    messages = [documents.Consumed(tp=(topic, 0), topic=topic, partition=0, offset=i, key=None,
                                   value=CODEC.encode(route.record, record)) for i, record in enumerate(records)]
    plan = documents.plan_batch(messages, CODEC, {topic: route}, now_ms=int(time.time() * 1000))
    assert not plan.dead_letters, plan.dead_letters
    assert await MongoSink(db).write(plan) == []


def clean_event(suffix: str, i: int) -> dict:
    record = {"event_id": f"audit-{suffix}-{i}", "tenant": TENANT, "source": "pos",
              "ts": 1_767_000_000_000 + i * 1000,
              "features": {"amount": 12.5 * (i + 1), "country": "FR", "card_present": i % 2 == 0},
              "label": "fraud" if i % 5 == 0 else None, "raw_partition": 0, "raw_offset": 500 + i}
    record["content_hash"] = content_hash(record)
    return record


@pytest.fixture(scope="module")
async def world(network, stack) -> AsyncIterator[World]:
    suffix = uuid.uuid4().hex[:10]
    mongo = AsyncMongoClient(CommonSettings().mongo_url, serverSelectionTimeoutMS=5000, tz_aware=True)
    db_name = f"test_audit_{suffix}"
    db = mongo[db_name]
    admin = LedgerClient.connect(identity("Admin"))  # mints, nothing else
    client = LedgerClient.connect(identity("User5", "Org2"))
    try:
        records = [clean_event(suffix, i) for i in range(EVENTS + 1)]
        await store_through_storage(db, "events.clean", documents.EVENTS, records)
        # Anchor all but the last record, as the ledger service would: one batch, one transaction.
        topic = f"audit-it-{suffix}"
        batcher = Batcher(topic, max_records=EVENTS)
        batch = None
        for offset, record in enumerate(records[:EVENTS], start=1000):
            batch = batcher.add(0, offset, record["event_id"], record["content_hash"], now=time.monotonic(),
                                tenant=record["tenant"])
        assert batch is not None
        tree = batch.tree()
        async with LedgerClient.connect(identity("anchoring")) as anchoring:
            committed = await anchoring.anchor_batch(batch.batch_id, tree.root.hex(), EVENTS, batch.first_offset,
                                                     batch.last_offset)
        await db["proof_trees"].insert_one(batch.tree_document())
        await db["proofs"].insert_many([{**p, "topic": topic, "partition": 0} for p in batch.proofs()])

        service = AuditService(AuditSettings(mongo_db=db_name, audit_http_port=0, audit_grpc_port=0), AUDITOR)
        async with service:  # started and stopped as `serve audit` does
            yield World(suffix, db_name, db, [r["event_id"] for r in records[:EVENTS]], records[EVENTS]["event_id"],
                        batch.batch_id, committed, admin, client, service)
    finally:
        await admin.gateway.close()
        await client.gateway.close()
        await mongo.drop_database(db_name)
        await mongo.close()


def stored_id(event_id: str) -> str:
    """The `_id` of the record's events and proofs documents."""
    return scoped_id(TENANT, event_id)


async def http_verify(world: World, event_id: str, tenant: str | None = TENANT) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as http:
        return await http.get(f"{world.http}/v1/verify/{quote(event_id, safe='')}",
                              params={"tenant": tenant} if tenant is not None else {})


async def verdicts(world: World) -> dict[str, dict]:
    """Every anchored record's verification over HTTP, a few at a time."""
    limit = asyncio.Semaphore(8)
    async with httpx.AsyncClient(timeout=60) as http:
        async def one(event_id: str) -> dict:
            async with limit:
                response = await http.get(f"{world.http}/v1/verify/{quote(event_id, safe='')}",
                                          params={"tenant": TENANT})
                assert response.status_code == 200, response.text
                return response.json()
        answers = await asyncio.gather(*(one(i) for i in world.ids))
    return dict(zip(world.ids, answers))


async def grpc_call(world: World, method: str, request, metadata=()):
    async with grpc.aio.insecure_channel(world.grpc_target) as channel:
        return await getattr(audit_pb2_grpc.AuditStub(channel), method)(request, metadata=metadata, timeout=60)


async def cli(world: World, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`streamledger audit ARGS` in a child process, off the event loop (the servers under test run on it)."""
    return await asyncio.to_thread(
        subprocess.run, [CLI, "audit", *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, "STREAMLEDGER_MONGO_DB": world.db_name, "STREAMLEDGER_FABRIC_USER": AUDITOR.fabric_user,
             "COLUMNS": "240", **(env or {})})


async def cli_json(world: World, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    done = await cli(world, *args, "--json", env=env)
    try:
        return done.returncode, json.loads(done.stdout)
    except ValueError:
        raise AssertionError(f"not JSON (rc {done.returncode}): {done.stdout!r} {done.stderr[-2000:]!r}") from None


# -- every record verifies, through each interface --

async def test_every_anchored_record_verifies_over_http_with_the_chain_of_evidence(world: World) -> None:
    answers = await verdicts(world)
    assert {a["status"] for a in answers.values()} == {"VERIFIED"}, \
        {i: (a["status"], a["detail"]) for i, a in answers.items() if a["status"] != "VERIFIED"}
    for event_id, answer in answers.items():
        assert answer["recomputed_hash"] == answer["stored_hash"] == answer["proof"]["content_hash"]
        assert answer["computed_root"] == answer["anchor"]["merkle_root"]
        anchor = answer["anchor"]
        assert (anchor["batch_id"], anchor["count"]) == (world.batch_id, EVENTS)
        assert (anchor["tx_id"], anchor["block_number"], anchor["tx_validation"]) == \
            (world.committed.transaction_id, world.committed.block_number, "VALID")
        assert answer["record"]["event_id"] == event_id


async def test_every_anchored_record_verifies_over_grpc(world: World) -> None:
    for event_id in world.ids:
        v = await grpc_call(world, "Verify", audit_pb2.VerifyRequest(tenant=TENANT, event_id=event_id))
        assert v.status == audit_pb2.Verification.VERIFIED, (event_id, v.detail)
        assert v.anchor.tx_id == world.committed.transaction_id
        assert v.anchor.block_number == world.committed.block_number
        assert v.computed_root == v.anchor.merkle_root


async def test_the_cli_verifies_in_process_and_through_the_api(world: World) -> None:
    rc, answer = await cli_json(world, "verify", "--tenant", TENANT, world.ids[0])
    assert (rc, answer["status"], answer["anchor"]["block_number"]) == (0, "VERIFIED", world.committed.block_number)
    rc, answer = await cli_json(world, "verify", "--tenant", TENANT, world.ids[1], "--api", world.http)
    assert (rc, answer["status"], answer["anchor"]["tx_id"]) == (0, "VERIFIED", world.committed.transaction_id)
    readable = await cli(world, "verify", "--tenant", TENANT, world.ids[2])
    assert readable.returncode == 0, readable.stderr
    assert readable.stdout.startswith("VERIFIED") and world.committed.transaction_id in readable.stdout
    assert "✓ = ledger root" in readable.stdout


# -- storage changed behind the audit's back --

async def test_editing_one_stored_record_makes_exactly_that_one_tampered(world: World) -> None:
    target = world.ids[7]
    original = await world.db["events"].find_one({"_id": stored_id(target)})
    await world.db["events"].update_one({"_id": stored_id(target)}, {"$set": {"features.amount": 999_999.0}})
    try:
        answers = await verdicts(world)
        assert {i for i, a in answers.items() if a["status"] != "VERIFIED"} == {target}
        assert (answers[target]["status"], answers[target]["reason"]) == ("TAMPERED", "record_changed")
        assert answers[target]["record"]["features"]["amount"] == 999_999.0
        v = await grpc_call(world, "Verify", audit_pb2.VerifyRequest(tenant=TENANT, event_id=target))
        assert (v.status, v.reason) == (audit_pb2.Verification.TAMPERED, "record_changed")
        rc, answer = await cli_json(world, "verify", "--tenant", TENANT, target)
        assert (rc, answer["status"]) == (1, "TAMPERED")
    finally:
        await world.db["events"].replace_one({"_id": stored_id(target)}, original)
    assert (await http_verify(world, target)).json()["status"] == "VERIFIED"


async def test_an_altered_leaf_in_a_stored_batch_tree_is_tampered(world: World) -> None:
    """The proof's siblings come from the batch's stored tree: altering a neighbour's leaf there
    breaks the target's path to the anchored root; the neighbour's own path does not use it."""
    target, neighbour = world.ids[12], world.ids[13]  # leaves 12 and 13: each other's first sibling
    original = await world.db["proof_trees"].find_one({"_id": world.batch_id})
    leaves = original["leaves"]
    start = 13 * 64
    altered = leaves[:start] + ("f" if leaves[start] != "f" else "e") + leaves[start + 1:]
    await world.db["proof_trees"].update_one({"_id": world.batch_id}, {"$set": {"leaves": altered}})
    try:
        answer = (await http_verify(world, target)).json()
        assert (answer["status"], answer["reason"]) == ("TAMPERED", "proof_mismatch")
        assert answer["proof"]["siblings"][0] == leaf_hash(bytes.fromhex(altered[start:start + 64])).hex()
        assert answer["computed_root"] != answer["anchor"]["merkle_root"]
        assert (await http_verify(world, neighbour)).json()["status"] == "VERIFIED"
        rc, answer = await cli_json(world, "verify", "--tenant", TENANT, target, "--api", world.http)
        assert (rc, answer["reason"]) == (1, "proof_mismatch")
    finally:
        await world.db["proof_trees"].replace_one({"_id": world.batch_id}, original)
    assert (await http_verify(world, target)).json()["status"] == "VERIFIED"


async def test_a_proof_whose_batch_tree_is_gone_does_not_verify(world: World) -> None:
    target = world.ids[14]
    original = await world.db["proof_trees"].find_one({"_id": world.batch_id})
    await world.db["proof_trees"].delete_one({"_id": world.batch_id})
    try:
        answer = (await http_verify(world, target)).json()
        assert (answer["status"], answer["reason"]) == ("TAMPERED", "proof_malformed"), answer
        assert "no list of siblings" in answer["problems"][0]["detail"]
    finally:
        await world.db["proof_trees"].insert_one(original)
    assert (await http_verify(world, target)).json()["status"] == "VERIFIED"


async def test_a_deleted_record_is_deleted(world: World) -> None:
    target = world.ids[20]
    original = await world.db["events"].find_one({"_id": stored_id(target)})
    await world.db["events"].delete_one({"_id": stored_id(target)})
    try:
        answer = (await http_verify(world, target)).json()
        assert answer["status"] == "DELETED" and answer["record"] is None
        assert answer["computed_root"] == answer["anchor"]["merkle_root"]  # its proof still shows it was anchored
        v = await grpc_call(world, "Verify", audit_pb2.VerifyRequest(tenant=TENANT, event_id=target))
        assert v.status == audit_pb2.Verification.DELETED
        rc, answer = await cli_json(world, "verify", "--tenant", TENANT, target)
        assert (rc, answer["status"]) == (1, "DELETED")
    finally:
        await world.db["events"].insert_one(original)


async def test_unknown_pending_and_malformed_ids(world: World) -> None:
    unknown = f"never-{world.suffix}"
    assert (await http_verify(world, unknown)).json()["status"] == "UNKNOWN"
    v = await grpc_call(world, "Verify", audit_pb2.VerifyRequest(tenant=TENANT, event_id=unknown))
    assert v.status == audit_pb2.Verification.UNKNOWN
    rc, answer = await cli_json(world, "verify", "--tenant", TENANT, unknown)
    assert (rc, answer["status"]) == (4, "UNKNOWN")

    pending = (await http_verify(world, world.pending_id)).json()
    assert pending["status"] == "NOT_ANCHORED_YET" and pending["recomputed_hash"] == pending["stored_hash"]
    rc, _ = await cli_json(world, "verify", "--tenant", TENANT, world.pending_id)
    assert rc == 3

    for bad in ("", "x" * 300):
        response = await http_verify(world, bad)
        assert response.status_code == 400 and response.json()["field"] == "event_id", response.text
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await grpc_call(world, "Verify", audit_pb2.VerifyRequest(tenant=TENANT, event_id="x" * 300))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "event_id" in refused.value.details()
    rc, answer = await cli_json(world, "verify", "--tenant", TENANT, " ")
    assert (rc, answer["status"], answer["field"]) == (2, "INVALID_ARGUMENT", "event_id")


async def test_verify_needs_the_tenant_and_another_tenants_id_is_unknown(world: World) -> None:
    missing = await http_verify(world, world.ids[0], tenant=None)
    assert missing.status_code == 400 and missing.json()["field"] == "tenant", missing.text
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await grpc_call(world, "Verify", audit_pb2.VerifyRequest(event_id=world.ids[0]))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and refused.value.details().startswith("tenant")
    done = await cli(world, "verify", world.ids[0], "--json")
    assert (done.returncode, json.loads(done.stdout)["field"]) == (2, "tenant")

    other = (await http_verify(world, world.ids[0], tenant="globex")).json()
    assert (other["status"], other["tenant"]) == ("UNKNOWN", "globex")
    rc, answer = await cli_json(world, "verify", "--tenant", "globex", world.ids[0], "--api", world.http)
    assert (rc, answer["status"]) == (4, "UNKNOWN")


# -- the ledger out of reach --

async def test_a_ledger_on_a_closed_port_is_unreachable_never_verified(world: World) -> None:
    cut_off = AuditService(AuditSettings(mongo_db=world.db_name, audit_http_port=0, audit_grpc_port=0),
                           identity("audit", fabric_peer_endpoint="127.0.0.1:1"))
    async with cut_off:  # started and stopped as `serve audit` does
        async with httpx.AsyncClient(timeout=60) as http:
            response = await http.get(f"http://127.0.0.1:{cut_off.http_port}/v1/verify/{world.ids[0]}",
                                      params={"tenant": TENANT})
            model = await http.get(f"http://127.0.0.1:{cut_off.http_port}/v1/models/any-model")
        assert response.status_code == 503 and response.headers["retry-after"]
        answer = response.json()
        assert answer["status"] == "LEDGER_UNREACHABLE" and answer["anchor"] is None
        assert answer["computed_root"] and answer["recomputed_hash"]  # what MongoDB alone could show
        assert model.status_code == 503 and model.json()["status"] == "LEDGER_UNREACHABLE"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{cut_off.grpc_port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as unavailable:
                await audit_pb2_grpc.AuditStub(channel).Verify(audit_pb2.VerifyRequest(tenant=TENANT, event_id=world.ids[0]),
                                                               timeout=60)
        assert unavailable.value.code() == grpc.StatusCode.UNAVAILABLE
        assert unavailable.value.details().startswith("LEDGER_UNREACHABLE")
        partial = dict(unavailable.value.trailing_metadata())[REPORT_METADATA_KEY]
        assert audit_pb2.Verification.FromString(partial).status == audit_pb2.Verification.LEDGER_UNREACHABLE
    rc, answer = await cli_json(world, "verify", "--tenant", TENANT, world.ids[0],
                                env={"STREAMLEDGER_FABRIC_PEER_ENDPOINT": "127.0.0.1:1"})
    assert (rc, answer["status"]) == (5, "LEDGER_UNREACHABLE")


# -- models --

async def test_model_provenance_against_registrations_made_here(world: World) -> None:
    model_id = f"audit-model-{world.suffix}"
    registered = {1: "a1" * 32, 2: "b2" * 32}
    registry = LedgerClient.connect(identity("registry"))  # the learning service's identity: an operator
    for version, sha in registered.items():
        await registry.register_model(model_id, version, sha)
    stored = {1: registered[1], 2: "c3" * 32, 3: "d4" * 32}  # v2 altered in storage, v3 never registered
    await store_through_storage(world.db, "models.snapshots", documents.MODELS, [
        {"model_id": model_id, "version": v, "sha256": sha, "format": "pickle/learner-state-v1",
         "offsets": [{"topic": "events.clean", "partition": 0, "offset": 100 * v}], "events_seen": 100 * v,
         "metrics": {"accuracy": 0.8}, "model": b"not a real model", "created": 1_767_000_000_000 + v}
        for v, sha in stored.items()])
    only_on_ledger = f"audit-ledger-only-{world.suffix}"
    await registry.register_model(only_on_ledger, 1, "e5" * 32)
    await registry.gateway.close()

    async with httpx.AsyncClient(timeout=60) as http:
        async def report(model: str, version: int | None = None) -> dict:
            params = {"version": version} if version is not None else {}
            response = await http.get(f"{world.http}/v1/models/{model}", params=params)
            assert response.status_code == 200, response.text
            return response.json()
        match, mismatch, latest = await report(model_id, 1), await report(model_id, 2), await report(model_id)
        ledger_only, unknown = await report(only_on_ledger), await report(f"nobody-{world.suffix}")
    assert match["status"] == "MATCH" and match["registered"]["sha256"] == match["snapshot"]["sha256"] == "a1" * 32
    assert match["registered"]["block_number"] > 0
    assert mismatch["status"] == "MISMATCH"
    assert (mismatch["registered"]["sha256"], mismatch["snapshot"]["sha256"]) == ("b2" * 32, "c3" * 32)
    assert (latest["status"], latest["version"], latest["latest_registered"], latest["latest_snapshot"]) == \
        ("NOT_REGISTERED", 3, 2, 3)
    assert (ledger_only["status"], ledger_only["version"]) == ("NO_SNAPSHOT", 1)
    assert unknown["status"] == "UNKNOWN"

    m = await grpc_call(world, "Model", audit_pb2.ModelRequest(model_id=model_id, version=1))
    assert (m.status, m.registered.sha256) == (audit_pb2.ModelReport.MATCH, "a1" * 32)
    rc, answer = await cli_json(world, "model", model_id, "2")
    assert (rc, answer["status"]) == (1, "MISMATCH")
    rc, answer = await cli_json(world, "model", model_id, "1", "--api", world.http)
    assert (rc, answer["status"]) == (0, "MATCH")


# -- accounts --

async def test_account_statements_from_holds_and_settlements_made_here(
        world: World, network: FabricNetwork, tmp_path: Path) -> None:
    me = (await world.client.who_am_i())["Account"]
    shop_identity = issue_identity(network, "Org1", f"audit-shop-{world.suffix}", tmp_path)
    async with LedgerClient.connect(shop_identity) as provider:
        shop = (await provider.who_am_i())["Account"]  # a new account: its statement holds only what is made here
        await world.admin.grant_role(shop, "provider")  # acting for itself
        await world.admin.mint(me, 500)
        settling, releasing = new_nonce(), new_nonce()
        settled_hold, released_hold = hold_id(me, settling), hold_id(me, releasing)
        await world.client.freeze(settling, shop, 300, 4, in_an_hour())  # 4 a unit
        await world.client.freeze(releasing, shop, 200, 4, in_an_hour())
        await provider.authorize(settled_hold, 100)
        receipt = sign_receipt(signer_of("User5"), settled_hold, 25, 1)  # the client's, for 25 units
        settle = await provider.settle(settled_hold, receipt)  # charges 100 of 300
        release = await provider.release(released_hold)  # no receipt: refunds all

    async with httpx.AsyncClient(timeout=60) as http:
        response = await http.get(f"{world.http}/v1/accounts/{quote(shop, safe='')}")
        mine = (await http.get(f"{world.http}/v1/accounts/{quote(me, safe='')}")).json()
        nobody = (await http.get(f"{world.http}/v1/accounts/nobody-{world.suffix}")).json()
    assert response.status_code == 200
    statement = response.json()
    assert (statement["status"], statement["balance"]) == ("FOUND", 100)
    assert {h["hold_id"]: (h["role"], h["status"]) for h in statement["holds"]} == {
        settled_hold: ("provider", "SETTLED"), released_hold: ("provider", "RELEASED")}
    settlements = {s["hold_id"]: s for s in statement["settlements"]}
    assert (settlements[settled_hold]["charged"], settlements[settled_hold]["refunded"],
            settlements[settled_hold]["tx_id"]) == (100, 200, settle.transaction_id)
    assert (settlements[released_hold]["charged"], settlements[released_hold]["refunded"],
            settlements[released_hold]["tx_id"]) == (0, 200, release["close_tx_id"])
    assert statement["totals"]["earned"] == 100
    assert [(h["tx_id"], h["balance"]) for h in statement["history"]] == [(settle.transaction_id, 100)]

    my_holds = {h["hold_id"]: h for h in mine["holds"]}
    assert my_holds[settled_hold]["role"] == my_holds[released_hold]["role"] == "client"
    assert mine["status"] == "FOUND" and isinstance(mine["balance"], int)
    assert nobody["status"] == "NOT_FOUND"

    a = await grpc_call(world, "Account", audit_pb2.AccountRequest(account=shop))
    assert (a.status, a.balance, a.totals.earned) == (audit_pb2.AccountStatement.FOUND, 100, 100)
    rc, answer = await cli_json(world, "account", shop)
    assert (rc, answer["balance"], len(answer["settlements"])) == (0, 100, 2)
    readable = await cli(world, "account", shop, "--api", world.http)
    assert readable.returncode == 0 and settle.transaction_id in readable.stdout


# -- who may ask --

async def test_a_configured_token_is_required_on_every_call(world: World) -> None:
    guarded = AuditService(AuditSettings(mongo_db=world.db_name, audit_http_port=0, audit_grpc_port=0,
                                         audit_token=TOKEN), AUDITOR)
    async with guarded:  # started and stopped as `serve audit` does
        url = f"http://127.0.0.1:{guarded.http_port}/v1/verify/{world.ids[0]}?tenant={TENANT}"
        async with httpx.AsyncClient(timeout=60) as http:
            assert (await http.get(url)).status_code == 401
            assert (await http.get(url, headers={"Authorization": "Bearer wrong"})).status_code == 401
            allowed = await http.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
        assert allowed.status_code == 200 and allowed.json()["status"] == "VERIFIED"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{guarded.grpc_port}") as channel:
            stub = audit_pb2_grpc.AuditStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Verify(audit_pb2.VerifyRequest(tenant=TENANT, event_id=world.ids[0]), timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            ok = await stub.Verify(audit_pb2.VerifyRequest(tenant=TENANT, event_id=world.ids[0]), timeout=30,
                                   metadata=(("authorization", f"Bearer {TOKEN}"),))
            assert ok.status == audit_pb2.Verification.VERIFIED
    rc, answer = await cli_json(world, "verify", "--tenant", TENANT, world.ids[0],
                                "--api", f"http://127.0.0.1:{guarded.http_port}")
    assert (rc, answer["status"]) == (5, "API_UNREACHABLE")  # stopped now: said so, not a verdict


async def test_with_tls_settings_both_servers_answer_over_tls_only(world: World, tmp_path) -> None:
    cert, key = self_signed(tmp_path)
    served = AuditService(AuditSettings(mongo_db=world.db_name, audit_http_port=0, audit_grpc_port=0,
                                        audit_tls_cert=cert, audit_tls_key=key), AUDITOR)
    async with served:
        path = f"/v1/verify/{world.ids[0]}?tenant={TENANT}"
        async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{served.http_port}", timeout=60,
                                     verify=ssl.create_default_context(cafile=str(cert))) as https:
            assert (await https.get("/healthz")).status_code == 200
            verified = await https.get(path)
        assert verified.status_code == 200 and verified.json()["status"] == "VERIFIED"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.http_port}", timeout=10) as http:
            with pytest.raises(httpx.TransportError):
                await http.get("/healthz")
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{served.grpc_port}", credentials) as channel:
            ok = await audit_pb2_grpc.AuditStub(channel).Verify(
                audit_pb2.VerifyRequest(tenant=TENANT, event_id=world.ids[0]), timeout=30)
            assert ok.status == audit_pb2.Verification.VERIFIED
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await audit_pb2_grpc.AuditStub(channel).Verify(
                    audit_pb2.VerifyRequest(tenant=TENANT, event_id=world.ids[0]), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        https_api = f"https://127.0.0.1:{served.http_port}"
        rc, answer = await cli_json(world, "verify", "--tenant", TENANT, world.ids[0], "--api", https_api,
                                    env={"STREAMLEDGER_AUDIT_API_CA": str(cert)})
        assert (rc, answer["status"]) == (0, "VERIFIED")
        # The system's CAs only:
        rc, answer = await cli_json(world, "verify", "--tenant", TENANT, world.ids[0], "--api", https_api)
        assert (rc, answer["status"]) == (5, "API_UNREACHABLE") and "CERTIFICATE_VERIFY_FAILED" in answer["error"]
        rc, answer = await cli_json(world, "verify", "--tenant", TENANT, world.ids[0], "--api", https_api,
                                    "--ca", str(tmp_path / "no.pem"))
        assert (rc, answer["status"]) == (2, "CONFIGURATION") and "STREAMLEDGER_AUDIT_API_CA" in answer["error"]


def test_serving_beyond_loopback_without_a_token_refuses_to_start() -> None:
    env = {k: v for k, v in os.environ.items() if k != "STREAMLEDGER_AUDIT_TOKEN"}
    done = subprocess.run([CLI, "serve", "audit"], check=False, capture_output=True, text=True, timeout=60,
                          env={**env, "STREAMLEDGER_AUDIT_HOST": "0.0.0.0", "STREAMLEDGER_AUDIT_HTTP_PORT": "0",
                               "STREAMLEDGER_AUDIT_GRPC_PORT": "0"})
    assert done.returncode == 1 and "audit: cannot start" in done.stderr and "STREAMLEDGER_AUDIT_TOKEN" in done.stderr
