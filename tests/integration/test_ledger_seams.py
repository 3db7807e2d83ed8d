"""The services' two ledger seams on the real local Fabric network, no fakes of the ledger:
`LedgerHoldSource` (inference paid mode: GetHold and Authorize) and `LedgerModelRegistry`
(learning), plus the learner run with it, whose snapshots must be registered to be resumed.
The paid inference server on real holds, paid by receipts: tests/integration/inference/test_inference_ledger.py.

Each acts as its own identity: inference as `inference` (a provider acting for Org1's
`provider` account, which the holds pay), learning as `registry` (operator); Org1's Admin
mints, Org2's User5 is the paying client. Started as an identity without its role, neither
service starts, and says which identity lacks which role.

The `network` fixture (tests/integration/conftest.py) brings Fabric up. The ledger keeps
its state between runs, so every hold and model id carries a fresh suffix.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import time
import uuid

import pytest

from services.inference.authorization import (
    HoldClosed,
    HoldUnavailable,
    InvalidHoldId,
    NothingToReserve,
)
from services.inference.ledger_holds import LedgerHoldSource
from services.learning import app as learning_app
from services.learning.ledger_seam import LedgerModelRegistry
from services.learning.prequential import OnlineModel
from streamledger.core import receipts
from streamledger.core.snapshots import SnapshotNotVouched, seal
from streamledger.declarations import load_declarations
from streamledger.fabric import EndorseError, RetryPolicy
from streamledger.ledger import LedgerClient, MissingRole
from streamledger.lifecycle import run_until
from streamledger.settings import LedgerSettings
from tests.integration.conftest import identity
from tests.integration.pipeline.conftest import account_of, acts_for
from tests.integration.test_learning_service import MODELS as LEARNING_MODELS
from tests.integration.test_learning_service import (
    PHISHING,
    Captured,
    codec,
    encoded,
    final_snapshots,
    latest,
    names,  # noqa: F401
    produce,
    read_all,
    settings_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.fabric, pytest.mark.timeout(240)]


@pytest.fixture
def suffix() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def admin(network):
    """Org1's admin: mints, grants roles, nothing else."""
    async with LedgerClient.connect(identity("Admin")) as ledger:
        yield ledger


@pytest.fixture
async def client(network):
    """A client of Org2, which pays for inference."""
    async with LedgerClient.connect(identity("User5", "Org2")) as ledger:
        yield ledger


@pytest.fixture
async def inference(network):
    """The inference service's identity: a provider acting for Org1's `provider` account."""
    async with LedgerClient.connect(identity("inference")) as ledger:
        yield ledger


@pytest.fixture
async def registry_ledger(network):
    """The learning service's identity: an operator, which registers models."""
    async with LedgerClient.connect(identity("registry")) as ledger:
        yield ledger


async def frozen_hold(admin: LedgerClient, client: LedgerClient, nonce: str, amount: int, provider: str,
                      price: int = 1, expires_in: int = 3600) -> tuple[str, str, int]:
    """A hold of `amount` at `price` per unit frozen by `client` (after Admin mints it the credit) for
    `provider`. Returns (hold id, client account, expires_at)."""
    me = await account_of(client)
    await admin.mint(me, amount)
    expires_at = int(time.time()) + expires_in
    hold = await client.freeze(nonce, provider, amount, price, expires_at)
    assert hold["hold_id"] == receipts.hold_id(me, nonce)
    return hold["hold_id"], me, expires_at


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- LedgerHoldSource --

