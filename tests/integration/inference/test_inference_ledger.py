"""Paid inference on the real local Fabric network: holds frozen by Org2 clients, read and reserved
by the server as Org1's `inference` identity (a provider acting for Org1's `provider` account),
paid by the clients' signed receipts. No fakes: Kafka, Fabric, mutual TLS and the Triton client
are the real ones.

- an honest client paying by receipts is served, only within what the server reserved;
- a client that stops signing is served at most W more units, then RESOURCE_EXHAUSTED naming
  the receipt; a receipt signed by another identity, with an older sequence, or for another hold
  is refused;
- a restarted server reserves only what the hold has left: it never serves the hold again from
  the full amount;
- the README's `streamledger.client` example pays `streamledger serve inference` (a subprocess,
  paid mode) end to end, and the contract takes the receipt it signed.

The ledger keeps its state between runs, so every hold has a fresh nonce.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as triton
from aiokafka import AIOKafkaConsumer
from tritonclient.utils import InferenceServerException

from services.inference import app as inference_app
from services.inference.ledger_holds import LedgerHoldSource
from services.inference.settings import InferenceSettings
from streamledger import kafka
from streamledger.core.receipts import Receipt, sign_receipt
from streamledger.fabric import RetryPolicy
from streamledger.fabric.identity import load_msp
from streamledger.ledger import LedgerClient, MissingRole
from streamledger.settings import LedgerSettings, local_org_dir
from tests.integration.conftest import identity
from tests.integration.pipeline.conftest import account_of, acts_for, made_provider
from tests.integration.test_ledger_seams import free_port, frozen_hold

from .support import (
    MODELS,
    PHISHING,
    ServerThread,
    codec,
    publish,
    registered,
    serve_until,
    snapshot_record,
    train,
)
from .test_inference_paid import Issuer, infer

pytestmark = [pytest.mark.integration, pytest.mark.fabric, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[3]
ORG2 = local_org_dir("Org2MSP")
OTHER_PROVIDER = "User7"
"""Org1's user made a provider acting for itself: the provider the server does not act for."""


def msp_of(user: str) -> Path:
    return ORG2 / "users" / f"{user}@{ORG2.name}" / "msp"


class Client:
    """An Org2 user calling the paid server with tritonclient: its enrollment certificate is its TLS
    identity, its enrollment key signs its receipts."""

    def __init__(self, user: str, port: int, server_ca: Issuer) -> None:
        msp = msp_of(user)
        self.signer = load_msp(msp, "Org2MSP")[1]
        self.triton = triton.InferenceServerClient(
            f"localhost:{port}", ssl=True, root_certificates=str(server_ca.cert_file),
            private_key=str(next((msp / "keystore").iterdir())),
            certificate_chain=str(next((msp / "signcerts").glob("*.pem"))))
        deadline = time.monotonic() + 30
        while not self.triton.is_model_ready("phishing-logreg"):
            assert time.monotonic() < deadline, "paid server never served phishing-logreg"
            time.sleep(0.05)

    def receipt(self, hold: str, units: int, sequence: int) -> str:
        return sign_receipt(self.signer.sign, hold, units, sequence).header

    def infer(self, rows: int, hold: str | None, receipt: str | None = None) -> int:
        """Rows answered."""
        return infer(self.triton, rows, hold, receipt).as_numpy("label").shape[0]

    def close(self) -> None:
        self.triton.close()


def refused(call: Callable[[], object], code: str, fragment: str) -> str:
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert caught.value.status() == f"StatusCode.{code}", caught.value
    assert fragment in caught.value.message(), caught.value.message()
    return caught.value.message()


@pytest.fixture
def nonce() -> str:
    return uuid.uuid4().hex[:16]


@pytest.fixture
def paid_settings(network, stack, bootstrap, unique, tmp_path) -> tuple[InferenceSettings, Issuer, dict[str, str]]:
    """Paid-mode settings on fresh topics; the client CA is Org2's Fabric CA, so an Org2 user's own
    enrollment certificate is the TLS client identity the hold names."""
    models = tmp_path / "models.toml"
    models.write_text(MODELS)
    server_ca = Issuer(tmp_path, "ca.server", "Provider")
    server_cert, server_key, _ = server_ca.issue("localhost", server=True)
    topics = {"snapshots": f"test.snapshots.{unique}", "usage": f"test.usage.{unique}",
              "predictions": f"test.predictions.{unique}"}
    # Paid mode serves only what the ledger vouches for: the snapshot is registered as `registry` does.
    publish(bootstrap, topics["snapshots"],
            [registered(snapshot_record("phishing-logreg", 1, train(models, "phishing-logreg", PHISHING[:300])))])
    settings = InferenceSettings(
        kafka_bootstrap=bootstrap, inference_port=0, inference_host="localhost", inference_models_file=models,
        inference_snapshot_topic=topics["snapshots"], inference_predictions_topic=topics["predictions"],
        inference_usage_topic=topics["usage"], inference_mode="paid",
        inference_tls_cert=server_cert, inference_tls_key=server_key,
        inference_client_cas={"Org2MSP": next((ORG2 / "msp" / "cacerts").glob("*.pem"))})
    return settings, server_ca, topics


