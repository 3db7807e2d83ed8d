"""`streamledger stack` as an operator uses it: up twice, status, a killed Kafka, down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devstack import Stack
from streamledger import kafka
from tests.integration.test_stack_kafka import consume_all

pytestmark = pytest.mark.integration
CLI = [str(Path(sys.executable).with_name("streamledger"))]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "stack", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})


def test_up_twice_starts_nothing_new(stack: Stack) -> None:
    before = {s.name: s.pid for s in stack.status()}
    result = cli("up")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "started" not in result.stdout
    assert {s.name: s.pid for s in stack.status()} == before
    status = cli("status")
    assert status.returncode == 0
    for s in stack.status():
        assert s.state == "healthy"
        assert str(s.pid) in status.stdout and f"127.0.0.1:{s.port}" in status.stdout


@pytest.mark.fault
async def test_killed_kafka_is_reported_and_comes_back_with_its_data(stack: Stack, bootstrap: str, unique: str) -> None:
    topic = f"test.survives.{unique}"
    await kafka.provision(bootstrap, [kafka.TopicSpec(topic)])
    async with kafka.producer(bootstrap) as producer:
        for i in range(50):
            await producer.send(topic, f"m{i}".encode())
        await producer.flush()

    broker = stack.part("kafka")
    pid = broker.process.pid()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while broker.process.pid() is not None and time.monotonic() < deadline:
        time.sleep(0.1)

    status = cli("status")
    assert status.returncode == 1
    assert "died" in status.stdout and "kafka" in status.stdout

    up = cli("up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "kafka had died" in up.stdout
    assert broker.process.pid() not in (None, pid)
    records = await consume_all(bootstrap, topic, 50, timeout=60)
    assert [r.value for r in records] == [f"m{i}".encode() for i in range(50)]


@pytest.mark.fault
def test_down_leaves_no_process_and_up_restores(stack: Stack) -> None:
    pids = [s.pid for s in stack.status()]
    result = cli("down")
    assert result.returncode == 0 and "kafka" in result.stdout and "ferretdb" in result.stdout
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert all(s.state == "stopped" for s in stack.status())
    assert not any(p.port_in_use() for p in stack.parts)
    up = cli("up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert all(s.state == "healthy" for s in stack.status())
