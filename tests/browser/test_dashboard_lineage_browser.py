"""The dashboard's issue-25 panels in a real headless Chromium: bills with their receipts, each
model's versions, "–" for a model that learned nothing, the learning service's member-less group
shown connected, and the lineage panel asking a real `streamledger serve audit` (an unknown event,
a malformed one, an unknown hold's bill, then the audit API gone), and turning the pages of a long
trace (the page's answers given by the browser itself: what is tested is the page's asking).

Records go to the dashboard's own (unique) topics with the Avro codec; the audit API reads a
fresh database and the local Fabric network.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from aiokafka import TopicPartition
from playwright.async_api import BrowserContext, expect

from devstack.fabric import FabricNetwork
from streamledger import kafka
from streamledger.avro import AvroCodec, SchemaRegistry
from tests.browser.conftest import CLI, REPO, free_port, running_dashboard
from tests.browser.test_dashboard_browser import open_page

pytestmark = pytest.mark.integration

CODEC = AvroCodec(SchemaRegistry.from_dir())
HOLD = "0123456789abcdef0123456789abcdef"


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_bills_versions_idle_models_and_a_learning_group_without_members(
        chromium: BrowserContext, bootstrap: str, unique: str, tmp_path: Path) -> None:
    learning_group = f"dash-learning-{unique}"
    async with running_dashboard(bootstrap, unique, tmp_path,
                                 dashboard_service_groups=json.dumps({learning_group: "learning"})) as dashboard:
        topics = dashboard.topics
        page, errors = await open_page(chromium, dashboard.url)
        async with kafka.producer(bootstrap) as producer:
            for model_id, position in (("idle-model", 0), ("busy-model", 40)):
                await producer.send(topics["model_metrics_topic"], CODEC.encode("ModelMetrics", {
                    "model_id": model_id, "version": 1, "position": position, "ts": now_ms(),
                    "metrics": {"Accuracy": 0.0 if position == 0 else 0.875}, "drift": None}))
            await producer.send(topics["snapshots_topic"], CODEC.encode("ModelSnapshot", {
                "model_id": "busy-model", "version": 1, "sha256": "ab" * 32, "format": "pickle", "offsets": [],
                "events_seen": 40, "metrics": {}, "model": b"", "created": now_ms()}))
            for request_id, units, receipt in (("r1", 2, (0, 0)), ("r2", 3, (2, 1)), ("r2", 3, (2, 1))):
                await producer.send(topics["usage_topic"], CODEC.encode("UsageRecord", {
                    "hold_id": HOLD, "request_id": request_id, "client": "Org2MSP::CN=demo,OU=client",
                    "model_id": "busy-model", "model_version": 1, "units": units, "price": 2,
                    "receipt_units": receipt[0], "receipt_sequence": receipt[1], "receipt_signature": "",
                    "ts": now_ms()}), key=HOLD.encode())
            await producer.flush()
        # The learning service's way: partitions assigned by hand, offsets committed, no group member.
        learner = kafka.consumer(bootstrap, group_id=learning_group)
        await learner.start()
        try:
            tp = TopicPartition(topics["clean_topic"], 0)
            learner.assign([tp])
            await learner.commit({tp: 0})
        finally:
            await learner.stop()

        idle, busy = page.get_by_test_id("model-idle-model"), page.get_by_test_id("model-busy-model")
        await expect(idle.get_by_test_id("metric-value")).to_have_text("–Accuracy", timeout=15_000)
        await expect(busy.get_by_test_id("metric-value")).to_have_text("0.875Accuracy")
        version = busy.get_by_test_id("version")
        await expect(version).to_have_attribute("data-version", "1")
        await expect(version.get_by_test_id("version-ledger")).to_have_text("ledger watcher off")
        row = page.locator(f'[data-testid="bill-row"][data-hold="{HOLD}"]')
        await expect(row).to_contain_text("2 / 5", timeout=15_000)  # r2 delivered twice, counted once
        await expect(row).to_contain_text("2 #1")  # the latest receipt the client signed
        await expect(row).to_contain_text("busy-model v1")
        await expect(row.get_by_test_id("bill-verdict")).to_have_text("not read yet")  # the ledger watcher is off
        group = page.get_by_test_id(f"group-{learning_group}")
        await expect(group).to_contain_text("learning", timeout=20_000)
        await expect(group.get_by_test_id("consumers")).to_have_text("connected")
        await page.wait_for_timeout(1000)
        assert errors == []


def start_audit(env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([str(CLI), "serve", "audit"], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


async def test_the_lineage_panel_traces_through_the_real_audit_api_and_says_when_it_is_gone(
        chromium: BrowserContext, bootstrap: str, unique: str, tmp_path: Path, network: FabricNetwork) -> None:
    http_port = free_port()
    audit_env = {**os.environ, "STREAMLEDGER_AUDIT_HTTP_PORT": str(http_port),
                 "STREAMLEDGER_AUDIT_GRPC_PORT": str(free_port()), "STREAMLEDGER_MONGO_DB": f"test_lineage_{unique}"}
    audit = start_audit(audit_env, tmp_path / "audit.log")
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            deadline = time.monotonic() + 60
            while True:
                assert audit.poll() is None, (tmp_path / "audit.log").read_text()[-2000:]
                try:
                    if (await client.get(f"http://127.0.0.1:{http_port}/healthz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the audit API did not start"
                await asyncio.sleep(0.3)
        async with running_dashboard(bootstrap, unique, tmp_path,
                                     dashboard_audit_url=f"http://127.0.0.1:{http_port}") as dashboard:
            page, errors = await open_page(chromium, dashboard.url)
            await page.get_by_test_id("lineage-tenant").fill("acme")
            await page.get_by_test_id("lineage-event").fill(f"no-such-event-{unique}")
            await page.get_by_test_id("lineage-submit").click()
            await expect(page.get_by_test_id("trace-status")).to_have_text("UNKNOWN", timeout=30_000)
            await expect(page.get_by_test_id("trace-detail")).to_contain_text("no stored record")
            await expect(page.locator('[data-testid="trace-link"][data-link="clean"]')).to_contain_text("UNKNOWN")

            await page.get_by_test_id("lineage-event").fill("x" * 300)
            await page.get_by_test_id("lineage-submit").click()
            error = page.get_by_test_id("lineage").get_by_test_id("audit-error")
            await expect(error).to_contain_text("INVALID_ARGUMENT", timeout=30_000)
            await expect(error).to_contain_text("event_id")

            # An unknown hold's bill, from the ledger, through the same audit API.
            bill = await page.evaluate("id => fetch('/api/bills/' + id).then(r => r.json())", HOLD)
            assert bill["status"] == "NOT_FOUND", bill

            audit.terminate()
            audit.wait(timeout=30)
            await page.get_by_test_id("lineage-event").fill("e1")
            await page.get_by_test_id("lineage-submit").click()
            await expect(error).to_contain_text("API_UNREACHABLE", timeout=30_000)
            await expect(page.get_by_test_id("trace-status")).to_have_count(0)  # never a verdict
            assert all("Failed to load resource" in e for e in errors), errors  # the 400 and 502 answers
    finally:
        if audit.poll() is None:
            audit.kill()
            audit.wait(timeout=10)


def a_trace_page(page: int) -> dict:
    """Page `page` of a VERIFIED trace of acme/e1 whose three covering versions come two a page."""
    versions = {1: [1, 2], 2: [3]}[page]
    holds = {1: ["hold-a"], 2: ["hold-b"]}[page]
    return {"tenant": "acme", "event_id": "e1", "status": "VERIFIED", "detail": "on the ledger", "problems": [],
            "notes": [], "links": [{"link": "usage", "verdict": "SERVED", "detail": f"page {page}'s usage"}],
            "models": [{"model_id": "m", "version": v, "status": "MATCH", "predictions": 1, "units": 2,
                        "holds": holds} for v in versions],
            "holds": [{"hold_id": h, "requests": len(versions), "status": "SETTLED", "charged": 4} for h in holds],
            "page": {"limit": 2, "page": page, "versions": 3, "pages": 2}}


async def test_the_lineage_panel_turns_the_pages_of_a_long_trace(
        chromium: BrowserContext, bootstrap: str, unique: str, tmp_path: Path) -> None:
    asked: list[dict[str, list[str]]] = []
    async with running_dashboard(bootstrap, unique, tmp_path) as dashboard:
        page, errors = await open_page(chromium, dashboard.url)

        async def answer(route) -> None:
            query = parse_qs(urlparse(route.request.url).query)
            asked.append(query)
            await route.fulfill(json=a_trace_page(int(query["page"][0])))
        await page.route("**/api/trace?*", answer)

        await page.get_by_test_id("lineage-tenant").fill("acme")
        await page.get_by_test_id("lineage-event").fill("e1")
        await page.get_by_test_id("lineage-submit").click()
        models = page.get_by_test_id("trace-model")
        await expect(models).to_have_count(2, timeout=15_000)
        await expect(page.get_by_test_id("trace-previous")).to_have_count(0)
        await page.get_by_test_id("trace-next").click()
        await expect(models).to_have_count(1)
        await expect(models).to_contain_text("m v3")
        await expect(page.get_by_test_id("trace-hold")).to_contain_text("hold-b")
        await expect(page.get_by_test_id("trace-next")).to_have_count(0)
        await page.get_by_test_id("trace-previous").click()
        await expect(models).to_have_count(2)
        await expect(page.get_by_test_id("trace-hold")).to_contain_text("hold-a")
        assert errors == []
    assert [(q["tenant"], q["event_id"], q["page"]) for q in asked] == [
        (["acme"], ["e1"], ["1"]), (["acme"], ["e1"], ["2"]), (["acme"], ["e1"], ["1"])]