def holds(*terms: tuple[str, str, int, int], provider_user: str | None = None) -> list[str]:
    """Holds frozen by Org2 users (user, nonce, amount, price) for the account `inference` acts for
    (or for Org1's `provider_user`, made a provider of its own); their ids."""
    async def freeze() -> list[str]:
        async with (LedgerClient.connect(identity("Admin")) as admin,
                    LedgerClient.connect(identity("inference")) as server):
            provider = await (made_provider(admin, provider_user) if provider_user else acts_for(server))
            ids = []
            for user, nonce, amount, price in terms:
                async with LedgerClient.connect(identity(user, "Org2")) as client:
                    ids.append((await frozen_hold(admin, client, nonce, amount, provider, price=price))[0])
            return ids
    return asyncio.run(freeze())


def ledger_hold(hold_id: str) -> dict:
    async def read() -> dict:
        async with LedgerClient.connect(identity("inference")) as server:
            return await server.get_hold(hold_id)
    return asyncio.run(read())


def test_an_honest_client_paying_by_receipts_is_served_within_what_the_server_reserved(paid_settings, nonce):
    settings, server_ca, _ = paid_settings
    (ours,) = holds(("User5", f"paid-{nonce}", 30, 2))
    (theirs,) = holds(("User5", f"paid-other-{nonce}", 30, 2), provider_user=OTHER_PROVIDER)
    with ServerThread.of(settings, ledger=LedgerSettings()) as server:  # as `inference`, its own identity
        user5 = Client("User5", server.port, server_ca)
        assert user5.infer(10, ours) == 10  # 10 rows x 2 = 20 of 30: the server reserved all 30 first
        message = refused(lambda: user5.infer(6, ours, user5.receipt(ours, 10, 1)), "RESOURCE_EXHAUSTED",
                          "has 0 credit left to reserve")
        assert "this request needs 2 more: the client freezes a new hold" in message
        assert user5.infer(5, ours, user5.receipt(ours, 10, 1)) == 5
        refused(lambda: user5.infer(1, theirs), "PERMISSION_DENIED", "pays another provider")
        refused(lambda: user5.infer(1, f"no-such-hold-{nonce}"), "PERMISSION_DENIED", "does not exist")
        refused(lambda: user5.infer(1, "bad id!"), "INVALID_ARGUMENT", "refused by the ledger")
        user5.close()
    hold = ledger_hold(ours)
    assert (hold["authorized"], hold["price_per_unit"]) == (30, 2), "reserved on the ledger, at the hold's price"


