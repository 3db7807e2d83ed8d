"""Snapshots load only what the ledger vouches for (issue 22, item 1), without servers: the
ledger's model registry is a fake of our own `ModelReader` interface.

- the verdict: registered with exactly the sha256, by the registrant; otherwise a reason;
- `SnapshotVouching`: a registration not yet committed is looked up again for a bounded time,
  any other refusal is final at once, a ledger error refuses as `ledger_unreachable`;
- inference: an unvouched snapshot never reaches the unpickler, a vouched one is served; with no
  ledger it says so (log and gauge);
- learning: at restart only vouched snapshots are resumed; a snapshot is registered before it is
  published, and a registered version whose publish failed is not used again.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError
from river import datasets

from services.inference import app as inference_app
from services.inference import snapshot_feed
from services.inference.models import ModelShelf
from services.inference.settings import InferenceSettings
from services.learning import app as learning_app
from services.learning import snapshot_topic
from services.learning.learners import LearnerSet
from services.learning.prequential import OnlineModel
from services.learning.publisher import Publisher
from services.learning.settings import LearningSettings
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.core.models import parse_declarations
from streamledger.core.snapshots import FORMAT, SnapshotNotVouched, ledger_verdict, seal
from streamledger.fabric.errors import EvaluateError
from streamledger.settings import LedgerSettings
from streamledger.snapshot_vouching import SnapshotVouching, local_registrant, wait_for

REGISTRANT = "Org1MSP::CN=registry@org1.streamledger.local,OU=client,L=San Francisco,ST=California,C=US"
OTHER_OPERATOR = "Org1MSP::CN=anchoring@org1.streamledger.local,OU=client,L=San Francisco,ST=California,C=US"
SHA = "ab" * 32

DECLARATIONS = parse_declarations({"model": [
    {"id": "m", "task": "binary", "metrics": ["Accuracy"], "source": "phishing",
     "pipeline": [{"class": "preprocessing.StandardScaler"}, {"class": "linear_model.LogisticRegression"}]},
]})


class FakeRegistry:
    """The ledger's model registry as `GetModel` answers it; `appears_after` lookups of a version
    before its registration is seen (a peer that had not committed it yet)."""

    def __init__(self, appears_after: int = 0) -> None:
        self.models: dict[tuple[str, int], dict] = {}
        self.lookups: list[tuple[str, int]] = []
        self.appears_after = appears_after
        self.error: Exception | None = None

    def register(self, model_id: str, version: int, sha256: str, submitter: str = REGISTRANT) -> None:
        self.models[model_id, version] = {"model_id": model_id, "version": version, "sha256": sha256,
                                          "submitter": submitter, "tx_id": "t", "registered_at": "now"}

    async def get_model(self, model_id: str, version: int) -> dict | None:
        self.lookups.append((model_id, version))
        if self.error is not None:
            raise self.error
        if version == 0:
            versions = [v for (m, v) in self.models if m == model_id]
            return self.models[model_id, max(versions)] if versions else None
        if len(self.lookups) <= self.appears_after:
            return None
        return self.models.get((model_id, version))


# -- the verdict -------------------------------------------------------------------------------

def test_the_verdict_needs_exactly_the_hash_registered_by_the_registrant():
    record = {"model_id": "m", "version": 3, "sha256": SHA, "submitter": REGISTRANT}
    assert ledger_verdict(record, "m", 3, SHA, REGISTRANT) is None
    assert ledger_verdict(record, "m", 3, SHA.upper(), REGISTRANT) is None  # hex case is not the hash
    cases = {
        "not_registered": (None, SHA, REGISTRANT),
        "registered_with_another_hash": (record, "cd" * 32, REGISTRANT),
        "registered_by_another_account": (dict(record, submitter=OTHER_OPERATOR), SHA, REGISTRANT),
    }
    for reason, (registered, sha256, registrant) in cases.items():
        verdict = ledger_verdict(registered, "m", 3, sha256, registrant)
        assert isinstance(verdict, SnapshotNotVouched) and verdict.reason == reason
        assert "model 'm' version 3" in str(verdict)


# -- SnapshotVouching --------------------------------------------------------------------------

async def test_a_registered_snapshot_is_vouched_for_in_one_lookup():
    registry = FakeRegistry()
    registry.register("m", 1, SHA)
    await SnapshotVouching(registry, REGISTRANT, wait_for(5.0)).check("m", 1, SHA)
    assert registry.lookups == [("m", 1)]


async def test_a_registration_not_yet_committed_is_waited_for():
    registry = FakeRegistry(appears_after=3)
    registry.register("m", 1, SHA)
    await SnapshotVouching(registry, REGISTRANT, wait_for(5.0)).check("m", 1, SHA)
    assert registry.lookups == [("m", 1)] * 4


async def test_a_snapshot_never_registered_is_refused_after_the_bounded_wait():
    registry = FakeRegistry()
    started = time.monotonic()
    with pytest.raises(SnapshotNotVouched, match="not registered on the ledger") as refused:
        await SnapshotVouching(registry, REGISTRANT, wait_for(0.5)).check("m", 1, SHA)
    assert refused.value.reason == "not_registered"
    assert 0.5 <= time.monotonic() - started < 3.0 and len(registry.lookups) > 1


@pytest.mark.parametrize("submitter, sha256, reason", [
    (REGISTRANT, "cd" * 32, "registered_with_another_hash"),
    (OTHER_OPERATOR, SHA, "registered_by_another_account"),
])
async def test_a_snapshot_registered_otherwise_is_refused_at_once(submitter, sha256, reason):
    registry = FakeRegistry()
    registry.register("m", 1, sha256, submitter)
    with pytest.raises(SnapshotNotVouched) as refused:
        await SnapshotVouching(registry, REGISTRANT, wait_for(30.0)).check("m", 1, SHA)
    assert refused.value.reason == reason and registry.lookups == [("m", 1)]


async def test_a_ledger_that_cannot_be_read_refuses_the_snapshot():
    registry = FakeRegistry()
    registry.error = EvaluateError("peer unavailable", code=None)
    with pytest.raises(SnapshotNotVouched, match="the ledger could not be read") as refused:
        await SnapshotVouching(registry, REGISTRANT, wait_for(30.0)).check("m", 1, SHA)
    assert refused.value.reason == "ledger_unreachable" and len(registry.lookups) == 1  # the client retried already


def test_vouching_needs_a_registrant_and_the_wait_is_bounded_near_what_was_asked():
    with pytest.raises(ValueError, match="registrant"):
        SnapshotVouching(FakeRegistry(), "")
    assert wait_for(0).attempts == 1
    for seconds in (0.5, 10.0, 60.0):
        policy = wait_for(seconds)
        total = sum(policy.delay(n) for n in range(policy.attempts - 1))
        assert seconds <= total <= seconds + 1.0


def test_the_local_registrant_is_read_from_the_registry_identitys_certificate_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMLEDGER_STACK_HOME", str(tmp_path))
    org = tmp_path / "data" / "fabric" / "crypto" / "peerOrganizations" / "org1.streamledger.local"
    signcerts = org / "users" / "registry@org1.streamledger.local" / "msp" / "signcerts"
    signcerts.mkdir(parents=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                      x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "California"),
                      x509.NameAttribute(NameOID.LOCALITY_NAME, "San Francisco"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "client"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "registry@org1.streamledger.local")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (signcerts / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    # No keystore: the registrant's private key is never needed (nor read) by a reader.
    assert local_registrant(LedgerSettings(fabric_user="inference")) == REGISTRANT
    with pytest.raises(FileNotFoundError, match="no certificate of the local identity 'nobody'"):
        local_registrant(LedgerSettings(), "nobody")


# -- inference ---------------------------------------------------------------------------------

def snapshot(version: int = 1, events: int = 50) -> dict:
    online = OnlineModel(DECLARATIONS[0])
    for x, y in list(datasets.Phishing())[:events]:
        online.process(dict(x), y)
    sealed = seal(online.state())
    return {"model_id": "m", "version": version, "sha256": sealed.sha256, "format": FORMAT, "offsets": [],
            "events_seen": online.learned, "metrics": {}, "model": sealed.data, "created": 0}


def refused_count(counter, model_id: str, reason: str) -> float:
    return counter.labels(model_id, reason)._value.get()


async def test_inference_never_unpickles_a_snapshot_the_ledger_does_not_vouch_for(monkeypatch):
    unsealed = []
    monkeypatch.setattr("services.inference.models.unseal", lambda *args: unsealed.append(args) or {})
    shelf, record = ModelShelf(DECLARATIONS), snapshot()
    assert record["sha256"] == hashlib.sha256(record["model"]).hexdigest()  # self-consistent, not registered
    before = refused_count(snapshot_feed.REFUSED, "m", "not_registered")
    vouching = SnapshotVouching(FakeRegistry(), REGISTRANT)
    assert not await snapshot_feed.vouched_for(vouching, shelf, record)
    assert unsealed == [] and not shelf.ready("m")
    assert refused_count(snapshot_feed.REFUSED, "m", "not_registered") == before + 1


async def test_inference_serves_a_vouched_snapshot_and_asks_nothing_without_a_ledger():
    registry, record = FakeRegistry(), snapshot(version=4)
    registry.register("m", 4, record["sha256"])
    shelf = ModelShelf(DECLARATIONS)
    assert await snapshot_feed.vouched_for(SnapshotVouching(registry, REGISTRANT), shelf, record)
    await snapshot_feed.offer(shelf, record)
    assert shelf.get("m").version == 4
    assert await snapshot_feed.vouched_for(None, shelf, dict(record, version=5))  # free mode: unverified
    assert await snapshot_feed.vouched_for(SnapshotVouching(registry, REGISTRANT), shelf, dict(record, model_id="x"))
    assert registry.lookups == [("m", 4)]  # a model not declared here is not asked about


async def test_inference_waits_for_the_registration_of_a_recent_snapshot_only():
    registry, record = FakeRegistry(appears_after=2), snapshot()
    registry.register("m", 1, record["sha256"])
    vouching, shelf = SnapshotVouching(registry, REGISTRANT, wait_for(5.0)), ModelShelf(DECLARATIONS)
    assert not await snapshot_feed.vouched_for(vouching, shelf, record)  # created long ago: refused at once
    assert registry.lookups == [("m", 1)]
    now = datetime.datetime.now(datetime.UTC)  # as the Avro codec decodes `created`
    assert await snapshot_feed.vouched_for(vouching, shelf, dict(record, created=now))
    assert registry.lookups == [("m", 1)] * 3


def test_snapshots_are_vouched_for_in_paid_mode_by_default_and_on_request_in_free_mode():
    free = {"kafka_bootstrap": "127.0.0.1:1", "inference_mode": "free"}
    assert not InferenceSettings(**free).snapshots_vouched
    assert InferenceSettings(**free, inference_snapshot_ledger=True).snapshots_vouched
    paid = {"inference_mode": "paid", "inference_tls_cert": "c.pem", "inference_tls_key": "k.pem",
            "inference_client_cas": {"Org2MSP": "ca.pem"}}
    assert InferenceSettings(**paid).snapshots_vouched
    assert not InferenceSettings(**paid, inference_snapshot_ledger=False).snapshots_vouched
    with pytest.raises(ValidationError, match="inference_snapshot_registration_wait_seconds"):
        InferenceSettings(**free, inference_snapshot_registration_wait_seconds=-1)


async def test_free_inference_without_a_ledger_says_loudly_that_snapshots_are_unverified(caplog):
    service = inference_app.Inference(InferenceSettings(kafka_bootstrap="127.0.0.1:1", inference_mode="free"))
    with caplog.at_level(logging.WARNING, logger="streamledger.inference"):
        assert await service._vouching() is None
    assert [r.getMessage() for r in caplog.records] == ["snapshots_unverified"]
    assert "would be served" in caplog.records[0].risk
    assert inference_app.UNVERIFIED._value.get() == 1


async def test_inference_with_a_ledger_and_no_local_registrant_cannot_start(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMLEDGER_STACK_HOME", str(tmp_path))
    service = inference_app.Inference(InferenceSettings(kafka_bootstrap="127.0.0.1:1", inference_mode="free",
                                                        inference_snapshot_ledger=True))
    with pytest.raises(inference_app.StartError, match="STREAMLEDGER_INFERENCE_SNAPSHOT_REGISTRANT"):
        await service._vouching()


# -- learning ----------------------------------------------------------------------------------

class VouchingRegistry(FakeRegistry):
    """The learning service's `ModelRegistry` over the fake ledger, registering as REGISTRANT."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    async def register(self, model_id: str, version: int, sha256: str) -> None:  # type: ignore[override]
        self.calls.append(f"register {model_id} v{version}")
        latest = max([v for (m, v) in self.models if m == model_id], default=0)
        assert version == latest + 1, "the contract registers only the next version"
        FakeRegistry.register(self, model_id, version, sha256)

    async def vouch(self, model_id: str, version: int, sha256: str) -> None:
        await SnapshotVouching(self, REGISTRANT).check(model_id, version, sha256)

    async def latest_version(self, model_id: str) -> int:
        model = await self.get_model(model_id, 0)
        return 0 if model is None else model["version"]


