"""The dashboard in a real headless Chromium, fed by the real Kafka.

Events are produced to the dashboard's own (unique) topics with the Avro codec; a real
consumer group stands in for the cleaning service, so stopping it is a service stopping.
The ledger panels are checked against the real local Fabric network: what the test commits
there (a registration, freezes, a settlement, an anchor) shows on the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import ConsumerStoppedError
from playwright.async_api import BrowserContext, ConsoleMessage, Page, expect

from streamledger import kafka
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.core.receipts import hold_id, sign_receipt
from streamledger.ledger import LedgerClient
from tests.browser.conftest import (
    CLI,
    REPO,
    STALE_AFTER_S,
    Dashboard,
    running_dashboard,
)
from tests.integration.conftest import identity
from tests.integration.paying import in_an_hour, new_nonce, signer_of

pytestmark = pytest.mark.integration

# Every run saves its screenshot outside the repo; STREAMLEDGER_UPDATE_SCREENSHOT=1 refreshes
# the one the README shows (docs/dashboard.png) instead.
SCREENSHOT = (Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
              if os.environ.get("STREAMLEDGER_UPDATE_SCREENSHOT") == "1"
              else Path(tempfile.gettempdir()) / "streamledger-dashboard.png")
CODEC = AvroCodec(SchemaRegistry.from_dir())


def now_ms() -> int:
    return int(time.time() * 1000)


def raw_event(i: int) -> dict:
    return {"event_id": f"e{i}", "tenant": "acme", "source": "browser-test", "ts": now_ms(),
            "features": {"amount": float(i % 97), "country": "FR", "vip": i % 5 == 0}, "label": float(i % 2)}


async def open_page(context: BrowserContext, url: str) -> tuple[Page, list[str]]:
    """The dashboard in a new tab, with every console error and uncaught exception collected."""
    page = await context.new_page()
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(f"console: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    await page.goto(url)
    await expect(page.get_by_test_id("connection")).to_have_text("live", timeout=10_000)
    return page, errors


@contextlib.asynccontextmanager
async def steady_stream(producer, topic: str, per_second: int = 40) -> AsyncIterator[list[int]]:
    """Produce RawEvents to `topic` until the block ends; yields the running count."""
    sent = [0]
    stop = asyncio.Event()

    async def produce() -> None:
        while not stop.is_set():
            batch = [raw_event(sent[0] + k) for k in range(per_second // 10)]
            for value in CODEC.encode_many("RawEvent", batch):
                await producer.send(topic, value)
            sent[0] += len(batch)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)

    task = asyncio.create_task(produce())
    try:
        yield sent
    finally:
        stop.set()
        await task
        await producer.flush()


async def test_page_loads_with_no_console_errors_and_honest_empty_states(
        dashboard: Dashboard, chromium: BrowserContext) -> None:
    page, errors = await open_page(chromium, dashboard.url)
    await expect(page.get_by_test_id("kafka")).to_have_text("Kafka: connected")
    raw = page.get_by_test_id("topic-raw")
    await expect(raw.get_by_test_id("status")).to_have_text("no events yet")
    await expect(raw).to_contain_text(dashboard.topics["raw_topic"])
    await expect(page.get_by_test_id("deadletters")).to_contain_text("No dead letters")
    await expect(page.get_by_test_id("ledger-badge")).to_have_text("Ledger: watcher off")
    await expect(page.get_by_test_id("anchors")).to_contain_text("Ledger watcher off")
    await expect(page.get_by_test_id("usage")).to_contain_text("STREAMLEDGER_DASHBOARD_LEDGER=true")
    await expect(page.get_by_test_id("usage")).to_contain_text("No usage records yet")
    await expect(page.get_by_test_id("models")).to_contain_text("No model metrics yet")
    await expect(page.get_by_test_id("groups")).to_contain_text("No consumer groups yet")
    await page.wait_for_timeout(1500)  # a few more frames, so a drawing error would show up
    assert errors == []


async def test_charts_follow_the_stream_and_stopped_parts_show_as_down(
        dashboard: Dashboard, chromium: BrowserContext, bootstrap: str) -> None:
    topics = dashboard.topics
    page, errors = await open_page(chromium, dashboard.url)
    raw_card = page.get_by_test_id("topic-raw")
    chart_before = await raw_card.locator("svg").inner_html()

    # A consumer group standing in for the cleaning service: reads and commits, then stops.
    cleaner = AIOKafkaConsumer(topics["raw_topic"], bootstrap_servers=bootstrap, **kafka.connection(), group_id=dashboard.group,
                               enable_auto_commit=False, auto_offset_reset="earliest")
    async with kafka.producer(bootstrap) as producer:
        async with steady_stream(producer, topics["raw_topic"]) as sent:
            await cleaner.start()
            try:
                # The rate, the total and the chart change within a few seconds.
                await expect(raw_card.get_by_test_id("status")).to_have_text("flowing", timeout=8_000)
                await expect(raw_card.get_by_test_id("rate")).not_to_have_text("0ev/s", timeout=8_000)
                assert await raw_card.locator("svg").inner_html() != chart_before

                await publish_feed_records(producer, topics)
                keep_up = asyncio.create_task(consume_and_commit(cleaner))
                group_row = page.get_by_test_id(f"group-{dashboard.group}")
                await expect(group_row).to_contain_text("cleaning", timeout=15_000)
                await expect(group_row.get_by_test_id("status")).to_have_class(re.compile(r"\bok\b"), timeout=10_000)
                await expect(group_row).to_contain_text("1 connected")
                # The "service" hangs: still a member of its group, but it commits nothing.
                keep_up.cancel()
                await asyncio.gather(keep_up, return_exceptions=True)
                await expect(group_row.get_by_test_id("status")).to_contain_text(
                    "stale", timeout=(STALE_AFTER_S + 8) * 1000)
            finally:
                await cleaner.stop()  # the "service" is gone; events keep coming

            # Lag grows with no commit and no consumer left: down.
            await expect(group_row.get_by_test_id("status")).to_contain_text("down", timeout=(STALE_AFTER_S + 8) * 1000)
            lag = int((await group_row.get_by_test_id("lag").inner_text()).replace("k", "00").replace(".", ""))
            assert lag > 0

            await expect(page.get_by_test_id("deadletters")).to_contain_text("missing_field", timeout=8_000)
            await expect(page.get_by_test_id("deadletters")).to_contain_text("'amount' is required by rule fraud")
            model = page.get_by_test_id("model-fraud-lr")
            await expect(model).to_contain_text("version 3", timeout=8_000)
            await expect(model).to_contain_text("sha256 " + "c0ffee" * 2)
            await expect(model.get_by_test_id("ledger")).to_have_text("ledger watcher off")
            assert await model.locator("line.drift").count() == 1
            await expect(page.get_by_test_id("model-latency-tree")).to_contain_text("MAE")
            assert await page.get_by_test_id("model-latency-tree").locator("line.drift").count() == 0
            await expect(page.get_by_test_id("usage")).to_contain_text("hold-1")
            await expect(page.get_by_test_id("settlement")).to_have_text("ledger watcher off")

            # Input text is shown as text, never run as HTML.
            await producer.send_and_wait(topics["deadletter_topic"], CODEC.encode("DeadLetter", {
                "key": "<b>e-html</b>", "source_topic": topics["raw_topic"], "source_partition": 0,
                "source_offset": 8, "service": "cleaning", "reason": "bad_type",
                "error": "features.note: <img src=x onerror=alert(1)> is not a number", "original": b"", "ts": now_ms()}))
            await expect(page.get_by_test_id("deadletter").first).to_contain_text("<img src=x onerror=alert(1)>")
            await expect(page.get_by_test_id("deadletter").first).to_contain_text("<b>e-html</b>")
            assert await page.get_by_test_id("deadletters").locator("img, b").count() == 0
            assert sent[0] > 0

    # The producer stopped: the raw topic turns quiet after STALE_AFTER_S.
    await expect(raw_card.get_by_test_id("status")).to_contain_text("quiet", timeout=(STALE_AFTER_S + 6) * 1000)
    assert errors == []


async def consume_and_commit(consumer: AIOKafkaConsumer) -> None:
    """Keep a consumer group up to date, as a healthy service does."""
    with contextlib.suppress(ConsumerStoppedError):
        while True:
            if await consumer.getmany(timeout_ms=300):
                await consumer.commit()


async def publish_feed_records(producer, topics: dict[str, str], holds: tuple[str, ...] = ("hold-1",),
                               client: str = "acme", model_id: str = "fraud-lr") -> None:
    """A dead letter, a model's metric stream with one drift (`model_id`), its snapshot, and a
    usage record per hold."""
    await producer.send(topics["deadletter_topic"], CODEC.encode("DeadLetter", {
        "key": "e-bad", "source_topic": topics["raw_topic"], "source_partition": 0, "source_offset": 7,
        "service": "cleaning", "reason": "missing_field", "error": "features: 'amount' is required by rule fraud",
        "original": b"{}", "ts": now_ms()}))
    for step in range(1, 31):
        accuracy = 0.6 + 0.01 * step if step <= 20 else 0.55 + 0.005 * step
        drift = {"detector": "ADWIN", "position": 2000, "metric_before": 0.8, "metric_after": 0.6} if step == 20 else None
        await producer.send(topics["model_metrics_topic"], CODEC.encode("ModelMetrics", {
            "model_id": model_id, "version": 1 + step // 12, "position": step * 100,
            "metrics": {"Accuracy": accuracy}, "drift": drift, "ts": now_ms()}))
        await producer.send(topics["model_metrics_topic"], CODEC.encode("ModelMetrics", {
            "model_id": "latency-tree", "version": 1, "position": step * 80,
            "metrics": {"MAE": 40.0 / (1 + 0.2 * step) + (step % 4)}, "drift": None, "ts": now_ms()}))
    await producer.send(topics["snapshots_topic"], key=model_id.encode(), value=CODEC.encode("ModelSnapshot", {
        "model_id": model_id, "version": 3, "sha256": "c0ffee" * 10 + "beef", "format": "pickle",
        "offsets": [], "events_seen": 3000, "metrics": {"Accuracy": 0.7}, "model": b"", "created": now_ms()}))
    for n, hold in enumerate(holds):
        await producer.send(topics["usage_topic"], CODEC.encode("UsageRecord", {
            "hold_id": hold, "request_id": f"r-{n}", "client": client, "model_id": model_id, "model_version": 3,
            "units": 12, "price": 5, "ts": now_ms()}))
    await producer.flush()


FRAUD_SHA = "c0ffee" * 10 + "beef"  # the snapshot publish_feed_records writes for version 3


async def test_ledger_panels_show_what_the_real_ledger_holds(
        ledger_dashboard: Dashboard, chromium: BrowserContext, bootstrap: str, unique: str) -> None:
    """Registration, a freeze and its settlement, an open hold and an anchor committed on the
    local Fabric network show on the page; this is also the README's screenshot."""
    topics = ledger_dashboard.topics
    model_id = f"fraud-lr-{unique[:6]}"
    async with (LedgerClient.connect(identity("Admin")) as admin,  # mints
                LedgerClient.connect(identity("User5", "Org2")) as client,
                LedgerClient.connect(identity("settlement")) as provider,  # settles for Org1's `provider`
                LedgerClient.connect(identity("registry")) as registry,
                LedgerClient.connect(identity("anchoring")) as anchoring):
        me, them = (await client.who_am_i())["Account"], (await provider.who_am_i())["ActsFor"]
        await admin.mint(me, 1000)
        # Versions go up by one from 1, and only the registrant of the latest adds the next: a model of this run.
        for version in (1, 2):
            await registry.register_model(model_id, version, f"{version:02d}" * 32)
        await registry.register_model(model_id, 3, FRAUD_SHA)
        settling, staying_open = new_nonce(), new_nonce()
        settled_hold, open_hold = hold_id(me, settling), hold_id(me, staying_open)
        await client.freeze(settling, them, 100, 5, in_an_hour())  # 5 a unit
        await client.freeze(staying_open, them, 80, 5, in_an_hour())
        await provider.authorize(settled_hold, 60)
        await provider.settle(settled_hold, sign_receipt(signer_of("User5"), settled_hold, 12, 1))
        # <topic>:<partition>:<first>-<last>, on this dashboard's own (unique) clean topic
        batch, root = f"{topics['clean_topic']}:0:0-39", "ab" * 32
        anchored = await anchoring.anchor_batch(batch, root, 40, 0, 39)

    page, errors = await open_page(chromium, ledger_dashboard.url)
    await expect(page.get_by_test_id("ledger-badge")).to_contain_text("Ledger: connected", timeout=15_000)
    cleaner = AIOKafkaConsumer(topics["raw_topic"], bootstrap_servers=bootstrap, **kafka.connection(), group_id=ledger_dashboard.group,
                               enable_auto_commit=False, auto_offset_reset="earliest")
    async with kafka.producer(bootstrap) as producer:
        async with steady_stream(producer, topics["raw_topic"]):
            await cleaner.start()
            keep_up = asyncio.create_task(consume_and_commit(cleaner))
            try:
                await publish_feed_records(producer, topics, holds=(open_hold, settled_hold), client=me,
                                           model_id=model_id)
                await producer.send_and_wait(topics["anchors_topic"], CODEC.encode("Anchor", {
                    "batch_id": batch, "merkle_root": root, "count": 40, "topic": topics["clean_topic"],
                    "partition": 0, "first_offset": 0, "last_offset": 39, "tx_id": anchored.transaction_id,
                    "block": anchored.block_number, "ts": now_ms()}))

                model = page.get_by_test_id(f"model-{model_id}")
                await expect(model.get_by_test_id("ledger")).to_have_text("registered", timeout=15_000)
                await expect(page.get_by_test_id("model-latency-tree").get_by_test_id("ledger")).to_have_text(
                    "no snapshot yet")
                feed_row = page.locator(f'[data-testid="hold-event"][data-hold="{settled_hold}"]').first
                await expect(feed_row).to_contain_text("settled", timeout=15_000)
                await expect(feed_row).to_contain_text("60 / 40")
                usage = page.get_by_test_id("usage-record")
                await expect(usage.filter(has_text=settled_hold).get_by_test_id("settlement")).to_have_text(
                    "settled", timeout=15_000)
                await expect(usage.filter(has_text=open_hold).get_by_test_id("settlement")).to_have_text("open")
                await expect(usage.filter(has_text=open_hold)).to_contain_text("User5 Org2MSP")  # not the whole DN
                anchor = page.get_by_test_id("topic-anchor").filter(has_text=batch)
                await expect(anchor.get_by_test_id("anchor-ledger")).to_have_text("confirmed", timeout=15_000)
                await expect(page.get_by_test_id("group-" + ledger_dashboard.group)).to_contain_text("cleaning",
                                                                                                    timeout=15_000)
                await page.wait_for_timeout(1500)  # a few more frames, so the charts have a history
                SCREENSHOT.parent.mkdir(exist_ok=True)
                await page.screenshot(path=str(SCREENSHOT), full_page=True)
            finally:
                keep_up.cancel()
                await asyncio.gather(keep_up, return_exceptions=True)
                await cleaner.stop()
    assert errors == []


