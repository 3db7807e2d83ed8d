"""`streamledger demo`: the whole pipeline on the local stack with a live event stream.

1. A smoke round trip through Kafka and MongoDB (the stack answers real requests).
2. Every built service starts as a child process (`streamledger serve NAME`), each acting on
   the ledger as its own identity (the ledger service anchors as `anchoring`, the audit and
   the dashboard read as `audit` and `dashboard`); inference runs in paid mode with mutual TLS.
3. A demo producer posts River's Phishing dataset to the ingestion API, in small batches,
   as tenant "demo" with a fresh API key, plus a few malformed events to show rejections;
   the stack's Org2 identity `demo` pays for calls to the live model with signed receipts
   (first releasing its holds an earlier run left open past their settlement window).
4. A live table shows what each hop holds: topic offsets, stored documents, the models'
   online metrics, paid calls and holds; Ctrl-C (or --seconds) ends the stream, prints the
   client's holds, one event's audit trace and one bill, and stops the services (a second
   Ctrl-C stops at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import secrets
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from aiokafka import TopicPartition
from pymongo.errors import BulkWriteError
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from devstack.fabric import FabricNetwork
from devstack.fabric.identities import issue_server_tls
from devstack.runner import ServiceGroup
from devstack.settings import StackSettings
from streamledger import kafka
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.client.wallet import Wallet, WalletError
from streamledger.core.contract_errors import NotFound
from streamledger.fabric import EvaluateError
from streamledger.kafka import topics
from streamledger.ledger import LedgerClient
from streamledger.mongo import mongo_client
from streamledger.settings import CommonSettings, LedgerSettings

SMOKE_TOPIC = "demo.smoke"
TENANT = "demo"
DEMO_CLIENT = "demo"
"""The Org2 identity the demo's paying application acts as (deploy/fabric/identities.yaml)."""
SHOWN_TOPICS = (topics.RAW, topics.CLEAN, topics.DEADLETTER, topics.SNAPSHOTS, topics.MODEL_METRICS,
                topics.PREDICTIONS, topics.ANCHORS)


async def smoke_round_trip(settings: CommonSettings, console: Console, count: int = 1000) -> None:
    run = f"{int(time.time())}"
    events = [
        {"event_id": f"smoke-{run}-{i}", "tenant": TENANT, "source": "smoke",
         "ts": int(time.time() * 1000), "features": {"x": random.random(), "y": random.random()}}
        for i in range(count)
    ]
    await kafka.provision(settings.kafka_bootstrap, [kafka.TopicSpec(SMOKE_TOPIC)])
    started = time.monotonic()
    async with kafka.producer(settings.kafka_bootstrap) as producer:
        futures = [await producer.send(SMOKE_TOPIC, json.dumps(e).encode(), key=e["event_id"].encode())
                   for e in events]
        acked = [await f for f in futures]
    console.print(f"Kafka    produced {len(acked)} events to {SMOKE_TOPIC} "
                  f"(offsets {acked[0].offset}..{acked[-1].offset}) in {time.monotonic() - started:.2f}s")

    received = []
    async with kafka.consumer(settings.kafka_bootstrap) as consumer:
        partition = TopicPartition(SMOKE_TOPIC, acked[0].partition)
        consumer.assign([partition])
        consumer.seek(partition, acked[0].offset)
        async with asyncio.timeout(30):
            while len(received) < count:
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    received.extend(json.loads(m.value) for m in messages)
    assert [e["event_id"] for e in received[:count]] == [e["event_id"] for e in events]
    console.print("Kafka    consumed them back, same order and content")

    client = mongo_client(settings.mongo_url)
    try:
        collection = client[settings.mongo_db]["demo_smoke"]
        docs = [{"_id": e["event_id"], "run": run, **e} for e in received[:count]]
        await collection.insert_many(docs, ordered=False)
        try:  # a replay of the same keys adds nothing: every insert meets its duplicate key
            await collection.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            duplicates = sum(e.get("code") == 11000 for e in exc.details["writeErrors"])
        stored = await collection.count_documents({"run": run})
    finally:
        await client.close()
    console.print(f"MongoDB  stored them in {settings.mongo_db}.demo_smoke; a replay met {duplicates} "
                  f"duplicate keys and left {stored} documents (idempotent by key)")
    console.print("[green]smoke round trip OK[/]")


