"""Fixtures for the cleaning and storage services run as real subprocesses.

Each test gets its own topics, consumer groups and MongoDB database
(`pipeline_env`), so tests never see each other's data, and `services` starts
`streamledger serve NAME` with that environment and kills whatever is left at the end.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devstack.settings import StackSettings
from streamledger import kafka
from streamledger.core.contract_errors import NotFound
from streamledger.fabric import GatewayError
from streamledger.ledger import LedgerClient
from tests.integration.conftest import identity

REPO = Path(__file__).resolve().parents[3]
CLI = Path(sys.executable).parent / "streamledger"


class ServiceProcess:
    """One `streamledger serve NAME` subprocess with its log file."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.env = env
        self.log_dir = log_dir
        self.process: subprocess.Popen | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.{self.starts}.log"

    def start(self) -> ServiceProcess:
        self.starts += 1
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([str(CLI), "serve", self.name], env=self.env, cwd=REPO,
                                            stdout=log, stderr=subprocess.STDOUT)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait for a clean exit; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGUSR2)  # `serve` logs where it is (its tasks, its threads)
                time.sleep(2)
                self.process.kill()
                self.process.wait(timeout=10)
                raise AssertionError(f"{self.name} did not stop within {timeout}s of SIGTERM:\n{self.tail(150)}")
        return self.process.returncode

    async def logged(self, text: str, timeout: float = 60) -> None:
        """Wait until the current log holds `text` (e.g. the "started" event)."""
        async def found() -> bool:
            assert self.alive(), f"{self.name} exited:\n{self.tail()}"
            return self.log_path.exists() and text in self.log_path.read_text(errors="replace")

        await wait_until(found, timeout, f"{self.name} to log {text!r}", self.tail)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"



def stop_all(processes: Iterable[ServiceProcess]) -> None:
    """Stop every process still running (SIGTERM, see `ServiceProcess.stop`), even when one of them
    will not stop: its error is raised once the others are stopped, none is left running."""
    errors = []
    for process in processes:
        if process.alive():
            try:
                process.stop()
            except AssertionError as exc:
                errors.append(exc)
    if errors:
        raise errors[0]

@pytest.fixture
def pipeline_env(unique: str, tmp_path: Path, settings) -> dict[str, str]:
    """The environment of every pipeline service: each reads its own `STREAMLEDGER_<SERVICE>_*`
    variables, all pointed at the same unique topics (`topic_names`)."""
    topic = topic_names(unique)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLEDGER_")}
    env.update(kafka.child_environment(settings))
    env.update({
        "STREAMLEDGER_MONGO_URL": settings.mongo_url,
        "STREAMLEDGER_MONGO_DB": f"test_{unique}",
        "STREAMLEDGER_CLEANING_RAW_TOPIC": topic["raw"],
        "STREAMLEDGER_CLEANING_CLEAN_TOPIC": topic["clean"],
        "STREAMLEDGER_CLEANING_DEADLETTER_TOPIC": topic["deadletter"],
        "STREAMLEDGER_CLEANING_GROUP": f"cleaning-{unique}",
        "STREAMLEDGER_STORAGE_CLEAN_TOPIC": topic["clean"],
        "STREAMLEDGER_STORAGE_PREDICTIONS_TOPIC": topic["predictions"],
        "STREAMLEDGER_STORAGE_ANCHORS_TOPIC": topic["anchors"],
        "STREAMLEDGER_STORAGE_SNAPSHOTS_TOPIC": topic["snapshots"],
        "STREAMLEDGER_STORAGE_DEADLETTER_TOPIC": topic["deadletter"],
        "STREAMLEDGER_STORAGE_GROUP": f"storage-{unique}",
        "STREAMLEDGER_LEDGER_CLEAN_TOPIC": topic["clean"],
        "STREAMLEDGER_LEDGER_ANCHORS_TOPIC": topic["anchors"],
        "STREAMLEDGER_LEDGER_DEADLETTER_TOPIC": topic["deadletter"],
        # The local peers' timewindow: holds are settled before settle_by minus it.
        "STREAMLEDGER_LEDGER_SETTLE_MARGIN_SECONDS": str(StackSettings().fabric_timewindow_seconds),
        "STREAMLEDGER_LOG_LEVEL": "INFO",
    })
    return env


