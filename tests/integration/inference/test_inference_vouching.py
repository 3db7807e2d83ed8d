"""Inference loads only the snapshots the ledger vouches for (issue 22), on the real Kafka and the
real local Fabric network, called by Triton's client:

- a snapshot whose record is self-consistent (its bytes hash to its sha256) but that is not
  registered on the ledger is refused, never unpickled; so is one registered by another operator
  than the model registrant (`registry`); a registered one is served;
- a snapshot seen on Kafka before its registration commits is not lost: it is served once the
  registration lands within the bounded wait;
- a pickle gadget with a valid self-hash is refused before it runs (no marker file): by the ledger
  check when a ledger is configured, by the unpickler in free mode without one.

The server runs in free mode (no mutual TLS needed here) with `inference_snapshot_ledger=True`, as
the demo runs it; paid mode checks the same way (tests/integration/inference/test_inference_ledger.py
publishes registered snapshots). Model ids carry a fresh suffix: the ledger remembers old ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pickle
import time
import uuid
from pathlib import Path

import pytest
import tritonclient.grpc as triton

from services.inference import snapshot_feed
from services.inference.settings import InferenceSettings
from streamledger.core.snapshots import FORMAT
from streamledger.ledger import LedgerClient
from tests.integration.conftest import identity

from .support import PHISHING, ServerThread, publish, snapshot_record, train

pytestmark = [pytest.mark.integration, pytest.mark.fabric, pytest.mark.timeout(180)]


class Touch:
    """Pickles as `os.system("touch <marker>")`: what an attacker writes into a snapshot."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def gadget_record(model_id: str, version: int, marker: Path) -> dict:
    data = pickle.dumps({"model": Touch(marker)}, protocol=5)
    return {"model_id": model_id, "version": version, "sha256": hashlib.sha256(data).hexdigest(), "format": FORMAT,
            "offsets": [], "events_seen": 1, "metrics": {}, "model": data, "created": 1_700_000_000_000}


@pytest.fixture
def ids() -> dict[str, str]:
    suffix = uuid.uuid4().hex[:10]
    return {"ours": f"vouched-{suffix}", "foreign": f"foreign-{suffix}"}


@pytest.fixture
def models(tmp_path, ids) -> Path:
    path = tmp_path / "models.toml"
    table = ('[[model]]\nid = "{id}"\ntask = "binary"\nsource = "phishing"\nmetrics = ["Accuracy"]\n'
             'pipeline = [ {{ class = "preprocessing.StandardScaler" }}, {{ class = "linear_model.LogisticRegression" }} ]\n')
    path.write_text("".join(table.format(id=model_id) for model_id in ids.values()))
    return path


def register(user: str, model_id: str, version: int, sha256: str) -> None:
    async def submit() -> None:
        async with LedgerClient.connect(identity(user)) as ledger:
            await ledger.register_model(model_id, version, sha256)
    asyncio.run(submit())


def refused(model_id: str, reason: str) -> float:
    return snapshot_feed.REFUSED.labels(model_id, reason)._value.get()


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def settings_for(bootstrap: str, unique: str, models: Path, **overrides) -> InferenceSettings:
    return InferenceSettings(
        kafka_bootstrap=bootstrap, inference_port=0, inference_models_file=models, inference_mode="free",
        inference_snapshot_topic=f"test.snapshots.{unique}", inference_predictions_topic=f"test.predictions.{unique}",
        **overrides)


def test_only_snapshots_registered_by_the_registrant_are_served(network, stack, bootstrap, unique, models, ids,
                                                                 tmp_path):
    ours, foreign, marker = ids["ours"], ids["foreign"], tmp_path / "ran"
    honest = snapshot_record(ours, 1, train(models, ours, PHISHING[:200]))
    forged = snapshot_record(ours, 2, train(models, ours, PHISHING[:60]))  # self-consistent, never registered
    theirs = snapshot_record(foreign, 1, train(models, foreign, PHISHING[:200]))
    register("registry", ours, 1, honest["sha256"])
    register("anchoring", foreign, 1, theirs["sha256"])  # an operator, but not the model registrant
    settings = settings_for(bootstrap, unique, models, inference_snapshot_ledger=True,
                            inference_snapshot_registration_wait_seconds=5.0)
    publish(bootstrap, settings.inference_snapshot_topic, [honest, forged, gadget_record(ours, 3, marker), theirs])
    before = {reason: refused(model, reason) for model, reason in
              [(ours, "not_registered"), (foreign, "registered_by_another_account")]}

    with ServerThread.of(settings) as server:
        client = triton.InferenceServerClient(server.url)
        wait_for(client.is_server_ready, "the snapshots at start handed over")
        assert client.is_model_ready(ours, "1")
        assert not client.is_model_ready(ours, "2") and not client.is_model_ready(ours, "3")
        assert not client.is_model_ready(foreign)
        assert refused(ours, "not_registered") == before["not_registered"] + 2  # the forgery and the gadget
        assert refused(foreign, "registered_by_another_account") == before["registered_by_another_account"] + 1
        assert not marker.exists()

        # Seen on Kafka before its registration commits: waited for, then served.
        later = dict(snapshot_record(ours, 2, train(models, ours, PHISHING[:400])), created=int(time.time() * 1000))
        publish(bootstrap, settings.inference_snapshot_topic, [later])
        register("registry", ours, 2, later["sha256"])
        wait_for(lambda: client.is_model_ready(ours, "2"), "the registered version 2", timeout=30)
        assert client.get_model_metadata(ours).versions == ["1", "2"]
        client.close()
    assert refused(ours, "not_registered") == before["not_registered"] + 2


def test_without_a_ledger_a_gadget_with_a_valid_hash_is_refused_by_the_unpickler_unrun(stack, bootstrap, unique,
                                                                                       models, ids, tmp_path):
    ours, marker = ids["ours"], tmp_path / "ran"
    settings = settings_for(bootstrap, unique, models)
    assert not settings.snapshots_vouched  # free mode, no ledger: unverified (and said so at start)
    publish(bootstrap, settings.inference_snapshot_topic,
            [gadget_record(ours, 1, marker), snapshot_record(ours, 2, train(models, ours, PHISHING[:100]))])
    before = refused(ours, "snapshot_forbidden_global")
    with ServerThread.of(settings) as server:
        client = triton.InferenceServerClient(server.url)
        wait_for(client.is_server_ready, "the snapshots at start handed over")
        assert client.is_model_ready(ours, "2") and not client.is_model_ready(ours, "1")
        client.close()
    assert refused(ours, "snapshot_forbidden_global") == before + 1
    assert not marker.exists()