async def test_an_unreachable_ledger_says_so_and_the_page_keeps_working(
        chromium: BrowserContext, bootstrap: str, unique: str, tmp_path: Path) -> None:
    async with running_dashboard(bootstrap, unique, tmp_path, dashboard_ledger="true", fabric_user="dashboard",
                                 fabric_peer_endpoint="127.0.0.1:1") as dashboard:
        page, errors = await open_page(chromium, dashboard.url)
        await expect(page.get_by_test_id("ledger-badge")).to_have_text("Ledger: unreachable", timeout=15_000)
        await expect(page.get_by_test_id("usage")).to_contain_text("Ledger unreachable")
        await expect(page.get_by_test_id("anchors")).to_contain_text("retrying")
        await expect(page.get_by_test_id("kafka")).to_have_text("Kafka: connected")
        assert errors == []


async def test_a_lost_connection_shows_and_reconnects(dashboard: Dashboard, chromium: BrowserContext) -> None:
    page, errors = await open_page(chromium, dashboard.url)
    assert dashboard.stop() == 0
    await expect(page.get_by_test_id("connection")).to_contain_text("connection lost", timeout=10_000)
    await dashboard.start()
    await expect(page.get_by_test_id("connection")).to_have_text("live", timeout=15_000)
    # Chromium logs the failed reconnection attempts as console errors; the page's own code threw nothing.
    assert [e for e in errors if e.startswith("pageerror")] == []


