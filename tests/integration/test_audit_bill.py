"""`streamledger audit bill` and `streamledger wallet` on the real stack: the local Fabric network,
Kafka and FerretDB, no fakes.

The parties are issued for this module by the organisations' CAs and granted their role by their
own organisation's admin, so balances hold only what happens here: `client` and `forger` (Org2,
client role) and `shop` (Org1, provider acting for itself). A model version is registered (as
`registry`) whose snapshot, stored in a fresh database, learned from a batch anchored here (as
`anchoring`). Usage records, each carrying the client's latest receipt as the inference server
passes it on, go to a usage topic of this run; the audit reads them from there.

The local minimum settlement window is 30 s, so the wallet's release waits for a hold frozen
for 3 s to pass its settle_by: about 35 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from devstack.fabric import FabricNetwork
from services.audit.auditor import open_auditor
from services.audit.settings import AuditSettings
from services.ledger.anchoring import Batcher
from streamledger import kafka
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.core.receipts import Receipt, sign_receipt
from streamledger.kafka import topics
from streamledger.ledger import LedgerClient
from streamledger.settings import CommonSettings, LedgerSettings
from tests.integration.conftest import identity
from tests.integration.paying import (
    Sign,
    in_an_hour,
    issue_identity,
    new_nonce,
    signer_of_msp,
)

pytestmark = [pytest.mark.integration, pytest.mark.fabric, pytest.mark.timeout(240)]

CLI = str(Path(sys.executable).with_name("streamledger"))
CODEC = AvroCodec(SchemaRegistry.from_dir())
MINTED = 1000


@dataclass
class Party:
    ledger: LedgerClient
    settings: LedgerSettings
    account: str
    sign: Sign

    def wallet_args(self) -> list[str]:
        return ["--msp-dir", str(self.settings.fabric_msp_dir), "--msp-id", self.settings.fabric_msp_id]


@dataclass
class World:
    suffix: str
    usage_topic: str
    db_name: str
    model_id: str
    model_sha: str
    batch_id: str
    client: Party
    forger: Party
    shop: Party

    def env(self) -> dict[str, str]:
        return {**os.environ, "STREAMLEDGER_MONGO_DB": self.db_name, "STREAMLEDGER_AUDIT_USAGE_TOPIC": self.usage_topic}


@pytest.fixture(scope="module")
async def world(network: FabricNetwork, stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    suffix = uuid.uuid4().hex[:10]
    folder = tmp_path_factory.mktemp("bill")
    settings = CommonSettings()
    mongo = AsyncMongoClient(settings.mongo_url, serverSelectionTimeoutMS=5000, tz_aware=True)
    db_name = f"test_bill_{suffix}"
    opened: list[LedgerClient] = []

    def connect(ledger_settings: LedgerSettings) -> LedgerClient:
        opened.append(LedgerClient.connect(ledger_settings))
        return opened[-1]

    async def party(org: str, name: str, role: str, admin: LedgerClient) -> Party:
        issued = issue_identity(network, org, f"bill-{name}-{suffix}", folder)
        ledger = connect(issued)
        account = (await ledger.who_am_i())["Account"]
        await admin.grant_role(account, role)
        return Party(ledger, issued, account, signer_of_msp(issued))

    try:
        org1_admin, org2_admin = connect(identity("Admin")), connect(identity("Admin", "Org2"))
        client = await party("Org2", "client", "client", org2_admin)
        forger = await party("Org2", "forger", "client", org2_admin)
        shop = await party("Org1", "shop", "provider", org1_admin)
        await org1_admin.mint(client.account, MINTED)
        await org1_admin.mint(forger.account, 10)

        # A model version that learned from a batch anchored here: offsets 0-1 of a test topic.
        clean_topic, model_id, model_sha = f"bill-clean-{suffix}", f"bill-model-{suffix}", uuid.uuid4().hex * 2
        batcher = Batcher(clean_topic, max_records=2)
        batch = None
        for offset in (0, 1):
            batch = batcher.add(0, offset, f"bill-{suffix}-{offset}", uuid.uuid4().hex * 2, now=time.monotonic(),
                                tenant="bill")
        assert batch is not None
        root = batch.tree().root.hex()
        await connect(identity("anchoring")).anchor_batch(batch.batch_id, root, 2, 0, 1)
        await connect(identity("registry")).register_model(model_id, 1, model_sha)
        db = mongo[db_name]
        await db["anchors"].insert_one({"_id": batch.batch_id, "batch_id": batch.batch_id, "topic": clean_topic,
                                        "partition": 0, "first_offset": 0, "last_offset": 1, "merkle_root": root})
        await db["models"].insert_one({"_id": f"{model_id}:1", "model_id": model_id, "version": 1,
                                       "sha256": model_sha, "offsets": [{"topic": clean_topic, "partition": 0,
                                                                         "offset": 2}]})
        usage_topic = f"usage-bill-{suffix}"
        await kafka.provision(settings.kafka_bootstrap, [kafka.spec(topics.USAGE, usage_topic)])
        yield World(suffix, usage_topic, db_name, model_id, model_sha, batch.batch_id, client, forger, shop)
    finally:
        for ledger in opened:
            await ledger.gateway.close()
        await mongo.drop_database(db_name)
        await mongo.close()


async def send_usage(world: World, hold: str, records: list[tuple[str, int, Receipt | None]]) -> None:
    """Usage records as the inference server writes them: key hold id, the latest receipt it accepted."""
    async with kafka.producer(CommonSettings().kafka_bootstrap) as out:
        for request_id, units, receipt in records:
            record = {"hold_id": hold, "request_id": request_id, "client": world.client.account,
                      "model_id": world.model_id, "model_version": 1, "units": units, "price": 2,
                      "receipt_units": receipt.units if receipt else 0,
                      "receipt_sequence": receipt.sequence if receipt else 0,
                      "receipt_signature": receipt.signature if receipt else "", "ts": int(time.time() * 1000)}
            await out.send_and_wait(world.usage_topic, CODEC.encode("UsageRecord", record), key=hold.encode())


Signed = tuple[str, int, int]
"""Who signed a receipt ('client' or 'forger'), for how many units, with which sequence."""


async def settled_hold(world: World, usage: list[tuple[str, int, Signed | None]], paid: tuple[int, int]) -> tuple[str, str]:
    """A hold of the client for the shop at 2 a unit, served `usage` (request id, units, the receipt
    the server had accepted when it served it), settled on the client's receipt `paid` (units,
    sequence); its id and the settlement's transaction. A receipt is signed once and passed on."""
    nonce = new_nonce()
    hold = (await world.client.ledger.freeze(nonce, world.shop.account, 100, 2, in_an_hour()))["hold_id"]
    await world.shop.ledger.authorize(hold, 60)
    signed: dict[Signed, Receipt] = {}
    records = []
    for request_id, units, spec in usage:
        if spec is not None and spec not in signed:
            who, receipted, sequence = spec
            signed[spec] = sign_receipt(world.client.sign if who == "client" else world.forger.sign, hold,
                                        receipted, sequence)
        records.append((request_id, units, signed.get(spec) if spec else None))
    await send_usage(world, hold, records)
    settled = await world.shop.ledger.settle(hold, sign_receipt(world.client.sign, hold, *paid))
    return hold, settled.json()["tx_id"]


