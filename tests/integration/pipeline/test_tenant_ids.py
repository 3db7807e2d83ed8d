"""Two tenants send the same event ids through the real pipeline: neither overwrites the other.

Ingestion (HTTP, each tenant with its own API key) -> cleaning -> storage -> the ledger
service's anchoring -> the audit. Every event id is sent by both tenants with different
content; afterwards both sets are on the clean topic (what learning reads), stored as two
documents each, proven and VERIFIED per tenant, and tampering with one tenant's record
leaves the other tenant's record of the same id VERIFIED.
"""

from __future__ import annotations

import httpx
import pytest

from services.audit.auditor import open_auditor
from services.audit.settings import AuditSettings
from services.ingestion.app import IngestionService
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.core.scoped import scoped_id
from streamledger.settings import LedgerSettings
from tests.integration.ingest.conftest import KEYS, ingestion_settings
from tests.integration.pipeline.conftest import create_topics, read_all, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fabric, pytest.mark.timeout(150)]

CODEC = AvroCodec(SchemaRegistry.from_dir())
PER_TENANT = 20
AMOUNT = {"acme": 1.0, "globex": 1000.0}  # each tenant's events carry its own values


async def test_two_tenants_with_the_same_event_ids_are_stored_and_verified_apart(
        bootstrap, mongo_db, pipeline_env, services, network, unique) -> None:
    pipeline_env["STREAMLEDGER_LEDGER_ANCHOR_GROUP"] = f"anchoring-{unique}"
    pipeline_env["STREAMLEDGER_LEDGER_SETTLEMENT"] = "false"
    raw_topic = pipeline_env["STREAMLEDGER_CLEANING_RAW_TOPIC"]
    await create_topics(bootstrap, [raw_topic])  # one partition, before ingestion would make three
    storage = services("storage")
    await storage.logged('"event": "started"')
    services("cleaning")
    ledger = services("ledger")
    await ledger.logged('"event": "anchoring_started"')

    ids = [f"{unique}-{i}" for i in range(PER_TENANT)]
    async with IngestionService(ingestion_settings(raw_topic)) as ingestion, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{ingestion.http_port}", timeout=30) as http:
        for tenant in ("acme", "globex"):
            events = [{"event_id": i, "source": "tenants", "ts": 1_767_225_600_000 + n,
                       "features": {"amount": AMOUNT[tenant] + n}} for n, i in enumerate(ids)]
            answer = await http.post("/v1/events", json=events, headers={"X-API-Key": KEYS[tenant]})
            assert answer.status_code == 200, answer.text
        # globex sends one of its ids again with other content: a duplicate within globex only.
        again = [{"event_id": ids[0], "source": "tenants", "ts": 1, "features": {"amount": -1.0}}]
        answer = await http.post("/v1/events", json=again, headers={"X-API-Key": KEYS["globex"]})
        assert answer.status_code == 200, answer.text

    expected = {(tenant, i) for tenant in AMOUNT for i in ids}

    async def stored_and_proven() -> bool:
        return (await mongo_db["events"].count_documents({}) >= len(expected)
                and await mongo_db["proofs"].count_documents({}) >= len(expected))
    await wait_until(stored_and_proven, 60, f"{len(expected)} events stored and proven", ledger.tail)

    # What learning reads: both tenants' events of every id are on the clean topic.
    clean = [CODEC.decode(r.value, reader="CleanEvent")
             for r in await read_all(bootstrap, pipeline_env["STREAMLEDGER_CLEANING_CLEAN_TOPIC"])]
    assert {(e["tenant"], e["event_id"]) for e in clean} == expected and len(clean) == len(expected)

    stored = {(d["tenant"], d["event_id"]): d async for d in mongo_db["events"].find({})}
    assert set(stored) == expected
    for (tenant, event_id), document in stored.items():
        assert document["_id"] == scoped_id(tenant, event_id)
        assert document["features"]["amount"] == AMOUNT[tenant] + ids.index(event_id)  # nobody overwrote it
    proofs = {(d["tenant"], d["event_id"]): d async for d in mongo_db["proofs"].find({})}
    assert set(proofs) == expected

    async with open_auditor(AuditSettings(mongo_db=mongo_db.name), LedgerSettings()) as auditor:
        async def anchored() -> bool:  # proofs are written just before their AnchorBatch commits
            return all([(await auditor.verify(t, ids[-1])).status == "VERIFIED" for t in AMOUNT])
        await wait_until(anchored, 30, "the last batch on the ledger", ledger.tail)

        verdicts = {(t, i): await auditor.verify(t, i) for t, i in sorted(expected)}
        assert {key: str(v.status) for key, v in verdicts.items()} == {key: "VERIFIED" for key in expected}
        for (tenant, event_id), verdict in verdicts.items():
            assert verdict.record["tenant"] == tenant and verdict.proof["tenant"] == tenant
        assert verdicts[("acme", ids[3])].recomputed_hash != verdicts[("globex", ids[3])].recomputed_hash

        changed = await mongo_db["events"].update_one({"_id": scoped_id("acme", ids[3])},
                                                      {"$set": {"features.amount": 5.0}})
        assert changed.modified_count == 1
        assert (await auditor.verify("acme", ids[3])).status == "TAMPERED"
        assert (await auditor.verify("globex", ids[3])).status == "VERIFIED"
        assert (await auditor.verify("initech", ids[3])).status == "UNKNOWN"
