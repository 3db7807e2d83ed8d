"""One server of the local stack: how to install it, start it and tell that it is healthy."""

from __future__ import annotations

import hashlib
import socket
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

from devstack.process import LocalProcess
from devstack.settings import StackSettings


class InstallError(RuntimeError):
    """A part could not be downloaded or built; the message carries the tool's output."""


class Part(ABC):
    name: str
    marker: str  # a string unique to this server's command line

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.process = LocalProcess(self.name, self.marker, settings.run_dir, settings.log_dir)

    @property
    @abstractmethod
    def port(self) -> int: ...

    @property
    @abstractmethod
    def version(self) -> str: ...

    @abstractmethod
    def is_installed(self) -> bool: ...

    @abstractmethod
    def install(self) -> None:
        """Download or build into the cache; a second call does nothing."""

    @abstractmethod
    def command(self) -> tuple[list[str], dict[str, str]]:
        """The argv and extra environment that run the server (after `prepare`)."""

    def prepare(self) -> None:
        """One-off work before the first start (for example formatting storage)."""

    @abstractmethod
    def healthy(self) -> bool:
        """True when the server answers a real request."""

    def settle(self) -> None:
        """Once healthy (just started or found running): finish what health does not show
        (a Fabric orderer joining its channel)."""

    def port_in_use(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0


def content_key(*files: Path) -> str:
    """A short hash of the files that pin a part's version: a new pin gets a new cache dir."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def run_tool(argv: Sequence[str], what: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    """Run an install tool (mvn, go); on failure raise InstallError with its output's tail."""
    result = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        raise InstallError(f"{what} failed (exit {result.returncode}): {' '.join(argv)}\n{tail}")