def cli(world: World, *args: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run([CLI, *args, "--json"], check=False, capture_output=True, text=True, timeout=90,
                          env=world.env())
    try:
        return done.returncode, json.loads(done.stdout)
    except ValueError:
        raise AssertionError(f"not JSON (exit {done.returncode}): {done.stdout!r} {done.stderr[-2000:]}") from None


# -- audit bill --

async def test_an_honest_bill_verifies_every_receipt_usage_settlement_and_model(world: World) -> None:
    served = [("r1", 3, None), ("r2", 2, ("client", 3, 1)), ("r2", 2, ("client", 3, 1))]  # r2 delivered twice
    hold, tx = await settled_hold(world, served, paid=(5, 2))
    code, bill = await asyncio.to_thread(cli, world, "audit", "bill", hold)
    assert (code, bill["status"]) == (0, "VERIFIED"), bill
    assert bill["terms"]["client"] == world.client.account and bill["terms"]["price_per_unit"] == 2
    assert "bill-client" in bill["terms"]["client_cert_subject"]
    receipts = [(r["units"], r["sequence"], r["verified"], r["sources"]) for r in bill["receipts"]]
    assert receipts == [(3, 1, True, ["usage"]), (5, 2, True, ["ledger"])]
    assert (bill["usage"]["requests"], bill["usage"]["units"], bill["usage"]["duplicates"]) == (2, 5, 1)
    assert [u["request_id"] for u in bill["usage"]["records"]] == ["r1", "r2", "r2"]
    s = bill["settlement"]
    assert (s["status"], s["tx_id"], s["charged"], s["refunded"], s["expected_charge"], s["tx_validation"]) == \
        ("SETTLED", tx, 10, 90, 10, "VALID")
    assert s["block_number"] > 0 and [w["status"] for w in bill["history"]][-1] == "SETTLED"
    (model,) = bill["models"]
    assert (model["model_id"], model["status"], model["registered_sha256"]) == (world.model_id, "MATCH",
                                                                                world.model_sha)
    assert model["learned_from"] == [{"topic": f"bill-clean-{world.suffix}", "partition": 0, "before_offset": 2,
                                      "batches": 1, "anchored_first": 0, "anchored_last": 1,
                                      "last_batch_id": world.batch_id, "last_batch_on_ledger": True}]


async def test_a_receipt_signed_by_another_identity_is_reported_as_not_verifying(world: World) -> None:
    hold, _ = await settled_hold(world, [("r1", 3, None), ("r2", 2, ("forger", 3, 1))], paid=(5, 2))
    code, bill = await asyncio.to_thread(cli, world, "audit", "bill", hold)
    assert (code, bill["status"], bill["reason"]) == (1, "DISPUTED", "receipt_invalid"), bill
    forged = [r for r in bill["receipts"] if not r["verified"]]
    assert [(r["units"], r["sequence"], r["request_ids"]) for r in forged] == [(3, 1, ["r2"])]
    assert "does not verify" in forged[0]["problem"] and "r2" in bill["detail"]


async def test_an_unknown_or_malformed_hold_and_an_open_one(world: World) -> None:
    async with open_auditor(AuditSettings(mongo_db=world.db_name, audit_usage_topic=world.usage_topic),
                            identity("audit")) as auditor:
        unknown = await auditor.bill(uuid.uuid4().hex)
        nonce = new_nonce()
        hold = (await world.client.ledger.freeze(nonce, world.shop.account, 10, 2, in_an_hour()))["hold_id"]
        deadline = time.monotonic() + 20
        # Committed on Org2's peer (the client's); the auditor reads Org1's, which may be a block behind.
        while (pending := await auditor.bill(hold)).status.value == "NOT_FOUND" and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
    assert unknown.status.value == "NOT_FOUND"
    assert pending.status.value == "NOT_SETTLED_YET" and pending.settlement is None
    code, answer = await asyncio.to_thread(cli, world, "audit", "bill", "not a hold")
    assert (code, answer["status"], answer["field"]) == (2, "INVALID_ARGUMENT", "hold_id")


# -- wallet --

async def test_wallet_balance_freeze_holds_release_round_trip_and_its_errors(world: World) -> None:
    client, forger = world.client, world.forger
    code, before = await asyncio.to_thread(cli, world, "wallet", "balance", *client.wallet_args())
    assert code == 0 and before["account"] == client.account
    code, frozen = await asyncio.to_thread(cli, world, "wallet", "freeze", "--provider", world.shop.account,
                                           "--amount", "50", "--price", "5", "--expires", "3", *client.wallet_args())
    assert code == 0, frozen
    hold = frozen["hold"]["hold_id"]
    settle_by = frozen["hold"]["settle_by"]

    # While its window is open: the errors a client meets.
    code, answer = await asyncio.to_thread(cli, world, "wallet", "release", hold, *client.wallet_args())
    assert (code, answer["status"]) == (3, "WINDOW_OPEN"), answer
    code, answer = await asyncio.to_thread(cli, world, "wallet", "release", hold, *forger.wallet_args())
    assert (code, answer["status"]) == (1, "FORBIDDEN") and "not yours" in answer["error"]
    code, answer = await asyncio.to_thread(cli, world, "wallet", "release", uuid.uuid4().hex, *client.wallet_args())
    assert (code, answer["status"]) == (4, "NOT_FOUND")
    code, answer = await asyncio.to_thread(cli, world, "wallet", "freeze", "--provider", world.shop.account,
                                           "--amount", "100000", "--price", "1", "--expires", "60",
                                           *client.wallet_args())
    assert (code, answer["status"]) == (1, "INSUFFICIENT_FUNDS"), answer
    code, answer = await asyncio.to_thread(cli, world, "wallet", "freeze", "--provider", world.shop.account,
                                           "--amount", "10", "--price", "1", "--expires", "2020-01-01T00:00:00Z",
                                           *client.wallet_args())
    assert (code, answer["status"]) == (2, "EXPIRED")
    code, answer = await asyncio.to_thread(cli, world, "wallet", "receipts", hold, *forger.wallet_args())
    assert (code, answer["status"]) == (1, "FORBIDDEN")

    code, during = await asyncio.to_thread(cli, world, "wallet", "balance", *client.wallet_args())
    assert during["balance"] == before["balance"] - 50 and during["frozen"] == before["frozen"] + 50
    code, listed = await asyncio.to_thread(cli, world, "wallet", "holds", *client.wallet_args())
    mine = {h["hold_id"]: h for h in listed["holds"]}
    assert (mine[hold]["status"], mine[hold]["role"], mine[hold]["price_per_unit"]) == ("OPEN", "client", 5)

    deadline = time.monotonic() + 60
    while True:  # the window closes at settle_by (the peers' clock): try until the contract agrees
        assert time.time() < settle_by + 30 and time.monotonic() < deadline, "release never allowed"
        if time.time() >= settle_by:
            code, released = await asyncio.to_thread(cli, world, "wallet", "release", hold, *client.wallet_args())
            if released["status"] != "WINDOW_OPEN":
                break
        await asyncio.sleep(0.5)
    assert (code, released["hold"]["status"], released["hold"]["refunded"]) == (0, "RELEASED", 50), released
    code, after = await asyncio.to_thread(cli, world, "wallet", "balance", *client.wallet_args())
    assert after["balance"] == before["balance"] and after["frozen"] == before["frozen"]


async def test_wallet_receipts_lists_the_ledgers_and_the_usage_topics_receipts_verified(world: World) -> None:
    served = [("r1", 3, None), ("r2", 2, ("client", 3, 1)), ("r3", 1, ("forger", 5, 2))]
    hold, _ = await settled_hold(world, served, paid=(6, 3))
    code, answer = await asyncio.to_thread(cli, world, "wallet", "receipts", hold, "--usage-topic",
                                           world.usage_topic, *world.client.wallet_args())
    assert (code, answer["status"], answer["usage_records"]) == (1, "DISPUTED", 3), answer
    assert [(r["units"], r["sequence"], r["verified"], r["sources"]) for r in answer["receipts"]] == [
        (3, 1, True, ["usage"]), (5, 2, False, ["usage"]), (6, 3, True, ["ledger"])]