async def test_the_real_cleaning_service_shows_live_then_down_when_stopped(
        dashboard: Dashboard, chromium: BrowserContext, bootstrap: str, tmp_path: Path) -> None:
    """`streamledger serve cleaning` on the dashboard's topics: its output, lag and dead letters
    appear; SIGTERM it while events keep coming and the page shows it down and its output quiet."""
    env = {**dashboard.env, "STREAMLEDGER_CLEANING_GROUP": dashboard.group,
           **{f"STREAMLEDGER_CLEANING_{name.upper()}": dashboard.topics[name]
              for name in ("raw_topic", "clean_topic", "deadletter_topic")}}
    log_path = tmp_path / "cleaning.log"
    with open(log_path, "wb") as log:
        cleaning = subprocess.Popen([str(CLI), "serve", "cleaning"], env=env, cwd=REPO,
                                    stdout=log, stderr=subprocess.STDOUT)
    try:
        page, errors = await open_page(chromium, dashboard.url)
        clean_card = page.get_by_test_id("topic-clean")
        group_row = page.get_by_test_id(f"group-{dashboard.group}")
        async with kafka.producer(bootstrap) as producer:
            async with steady_stream(producer, dashboard.topics["raw_topic"]):
                await producer.send(dashboard.topics["raw_topic"], b"not an avro record")
                await expect(clean_card.get_by_test_id("status")).to_have_text("flowing", timeout=60_000)
                await expect(group_row.get_by_test_id("status")).to_have_class(re.compile(r"\bok\b"), timeout=15_000)
                await expect(group_row).to_contain_text("cleaning")
                await expect(page.get_by_test_id("deadletter").first).to_contain_text("cleaning", timeout=10_000)

                cleaning.send_signal(signal.SIGTERM)
                assert cleaning.wait(timeout=30) == 0, log_path.read_text()[-2000:]
                await expect(group_row.get_by_test_id("status")).to_contain_text(
                    "down", timeout=(STALE_AFTER_S + 10) * 1000)
                await expect(clean_card.get_by_test_id("status")).to_contain_text(
                    "quiet", timeout=(STALE_AFTER_S + 6) * 1000)
        assert errors == []
    finally:
        if cleaning.poll() is None:
            cleaning.kill()
            cleaning.wait(timeout=10)
