"""`streamledger demo` (`make demo`): the command brings the stack up with Fabric and runs the
demo; Ctrl-C ends the demo's live stream as --seconds does, so it still prints its ending (the
client's holds, one trace, one bill), and a second Ctrl-C stops at once. No stack, no services."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from devstack.settings import StackSettings

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_command_brings_the_stack_up_with_fabric_then_runs_the_demo(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import devstack
    import devstack.demo
    import devstack.runner
    from services.cli import app

    asked: list[StackSettings] = []
    ran: list[tuple[float | None, float, list[str]]] = []

    class RecordingStack:
        def __init__(self, settings: StackSettings, say) -> None:
            asked.append(settings)

        def up(self) -> list:
            return []

    async def run_demo(settings, console, seconds, rate, names) -> None:
        ran.append((seconds, rate, names))

    monkeypatch.setattr(devstack, "Stack", RecordingStack)
    monkeypatch.setattr(devstack.demo, "run_demo", run_demo)
    monkeypatch.setattr(devstack.runner, "built_services", lambda services: list(services))
    monkeypatch.setenv("STREAMLEDGER_STACK_HOME", str(tmp_path))
    monkeypatch.delenv("STREAMLEDGER_STACK_KAFKA_BROKERS", raising=False)
    result = CliRunner().invoke(app, ["demo", "--seconds", "5", "--rate", "20"])
    assert result.exit_code == 0, result.output
    assert [(s.fabric, s.kafka_brokers) for s in asked] == [(True, 1)]
    [(seconds, rate, names)] = ran
    assert (seconds, rate) == (5.0, 20.0) and "inference" in names and "audit" in names


CTRL_C = """
import asyncio
from devstack.demo import ctrl_c_ends

async def main():
    with ctrl_c_ends(asyncio.Event()) as interrupted:
        print("live", flush=True)
        await asyncio.wait_for(interrupted.wait(), 60)
    print("ending printed", flush=True)
    await asyncio.sleep(60)

try:
    asyncio.run(main())
except KeyboardInterrupt:
    print("stopped", flush=True)
"""


def test_ctrl_c_ends_the_live_stream_so_the_ending_prints_and_a_second_one_stops_at_once() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    demo = subprocess.Popen([sys.executable, "-c", CTRL_C], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert demo.stdout.readline() == "live\n", demo.stderr.read() if demo.poll() is not None else ""
        demo.send_signal(signal.SIGINT)
        assert demo.stdout.readline() == "ending printed\n"  # not cancelled: asyncio.run's handler would
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert (out, demo.returncode) == ("stopped\n", 0), err
