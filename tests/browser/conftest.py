"""Fixtures for the dashboard's tests in a real headless Chromium (Debian's `chromium`).

`dashboard` runs `streamledger serve dashboard` as a subprocess on its own port, watching
topics unique to the test, with its ledger watcher off; `ledger_dashboard` is the same
watching the real local Fabric network (`network` brings it up); `chromium` is a fresh
headless browser profile per test, driven by Playwright over the system binary
(Playwright's own browser downloads are never used).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.async_api import BrowserContext, async_playwright

from devstack.fabric import FabricNetwork
from streamledger import kafka
from tests.integration.conftest import bootstrap, network, settings, stack, unique  # noqa: F401  (shared fixtures)

REPO = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).parent / "streamledger"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STALE_AFTER_S = 4


@dataclass
class Dashboard:
    url: str
    topics: dict[str, str]
    """What the topic carries (raw_topic, ...; the setting is dashboard_raw_topic) -> the unique
    topic this dashboard watches."""
    group: str
    """A consumer group id the dashboard labels as the `cleaning` service."""
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = None

    async def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([str(CLI), "serve", "dashboard"], env=self.env, cwd=REPO,
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline:
                assert self.process.poll() is None, f"dashboard exited: {self.log_path.read_text()[-2000:]}"
                try:
                    state = (await client.get(f"{self.url}/api/state")).json()
                    if state["kafka"]["connected"]:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError(f"dashboard not serving with Kafka read within 30 s: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> int:
        """SIGTERM, as an operator would; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
                raise AssertionError("dashboard did not exit within 20 s of SIGTERM")
        return self.process.returncode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def running_dashboard(bootstrap: str, unique: str, tmp_path: Path,
                            **env_overrides: str) -> AsyncIterator[Dashboard]:
    """`serve dashboard` on its own port and unique topics; `env_overrides` are STREAMLEDGER_* settings."""
    names = ("raw", "clean", "deadletter", "predictions", "snapshots", "model_metrics", "usage", "anchors")
    topics = {f"{name}_topic": f"dash-{name}-{unique}" for name in names}
    await kafka.provision(bootstrap, [kafka.TopicSpec(name) for name in topics.values()])
    port = free_port()
    group = f"dash-cleaning-{unique}"
    env = {**os.environ, **{f"STREAMLEDGER_DASHBOARD_{k.upper()}": v for k, v in topics.items()},
           "STREAMLEDGER_KAFKA_BOOTSTRAP": bootstrap,
           "STREAMLEDGER_DASHBOARD_PORT": str(port),
           "STREAMLEDGER_DASHBOARD_STALE_AFTER_SECONDS": str(STALE_AFTER_S),
           "STREAMLEDGER_DASHBOARD_LAG_SECONDS": "1",
           "STREAMLEDGER_DASHBOARD_WINDOW_SECONDS": "45",
           "STREAMLEDGER_DASHBOARD_GROUP_RECHECK_SECONDS": "2",
           "STREAMLEDGER_DASHBOARD_SERVICE_GROUPS": json.dumps({group: "cleaning"}),
           # Off unless a test asks: the Kafka-only tests must not depend on the Fabric network.
           "STREAMLEDGER_DASHBOARD_LEDGER": "false",
           **{f"STREAMLEDGER_{k.upper()}": v for k, v in env_overrides.items()}}
    board = Dashboard(f"http://127.0.0.1:{port}", topics, group, env, tmp_path / "dashboard.log")
    await board.start()
    try:
        yield board
    finally:
        code = board.stop()
        assert code == 0, f"dashboard exited {code} on SIGTERM: {board.log_path.read_text()[-2000:]}"


@pytest.fixture
async def dashboard(bootstrap: str, unique: str, tmp_path: Path) -> AsyncIterator[Dashboard]:  # noqa: F811
    """A dashboard with its ledger watcher off."""
    async with running_dashboard(bootstrap, unique, tmp_path) as board:
        yield board


@pytest.fixture
async def ledger_dashboard(bootstrap: str, unique: str, tmp_path: Path,  # noqa: F811
                           network: FabricNetwork) -> AsyncIterator[Dashboard]:
    """A dashboard watching the real local Fabric network, reading as its own identity
    `dashboard` (Org1, auditor)."""
    async with running_dashboard(bootstrap, unique, tmp_path, dashboard_ledger="true", fabric_user="dashboard",
                                 dashboard_ledger_poll_seconds="0.5",
                                 dashboard_ledger_recheck_seconds="1") as board:
        yield board


@pytest.fixture
async def chromium() -> AsyncIterator[BrowserContext]:
    """A fresh headless Chromium profile (its own user-data dir) per test."""
    assert CHROMIUM.exists(), "Debian's chromium is missing: run deploy/system-deps.sh (apt-get install chromium)"
    with tempfile.TemporaryDirectory(prefix="dash-chromium-") as profile:
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                profile, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
                viewport={"width": 1440, "height": 1000}, device_scale_factor=1)
            try:
                yield context
            finally:
                await context.close()
