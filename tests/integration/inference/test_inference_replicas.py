"""Credit is conserved through 200 concurrent paid calls over 2 inference replicas, one of them
killed -9 partway (issue 21). Everything is real: the two-org Fabric network, Kafka, two
`streamledger serve inference` processes in paid mode (mutual TLS) and tritonclient.

The provider is issued for this run by Org1's CA and made a provider acting for itself, so its
balance holds only what happens here; the client is Org2's User4, which no other test uses. Both replicas act as that provider, on different ports, and serve the same hold; each
writes its usage to a topic of its own, so the test can tell what each served (the settlement
reads both, as it reads one topic when replicas share it).

The client is what a real client is: it sends up to `CONCURRENCY` calls at once, each with the
hold id and its latest receipt (`streamledger.client.ReceiptBook`), spreads them over the
replicas, signs a receipt for all rows received every 10 rows (the client's default), sends a
call that a replica refused for lack of a newer receipt again once it signed for every row
received or its receipt advanced, and sends a call that the killed replica
did not answer to the live one, under the same request id. One call is deliberately sent twice
(a client whose answer came late), so that a request id is in the usage twice.

Afterwards the provider settles with the latest receipt the replicas accepted (read from the
usage as the settlement service does: `streamledger.core.settlement.UsageBook`), and:
- the client's and the provider's balances and the client's open holds sum to what they did
  before the freeze;
- the provider is charged min(receipt units x price, authorized);
- each replica served at most W units beyond the latest receipt it had accepted;
- the hold settles once (a second Settle is refused with ALREADY_SETTLED);
- every request id is counted once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton
from aiokafka import AIOKafkaConsumer, TopicPartition
from tritonclient.utils import InferenceServerException

from devstack.fabric import FabricNetwork
from streamledger import kafka
from streamledger.client import ReceiptBook
from streamledger.core.contract_errors import AlreadySettled, NotFound
from streamledger.core.receipts import HOLD_METADATA, RECEIPT_METADATA, Receipt
from streamledger.core.settlement import HoldTerms, UsageBook, receipt_of
from streamledger.fabric import GatewayError
from streamledger.ledger import LedgerClient
from streamledger.settings import LedgerSettings, local_org_dir
from tests.integration.conftest import identity
from tests.integration.paying import (
    in_an_hour,
    issue_identity,
    new_nonce,
    signer_of_msp,
)
from tests.integration.test_ledger_seams import free_port

from .support import MODELS, PHISHING, codec, publish, registered, snapshot_record, train
from .test_inference_paid import Issuer

pytestmark = [pytest.mark.integration, pytest.mark.fabric, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[3]
CALLS = 200
CONCURRENCY = 16
KILL_AFTER = 80
"""Answers received before replica `a` is killed."""
RESENT = 7
"""The call sent a second time (to the other replica) once answered."""
W = 30
"""The replicas' credit window (units): 16 calls of at most 3 rows in flight over two replicas fit;
once one is killed they do not, and the live one refuses some until the client's receipt advances."""
RESERVE_UNITS = 40
PRICE = 2
AMOUNT = 4_000
"""2,000 units at PRICE: the calls use about 400."""
CLIENT = "User4"
"""Org2's user that pays here (no other test pays as User4). Its enrollment certificate is its TLS
identity: one issued for the run would do on the ledger, but gRPC's TLS cannot chain it (its
authority key id is not its CA's subject key id)."""
NAMES = sorted(PHISHING[0][0])
ORG2 = local_org_dir("Org2MSP")


@dataclass
class Parties:
    client: LedgerClient
    client_account: str
    client_msp: Path
    provider: LedgerClient
    provider_account: str
    provider_msp: Path
    auditor: LedgerClient

    async def balance(self, account: str) -> int:
        try:
            return await self.auditor.balance(account)
        except GatewayError as exc:
            if isinstance(exc.contract_error, NotFound):
                return 0  # a provider paid nothing yet has no account
            raise

    async def credit(self) -> int:
        """The client's and the provider's balances plus the credit in the client's open holds."""
        holds = await self.auditor.holds_of(self.client_account)
        return (await self.balance(self.client_account) + await self.balance(self.provider_account)
                + sum(h["amount"] for h in holds if h["status"] == "OPEN"))


