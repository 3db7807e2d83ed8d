"""Paid mode on a real mutual-TLS gRPC server: identity from the peer certificate, matched
against the hold's client; served within the client's signed receipts plus the credit window and
the credit reserved; usage records (with the receipt accepted) on the real Kafka.

Holds come from a fake of our own `HoldSource` interface (reads and reservations), so that every
rule (another client's hold, an expired one, a settled one, an untrusted CA, a receipt of another
identity, hold or an older sequence) is set up in one test; everything else (TLS handshake,
certificate checks, receipt signatures, Kafka) is real. The same server on real ledger holds,
read and reserved on the local Fabric network, is tests/integration/test_ledger_seams.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from aiokafka import AIOKafkaConsumer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tritonclient.utils import InferenceServerException

from services.inference.authorization import Hold, NothingToReserve
from services.inference.settings import InferenceSettings
from streamledger import kafka
from streamledger.core.receipts import HOLD_METADATA, RECEIPT_METADATA, sign_receipt
from streamledger.fabric.identity import Signer

from .support import (  # noqa: F401
    PHISHING,
    ServerThread,
    codec,
    models_file,
    publish,
    snapshot_record,
    train,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
NAMES = sorted(PHISHING[0][0])


class Issuer:
    """A CA that signs certificates, written as PEM files under `folder`."""

    def __init__(self, folder: Path, name: str, org: str) -> None:
        self.folder, self.org = folder, org
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                             x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (self._builder(subject, subject, self.key.public_key())
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.cert_file = self._write(f"{name}.pem", self.cert.public_bytes(serialization.Encoding.PEM))

    def _builder(self, subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.timezone.utc)
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1)))

    def issue(self, common_name: str, server: bool = False) -> tuple[Path, Path, str]:
        """(cert file, key file, subject DN) of a new leaf certificate (its key signs receipts too)."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.org),
                             x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "client"),
                             x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = self._builder(subject, self.cert.subject, key.public_key())
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return (self._write(f"{common_name}.crt", cert.public_bytes(serialization.Encoding.PEM)),
                self._write(f"{common_name}.key", key_pem), subject.rfc4514_string())

    def _write(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        path.write_bytes(data)
        return path


class FakeHolds:
    """Our `HoldSource` interface over a dict, counting how often the ledger would be asked."""

    def __init__(self, holds: dict[str, Hold]) -> None:
        self.holds = holds
        self.reads = 0
        self.reserved: list[tuple[str, int]] = []

    async def hold(self, hold_id: str) -> Hold | None:
        self.reads += 1
        return self.holds.get(hold_id)

    async def reserve(self, hold_id: str, credit: int) -> Hold:
        hold = self.holds[hold_id]
        if credit > hold.remaining:
            raise NothingToReserve(f"EXCEEDS_HOLD: hold {hold_id!r} has {hold.remaining} left")
        self.holds[hold_id] = hold = dataclasses.replace(hold, authorized=hold.authorized + credit)
        self.reserved.append((hold_id, credit))
        return hold


class Person:
    """A client: its TLS certificate (the hold's `client_cert`), the key that signs its receipts."""

    def __init__(self, cert: Path, key: Path, subject: str) -> None:
        self.cert, self.key, self.subject = cert, key, subject
        self.signer = Signer(serialization.load_pem_private_key(key.read_bytes(), password=None))

    def receipt(self, hold: str, units: int, sequence: int) -> str:
        return sign_receipt(self.signer.sign, hold, units, sequence).header


WINDOW = 20


@pytest.fixture
def paid(stack, bootstrap, unique, models_file, tmp_path):  # noqa: F811
    org1 = Issuer(tmp_path, "ca.org1", "Org1")
    org2 = Issuer(tmp_path, "ca.org2", "Org2")
    rogue = Issuer(tmp_path, "ca.rogue", "Org1")  # claims Org1 but is not Org1's CA
    server_ca = Issuer(tmp_path, "ca.server", "Provider")
    server_cert, server_key, _ = server_ca.issue("localhost", server=True)
    people = {name: Person(*issuer.issue(name)) for name, issuer in
              [("alice", org1), ("bob", org1), ("carol", org2), ("mallory", rogue)]}
    identity = {name: f"{msp}::{people[name].subject}" for name, msp in
                [("alice", "Org1MSP"), ("bob", "Org1MSP"), ("carol", "Org2MSP")]}
    far = time.time() + 3600

    def hold(name: str, owner: str, amount: int, **changes) -> Hold:
        terms = dict(expires_at=far, amount=amount, price_per_unit=3, client_cert=people[owner].cert.read_text())
        return Hold(name, identity[owner], **{**terms, **changes})
    holds = FakeHolds({h.hold_id: h for h in [
        hold("hold-alice", "alice", 100),
        hold("hold-carol", "carol", 1_000),
        hold("hold-alice-2", "alice", 1_000),
        hold("hold-expired", "alice", 1_000, expires_at=time.time() - 1),
        hold("hold-closed", "alice", 1_000, live=False),
    ]})
    topics = {"snapshots": f"test.snapshots.{unique}", "usage": f"test.usage.{unique}",
              "predictions": f"test.predictions.{unique}"}
    publish(bootstrap, topics["snapshots"],
            [snapshot_record("phishing-logreg", 1, train(models_file, "phishing-logreg", PHISHING[:300]))])
    settings = InferenceSettings(
        kafka_bootstrap=bootstrap, inference_port=0, inference_host="localhost", inference_models_file=models_file,
        inference_snapshot_topic=topics["snapshots"], inference_predictions_topic=topics["predictions"],
        inference_usage_topic=topics["usage"], inference_mode="paid", inference_credit_window_units=WINDOW,
        inference_snapshot_ledger=False,  # no ledger here (holds are faked): snapshots unverified, said at start
        inference_receipt_check_seconds=0,  # every receipt checked on its request's path: the usage records' are exact
        inference_tls_cert=server_cert, inference_tls_key=server_key,
        inference_client_cas={"Org1MSP": org1.cert_file, "Org2MSP": org2.cert_file},
    )
    running = ServerThread.of(settings, holds).start()

    def client(name: str) -> triton.InferenceServerClient:
        person = people[name]
        return triton.InferenceServerClient(f"localhost:{running.port}", ssl=True,
                                            root_certificates=str(server_ca.cert_file),
                                            private_key=str(person.key), certificate_chain=str(person.cert))
    probe = client("alice")
    deadline = time.monotonic() + 30
    while not probe.is_model_ready("phishing-logreg"):  # the snapshot is loaded once the topic is read
        assert time.monotonic() < deadline, "paid server never served phishing-logreg"
        time.sleep(0.05)
    probe.close()
    yield client, holds, identity, topics, people
    running.stop()


def infer(client: triton.InferenceServerClient, rows: int, hold: str | None, receipt: str | None = None):
    tensors = []
    for name in NAMES:
        tensor = triton.InferInput(name, [rows], "FP64")
        tensor.set_data_from_numpy(np.array([x[name] for x, _ in PHISHING[:rows]], dtype=np.float64))
        tensors.append(tensor)
    headers = {HOLD_METADATA: hold} if hold else {}
    if receipt:
        headers[RECEIPT_METADATA] = receipt
    return client.infer("phishing-logreg", tensors, headers=headers or None,
                        request_id=f"{hold}-{rows}-{time.monotonic_ns()}")


def refused(call, code: str, fragment: str) -> None:
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert caught.value.status() == f"StatusCode.{code}", caught.value
    assert fragment in caught.value.message(), caught.value.message()


async def usage_records(bootstrap: str, topic: str, count: int) -> list[dict]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, **kafka.connection(), auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    records: list[dict] = []
    try:
        async with asyncio.timeout(30):
            while len(records) < count:
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    records += [codec.decode(m.value, reader="UsageRecord") for m in messages]
    finally:
        await consumer.stop()
    return records


def test_paid_mode_serves_only_the_holds_client_by_its_receipts_while_credit_lasts(paid, bootstrap):
    client, holds, identity, topics, people = paid
    alice, bob, carol = client("alice"), client("bob"), client("carol")

    served = [infer(alice, 10, "hold-alice", people["alice"].receipt("hold-alice", 10 * n, n) if n else None)
              for n in range(3)]  # 3 x 10 rows x price 3 = 90 of 100, each request with the receipt for the last
    assert all(r.as_numpy("probabilities").shape == (10, 2) for r in served)
    latest = people["alice"].receipt("hold-alice", 30, 3)
    refused(lambda: infer(alice, 4, "hold-alice", latest), "RESOURCE_EXHAUSTED", "has 0 credit left to reserve")
    assert infer(alice, 3, "hold-alice", latest).as_numpy("label").shape == (3,)  # 9 still fits
    assert holds.reads == 1  # one ledger read, then counted locally within the cache time
    assert holds.reserved == [("hold-alice", 100)], "one reservation, capped by the amount"

    refused(lambda: infer(bob, 1, "hold-alice"), "PERMISSION_DENIED", "belongs to another client")
    refused(lambda: infer(carol, 1, "hold-alice"), "PERMISSION_DENIED", "belongs to another client")
    refused(lambda: infer(alice, 1, None), "PERMISSION_DENIED", "no hold named")
    refused(lambda: infer(alice, 1, "hold-unknown"), "PERMISSION_DENIED", "does not exist")
    refused(lambda: infer(alice, 1, "hold-expired"), "PERMISSION_DENIED", "expired")
    refused(lambda: infer(alice, 1, "hold-closed"), "PERMISSION_DENIED", "settled or released")
    assert infer(carol, 2, "hold-carol").as_numpy("probabilities").shape == (2, 2)

    # A certificate from a CA the server does not trust never gets past the TLS handshake.
    refused(lambda: infer(client("mallory"), 1, "hold-alice"), "UNAVAILABLE", "")
    for c in (alice, bob, carol):
        c.close()

    records = asyncio.run(usage_records(bootstrap, topics["usage"], 5))
    assert len(records) == 5  # only served requests are metered
    assert sorted((r["hold_id"], r["units"], r["price"], r["receipt_units"], r["receipt_sequence"]) for r in records) \
        == sorted([("hold-alice", 10, 3, 0, 0), ("hold-alice", 10, 3, 10, 1), ("hold-alice", 10, 3, 20, 2),
                   ("hold-alice", 3, 3, 30, 3), ("hold-carol", 2, 3, 0, 0)])
    assert {r["client"] for r in records} == {identity["alice"], identity["carol"]}
    signed = next(r for r in records if r["receipt_sequence"] == 3)
    assert signed["receipt_signature"] == latest.rsplit(",", 1)[1]


def test_a_client_is_served_the_window_beyond_its_receipts_and_a_receipt_not_its_own_is_refused(paid):
    client, _, _, _, people = paid
    alice, carol = client("alice"), client("carol")
    hold, sign = "hold-alice-2", people["alice"].receipt
    assert infer(alice, 15, hold).as_numpy("label").shape == (15,)  # no receipt yet: within the window
    refused(lambda: infer(alice, 6, hold), "RESOURCE_EXHAUSTED", "no receipt yet, credit window 20 units")
    assert infer(alice, 10, hold, sign(hold, 15, 1)).as_numpy("label").shape == (10,)
    assert infer(alice, 10, hold, sign(hold, 25, 2)).as_numpy("label").shape == (10,)  # 35 served, 25 receipted
    refused(lambda: infer(alice, 11, hold, sign(hold, 25, 2)), "RESOURCE_EXHAUSTED",
            "the latest receipt covers 25 (sequence 2)")  # it stopped signing: 10 more at most

    refused(lambda: infer(alice, 1, hold, people["carol"].receipt(hold, 35, 3)), "PERMISSION_DENIED",
            "receipt sequence 3 is not signed by the certificate of client")
    refused(lambda: infer(alice, 11, hold, sign(hold, 35, 1)), "INVALID_ARGUMENT",  # needed: 46 > 25 + 20
            "receipt sequence 1 is not newer than the one accepted, sequence 2")
    refused(lambda: infer(alice, 1, hold, sign("hold-alice", 35, 3)), "INVALID_ARGUMENT",
            "is for hold 'hold-alice'; the request is charged to hold 'hold-alice-2'")
    refused(lambda: infer(alice, 1, hold, "hold-alice-2,35,3"), "INVALID_ARGUMENT", "a receipt is")
    assert infer(alice, 10, hold, sign(hold, 35, 3)).as_numpy("label").shape == (10,)  # signing again: served
    for c in (alice, carol):
        c.close()