async def test_the_hold_source_reads_a_frozen_hold_as_the_contract_keeps_it(admin, client, inference, suffix):
    provider = await acts_for(inference)
    hold_id, me, expires_at = await frozen_hold(admin, client, f"hold-{suffix}", 250, provider, price=5)
    source = LedgerHoldSource(inference)

    hold = await source.hold(hold_id)
    assert (hold.hold_id, hold.client, hold.provider) == (hold_id, me, provider)
    assert (hold.amount, hold.price_per_unit, hold.units) == (250, 5, 50)
    assert (hold.remaining, hold.expires_at, hold.live, hold.receipt) == (250, float(expires_at), True, None)
    assert "BEGIN CERTIFICATE" in hold.client_cert  # the certificate receipts verify against

    reserved = await source.reserve(hold_id, 40)  # the provider reserves part of it (Authorize)
    assert (reserved.authorized, reserved.remaining) == (40, 210)
    assert (await source.hold(hold_id)).remaining == 210
    with pytest.raises(NothingToReserve, match="EXCEEDS_HOLD"):
        await source.reserve(hold_id, 211)
    await inference.release(hold_id)
    closed = await source.hold(hold_id)
    assert (closed.live, closed.remaining) == (False, 0)
    with pytest.raises(HoldClosed, match="settled or released"):
        await source.reserve(hold_id, 1)


async def test_the_hold_source_says_none_for_an_unknown_hold_and_refuses_a_malformed_id(inference, suffix):
    source = LedgerHoldSource(inference)
    assert await source.hold(f"no-such-hold-{suffix}") is None
    with pytest.raises(InvalidHoldId, match="refused by the ledger") as caught:
        await source.hold("not a valid id!")
    assert caught.value.code == "INVALID_ARGUMENT"


async def test_an_unreachable_ledger_is_unavailable_not_a_refusal(network):
    settings = identity("inference", fabric_peer_endpoint=f"127.0.0.1:{free_port()}")  # nothing listens there
    async with LedgerClient.connect(settings, retry=RetryPolicy(attempts=2, initial_seconds=0.05)) as dead:
        with pytest.raises(HoldUnavailable, match="cannot be reached right now to read hold") as caught:
            await LedgerHoldSource(dead).hold("hold-anything")
    assert caught.value.code == "UNAVAILABLE"


# -- LedgerModelRegistry --

async def test_the_registry_knows_exactly_the_registered_hash(registry_ledger, suffix):
    registry = LedgerModelRegistry(registry_ledger, await account_of(registry_ledger))
    model_id = f"model-{suffix}"
    sha, other = hashlib.sha256(b"v1").hexdigest(), hashlib.sha256(b"forged").hexdigest()
    assert await registry.latest_version(model_id) == 0
    await registry.register(model_id, 1, sha)
    await registry.register(model_id, 1, sha)  # a retried registration is a no-op
    await registry.register(model_id, 2, other)
    assert await registry.is_registered(model_id, 1, sha)
    assert not await registry.is_registered(model_id, 1, other)
    assert not await registry.is_registered(model_id, 2, sha)  # registered with another hash
    assert not await registry.is_registered(model_id, 3, sha)  # never registered
    assert await registry.latest_version(model_id) == 2
    with pytest.raises(EndorseError, match='CONFLICT: "version": the next version of model .* is 3, got 4'):
        await registry.register(model_id, 4, sha)  # versions only go up by one (issue 21, rule 6)


async def test_the_registry_vouches_only_for_the_hash_registered_by_its_own_account(registry_ledger, suffix):
    registry = LedgerModelRegistry(registry_ledger, await account_of(registry_ledger))
    model_id, foreign = f"model-{suffix}", f"model-anchoring-{suffix}"
    sha, other = hashlib.sha256(b"v1").hexdigest(), hashlib.sha256(b"forged").hexdigest()
    await registry.register(model_id, 1, sha)
    await registry.vouch(model_id, 1, sha)
    async with LedgerClient.connect(identity("anchoring")) as anchoring:  # an operator too, not the registrant
        await anchoring.register_model(foreign, 1, sha)
    for model, version, digest, reason in [(model_id, 1, other, "registered_with_another_hash"),
                                           (model_id, 2, sha, "not_registered"),
                                           (foreign, 1, sha, "registered_by_another_account")]:
        with pytest.raises(SnapshotNotVouched) as refused:
            await registry.vouch(model, version, digest)
        assert refused.value.reason == reason, (model, version)