@pytest.fixture
async def parties(network: FabricNetwork, tmp_path: Path) -> AsyncIterator[Parties]:
    run = uuid.uuid4().hex[:8]
    client_settings = identity(CLIENT, "Org2")
    provider_settings = issue_identity(network, "Org1", f"replicas-shop-{run}", tmp_path)
    async with (LedgerClient.connect(identity("Admin")) as org1_admin,
                LedgerClient.connect(client_settings) as client,
                LedgerClient.connect(provider_settings) as provider,
                LedgerClient.connect(identity("audit")) as auditor):
        client_account = (await client.who_am_i())["Account"]
        provider_account = (await provider.who_am_i())["Account"]
        await org1_admin.grant_role(provider_account, "provider")  # acting for itself
        await org1_admin.mint(client_account, AMOUNT)
        yield Parties(client, client_account, client_settings.msp_dir(), provider, provider_account,
                      provider_settings.fabric_msp_dir, auditor)


@dataclass
class Replica:
    """`streamledger serve inference` in paid mode, acting as the provider, and a tritonclient of it."""

    name: str
    port: int
    usage_topic: str
    log: Path
    process: subprocess.Popen
    client: triton.InferenceServerClient | None = None
    killed: bool = False
    served_rows: int = 0
    """Rows of the answers the client received from it."""

    @property
    def url(self) -> str:
        return f"localhost:{self.port}"

    def writer_pid(self) -> int | None:
        """The pid of its record writer (a child process), from its log."""
        for line in self.log.read_text(errors="replace").splitlines():
            if '"record_writer_started"' in line:
                return json.loads(line[line.index("{"):])["pid"]
        return None


def start_replica(name: str, env: dict[str, str], tmp_path: Path) -> Replica:
    port, usage = free_port(), f"{env['STREAMLEDGER_INFERENCE_USAGE_TOPIC']}.{name}"
    log = tmp_path / f"replica-{name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "streamledger"), "serve", "inference"], cwd=REPO, stdout=out,
            stderr=subprocess.STDOUT,
            env={**env, "STREAMLEDGER_INFERENCE_PORT": str(port), "STREAMLEDGER_INFERENCE_USAGE_TOPIC": usage})
    return Replica(name, port, usage, log, process)


def wait_started(replica: Replica, deadline: float) -> None:
    while "inference_started" not in replica.log.read_text(errors="replace"):
        assert replica.process.poll() is None, f"replica {replica.name} exited:\n{replica.log.read_text()}"
        assert time.monotonic() < deadline, f"replica {replica.name} never started:\n{replica.log.read_text()}"
        time.sleep(0.1)


