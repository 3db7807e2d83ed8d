"""`Stack`: install, start, check and stop every part of the local stack, in order."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from devstack.fabric import fabric_parts, fabric_was_started
from devstack.ferretdb import FerretDBPart
from devstack.kafka import KafkaPart, kafka_nodes, kafka_nodes_started, stop_nodes
from devstack.part import Part
from devstack.settings import StackSettings


class StackError(RuntimeError):
    """A part failed to install, start or stay up; the message includes its log tail."""


@dataclass(frozen=True)
class PartStatus:
    name: str
    version: str
    pid: int | None
    port: int
    state: str  # healthy | starting | stopped | died | foreign
    detail: str = ""


class Stack:
    def __init__(self, settings: StackSettings | None = None, say: Callable[[str], None] = print,
                 parts: Sequence[str] | None = None) -> None:
        """`parts`: the names of the parts to manage (say, only the Kafka nodes); default all."""
        self.settings = settings or StackSettings()
        self.say = say
        self.parts: list[Part] = [*kafka_nodes(self.settings), FerretDBPart(self.settings)]
        if self.settings.fabric:
            self.parts += fabric_parts(self.settings)
        self.chosen = parts is not None
        if parts is not None:
            self.parts = [p for p in self.parts if p.name in parts]

    @property
    def extra_parts(self) -> list[Part]:
        """Fabric is opt-in for `up`; while it has been started (pid files), `down`, `status` and
        `logs` see it without the flag; so, likewise, a Kafka of another broker count than asked.
        Asked each time, so a long-lived Stack stays true."""
        if self.chosen:
            return []
        names = {p.name for p in self.parts}
        kafka: list[Part] = [p for p in kafka_nodes_started(self.settings) if p.name not in names]
        if self.settings.fabric or not fabric_was_started(self.settings):
            return kafka
        return kafka + fabric_parts(self.settings)

    def present_parts(self) -> list[Part]:
        """The parts `down`, `status` and `logs` see: ours and the extra ones; a Kafka of another
        size that was started stands in for ours, unless ours was started too."""
        extra = self.extra_parts
        ours = self.parts
        if any(isinstance(p, KafkaPart) for p in extra):
            ours = [p for p in ours if not isinstance(p, KafkaPart) or p.process.was_started()]
        return ours + extra

    def part(self, name: str) -> Part:
        for part in self.present_parts():
            if part.name == name:
                return part
        raise KeyError(f"no part named {name!r}; the stack has {', '.join(p.name for p in self.parts)}")

    def install(self) -> None:
        """Install every missing part, in parallel (first run only; then cached)."""
        # One install per kind (a cluster's Kafka nodes share their jars).
        missing = list({(type(p), p.version): p for p in self.parts if not p.is_installed()}.values())
        for part in missing:
            self.say(f"installing {part.name} {part.version} into {self.settings.home} (first run only)")
        with ThreadPoolExecutor(max_workers=max(1, len(missing))) as pool:
            for part, future in [(p, pool.submit(p.install)) for p in missing]:
                try:
                    future.result()
                except Exception as exc:
                    raise StackError(f"{part.name}: {exc}") from exc

    def up(self) -> list[PartStatus]:
        other_kafka = [p.name for p in self.extra_parts if isinstance(p, KafkaPart) and p.process.pid() is not None]
        if other_kafka:
            raise StackError(f"Kafka runs as {', '.join(other_kafka)}, not as {self.settings.kafka_brokers} node(s): "
                             "`streamledger stack down` first (each size keeps its own data), or ask for that size")
        self.install()
        # A cluster's nodes start together: none answers before a majority of the quorum runs.
        kafka = [p for p in self.parts if isinstance(p, KafkaPart)]
        with ThreadPoolExecutor(max_workers=max(1, len(kafka))) as pool:
            list(pool.map(self._launch, kafka))
        for part in self.parts:
            self._start(part)
        return self.status()

    def _start(self, part: Part) -> None:
        self._launch(part)
        self._wait_healthy(part)
        part.settle()

    def _launch(self, part: Part) -> None:
        """Start `part` unless it runs (prepared first; restarted if it died)."""
        if part.process.pid() is None:
            if part.port_in_use():
                raise StackError(
                    f"{part.name}: port {part.port} is taken by a process this stack did not start; "
                    "stop it or set another port (see README, Configuration)"
                )
            if part.process.was_started():
                self.say(f"{part.name} had died; restarting it. Its last log lines:\n{part.process.tail(10)}")
            part.prepare()
            argv, env = part.command()
            part.process.start(argv, env=env, cwd=self.settings.home)
            self.say(f"started {part.name} (pid {part.process.pid()}), waiting for it to answer")

    def _wait_healthy(self, part: Part) -> None:
        deadline = time.monotonic() + self.settings.start_timeout
        while time.monotonic() < deadline:
            if part.process.pid() is None:
                raise StackError(f"{part.name} exited during start-up. Last log lines:\n{part.process.tail()}")
            if part.healthy():
                return
            time.sleep(0.5)
        raise StackError(
            f"{part.name} did not answer on 127.0.0.1:{part.port} within {self.settings.start_timeout:.0f}s. "
            f"Last log lines:\n{part.process.tail()}"
        )

    def down(self) -> list[str]:
        """Stop what this stack started, last part first; the names of those that ran."""
        parts = list(reversed(self.present_parts()))
        kafka = [p for p in parts if isinstance(p, KafkaPart)]
        stopped = [p.name for p in parts if p not in kafka and p.process.stop()]
        return stopped + stop_nodes(kafka)  # last, and a cluster's nodes together

    def status(self) -> list[PartStatus]:
        return [self._status(part) for part in self.present_parts()]

    def _status(self, part: Part) -> PartStatus:
        pid = part.process.pid()
        if pid is None:
            if part.process.was_started():
                return PartStatus(part.name, part.version, None, part.port, "died",
                                  f"not running; last log lines:\n{part.process.tail(10)}")
            if part.port_in_use():
                return PartStatus(part.name, part.version, None, part.port, "foreign",
                                  "port taken by a process this stack did not start")
            return PartStatus(part.name, part.version, None, part.port, "stopped")
        return PartStatus(part.name, part.version, pid, part.port, "healthy" if part.healthy() else "starting")