@dataclass
class DemoStream:
    """Posts the Phishing dataset to ingestion, forever, with a few malformed events mixed in."""

    url: str
    api_key: str
    run: str = field(default_factory=lambda: secrets.token_hex(3))
    posted: int = 0
    accepted: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)

    def batches(self, size: int):
        from river import datasets

        rows = itertools.cycle(enumerate(datasets.Phishing()))
        for batch_no in itertools.count():
            batch = []
            for _ in range(size):
                index, (x, y) = next(rows)
                batch.append({"event_id": f"demo-{self.run}-{self.posted + len(batch)}", "tenant": TENANT,
                              "source": "phishing", "ts": int(time.time() * 1000),
                              "features": {k: float(v) for k, v in x.items()}, "label": bool(y)})
            if batch_no % 10 == 9:  # show that bad input is rejected by name, not dropped silently
                batch.append({"event_id": f"demo-{self.run}-bad-{batch_no}", "source": "phishing",
                              "ts": "yesterday", "features": {"empty_server_form_handler": "NaN?"}})
            yield batch

    async def run_forever(self, rate: float, batch_size: int = 25) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        async with httpx.AsyncClient(timeout=30) as http:
            for batch in self.batches(batch_size):
                started = time.monotonic()
                try:
                    answer = await http.post(self.url, json=batch, headers=headers)
                    body = answer.json()
                    self.posted += len(batch)
                    self.accepted += len(body.get("event_ids", []))
                    self.rejected += len(body.get("rejected", []))
                    if answer.status_code >= 500:
                        self.errors.append(f"HTTP {answer.status_code}: {body}")
                except (httpx.HTTPError, ValueError) as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(max(0.0, batch_size / rate - (time.monotonic() - started)))


@dataclass
class DemoClient:
    """An Org2 application paying per call (the stack's `demo` client identity): it freezes
    credit for the provider on the ledger, calls the live model over KServe V2 gRPC with mutual
    TLS and tritonclient (streamledger.client), signs a receipt for each answer, and freezes a
    fresh hold when one runs out or expires; the ledger service settles each expired hold."""

    tls: Path
    """The inference server's TLS folder (its `ca.crt` is what the client trusts)."""
    address: str = "127.0.0.1:8001"
    model: str = "phishing-logreg"
    hold_amount: int = 400
    hold_seconds: float = 45.0
    ok: int = 0
    failed: int = 0
    last: str = "-"
    account: str = ""
    frozen: set[str] = field(default_factory=set)
    """The holds this run froze (a fresh one each time one runs out or expires)."""
    holds: dict[str, dict] = field(default_factory=dict)
    """Those holds as the ledger has them (an earlier run's are not this run's to show or bill)."""
    stopping: threading.Event = field(default_factory=threading.Event)

    async def run_forever(self, rows: int = 8, every_s: float = 1.0) -> None:
        try:
            await asyncio.to_thread(self._run, rows, every_s)
        finally:
            self.stopping.set()

    def _run(self, rows: int, every_s: float) -> None:
        import numpy as np
        import tritonclient.grpc as triton
        from river import datasets
        from tritonclient.utils import InferenceServerException

        from streamledger.client import PaidInferenceClient

        samples = [x for x, _ in itertools.islice(datasets.Phishing(), 200)]
        network = FabricNetwork(StackSettings(fabric=True))
        provider = network.account_of("provider", "Org1")
        msp = network.user_msp(DEMO_CLIENT, "Org2")
        self.account = network.account_of(DEMO_CLIENT, "Org2")
        asyncio.run(fund(self.account, 20 * self.hold_amount))
        with PaidInferenceClient(self.address, msp_dir=msp, msp_id="Org2MSP", server_ca=self.tls / "ca.crt",
                                 refreeze=True) as client:
            self.last = f"waiting for {self.model} to be ready"  # as an application would: no calls before
            while not self.stopping.is_set():
                try:
                    if client.triton.is_model_ready(self.model):
                        break
                except InferenceServerException as exc:  # the server is still starting
                    self.last = f"waiting for {self.model}: {exc.message()}"
                self.stopping.wait(0.5)
            if self.stopping.is_set():
                return
            names = [t.name for t in client.triton.get_model_metadata(self.model).inputs]
            self.frozen.add(client.freeze(provider=provider, amount=self.hold_amount, price_per_unit=1,
                                          expires_in=self.hold_seconds))
            for start in itertools.cycle(range(0, len(samples), rows)):
                if self.stopping.is_set():
                    return
                batch = samples[start:start + rows]
                inputs = []
                for name in names:
                    tensor = triton.InferInput(name, [len(batch)], "FP64")
                    tensor.set_data_from_numpy(np.array([float(x.get(name, 0.0)) for x in batch]))
                    inputs.append(tensor)
                try:
                    result = client.infer(self.model, inputs)
                    self.ok += 1
                    response = result.get_response()
                    receipt = client.receipt
                    self.last = (f"model v{response.model_version}: {len(batch)} rows, receipt #{receipt.sequence} "
                                 f"for {receipt.units} units on hold {client.hold_id[:12]}…")
                except InferenceServerException as exc:
                    self.failed += 1
                    self.last = f"{exc.status()}: {exc.message()}"
                self.frozen.add(client.hold_id)  # infer froze a fresh one when the last ran out
                self.stopping.wait(every_s)

    async def refresh_holds(self) -> None:
        """The holds this run froze as the ledger has them (status, charged, refunded)."""
        if self.account:
            async with LedgerClient.connect(client_settings()) as ledger:
                holds = await ledger.holds_of(self.account)
            self.holds = {h["hold_id"]: h for h in holds if h["hold_id"] in self.frozen}


