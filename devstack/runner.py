"""Run several StreamLedger services as child processes: `streamledger serve all`, the demo, drills.

    group = ServiceGroup(env={...})                  # extra environment of every child
    group.start(["ingestion", "storage"], replicas=2)  # keys "ingestion-1", "ingestion-2", ...
    group.kill("ingestion-2")                         # SIGKILL; returns once it is dead
    group.restart("ingestion-2")                      # same command and environment, same log
    group.stop()                                      # SIGTERM to all, SIGKILL after the grace

Each service is `streamledger serve NAME` in its own process (so one crash never takes the
others down), logging to `<log_dir>/service-<key>.log`. A service run once is keyed by its name
(`ingestion`), each of several replicas by `<name>-<i>`, i from 1 (`ingestion-1`). Replicas of a
service share its ports (`STREAMLEDGER_SHARE_PORT`: SO_REUSEPORT, the kernel spreads connections
over them) and its consumer groups (Kafka spreads partitions over them). A service in
`SINGLETONS` runs once whatever `replicas` says.

On Kafka each service connects as its own principal (`User:<name>`, its password in the
stack's `kafka-auth/users/<name>.password`), whatever principal the parent uses;
`kafka_auth_dir` points the children at another local stack's Kafka credentials (a cluster run in
a home of its own), while everything else (Fabric identities) stays the stack home's. The
children's bootstrap is what `env` says, else the parent's `STREAMLEDGER_KAFKA_BOOTSTRAP` (unless
`kafka_auth_dir` names another stack), else the one the stack recorded: all its nodes.

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from devstack.settings import StackSettings
from streamledger.kafka.clients import child_environment

SINGLETONS = frozenset({"dashboard"})
"""Services that run once however many replicas are asked for: the dashboard keeps one view of its
own. (Learning and the ledger service are replicated too: each shards its work over a consumer group.)"""


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


def kafka_identity(service: str, auth_dir: Path | None = None) -> dict[str, str]:
    """The environment that makes a child connect to Kafka as `service`'s own principal (with the
    credentials in `auth_dir`, by default the local stack's)."""
    return {k: v for k, v in child_environment(username=service, auth_dir=auth_dir).items()
            if k != "STREAMLEDGER_KAFKA_BOOTSTRAP"}


def _without_kafka_identity(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith("STREAMLEDGER_KAFKA_SASL_")}


def serve_command(name: str) -> list[str]:
    """`streamledger serve NAME`, with this interpreter's `streamledger`."""
    return [str(Path(sys.executable).with_name("streamledger")), "serve", name]


def replica_keys(name: str, replicas: int) -> list[str]:
    """The keys of `name`'s processes: its name when it runs once, else `<name>-1` .. `<name>-N`."""
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, got {replicas}")
    return [name] if replicas == 1 else [f"{name}-{i}" for i in range(1, replicas + 1)]


@dataclass
class ServiceGroup:
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment of every child (it wins over the parent's and the group's own)."""
    log_dir: Path = field(default_factory=lambda: StackSettings().log_dir)
    kafka_auth_dir: Path | None = None
    """Another local stack's Kafka credentials folder (`<home>/data/kafka-auth`) for the children:
    its CA, each principal's password file and its recorded bootstrap (the parent's
    `STREAMLEDGER_KAFKA_BOOTSTRAP` is not passed on; `env` may name one); None: the local stack's."""
    command: Callable[[str], list[str]] = serve_command
    """The argv that runs a service (a test may run a trivial child instead)."""
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    """Every process started, by key (the latest of a restarted one)."""
    launches: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)
    """Each key's argv and environment, as `restart` runs it again."""

    def start(self, names: Iterable[str], replicas: int = 1) -> list[str]:
        """Start `replicas` processes of each of `names` (one of a singleton), in order; their keys."""
        started = []
        for name in names:
            keys = replica_keys(name, 1 if name in SINGLETONS else replicas)
            if taken := [k for k in keys if k in self.processes]:
                raise ValueError(f"{', '.join(taken)} already started in this group")
            for key in keys:
                self.launches[key] = (self.command(name), self._environment(name, shared=len(keys) > 1))
                self._launch(key)
                started.append(key)
        return started

    def _environment(self, name: str, shared: bool) -> dict[str, str]:
        inherited = _without_kafka_identity(os.environ)
        if self.kafka_auth_dir is not None:  # another stack's Kafka: the parent's bootstrap is not its
            inherited.pop("STREAMLEDGER_KAFKA_BOOTSTRAP", None)
        replicas = {"STREAMLEDGER_SHARE_PORT": "true"} if shared else {}
        return {**local_stack_defaults(), **inherited, **kafka_identity(name, self.kafka_auth_dir), **replicas,
                **self.env}

    def _launch(self, key: str) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        argv, env = self.launches[key]
        with open(self.log_file(key), "ab") as log:
            self.processes[key] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL, env=env)

    def keys(self, name: str) -> list[str]:
        """The keys of service `name`'s processes, in start order."""
        return [key for key in self.processes
                if key == name or key.startswith(f"{name}-") and key.removeprefix(f"{name}-").isdigit()]

    def pids(self) -> dict[str, int]:
        """The pid of each process still running, by key."""
        return {key: p.pid for key, p in self.processes.items() if p.poll() is None}

    def kill(self, key: str, timeout: float = 10.0) -> int:
        """SIGKILL the process `key` (its own children, e.g. a record writer, are left to notice);
        return its exit status once it is dead (`subprocess.TimeoutExpired` after `timeout`)."""
        process = self.processes[key]
        if process.poll() is None:
            process.kill()
        return process.wait(timeout)

    def restart(self, key: str) -> int:
        """Run `key` again, with the command and environment it started with, appending to its log
        (it must have exited: `kill` it first); the new pid."""
        if self.processes[key].poll() is None:
            raise RuntimeError(f"{key} (pid {self.processes[key].pid}) is still running; kill or stop it first")
        self._launch(key)
        return self.processes[key].pid

    def exited(self) -> dict[str, int]:
        """Processes that have stopped, with their exit codes."""
        return {key: p.returncode for key, p in self.processes.items() if p.poll() is not None}

    def log_file(self, key: str) -> Path:
        return self.log_dir / f"service-{key}.log"

    def log_tail(self, key: str, lines: int = 15) -> str:
        text = self.log_file(key).read_text(errors="replace")
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
