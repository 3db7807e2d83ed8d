"""`Auditor`: the three audit questions over one evidence store and one ledger reader.

    async with open_auditor(AuditSettings(), LedgerSettings()) as auditor:
        verification = await auditor.verify("acme", "evt-42")
        report = await auditor.model("phishing-logreg")          # latest version
        statement = await auditor.account("Org1MSP::CN=...")
        bill = await auditor.bill("f898c8e3fcf5d04a8186f04a431e5a78")  # a hold, its receipts and usage
        trace = await auditor.trace("acme", "evt-42", limit=20, page=1)  # ingested -> ledger -> models -> holds

The HTTP and gRPC servers and the in-process CLI all ask through it, so they give the same
answers; `open_auditor` wires the real adapters (MongoDB, the Fabric gateway).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.audit.bill import AnchorIndex, Bill, UsageLog, audit_bill
from services.audit.bill_sources import KafkaUsageLog, MongoAnchorIndex
from services.audit.ledger_reader import FabricLedgerReader, UnreachableLedger
from services.audit.ledger_retry import RetriedLedgerReads
from services.audit.mongo_store import MongoEvidenceStore
from services.audit.ports import EvidenceStore, LedgerReader
from services.audit.provenance import ModelReport, audit_model
from services.audit.settings import AuditSettings
from services.audit.statement import AccountStatement, account_statement
from services.audit.trace import DEFAULT_LIMIT, Lineage, Trace, audit_trace
from services.audit.trace_sources import KafkaMongoLineage
from services.audit.verification import Verification, verify
from streamledger.fabric import IdentityError, Timeouts
from streamledger.ledger import LedgerClient
from streamledger.mongo import mongo_client
from streamledger.retry import NO_RETRY, RetryPolicy
from streamledger.settings import LedgerSettings

IDENTITY = "audit"
"""The local ledger identity the audit reads as (deploy/fabric/identities.yaml): an auditor."""
ROLE = "auditor"
"""The role the audit needs: reading every account, hold and key history."""


class Auditor:
    def __init__(self, store: EvidenceStore, ledger: LedgerReader, usage: UsageLog | None = None,
                 anchors: AnchorIndex | None = None, lineage: Lineage | None = None) -> None:
        self.store = store
        self.ledger = ledger
        self.usage = usage
        self.anchors = anchors
        self.lineage = lineage

    async def verify(self, tenant: str, event_id: str) -> Verification:
        return await verify(self.store, self.ledger, tenant, event_id)

    async def model(self, model_id: str, version: int | None = None) -> ModelReport:
        return await audit_model(self.store, self.ledger, model_id, version)

    async def account(self, account: str) -> AccountStatement:
        return await account_statement(self.ledger, account)

    async def bill(self, hold_id: str) -> Bill:
        if self.usage is None or self.anchors is None:
            raise RuntimeError("this Auditor was built without a usage log and an anchor index: it cannot audit bills")
        return await audit_bill(self.ledger, self.usage, self.store, self.anchors, hold_id)

    async def trace(self, tenant: str, event_id: str, limit: int = DEFAULT_LIMIT, page: int = 1) -> Trace:
        if self.lineage is None:
            raise RuntimeError("this Auditor was built without a lineage (raw topic, snapshots, usage): it cannot trace")
        return await audit_trace(self.store, self.ledger, self.lineage, tenant, event_id, limit, page)


@asynccontextmanager
async def open_auditor(settings: AuditSettings, ledger_settings: LedgerSettings) -> AsyncIterator[Auditor]:
    """An Auditor on MongoDB and the Fabric gateway, reading the ledger as the identity `audit`
    (unless `ledger_settings` name another); both connect lazily, so an unreachable server
    shows in the answers (STORE_UNREACHABLE, LEDGER_UNREACHABLE), not here. Without a usable
    Fabric identity or TLS root every ledger question is LEDGER_UNREACHABLE, saying why, so the
    service still starts (e.g. in `serve all` on a stack without Fabric)."""
    timeout = round(settings.audit_mongo_timeout_seconds * 1000)  # pymongo counts milliseconds
    mongo = mongo_client(settings.mongo_url, tz_aware=True, serverSelectionTimeoutMS=timeout,
                         connectTimeoutMS=timeout, socketTimeoutMS=max(timeout, 10_000))
    store = MongoEvidenceStore(mongo[settings.mongo_db])
    usage = KafkaUsageLog(settings.kafka_bootstrap, settings.audit_usage_topic, settings.audit_usage_timeout_seconds)
    anchors = MongoAnchorIndex(mongo[settings.mongo_db])
    lineage = KafkaMongoLineage(settings.kafka_bootstrap, settings.audit_raw_topic, settings.audit_usage_topic,
                                mongo[settings.mongo_db], settings.learning_models_file,
                                settings.audit_usage_timeout_seconds)
    try:
        try:
            # RetriedLedgerReads retries: the client does not.
            client = LedgerClient.connect(ledger_settings, retry=NO_RETRY, service_identity=IDENTITY)
        except (IdentityError, OSError) as exc:
            yield Auditor(store, UnreachableLedger(f"no connection to the ledger can be set up: {exc}"), usage, anchors, lineage)
            return
        # An audit answers within a bound: a hung peer becomes LEDGER_UNREACHABLE, not a hung request.
        client.gateway.timeouts = Timeouts(evaluate=settings.audit_ledger_timeout_seconds)
        policy = RetryPolicy(attempts=settings.audit_ledger_attempts, initial_seconds=0.1, max_seconds=1.0)
        async with client:
            yield Auditor(store, FabricLedgerReader(RetriedLedgerReads(client, policy)), usage, anchors, lineage)
    finally:
        await mongo.close()
