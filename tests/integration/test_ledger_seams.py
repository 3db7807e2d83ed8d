"""The services' two ledger seams on the real local Fabric network, no fakes of the ledger:
`LedgerHoldSource` (inference paid mode) and `LedgerModelRegistry` (learning), plus both
services run with them: a paid inference server charging real holds, and a learner whose
snapshots must be registered to be resumed.

The `network` fixture (tests/integration/conftest.py) brings Fabric up. The ledger keeps
its state between runs, so every hold and model id carries a fresh suffix.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import time
from collections.abc import Callable

import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from devstack.settings import StackSettings
from services.inference import app as inference_app
from services.inference.authorization import HoldUnavailable, InvalidHoldId
from services.inference.ledger_holds import LedgerHoldSource
from services.inference.settings import InferenceSettings
from services.learning import app as learning_app
from services.learning.ledger_seam import LedgerModelRegistry
from services.learning.prequential import OnlineModel
from streamledger.core.snapshots import seal
from streamledger.declarations import load_declarations
from streamledger.fabric import RetryPolicy
from streamledger.ledger import LedgerClient
from streamledger.lifecycle import run_until
from streamledger.settings import LOCAL_ORG1, LedgerSettings
from tests.integration.inference.support import MODELS as INFERENCE_MODELS
from tests.integration.inference.support import PHISHING as INFERENCE_ROWS
from tests.integration.inference.support import (
    ServerThread,
    publish,
    serve_until,
    snapshot_record,
    train,
)
from tests.integration.inference.test_inference_paid import Issuer, infer
from tests.integration.test_fabric_gateway import (  # noqa: F401 (fixtures)
    account_of,
    admin,
    client,
    suffix,
    user1,
)
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


async def frozen_hold(admin: LedgerClient, user1: LedgerClient, hold_id: str, amount: int,
                      provider: str | None = None, expires_in: int = 3600) -> tuple[str, int]:
    """A hold of `amount` frozen by User1 (after Admin mints it the credit) for `provider`
    (default: Admin's account). Returns (client account, expires_at)."""
    me = await account_of(user1)
    await admin.mint(me, amount)
    expires_at = int(time.time()) + expires_in
    await user1.freeze(hold_id, me, provider or await account_of(admin), amount, expires_at)
    return me, expires_at


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- LedgerHoldSource --

async def test_the_hold_source_reads_a_frozen_hold_as_the_contract_keeps_it(admin, user1, suffix):
    hold_id = f"hold-{suffix}"
    me, expires_at = await frozen_hold(admin, user1, hold_id, 250)
    source = LedgerHoldSource(admin)

    hold = await source.hold(hold_id)
    assert (hold.hold_id, hold.client, hold.provider) == (hold_id, me, await account_of(admin))
    assert (hold.remaining, hold.expires_at, hold.live) == (250, float(expires_at), True)

    await admin.authorize(hold_id, 40)  # the provider reserves part of it
    assert (await source.hold(hold_id)).remaining == 210
    await admin.release(hold_id)
    closed = await source.hold(hold_id)
    assert (closed.live, closed.remaining) == (False, 0)


async def test_the_hold_source_says_none_for_an_unknown_hold_and_refuses_a_malformed_id(admin, suffix):
    source = LedgerHoldSource(admin)
    assert await source.hold(f"no-such-hold-{suffix}") is None
    with pytest.raises(InvalidHoldId, match="refused by the ledger") as caught:
        await source.hold("not a valid id!")
    assert caught.value.code == "INVALID_ARGUMENT"


async def test_an_unreachable_ledger_is_unavailable_not_a_refusal(network):
    settings = LedgerSettings(fabric_peer_endpoint=f"127.0.0.1:{free_port()}")  # nothing listens there
    async with LedgerClient.connect(settings, retry=RetryPolicy(attempts=2, initial_seconds=0.05)) as dead:
        with pytest.raises(HoldUnavailable, match="cannot be read right now") as caught:
            await LedgerHoldSource(dead).hold("hold-anything")
    assert caught.value.code == "UNAVAILABLE"


# -- LedgerModelRegistry --

async def test_the_registry_knows_exactly_the_registered_hash(admin, suffix):
    registry = LedgerModelRegistry(admin)
    model_id = f"model-{suffix}"
    sha, other = hashlib.sha256(b"v1").hexdigest(), hashlib.sha256(b"forged").hexdigest()
    assert await registry.latest_version(model_id) == 0
    await registry.register(model_id, 1, sha)
    await registry.register(model_id, 1, sha)  # a retried registration is a no-op
    await registry.register(model_id, 3, other)
    assert await registry.is_registered(model_id, 1, sha)
    assert not await registry.is_registered(model_id, 1, other)
    assert not await registry.is_registered(model_id, 2, sha)  # never registered
    assert await registry.latest_version(model_id) == 3


# -- inference in paid mode, holds read from the ledger --

ORG1 = StackSettings().data_dir / LOCAL_ORG1


@pytest.fixture
def paid_settings(network, stack, bootstrap, unique, tmp_path):
    """Paid-mode settings on fresh topics; the client CA is Org1's Fabric CA, so User1's own
    enrollment certificate is the TLS client identity the hold names."""
    models = tmp_path / "models.toml"
    models.write_text(INFERENCE_MODELS)
    server_ca = Issuer(tmp_path, "ca.server", "Provider")
    server_cert, server_key, _ = server_ca.issue("localhost", server=True)
    topics = {"snapshots": f"test.snapshots.{unique}", "usage": f"test.usage.{unique}",
              "predictions": f"test.predictions.{unique}"}
    publish(bootstrap, topics["snapshots"],
            [snapshot_record("phishing-logreg", 1, train(models, "phishing-logreg", INFERENCE_ROWS[:300]))])
    settings = InferenceSettings(
        kafka_bootstrap=bootstrap, inference_port=0, inference_host="localhost", inference_models_file=models,
        inference_snapshot_topic=topics["snapshots"], inference_predictions_topic=topics["predictions"],
        inference_usage_topic=topics["usage"], inference_mode="paid", inference_price_per_row=2,
        inference_tls_cert=server_cert, inference_tls_key=server_key,
        inference_client_cas={"Org1MSP": next((ORG1 / "msp" / "cacerts").glob("*.pem"))})
    return settings, server_ca


def user1_client(port: int, server_ca: Issuer) -> triton.InferenceServerClient:
    msp = ORG1 / "users" / "User1@org1.streamledger.local" / "msp"
    return triton.InferenceServerClient(f"localhost:{port}", ssl=True, root_certificates=str(server_ca.cert_file),
                                        private_key=str(next((msp / "keystore").iterdir())),
                                        certificate_chain=str(next((msp / "signcerts").glob("*.pem"))))


def wait_ready(triton_client, model_id: str = "phishing-logreg") -> None:
    deadline = time.monotonic() + 30
    while not triton_client.is_model_ready(model_id):
        assert time.monotonic() < deadline, f"paid server never served {model_id}"
        time.sleep(0.05)


def refused(call, code: str, fragment: str) -> None:
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert caught.value.status() == f"StatusCode.{code}", caught.value
    assert fragment in caught.value.message(), caught.value.message()


def test_paid_mode_started_by_serve_charges_real_ledger_holds(paid_settings, suffix):
    settings, server_ca = paid_settings

    async def holds() -> tuple[str, str]:
        async with client("Admin") as admin, client("User1") as user1:
            ours, theirs = f"paid-{suffix}", f"paid-other-{suffix}"
            await frozen_hold(admin, user1, ours, 30)  # provider: Admin, the server's identity
            await frozen_hold(admin, user1, theirs, 30, provider=f"another-provider-{suffix}")
            return ours, theirs
    ours, theirs = asyncio.run(holds())

    with ServerThread.of(settings, ledger=LedgerSettings()) as server:
        user1 = user1_client(server.port, server_ca)
        wait_ready(user1)
        assert infer(user1, 10, ours).as_numpy("label").shape == (10,)  # 10 rows x 2 = 20 of 30
        refused(lambda: infer(user1, 6, ours), "RESOURCE_EXHAUSTED", "10 credit left")
        assert infer(user1, 5, ours).as_numpy("label").shape == (5,)
        refused(lambda: infer(user1, 1, theirs), "PERMISSION_DENIED", "pays provider")
        refused(lambda: infer(user1, 1, f"no-such-hold-{suffix}"), "PERMISSION_DENIED", "does not exist")
        refused(lambda: infer(user1, 1, "bad id!"), "INVALID_ARGUMENT", "refused by the ledger")
        user1.close()


def test_paid_mode_answers_unavailable_while_the_ledger_cannot_be_read(paid_settings, suffix):
    settings, server_ca = paid_settings
    dead = LedgerSettings(fabric_peer_endpoint=f"127.0.0.1:{free_port()}")

    async def main(stop: asyncio.Event, started: Callable[[int], None]) -> None:
        async with LedgerClient.connect(dead, retry=RetryPolicy(attempts=2, initial_seconds=0.05)) as ledger:
            await serve_until(inference_app.Inference(settings, hold_source=LedgerHoldSource(ledger)), stop, started)

    with ServerThread(main) as server:
        user1 = user1_client(server.port, server_ca)
        wait_ready(user1)
        refused(lambda: infer(user1, 1, f"paid-{suffix}"), "UNAVAILABLE", "ledger cannot be read")
        user1.close()


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
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(run_until(learning_app.Learning(settings, LedgerSettings()), self.stop))

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)


async def test_the_learner_registers_snapshots_and_resumes_only_registered_ones(network, bootstrap, ledger_names,
                                                                                admin):
    names, model_id = ledger_names, ledger_names["model_id"]
    registry = LedgerModelRegistry(admin)
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
    assert final["events_seen"] == 500 and final["version"] > forged["version"]  # supersedes the forgery
    assert await registry.is_registered(model_id, final["version"], final["sha256"])
