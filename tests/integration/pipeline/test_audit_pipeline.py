"""Issue 8's end-to-end audit: 10,000 events through cleaning, storage and the ledger service
on the real stack all verify; then one stored document edited in MongoDB makes exactly that
record TAMPERED, a deleted one is DELETED, an unknown id UNKNOWN, a malformed one refused.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter

import pytest

from services.audit.auditor import open_auditor
from services.audit.ports import InvalidArgument
from services.audit.settings import AuditSettings
from streamledger import kafka
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.core.scoped import scoped_id
from streamledger.settings import LedgerSettings
from tests.integration.pipeline import reference
from tests.integration.pipeline.conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fabric, pytest.mark.timeout(600)]

CODEC = AvroCodec(SchemaRegistry.from_dir())
EVENTS = int(os.environ.get("AUDIT_PIPELINE_EVENTS", "10000"))  # fewer for a quick local run
TENANT = "acme"


async def verdicts(auditor, event_ids: list[str], concurrency: int = 4) -> dict[str, str]:
    """event id -> status, verified `concurrency` at a time (more only queues up on 2 cores)."""
    results: dict[str, str] = {}
    queue = list(event_ids)

    async def worker() -> None:
        while queue:
            event_id = queue.pop()
            results[event_id] = str((await auditor.verify(TENANT, event_id)).status)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


async def test_ten_thousand_events_verify_and_exactly_the_edited_one_is_tampered(
        bootstrap, mongo_db, pipeline_env, services, network, unique) -> None:
    pipeline_env["STREAMLEDGER_LEDGER_ANCHOR_GROUP"] = f"anchoring-{unique}"
    pipeline_env["STREAMLEDGER_LEDGER_SETTLEMENT"] = "false"
    storage = services("storage")
    await storage.logged('"event": "started"')
    services("cleaning")
    ledger = services("ledger")
    await ledger.logged('"event": "anchoring_started"')

    ids = []
    async with kafka.producer(bootstrap) as producer:
        for i in range(EVENTS):
            raw, _ = reference.valid_event(i, tenant=TENANT)
            raw["event_id"] = f"{unique}-{i:05d}"
            ids.append(raw["event_id"])
            await producer.send(pipeline_env["STREAMLEDGER_CLEANING_RAW_TOPIC"], key=raw["event_id"].encode(),
                                value=CODEC.encode("RawEvent", raw))
        await producer.flush()

    async def stored_and_anchored() -> bool:
        return (await mongo_db["events"].count_documents({}) >= EVENTS
                and await mongo_db["proofs"].count_documents({}) >= EVENTS)
    started = time.monotonic()
    await wait_until(stored_and_anchored, 300, f"{EVENTS} events stored and proven", ledger.tail)
    print(f"stored and proven after {time.monotonic() - started:.1f}s")

    audit = AuditSettings(mongo_db=mongo_db.name)
    async with open_auditor(audit, LedgerSettings()) as auditor:
        async def all_anchored() -> bool:  # proofs are written just before their AnchorBatch commits
            return (await auditor.verify(TENANT, ids[-1])).status == "VERIFIED"
        await wait_until(all_anchored, 60, "the last batch on the ledger", ledger.tail)

        started = time.monotonic()
        first = await verdicts(auditor, ids)
        print(f"verified {EVENTS} in {time.monotonic() - started:.1f}s")
        assert Counter(first.values()) == {"VERIFIED": EVENTS}

        edited, deleted = ids[EVENTS * 43 // 100], ids[EVENTS * 87 // 100]
        changed = await mongo_db["events"].update_one({"_id": scoped_id(TENANT, edited)},
                                                      {"$set": {"features.x": 1.5}})
        assert changed.modified_count == 1
        await mongo_db["events"].delete_one({"_id": scoped_id(TENANT, deleted)})

        second = await verdicts(auditor, ids)
        assert {i: s for i, s in second.items() if s != "VERIFIED"} == {edited: "TAMPERED", deleted: "DELETED"}
        tampered = await auditor.verify(TENANT, edited)
        assert tampered.problems[0].reason == "record_changed"
        assert tampered.anchor["merkle_root"] == tampered.computed_root  # the proof itself still holds

        assert (await auditor.verify(TENANT, f"{unique}-no-such-event")).status == "UNKNOWN"
        assert (await auditor.verify("another-tenant", ids[0])).status == "UNKNOWN"
        with pytest.raises(InvalidArgument, match="event_id"):
            await auditor.verify(TENANT, "\x00bad")