def client_settings() -> LedgerSettings:
    """The ledger settings of the demo's paying client, acting as itself."""
    return LedgerSettings(fabric_msp_id="Org2MSP", fabric_user=DEMO_CLIENT)


@dataclass
class Leftovers:
    """The demo client's holds an earlier run left OPEN past their settlement window, released."""

    released: list[dict] = field(default_factory=list)
    """Each released hold as the wallet shows it (status RELEASED, charged, refunded)."""
    refused: dict[str, str] = field(default_factory=dict)
    """Hold id -> why the ledger would not release it."""

    def line(self) -> str:
        said = (f"released {len(self.released)} holds of the demo client that an earlier run left open past their "
                f"settlement window: {sum(h['charged'] or 0 for h in self.released):,} credit paid for their "
                f"receipts, {sum(h['refunded'] or 0 for h in self.released):,} back to the client"
                if self.released else "no hold of the demo client was left open past its settlement window")
        if self.refused:
            hold_id, why = next(iter(self.refused.items()))
            said += f"; {len(self.refused)} could not be released ({hold_id}: {why})"
        return said


async def release_leftovers(wallet: Wallet, now: float | None = None) -> Leftovers:
    """Release the holds `wallet`'s client froze that are still OPEN past their settlement window,
    as `streamledger wallet release` does: an earlier demo run stopped before the ledger service
    settled them, and from settle_by on the contract refuses to settle them (WINDOW_CLOSED), so
    their credit would stay frozen for good. A release pays the provider what the client's
    recorded receipt covers and returns the rest to the client."""
    now = time.time() if now is None else now
    leftovers = Leftovers()
    for hold in (await wallet.holds())["holds"]:
        if hold["role"] == "client" and hold["status"] == "OPEN" and hold["settle_by"] <= now:
            try:
                leftovers.released.append((await wallet.release(hold["hold_id"]))["hold"])
            except WalletError as exc:  # e.g. closed meanwhile (HOLD_CLOSED)
                leftovers.refused[hold["hold_id"]] = f"{exc.status}: {exc}"
    return leftovers


async def fund(account: str, amount: int) -> None:
    """Top the demo client's `account` up to `amount` credit (it reads its own balance), minted
    by Org1's admin (the stack's minter)."""
    async with LedgerClient.connect(client_settings()) as own:
        try:
            balance = await own.balance(account)
        except EvaluateError as exc:
            if not isinstance(exc.contract_error, NotFound):
                raise
            balance = 0  # no account until credit is first minted to it
    if balance < amount:
        async with LedgerClient.connect(LedgerSettings(fabric_user="Admin")) as admin:
            await admin.mint(account, amount - balance)


