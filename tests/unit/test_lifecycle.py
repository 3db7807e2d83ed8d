"""`lifecycle.serve`: one way to start, stop and fail, for every service (in child processes:
`serve` owns the process's signals and exit code)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest

SERVICE = """
import asyncio, os, sys
from pydantic_settings import BaseSettings, SettingsConfigDict
from streamledger.lifecycle import Loop, StartError, serve

class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEMO_")
    port: int = 1
    behaviour: str = "serve"

class Demo(Loop):
    def __init__(self, settings):
        super().__init__()
        self.settings = settings

    async def start(self):
        if self.settings.behaviour == "refuse":
            raise StartError("demo_port: nothing listens at 1; set DEMO_PORT")
        if self.settings.behaviour == "unreachable":
            raise ConnectionRefusedError("connect to 127.0.0.1:1 refused")
        print("ready", flush=True)

    async def run(self, stopping):
        if self.settings.behaviour == "crash":
            raise RuntimeError("input topic deleted")
        await stopping.wait()
        print("flushed", flush=True)

    async def stop(self):
        print("closed", flush=True)

serve("demo", Settings, Demo)
"""


def run(env: dict[str, str], terminate: bool = False, signals: tuple[int, ...] = ()) -> subprocess.CompletedProcess:
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SERVICE)], env={**_base_env(), **env},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if terminate:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        time.sleep(0.2)  # `started` is logged right after start returns; a signal before it is fine too
        for sig in signals:
            process.send_signal(sig)
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("DEMO_")}


def logged(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_sigterm_stops_the_service_cleanly_with_exit_0() -> None:
    done = run({}, terminate=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["flushed", "closed"]  # the loop finished, then stop() ran
    assert [e["event"] for e in logged(done.stderr)] == ["started", "stopped"]


@pytest.mark.parametrize(("env", "why"), [
    ({"DEMO_PORT": "not-a-number"}, "demo: cannot start: port: Input should be a valid integer"),
    ({"DEMO_BEHAVIOUR": "refuse"}, "demo: cannot start: demo_port: nothing listens at 1; set DEMO_PORT"),
    ({"DEMO_BEHAVIOUR": "unreachable"}, "demo: cannot start: ConnectionRefusedError: connect to 127.0.0.1:1 refused"),
])
def test_a_failed_start_is_one_line_naming_the_cause_and_exit_1(env: dict[str, str], why: str) -> None:
    done = run(env)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(why), done.stderr
    assert "Traceback" not in done.stderr


def test_a_service_that_fails_while_running_is_logged_and_exits_1() -> None:
    done = run({"DEMO_BEHAVIOUR": "crash"})
    assert done.returncode == 1
    assert done.stdout.split() == ["ready", "closed"]  # stopped all the same
    failed = [e for e in logged(done.stderr) if e["event"] == "failed"]
    assert len(failed) == 1 and failed[0]["errors"] == ["RuntimeError: input topic deleted"], done.stderr


def test_sigusr2_shows_where_the_process_is_and_it_carries_on() -> None:
    done = run({}, terminate=True, signals=(signal.SIGUSR2,))
    assert done.returncode == 0, done.stderr
    tasks = [e for e in logged(done.stderr) if e["event"] == "task"]
    assert any(e["task"] == "Demo" and "line 26, in run" in e["stack"] for e in tasks), done.stderr  # where run waits
    assert "Current thread" in done.stderr  # faulthandler: every thread's stack, even with the loop stuck
    assert [e["event"] for e in logged(done.stderr) if e["event"] != "task"] == ["started", "stopped"]