@pytest.fixture
def ledger_env(pipeline_env: dict[str, str], unique: str, network) -> dict[str, str]:
    """`pipeline_env` for the ledger service alone, on the Fabric network: its own topics and
    groups (every variable of the service is `STREAMLEDGER_LEDGER_*`)."""
    pipeline_env.update({
        "STREAMLEDGER_LEDGER_CLEAN_TOPIC": f"clean-{unique}",
        "STREAMLEDGER_LEDGER_ANCHORS_TOPIC": f"anchors-{unique}",
        "STREAMLEDGER_LEDGER_USAGE_TOPIC": f"usage-{unique}",
        "STREAMLEDGER_LEDGER_DEADLETTER_TOPIC": f"deadletter-{unique}",
        "STREAMLEDGER_LEDGER_ANCHOR_GROUP": f"anchoring-{unique}",
        "STREAMLEDGER_LEDGER_SETTLEMENT_GROUP": f"settlement-{unique}",
    })
    return pipeline_env


def topic_names(unique: str) -> dict[str, str]:
    """The pipeline's topics for one test, by role."""
    return {role: f"{role}-{unique}" for role in ("raw", "clean", "deadletter", "predictions", "anchors", "snapshots")}


@pytest.fixture
def services(pipeline_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[[str], ServiceProcess]]:
    started: list[ServiceProcess] = []

    def start(name: str) -> ServiceProcess:
        service = ServiceProcess(name, pipeline_env, tmp_path).start()
        started.append(service)
        return service

    yield start
    for service in started:
        if service.alive():
            service.process.kill()
            service.process.wait(timeout=10)


async def create_topics(bootstrap: str, names: list[str], config: dict[str, str] | None = None) -> None:
    """Create topics up front (with `config`, e.g. a larger max.message.bytes)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka.connection())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, 1, 1, topic_configs=config or {}) for n in names])
    finally:
        await admin.close()


async def read_all(bootstrap: str, topic: str) -> list[ConsumerRecord]:
    """Every record now on `topic` (each partition read to the end offset it had when called)."""
    records: list[ConsumerRecord] = []
    async with kafka.consumer(bootstrap) as reader:
        async for batch in kafka.read_to_end(reader, bootstrap, topic):
            records.extend(batch)
    return records


async def caught_up(bootstrap: str, group: str, topics: list[str]) -> bool:
    """Whether `group` has committed every partition of `topics` up to its end offset."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka.connection())
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    partitions = [TopicPartition(t, p) for t, p in await kafka.partitions_of(bootstrap, topics)]
    async with kafka.consumer(bootstrap) as reader:
        end = await reader.end_offsets(partitions)
    return all(end[tp] == 0 or (tp in committed and committed[tp].offset >= end[tp]) for tp in partitions)


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout: float, what: str,
                     on_timeout: Callable[[], str] = lambda: "") -> None:
    """Poll `condition` every 0.5 s until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{on_timeout()}")
        await asyncio.sleep(0.5)


# -- ledger parties (deploy/fabric/identities.yaml; tests/integration/conftest.py `identity`) --

async def account_of(ledger: LedgerClient) -> str:
    return (await ledger.who_am_i())["Account"]


async def acts_for(ledger: LedgerClient) -> str:
    """The provider account a provider identity (`settlement`, `inference`, ...) acts for."""
    return (await ledger.who_am_i())["ActsFor"]


async def made_provider(admin: LedgerClient, user: str) -> str:
    """Org1's `user` (User1..8, which hold no role of their own) made a provider acting for its own
    account by Org1's `admin`, as another provider than Org1's `provider`; its account. Granting a
    role held is a no-op, so every run may ask (always with the same acts_for: its own)."""
    async with LedgerClient.connect(identity(user)) as ledger:
        account = await account_of(ledger)
    await admin.grant_role(account, "provider", account)
    return account


async def balance_or_zero(ledger: LedgerClient, account: str) -> int:
    """The balance of `account`; 0 for one never credited (the contract says NOT_FOUND)."""
    try:
        return await ledger.balance(account)
    except GatewayError as exc:
        if isinstance(exc.contract_error, NotFound):
            return 0
        raise