def inference_tls() -> tuple[Path, dict[str, str]]:
    """The provider's inference server certificate (issued by Org1's TLS CA, once) and the
    paid-mode settings that serve Org2's clients by mutual TLS."""
    network = FabricNetwork(StackSettings(fabric=True))
    org1, org2 = network.org("Org1"), network.org("Org2")
    tls = issue_server_tls(network.org_dir(org1), org1.domain, "inference")
    client_ca = next((network.org_dir(org2) / "msp" / "cacerts").glob("*.pem"))
    return tls, {"STREAMLEDGER_INFERENCE_MODE": "paid",
                 "STREAMLEDGER_INFERENCE_TLS_CERT": str(tls / "server.crt"),
                 "STREAMLEDGER_INFERENCE_TLS_KEY": str(tls / "server.key"),
                 "STREAMLEDGER_INFERENCE_CLIENT_CAS": json.dumps({"Org2MSP": str(client_ca)})}


class PipelineView:
    """Reads what each hop holds: topic end offsets, stored documents, latest model metrics."""

    def __init__(self, settings: CommonSettings) -> None:
        self.settings = settings
        self.codec = AvroCodec(SchemaRegistry.from_dir())
        self.metrics: dict[str, dict] = {}
        self.stored: tuple[int, int] = (0, 0)
        """The latest `stored_events()`, kept up to date by `count_stored_forever`."""
        self.partitions: dict[str, list[int]] = {}
        self._opened = contextlib.AsyncExitStack()

    async def __aenter__(self) -> PipelineView:
        bootstrap = self.settings.kafka_bootstrap
        await kafka.provision(bootstrap, [kafka.spec(topics.MODEL_METRICS)])
        async with contextlib.AsyncExitStack() as opened:
            self.metrics_consumer = await opened.enter_async_context(
                kafka.consumer(bootstrap, topics.MODEL_METRICS, auto_offset_reset="latest"))
            self.offsets_consumer = await opened.enter_async_context(kafka.consumer(bootstrap))
            self.admin = await opened.enter_async_context(kafka.admin(bootstrap))
            self.mongo = mongo_client(self.settings.mongo_url)
            opened.push_async_callback(self.mongo.close)
            self._opened = opened.pop_all()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self._opened.aclose()

    async def topic_sizes(self) -> dict[str, int]:
        """Messages written to each shown topic so far (the sum of its partitions' end offsets)."""
        missing = [t for t in SHOWN_TOPICS if t not in self.partitions]
        if missing:  # topics appear as services start; describe the ones not seen yet
            for description in await self.admin.describe_topics(missing):
                if description["partitions"]:
                    self.partitions[description["topic"]] = [p["partition"] for p in description["partitions"]]
        wanted = [TopicPartition(t, p) for t, parts in self.partitions.items() for p in parts]
        ends = await self.offsets_consumer.end_offsets(wanted) if wanted else {}
        return {t: sum(o for tp, o in ends.items() if tp.topic == t) for t in SHOWN_TOPICS}

    async def stored_events(self) -> tuple[int, int]:
        """(events of the demo tenant stored, records with a Merkle proof from the ledger service)."""
        db = self.mongo[self.settings.mongo_db]
        return await db["events"].count_documents({"tenant": TENANT}), await db["proofs"].estimated_document_count()

    async def count_stored_forever(self, pause_s: float = 1.0) -> None:
        """Keep `stored` up to date. Counting takes seconds on FerretDB's SQLite backend once the demo
        tenant has some 100,000 events (a scan each), so the live table shows the latest count rather
        than wait for it every second (and --seconds is not overrun by a count)."""
        while True:
            self.stored = await self.stored_events()
            await asyncio.sleep(pause_s)

    async def poll_metrics(self) -> None:
        batch = await self.metrics_consumer.getmany(timeout_ms=100)
        for messages in batch.values():
            for message in messages:
                record = self.codec.decode(message.value)
                self.metrics[record["model_id"]] = record