def exited(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie (its parent, the killed replica, cannot reap it) has exited too
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return True


@pytest.fixture
def environment(parties: Parties, stack, bootstrap: str, unique: str, tmp_path: Path) -> dict[str, str]:
    """The replicas' environment: paid mode as the provider, fresh topics, a server certificate
    of a fresh CA (`server_ca.pem` in tmp_path), Org2's CA for clients."""
    models = tmp_path / "models.toml"
    models.write_text(MODELS)
    server_ca = Issuer(tmp_path, "server_ca", "Provider")
    cert, key, _ = server_ca.issue("localhost", server=True)
    snapshots = f"test.snapshots.{unique}"
    publish(bootstrap, snapshots, [registered(snapshot_record("phishing-logreg", 1, train(models, "phishing-logreg",
                                                                                          PHISHING[:300])))])
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLEDGER_")}
    env.update(kafka.child_environment())
    env.update({
        "STREAMLEDGER_KAFKA_BOOTSTRAP": bootstrap, "STREAMLEDGER_INFERENCE_MODE": "paid",
        "STREAMLEDGER_INFERENCE_HOST": "localhost", "STREAMLEDGER_INFERENCE_MODELS_FILE": str(models),
        "STREAMLEDGER_INFERENCE_SNAPSHOT_TOPIC": snapshots,
        "STREAMLEDGER_INFERENCE_PREDICTIONS_TOPIC": f"test.predictions.{unique}",
        "STREAMLEDGER_INFERENCE_USAGE_TOPIC": f"test.usage.{unique}",
        "STREAMLEDGER_INFERENCE_CREDIT_WINDOW_UNITS": str(W),
        "STREAMLEDGER_INFERENCE_RESERVE_UNITS": str(RESERVE_UNITS),
        "STREAMLEDGER_INFERENCE_TLS_CERT": str(cert), "STREAMLEDGER_INFERENCE_TLS_KEY": str(key),
        "STREAMLEDGER_INFERENCE_CLIENT_CAS": json.dumps(
            {"Org2MSP": str(next((ORG2 / "msp" / "cacerts").glob("*.pem")))}),
        "STREAMLEDGER_FABRIC_MSP_ID": "Org1MSP", "STREAMLEDGER_FABRIC_MSP_DIR": str(parties.provider_msp),
    })
    return env


def inputs(rows: int) -> list[triton.InferInput]:
    tensors = []
    for name in NAMES:
        tensor = triton_grpc.InferInput(name, [rows], "FP64")
        tensor.set_data_from_numpy(np.array([x[name] for x, _ in PHISHING[:rows]], dtype=np.float64))
        tensors.append(tensor)
    return tensors


@dataclass
class PayingClient:
    """The client's side: one hold, one receipt book, calls spread over the replicas."""

    book: ReceiptBook
    replicas: list[Replica]
    advanced: asyncio.Condition = field(default_factory=asyncio.Condition)
    answered: int = 0
    retried: dict[str, int] = field(default_factory=dict)
    """Calls sent again, by why."""

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if not r.killed]

    async def call(self, n: int, rows: int, replica: Replica | None = None) -> Replica:
        """Call `n` (request id `call-n`) of `rows` rows, answered; the replica that answered."""
        deadline = time.monotonic() + 30
        while True:
            live = self.live()
            target = replica if replica is not None and not replica.killed else live[n % len(live)]
            header = self.book.header
            headers = {HOLD_METADATA: self.book.hold_id, **({RECEIPT_METADATA: header} if header else {})}
            try:
                result = await target.client.infer("phishing-logreg", inputs(rows), request_id=f"call-{n}",
                                                   headers=headers, client_timeout=10)
            except InferenceServerException as exc:
                assert time.monotonic() < deadline, f"call {n} never answered: {exc}"
                if target.killed:  # the killed replica did not answer: the live one is asked
                    self._retried("replica killed")
                    continue
                about_receipt = exc.status() in ("StatusCode.RESOURCE_EXHAUSTED", "StatusCode.INVALID_ARGUMENT") \
                    and "receipt" in (exc.message() or "")
                if not about_receipt:
                    raise
                self._retried(exc.message().split(":")[1].split(",")[0].strip())
                if self.book.sign() is None or self.book.header == header:  # nothing new to sign for
                    await self._receipt_after(header)
                continue
            answered = result.as_numpy("label").shape[0]
            assert answered == rows
            target.served_rows += answered
            self.book.received(answered)  # signs for every row received, every 10 rows (the client's default)
            self.answered += 1
            async with self.advanced:
                self.advanced.notify_all()
            return target

    def _retried(self, why: str) -> None:
        self.retried[why] = self.retried.get(why, 0) + 1

    async def _receipt_after(self, header: str | None) -> None:
        """Wait until a newer receipt is signed (an answer still on its way), at most a second."""
        async with self.advanced:
            try:
                await asyncio.wait_for(self.advanced.wait_for(lambda: self.book.header != header), 1.0)
            except TimeoutError:
                pass  # the other replica may have accepted a newer receipt meanwhile: try again


async def usage_of(bootstrap: str, topic: str) -> list[dict]:
    """Every usage record on `topic` (its end read first: nothing more is written to it)."""
    partitions = [TopicPartition(t, p) for t, p in await kafka.partitions_of(bootstrap, [topic])]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **kafka.connection(), auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    records: list[dict] = []
    try:
        consumer.assign(partitions)
        end = await consumer.end_offsets(partitions)
        async with asyncio.timeout(30):
            while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    records += [codec.decode(m.value, reader="UsageRecord") for m in messages]
    finally:
        await consumer.stop()
    return records


def beyond_latest_receipt(records: list[dict]) -> int:
    """Units a replica served after the latest receipt it accepted: those of its records that carry it."""
    latest = max(r["receipt_sequence"] for r in records)
    return sum(r["units"] for r in records if r["receipt_sequence"] == latest)


