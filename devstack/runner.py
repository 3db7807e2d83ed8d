"""Run several StreamLedger services as child processes: `streamledger serve all` and the demo.

Each service is `streamledger serve NAME` in its own process (so one crash never takes
the others down), logging to the stack's log folder; stopping sends SIGTERM to all, then
SIGKILL to any that outlive the grace period.

On Kafka each service connects as its own principal (`User:<name>`, its password in the
stack's `kafka-auth/users/<name>.password`), whatever principal the parent uses.

On the ledger each service acts as its own local identity (`anchoring` and `settlement` for the
ledger service's two loops, `registry`, `inference`, `audit`, `dashboard`), each granted only
its role by the stack. `STREAMLEDGER_FABRIC_USER` or `_MSP_DIR` in the environment would make
every child act as that one identity, and those lacking their role then refuse to start.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from devstack.settings import StackSettings
from streamledger.kafka.clients import child_environment


def built_services(names: Iterable[str]) -> list[str]:
    """Those of `names` whose service is installed (`services.<name>.app` can be imported), in order."""
    return [name for name in names if _importable(f"services.{name}.app")]


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its package is missing too
        return False


def local_stack_defaults() -> dict[str, str]:
    """Settings that fit the local stack rather than a real network (the environment wins):
    settlement's margin before a hold's settle_by is the local peers' timewindow."""
    return {"STREAMLEDGER_LEDGER_SETTLE_MARGIN_SECONDS": str(StackSettings().fabric_timewindow_seconds)}


def kafka_identity(service: str) -> dict[str, str]:
    """The environment that makes a child connect to Kafka as `service`'s own principal."""
    return {k: v for k, v in child_environment(username=service).items() if k != "STREAMLEDGER_KAFKA_BOOTSTRAP"}


def _without_kafka_identity(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith("STREAMLEDGER_KAFKA_SASL_")}


@dataclass
class ServiceGroup:
    env: dict[str, str] = field(default_factory=dict)
    log_dir: Path = field(default_factory=lambda: StackSettings().log_dir)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, names: list[str]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        cli = str(Path(sys.executable).with_name("streamledger"))
        for name in names:
            log = open(self.log_dir / f"service-{name}.log", "ab")
            self.processes[name] = subprocess.Popen(
                [cli, "serve", name], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**local_stack_defaults(), **_without_kafka_identity(os.environ), **kafka_identity(name),
                     **self.env},
            )
            log.close()

    def exited(self) -> dict[str, int]:
        """Services that have stopped, with their exit codes."""
        return {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}

    def log_tail(self, name: str, lines: int = 15) -> str:
        text = (self.log_dir / f"service-{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 15.0) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.processes.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