def render(stream: DemoStream, client: DemoClient, sizes: dict[str, int], stored: tuple[int, int], view: PipelineView,
           group: ServiceGroup, elapsed: float) -> Group:
    flow = Table(title=f"StreamLedger demo, {elapsed:.0f}s (Ctrl-C stops)")
    flow.add_column("hop")
    flow.add_column("count", justify="right")
    flow.add_row("posted to ingestion (HTTP)", f"{stream.posted:,}")
    flow.add_row("  accepted / rejected by name", f"{stream.accepted:,} / {stream.rejected:,}")
    for topic, size in sizes.items():
        flow.add_row(f"Kafka {topic}", f"{size:,}")
    flow.add_row("MongoDB events (tenant demo)", f"{stored[0]:,}")
    flow.add_row("records anchored on the ledger (proofs)", f"{stored[1]:,}")
    flow.add_row(f"paid inference calls to {client.model} ok / failed", f"{client.ok:,} / {client.failed:,}")
    flow.add_row("  last answer", client.last)
    settled = [h for h in client.holds.values() if h["status"] != "OPEN"]
    flow.add_row("  holds frozen / closed on the ledger", f"{len(client.holds)} / {len(settled)}")
    flow.add_row("  credit charged / refunded (closed holds)",
                 f"{sum(h['charged'] for h in settled):,} / {sum(h['refunded'] for h in settled):,}")
    models = Table(title="online models (prequential)")
    for column in ("model", "version", "events", "metrics", "drift"):
        models.add_column(column)
    for model_id, record in sorted(view.metrics.items()):
        # a model that has learned nothing has no metric yet: "–", not a score of 0
        shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(record["metrics"].items())) if record["position"] else "–"
        drift = record.get("drift")
        models.add_row(model_id, str(record["version"]), f"{record['position']:,}", shown,
                       f"at {drift['position']:,}" if drift else "-")
    services = Table(title="services")
    services.add_column("service")
    services.add_column("state")
    exited = group.exited()
    for name in group.processes:
        services.add_row(name, f"[red]exited ({exited[name]})[/]" if name in exited else "[green]running[/]")
    parts: list = [flow, models, services]
    if stream.errors:
        parts.append(f"[yellow]last ingestion error:[/] {stream.errors[-1]}")
    return Group(*parts)


