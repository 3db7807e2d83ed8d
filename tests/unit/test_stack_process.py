"""LocalProcess: pid files that never point at somebody else's process."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from devstack.process import LocalProcess


def make(tmp_path: Path, marker: str = "sleep-marker-xyz") -> LocalProcess:
    return LocalProcess("sleeper", marker, tmp_path / "run", tmp_path / "logs")


def test_start_stop_and_tail(tmp_path: Path) -> None:
    proc = make(tmp_path)
    assert proc.pid() is None and not proc.was_started()
    code = "import time,sys; print('hello from child', flush=True); time.sleep(60)  # sleep-marker-xyz"
    pid = proc.start([sys.executable, "-c", code])
    assert proc.pid() == pid
    deadline = time.monotonic() + 10
    while "hello from child" not in proc.tail() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "hello from child" in proc.tail()
    assert proc.stop(timeout=5) is True
    assert proc.pid() is None and not proc.was_started()
    assert proc.stop() is False


def test_a_recycled_pid_is_not_ours(tmp_path: Path) -> None:
    proc = make(tmp_path, marker="a-marker-no-process-has")
    proc.pidfile.parent.mkdir(parents=True)
    proc.pidfile.write_text(f"{Path('/proc/self').resolve().name}\na-marker-no-process-has\n")
    assert proc.pid() is None  # the pid is alive, but it is not the process we started
    assert proc.was_started()


def test_a_died_process_is_remembered_until_stopped(tmp_path: Path) -> None:
    proc = make(tmp_path)
    proc.start([sys.executable, "-c", "print('boom')  # sleep-marker-xyz"])
    deadline = time.monotonic() + 10
    while proc.pid() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.pid() is None and proc.was_started()
    proc.stop()
    assert not proc.was_started()