async def test_learning_resumes_only_from_a_snapshot_the_ledger_vouches_for(monkeypatch, caplog):
    honest, forged = snapshot(version=1, events=50), snapshot(version=2, events=80)
    registry = VouchingRegistry()
    await registry.register("m", 1, honest["sha256"])

    async def read_snapshots(*_args):
        return {"m": [honest, forged]}, []
    monkeypatch.setattr(snapshot_topic, "read_snapshots", read_snapshots)
    learners = LearnerSet(DECLARATIONS)
    before = refused_count(snapshot_topic.REFUSED, "m", "not_registered")
    with caplog.at_level(logging.INFO, logger="streamledger.learning"):
        await snapshot_topic.resume(learners, "127.0.0.1:1", "t", None, registry)
    refused = [(r.model_id, r.version, r.reason) for r in caplog.records if r.getMessage() == "snapshot_refused"]
    assert refused == [("m", 2, "not_registered")]
    assert learners.models["m"].online.learned == 50 and learners.models["m"].version == 1
    assert refused_count(snapshot_topic.REFUSED, "m", "not_registered") == before + 1


class FakeProducer:
    def __init__(self, calls: list[str], fail: bool = False) -> None:
        self.calls, self.fail = calls, fail

    async def flush(self) -> None:
        pass

    async def send(self, topic, key=None, value=None):
        from aiokafka.errors import KafkaTimeoutError
        self.calls.append(f"publish {key.decode()}")
        future = asyncio.get_running_loop().create_future()
        if self.fail:
            future.set_exception(KafkaTimeoutError())
        else:
            future.set_result(None)
        return future