@contextlib.contextmanager
def ctrl_c_ends(stop: asyncio.Event):
    """While inside: Ctrl-C (SIGINT) sets `stop` rather than cancelling the demo (asyncio.run's
    own handler would), so the demo ends as --seconds would and still prints its ending; once
    left, Ctrl-C is Python's KeyboardInterrupt again (stop at once)."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        yield stop
    finally:
        loop.remove_signal_handler(signal.SIGINT)


async def run_demo(settings: CommonSettings, console: Console, seconds: float | None, rate: float,
                   names: list[str]) -> None:
    """The demo with the services `names` (those built, in start order) as child processes."""
    from services.ingestion.auth import hash_key

    await smoke_round_trip(settings, console)
    api_key = secrets.token_urlsafe(24)
    tls, paid = inference_tls()
    async with Wallet.open(client_settings()) as wallet:  # credit an earlier run left frozen comes back
        console.print((await release_leftovers(wallet)).line())
    group = ServiceGroup(env={"STREAMLEDGER_INGESTION_API_KEYS": json.dumps({TENANT: [hash_key(api_key)]}), **paid})
    console.print(f"starting services: {', '.join(names)} (logs in {group.log_dir}/service-*.log)")
    group.start(names)
    client = DemoClient(tls)
    try:
        await wait_for_ingestion(group)
        stream = DemoStream(url="http://127.0.0.1:8080/v1/events", api_key=api_key)
        producer = asyncio.create_task(stream.run_forever(rate))
        caller = asyncio.create_task(client.run_forever()) if "inference" in names else None
        started = time.monotonic()
        async with PipelineView(settings) as view:
            counter = asyncio.create_task(view.count_stored_forever())
            try:
                with ctrl_c_ends(asyncio.Event()) as interrupted, Live(console=console, refresh_per_second=2) as live:
                    async def draw() -> None:
                        live.update(render(stream, client, await view.topic_sizes(), view.stored, view, group,
                                           time.monotonic() - started))
                    for tick in itertools.count():
                        if interrupted.is_set() or seconds is not None and time.monotonic() - started >= seconds:
                            break
                        await view.poll_metrics()
                        if tick % 5 == 0:
                            await client.refresh_holds()
                        await draw()
                        for task in (producer, caller, counter):
                            if task is not None and task.done():
                                task.result()  # surfaces the task's error
                        await asyncio.sleep(1.0)
                    producer.cancel()
                    client.stopping.set()
                    if caller is not None:
                        await asyncio.wait_for(caller, timeout=30)
                    # The last frame stays on screen: with the holds as the ledger has them now
                    # (they are read every fifth tick), so it agrees with the holds table below it.
                    await client.refresh_holds()
                    await draw()
            finally:
                counter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await counter
        if caller is not None:
            summarise_holds(console, client)
            await show_a_trace(console, f"demo-{stream.run}-0")
            await show_a_bill(console, client)
    finally:
        client.stopping.set()
        group.stop()
    for name, code in group.exited().items():
        if code not in (0, -15):
            console.print(f"[red]{name} exited with {code}[/]; its last log lines:\n{group.log_tail(name)}")
    console.print("services stopped; the stack keeps running (`streamledger stack down` stops it)")


def summarise_holds(console: Console, client: DemoClient) -> None:
    """The holds the paying client froze in this run as the ledger has them: terms, what was charged
    and refunded."""
    table = Table(title=f"the demo client's holds on the ledger, frozen in this run ({client.account.split('::')[0]})")
    for column in ("hold", "status", "amount", "price", "receipt (units #seq)", "charged", "refunded"):
        table.add_column(column)
    for hold in sorted(client.holds.values(), key=lambda h: h["created_at"]):
        receipt = hold.get("receipt") or {}
        table.add_row(hold["hold_id"][:16] + "…", hold["status"], str(hold["amount"]), str(hold["price_per_unit"]),
                      f"{receipt.get('units', 0)} #{receipt.get('sequence', 0)}" if receipt else "-",
                      str(hold["charged"]), str(hold["refunded"]))
    console.print(table)


async def show_a_trace(console: Console, event_id: str) -> None:
    """What an auditor sees for the demo's first event: `streamledger audit trace demo EVENT_ID`
    (ingested, cleaned, proven, anchored and endorsed, the model versions that learned from it,
    and the holds that paid for their predictions). Every version that learned from it is
    asked for at once (the largest page): usage is counted for the page's versions, and those
    that served the demo's client come last (models by name)."""
    from services.audit.command import run_audit
    from services.audit.trace import MAX_LIMIT

    console.print(f"\n[bold]$ streamledger audit trace {TENANT} {event_id} --limit {MAX_LIMIT}[/]")
    await asyncio.to_thread(run_audit, "trace", {"tenant": TENANT, "event_id": event_id, "limit": MAX_LIMIT,
                                                 "page": 1}, False, None, None, console)


async def show_a_bill(console: Console, client: DemoClient) -> None:
    """What an auditor sees for the latest hold of this run that was settled: `streamledger audit bill HOLD`."""
    from services.audit.command import run_audit

    settled = sorted((h for h in client.holds.values() if h["status"] == "SETTLED"), key=lambda h: h["closed_at"])
    if not settled:
        console.print("no hold of this run settled yet (a hold settles about 50 s after it was frozen): "
                      "run the demo longer")
        return
    hold_id = settled[-1]["hold_id"]
    console.print(f"\n[bold]$ streamledger audit bill {hold_id}[/]")
    await asyncio.to_thread(run_audit, "bill", {"hold_id": hold_id}, False, None, None, console)


async def wait_for_ingestion(group: ServiceGroup, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline:
            if "ingestion" in group.exited():
                raise RuntimeError(f"ingestion exited during start-up:\n{group.log_tail('ingestion')}")
            try:
                if (await http.get("http://127.0.0.1:8080/healthz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    raise RuntimeError(f"ingestion did not answer /healthz within {timeout:.0f}s:\n{group.log_tail('ingestion')}")
