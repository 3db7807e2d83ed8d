"""A server process the stack started: its pid file, its log, start and stop.

The pid file holds the pid and a marker string that must appear in the process's command
line, so a recycled pid never makes us report (or kill) somebody else's process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path


class LocalProcess:
    def __init__(self, name: str, marker: str, run_dir: Path, log_dir: Path) -> None:
        self.name = name
        self.marker = marker
        self.pidfile = run_dir / f"{name}.pid"
        self.logfile = log_dir / f"{name}.log"

    def pid(self) -> int | None:
        """The pid of our running process, or None if it is not running."""
        try:
            pid_text, marker = self.pidfile.read_text().split("\n", 1)
            pid = int(pid_text)
        except (FileNotFoundError, ValueError):
            return None
        return pid if _is_alive(pid, marker.strip()) else None

    def was_started(self) -> bool:
        """True when a pid file is left from a start (the process may have died since)."""
        return self.pidfile.exists()

    def start(self, argv: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        with open(self.logfile, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env={**os.environ, **(env or {})},
                start_new_session=True,  # outlives the CLI; stopped as a process group
            )
        self.pidfile.write_text(f"{proc.pid}\n{self.marker}\n")
        # Between fork and exec, /proc/PID/cmdline is the parent's (or empty, for large
        # binaries): wait until the server's own command line shows, so pid() is exact.
        deadline = time.monotonic() + 5.0
        while proc.poll() is None and not _is_alive(proc.pid, self.marker) and time.monotonic() < deadline:
            time.sleep(0.01)
        return proc.pid

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the process group: SIGTERM, then SIGKILL after `timeout`. True if it ran."""
        pid = self.pid()
        if pid is not None:
            _signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.pid() is not None and time.monotonic() < deadline:
                time.sleep(0.2)
            if self.pid() is not None:
                _signal_group(pid, signal.SIGKILL)
                while self.pid() is not None:
                    time.sleep(0.1)
        self.pidfile.unlink(missing_ok=True)
        return pid is not None

    def tail(self, lines: int = 30) -> str:
        try:
            with open(self.logfile, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - 64 * 1024))
                text = log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return f"(no log at {self.logfile})"
        return "\n".join(text.splitlines()[-lines:])


def _is_alive(pid: int, marker: str) -> bool:
    proc = Path(f"/proc/{pid}")
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X") and marker in cmdline


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)