def learning_settings() -> LearningSettings:
    return LearningSettings(kafka_bootstrap="127.0.0.1:1", learning_snapshot_every_seconds=0.0)


async def test_learning_registers_a_snapshot_before_it_publishes_it_and_never_reuses_a_registered_version(
        monkeypatch):
    from services.learning import publisher as publisher_module
    registry = VouchingRegistry()
    learners = LearnerSet(DECLARATIONS)
    tracked = learners.models["m"]
    tracked.online.process({"x": 1.0}, True)
    tracked.unsnapshotted = 1
    producer = FakeProducer(registry.calls, fail=True)
    monkeypatch.setattr(publisher_module.kafka, "commit", lambda *_: asyncio.sleep(0))
    publisher = Publisher(producer, None, AvroCodec(SchemaRegistry.from_dir()), learning_settings(), learners, registry)
    await publisher.write_snapshots([tracked])  # registered, then Kafka refuses it
    producer.fail = False
    tracked.online.process({"x": 2.0}, False)
    await publisher.write_snapshots([tracked])  # the next snapshot: the next version
    assert registry.calls == ["register m v1", "publish m", "register m v2", "publish m"]
    assert tracked.version == 2 and tracked.unsnapshotted == 0


async def test_learning_has_a_ledger_by_default_and_without_one_says_loudly_that_snapshots_are_unverified(caplog):
    assert LearningSettings().learning_ledger
    service = learning_app.Learning(LearningSettings(learning_ledger=False))
    with caplog.at_level(logging.WARNING, logger="streamledger.learning"):
        assert await service._registry() is None
    assert [r.getMessage() for r in caplog.records] == ["snapshots_unverified"]
    assert learning_app.UNVERIFIED._value.get() == 1