def test_a_client_that_stops_signing_gets_w_more_units_and_receipts_not_its_own_are_refused(paid_settings, nonce):
    settings, server_ca, topics = paid_settings
    # Every receipt checked on its request's path, so that the receipts in the usage records are exact.
    settings = settings.model_copy(update={"inference_credit_window_units": 10, "inference_receipt_check_seconds": 0})
    hold, other = holds(("User5", f"w-{nonce}", 1_000, 1), ("User5", f"w-other-{nonce}", 1_000, 1))
    with ServerThread.of(settings, ledger=LedgerSettings()) as server:
        user5, user6 = Client("User5", server.port, server_ca), Client("User6", server.port, server_ca)
        received, sequence, header = 0, 0, None
        for _ in range(3):  # honest: each request carries the receipt for all it received
            received += user5.infer(4, hold, header)
            sequence += 1
            header = user5.receipt(hold, received, sequence)
        # It stops signing: its last receipt covers 12 units; the server serves at most W = 10 more.
        more = 0
        with pytest.raises(InferenceServerException) as caught:
            while more <= 10:
                more += user5.infer(3, hold, header)
        assert more == 9 and caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "the latest receipt covers 12 (sequence 3), credit window 10 units" in caught.value.message()
        assert "send a newer receipt in the 'streamledger-receipt' request metadata" in caught.value.message()

        refused(lambda: user5.infer(1, hold, user6.receipt(hold, 21, 4)), "PERMISSION_DENIED",
                "receipt sequence 4 is not signed by the certificate of client 'Org2MSP::CN=User5@")
        refused(lambda: user5.infer(3, hold, user5.receipt(hold, 21, 2)), "INVALID_ARGUMENT",  # needed: 24 > 22
                "receipt sequence 2 is not newer than the one accepted, sequence 3")
        refused(lambda: user5.infer(1, hold, user5.receipt(other, 21, 4)), "INVALID_ARGUMENT",
                f"is for hold {other!r}; the request is charged to hold {hold!r}")
        assert user5.infer(3, hold, user5.receipt(hold, 21, 4)) == 3  # signing again: served again
        for c in (user5, user6):
            c.close()
    usage = asyncio.run(read_usage(settings.kafka_bootstrap, topics["usage"], 7))
    assert sorted((r["units"], r["receipt_units"], r["receipt_sequence"]) for r in usage) == [
        (3, 12, 3), (3, 12, 3), (3, 12, 3), (3, 21, 4), (4, 0, 0), (4, 4, 1), (4, 8, 2)]