# -- learning with the ledger --

@pytest.fixture
def ledger_names(names: dict, suffix: str) -> dict:
    """`names` of the learning tests with one model under a fresh id (the ledger remembers old ones)."""
    model_id = f"phishing-logreg-{suffix}"
    first = LEARNING_MODELS.split("[[model]]")[1]
    names["models"].write_text("[[model]]" + first.replace('id = "phishing-logreg"', f'id = "{model_id}"'))
    return dict(names, model_id=model_id)


class LearningService:
    def __init__(self, settings) -> None:
        self.stop = asyncio.Event()  # the default settings: the service acts as `registry`, its own identity
        self.task = asyncio.create_task(run_until(learning_app.Learning(settings, LedgerSettings()), self.stop))

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)


async def test_the_learner_registers_snapshots_and_resumes_only_registered_ones(network, bootstrap, ledger_names,
                                                                                registry_ledger):
    names, model_id = ledger_names, ledger_names["model_id"]
    registry = LedgerModelRegistry(registry_ledger, await account_of(registry_ledger))
    await produce(bootstrap, names["input"], encoded(PHISHING[:400]))
    service = LearningService(settings_for(bootstrap, names, learning_ledger=True, learning_snapshot_every_events=200,
                                           learning_snapshot_every_seconds=3600))
    try:
        honest = await read_all(bootstrap, names["snapshots"], "ModelSnapshot",
                                final_snapshots(400, names["snapshots"], [model_id]))
    finally:
        await service.close()
    newest = latest(honest)[model_id]
    for snapshot in honest:
        assert await registry.is_registered(model_id, snapshot["version"], snapshot["sha256"]), snapshot["version"]

    # A forger rewrites both the bytes and the hash: a valid model of the same declaration, its
    # record self-consistent (the hash check alone would load it), but not registered on the ledger.
    forger = OnlineModel(load_declarations(names["models"])[0])
    for event in PHISHING[:50]:
        forger.process(event["features"], event["label"])
    sealed = seal(forger.state())
    forged = dict(newest, version=newest["version"] + 1, model=sealed.data, sha256=sealed.sha256)
    await produce(bootstrap, names["snapshots"], [(model_id, codec.encode("ModelSnapshot", forged))])

    captured = Captured()
    logger = logging.getLogger("streamledger.learning")
    logger.addHandler(captured)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        service = LearningService(settings_for(bootstrap, names, learning_ledger=True))
        await produce(bootstrap, names["input"], encoded(PHISHING[400:500]))
        after = await read_all(bootstrap, names["snapshots"], "ModelSnapshot",
                               final_snapshots(500, names["snapshots"], [model_id]))
        await service.close()
    finally:
        logger.removeHandler(captured)
        logger.setLevel(level)
    refused_logs = [r for r in captured.records if r.getMessage() == "snapshot_refused"]
    assert [(r.model_id, r.version, r.reason) for r in refused_logs] == [(model_id, forged["version"], "not_registered")]
    resumed = [r for r in captured.records if r.getMessage() == "model_resumed" and r.model_id == model_id]
    assert resumed[0].version == newest["version"]
    final = latest(after)[model_id]
    # Numbered from the ledger's latest (the contract's rule), so it may reuse the forgery's
    # number, never its hash.
    assert final["events_seen"] == 500 and final["version"] > newest["version"]
    assert not await registry.is_registered(model_id, forged["version"], forged["sha256"])
    assert await registry.is_registered(model_id, final["version"], final["sha256"])


async def test_a_learner_as_an_identity_without_the_operator_role_cannot_start(network, bootstrap, ledger_names):
    """`inference` is a provider, no operator: registering snapshots is not its to do."""
    service = learning_app.Learning(settings_for(bootstrap, ledger_names, learning_ledger=True), identity("inference"))
    with pytest.raises(MissingRole, match="ledger identity 'inference' .* does not hold the operator role"):
        await run_until(service, asyncio.Event())
