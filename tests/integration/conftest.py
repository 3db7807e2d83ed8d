"""Fixtures for tests on the real local stack (Kafka, FerretDB).

The stack is brought up once per session (or a healthy one is reused); tests isolate
themselves by unique topic, group and database names, never by stopping servers.

On Kafka the tests act as the stack's admin (their topics and groups are their own, outside the
services' ACLs), and so do the services they start; a test of the ACLs names a service's
principal (`KafkaSecurity.from_settings(username=...)`). A stack run with
`STREAMLEDGER_STACK_KAFKA_SECURE=false` is reached in PLAINTEXT.
"""

from __future__ import annotations

import os
import uuid

import pytest
from pymongo import AsyncMongoClient

from devstack import Stack
from devstack.fabric import PART_NAMES, FabricNetwork
from devstack.settings import StackSettings
from streamledger.core.merkle import tree_from_text
from streamledger.kafka.clients import ADMIN
from streamledger.settings import CommonSettings, LedgerSettings

pytestmark = pytest.mark.integration

os.environ.setdefault("STREAMLEDGER_KAFKA_SASL_USERNAME", ADMIN)
if not StackSettings().kafka_secure:
    os.environ.setdefault("STREAMLEDGER_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")

FABRIC_PARTS = PART_NAMES


def identity(user: str, org: str = "Org1", **overrides: object) -> LedgerSettings:
    """Ledger settings acting as a local identity: `identity("User3", "Org2")` is a client of
    Org2 (deploy/fabric/identities.yaml grants Org2's User1..8 the client role); Org1's
    `anchoring`, `registry`, `inference`, `settlement`, `audit`, `dashboard` hold their
    service's role; `Admin` of either org only grants roles (and Org1's mints); Org1's
    User1..8 hold no role until a test grants one."""
    return LedgerSettings(fabric_msp_id=f"{org}MSP", fabric_user=user, **overrides)


async def stored_proofs(db) -> list[dict]:
    """Every proof document the ledger service stored, each with the siblings its batch's stored
    tree (`proof_trees`) gives it, computed here independently of the audit's own reader."""
    trees = {d["_id"]: tree_from_text(d["leaves"]) async for d in db["proof_trees"].find({})}
    proofs = [d async for d in db["proofs"].find({})]
    for proof in proofs:
        proof["siblings"] = [s.hex() for s in trees[proof["batch_id"]].proof(proof["index"])]
    return proofs


@pytest.fixture(scope="session")
def stack() -> Stack:
    stack = Stack(say=lambda _msg: None)
    stack.up()
    return stack


@pytest.fixture(scope="session")
def settings(stack: Stack) -> CommonSettings:
    return CommonSettings()


@pytest.fixture(scope="session")
def bootstrap(settings: CommonSettings) -> str:
    return settings.kafka_bootstrap


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic, group and database names."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def mongo_db(settings: CommonSettings, unique: str):
    """A fresh database on the real FerretDB, dropped afterwards."""
    client: AsyncMongoClient = AsyncMongoClient(settings.mongo_url, serverSelectionTimeoutMS=5000)
    db = client[f"test_{unique}"]
    try:
        yield db
    finally:
        await client.drop_database(db.name)
        await client.close()


@pytest.fixture(scope="session")
def network(stack: Stack):
    """The local Fabric network, up for the session; stopped afterwards only if the session
    started it. Not skipped when Fabric cannot be built: the fixture then fails with the
    install error. The ledger keeps its state between runs, so tests use fresh ids."""
    settings = StackSettings(fabric=True)
    fabric_stack = Stack(settings, say=lambda _msg: None)
    parts = [fabric_stack.part(name) for name in FABRIC_PARTS]
    already_running = all(part.process.pid() is not None for part in parts)
    fabric_stack.up()  # a failed install or start raises StackError naming the part and its log
    yield FabricNetwork(settings)
    if not already_running:
        for part in reversed(parts):
            part.process.stop()