def test_a_restarted_server_reserves_only_what_the_hold_has_left(paid_settings, nonce):
    settings, server_ca, _ = paid_settings
    settings = settings.model_copy(update={"inference_reserve_units": 20})
    (hold,) = holds(("User5", f"restart-{nonce}", 30, 1))
    with ServerThread.of(settings, ledger=LedgerSettings()) as first:
        user5 = Client("User5", first.port, server_ca)
        assert user5.infer(5, hold) == 5
        user5.close()
    assert ledger_hold(hold)["authorized"] == 20

    with ServerThread.of(settings, ledger=LedgerSettings()) as second:  # a restart: nothing of its own reserved
        user5 = Client("User5", second.port, server_ca)
        served = 0
        with pytest.raises(InferenceServerException) as caught:
            while served <= 30:
                served += user5.infer(5, hold, user5.receipt(hold, 5 + served, 1 + served // 5))
        user5.close()
    assert served == 10, "only the 10 the hold had left, not the 30 it was frozen with"
    assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "has 0 credit left to reserve (amount 30, reserved by the provider's servers 30, by this server 10" \
        in caught.value.message()
    assert ledger_hold(hold)["authorized"] == 30


def test_paid_mode_answers_unavailable_while_the_ledger_cannot_be_read(paid_settings, nonce):
    settings, server_ca, _ = paid_settings
    dead = identity("inference", fabric_peer_endpoint=f"127.0.0.1:{free_port()}")

    async def main(stop: asyncio.Event, started: Callable[[int], None]) -> None:
        async with LedgerClient.connect(dead, retry=RetryPolicy(attempts=2, initial_seconds=0.05)) as ledger:
            await serve_until(inference_app.Inference(settings, hold_source=LedgerHoldSource(ledger)), stop, started)

    with ServerThread(main) as server:
        user5 = Client("User5", server.port, server_ca)
        refused(lambda: user5.infer(1, f"paid-{nonce}"), "UNAVAILABLE", "cannot be reached right now to read hold")
        user5.close()


async def test_paid_mode_as_an_identity_without_the_provider_role_cannot_start(paid_settings):
    """Org2's User1 is a client: the server refuses to start, naming the identity and the role."""
    settings, _, _ = paid_settings
    with pytest.raises(MissingRole, match=r"ledger identity 'User1' \(Org2MSP::CN=User1@org2\.streamledger\.local.*\) "
                                          r"does not hold the provider role \(it holds: client\)"):
        await inference_app.Inference(settings, identity("User1", "Org2")).start()


# -- the README's example, against `streamledger serve inference` --

def readme_example() -> str:
    """The indented code block of README.md that uses `PaidInferenceClient`, dedented."""
    lines = (REPO / "README.md").read_text().splitlines()
    example = "from streamledger.client import PaidInferenceClient"
    start = next(i for i, line in enumerate(lines) if line.strip() == example)
    indent = lines[start][:len(lines[start]) - len(lines[start].lstrip())]
    while start > 0 and lines[start - 1].startswith(indent):
        start -= 1
    end = start
    while end < len(lines) and (lines[end].startswith(indent) or not lines[end].strip()):
        end += 1
    return "\n".join(line[len(indent):] for line in lines[start:end])


@contextlib.contextmanager
def served_by_the_command(settings: InferenceSettings, tmp_path: Path) -> Iterator[int]:
    """`streamledger serve inference` in paid mode, as its own ledger identity (`inference`); its port, once
    it serves the snapshot (the ledger vouched for it)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLEDGER_")}
    env.update(kafka.child_environment(settings))
    env.update({
        "STREAMLEDGER_INFERENCE_MODE": "paid",
        "STREAMLEDGER_INFERENCE_HOST": "localhost", "STREAMLEDGER_INFERENCE_PORT": str(port),
        "STREAMLEDGER_INFERENCE_MODELS_FILE": str(settings.inference_models_file),
        "STREAMLEDGER_INFERENCE_SNAPSHOT_TOPIC": settings.inference_snapshot_topic,
        "STREAMLEDGER_INFERENCE_PREDICTIONS_TOPIC": settings.inference_predictions_topic,
        "STREAMLEDGER_INFERENCE_USAGE_TOPIC": settings.inference_usage_topic,
        "STREAMLEDGER_INFERENCE_TLS_CERT": str(settings.inference_tls_cert),
        "STREAMLEDGER_INFERENCE_TLS_KEY": str(settings.inference_tls_key),
        "STREAMLEDGER_INFERENCE_CLIENT_CAS": json.dumps({k: str(v) for k, v in settings.inference_client_cas.items()}),
    })
    log = tmp_path / "inference.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([str(Path(sys.executable).parent / "streamledger"), "serve", "inference"],
                                   env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not all(event in log.read_text(errors="replace") for event in ("inference_started", "model_loaded")):
            assert process.poll() is None, f"streamledger serve inference exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"streamledger serve inference never started:\n{log.read_text()}"
            time.sleep(0.1)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log.read_text()


def test_the_readme_example_pays_streamledger_serve_inference_by_receipts(paid_settings, tmp_path):
    settings, server_ca, topics = paid_settings
    example = readme_example()
    assert "PaidInferenceClient(" in example and len(example.strip().splitlines()) <= 14

    async def credit_user1() -> str:
        async with (LedgerClient.connect(identity("Admin")) as admin,
                    LedgerClient.connect(identity("User1", "Org2")) as user1):
            await admin.mint(me := await account_of(user1), 100)
            return me
    user1 = asyncio.run(credit_user1())

    with served_by_the_command(settings, tmp_path) as port:
        code = example.replace('"localhost:8001"', f'"localhost:{port}"').replace(
            'server_ca="server-ca.pem"', f'server_ca="{server_ca.cert_file}"')
        printed, namespace = io.StringIO(), {}
        with contextlib.redirect_stdout(printed):
            exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README's example
        client = namespace["client"]
        for _ in range(3):
            assert client.infer("phishing-logreg", namespace["inputs"]).as_numpy("label").shape == (1,)
        client.close()
    assert re.match(r"\[b'(True|False)'\] Receipt\(hold_id='[0-9a-f]{32}', units=1, sequence=1", printed.getvalue())
    receipt = client.receipt  # signed now for the 3 rows received since the one printed
    assert (receipt.units, receipt.sequence) == (4, 2)

    async def on_the_ledger() -> dict:
        async with LedgerClient.connect(identity("inference")) as server:
            await server.record_receipt(receipt)  # the contract checks the client's signature itself
            return await server.get_hold(receipt.hold_id)
    hold = asyncio.run(on_the_ledger())
    assert (hold["client"], hold["receipt"]["units"], hold["receipt"]["sequence"]) == (user1, 4, 2)
    assert hold["authorized"] >= 4 * hold["price_per_unit"]
    usage = asyncio.run(read_usage(settings.kafka_bootstrap, topics["usage"], 4))
    assert {r["hold_id"] for r in usage} == {receipt.hold_id} and sum(r["units"] for r in usage) == 4
    carried = sorted((r["receipt_sequence"], r["receipt_units"], r["receipt_signature"]) for r in usage)
    assert carried[0][:2] == (0, 0), "the first request had no receipt yet"
    for sequence, units, signature in carried:  # receipts checked in the background lag, never lead
        assert sequence == units <= 3
        if sequence:
            Receipt(receipt.hold_id, units, sequence, signature).verify(hold["client_cert"])


async def read_usage(bootstrap: str, topic: str, count: int) -> list[dict]:
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