async def test_credit_is_conserved_over_two_replicas_through_a_kill_9(parties, environment, bootstrap, tmp_path):
    p = parties
    before = await p.credit()
    balances = await p.balance(p.client_account), await p.balance(p.provider_account)
    expires_at = in_an_hour()
    hold = await p.client.freeze(new_nonce(), p.provider_account, AMOUNT, PRICE, expires_at)
    hold_id = hold["hold_id"]
    deadline = time.monotonic() + 30
    while await p.provider.get_hold(hold_id) is None:  # frozen through Org2's peer; the replicas read Org1's
        assert time.monotonic() < deadline, f"hold {hold_id} never reached the provider's peer"
        await asyncio.sleep(0.2)

    replicas = [start_replica(name, environment, tmp_path) for name in ("a", "b")]
    a, b = replicas
    try:
        deadline = time.monotonic() + 60
        for replica in replicas:
            wait_started(replica, deadline)
            replica.client = triton.InferenceServerClient(
                replica.url, ssl=True, root_certificates=str(tmp_path / "server_ca.pem"),
                private_key=str(next((p.client_msp / "keystore").iterdir())),
                certificate_chain=str(next((p.client_msp / "signcerts").iterdir())))
            while not await replica.client.is_model_ready("phishing-logreg"):
                assert time.monotonic() < deadline, f"replica {replica.name} never served phishing-logreg"
                await asyncio.sleep(0.05)
        writer_a = a.writer_pid()
        assert writer_a is not None, a.log.read_text()

        paying = PayingClient(ReceiptBook(signer_of_msp(LedgerSettings(fabric_msp_id="Org2MSP",
                                                                       fabric_msp_dir=p.client_msp)), hold_id),
                              replicas)
        slots = asyncio.Semaphore(CONCURRENCY)

        async def one(n: int) -> None:
            async with slots:
                await paying.call(n, 1 + n % 3)
                if paying.answered >= KILL_AFTER and not a.killed:
                    a.process.send_signal(signal.SIGKILL)  # with calls in flight on it
                    a.killed = True

        started = time.monotonic()
        await asyncio.gather(*(one(n) for n in range(CALLS)))
        took = time.monotonic() - started
        assert a.killed and a.process.wait(10) == -signal.SIGKILL
        # A client whose answer came late sends the call again, here to the live replica: served twice.
        await paying.call(RESENT, 1 + RESENT % 3, replica=b)
        assert a.served_rows > 0 and b.served_rows > 0, "both replicas served"

        b.process.send_signal(signal.SIGTERM)  # drains its usage records first
        assert b.process.wait(30) == 0, b.log.read_text()
        deadline = time.monotonic() + 30
        while not exited(writer_a):  # the killed replica's record writer delivers what it held, then exits
            assert time.monotonic() < deadline, f"replica a's record writer (pid {writer_a}) did not exit"
            await asyncio.sleep(0.1)
    finally:
        for replica in replicas:
            if replica.client is not None:
                await replica.client.close()
            if replica.process.poll() is None:
                replica.process.kill()
                replica.process.wait(10)

    usage = {r.name: await usage_of(bootstrap, r.usage_topic) for r in replicas}
    assert usage["b"], "replica b recorded its usage"
    for name, records in usage.items():
        assert beyond_latest_receipt(records) <= W, f"replica {name} served more than W beyond its latest receipt"

    # The settlement: the latest receipt the replicas accepted, each request id counted once.
    on_ledger = await p.provider.get_hold(hold_id)
    book = UsageBook()
    tally = book.open(HoldTerms.of(on_ledger), 0, time.time())
    for offset, record in enumerate(usage["a"] + usage["b"]):
        assert record["hold_id"] == hold_id and record["price"] == PRICE
        receipt = receipt_of(record)
        if receipt is not None:
            book.offer(hold_id, receipt)  # InvalidReceipt unless the client signed it
        book.add(hold_id, offset, record["request_id"], record["units"])
    request_ids = [r["request_id"] for records in usage.values() for r in records]
    assert tally.records == len(set(request_ids)) and tally.duplicates == len(request_ids) - len(set(request_ids))
    assert tally.duplicates >= 1, f"call-{RESENT}, answered twice, is in the usage twice"
    assert tally.units == sum({r["request_id"]: r["units"] for records in usage.values() for r in records}.values())
    receipt = tally.settling_receipt()
    assert receipt is not None and receipt.units <= paying.book.units
    # What the client received and never signed for in a receipt a replica accepted: its answers still
    # on their way when it sent its last calls, each replica's at most W.
    assert tally.units - receipt.units <= 2 * W, (tally.units, receipt)

    settled = (await p.provider.settle(hold_id, receipt)).json()
    authorized = on_ledger["authorized"]
    assert authorized >= tally.units * PRICE, "each replica serves only within what it reserved"
    assert settled["charged"] == min(receipt.units * PRICE, authorized), (settled, authorized)
    assert settled["refunded"] == AMOUNT - settled["charged"]
    assert settled["receipt"]["sequence"] == receipt.sequence

    with pytest.raises(GatewayError) as again_settled:  # settled once
        await p.provider.settle(hold_id, Receipt(hold_id, receipt.units, receipt.sequence, receipt.signature))
    assert isinstance(again_settled.value.contract_error, AlreadySettled), again_settled.value

    assert await p.credit() == before, "credit was created or lost"
    assert (await p.balance(p.client_account), await p.balance(p.provider_account)) == \
        (balances[0] - settled["charged"], balances[1] + settled["charged"])
    print(f"\n{CALLS} calls in {took:.1f} s: a answered {a.served_rows} rows, b {b.served_rows}; usage records "
          f"a {len(usage['a'])}, b {len(usage['b'])}, duplicates {tally.duplicates}; retried {paying.retried}; "
          f"receipt {receipt.units} units (seq {receipt.sequence}) of {paying.book.units} received; "
          f"authorized {authorized}, charged {settled['charged']}")
