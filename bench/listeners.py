"""The two Kafka listeners a bench compares in one run: the secured one (SASL_SSL, the
process's settings) and the stack's bench-only PLAINTEXT listener, when it has one
(`STREAMLEDGER_STACK_KAFKA_PLAINTEXT_PORT`, or `--plaintext-port`).

    for listener in listeners(args.plaintext_port):
        with listener.active():          # in-process clients and child services use it
            rates[listener.name] = await measure(...)
    print(compare(rates))
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

from devstack.settings import StackSettings
from streamledger.settings import CommonSettings


@dataclass(frozen=True)
class Listener:
    name: str  # SASL_SSL | PLAINTEXT
    bootstrap: str

    @property
    def secured(self) -> bool:
        return self.name != "PLAINTEXT"

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Point this process's settings (and so its children's) at this listener."""
        saved = {k: os.environ.get(k) for k in ("STREAMLEDGER_KAFKA_BOOTSTRAP", "STREAMLEDGER_KAFKA_SECURITY_PROTOCOL")}
        os.environ["STREAMLEDGER_KAFKA_BOOTSTRAP"] = self.bootstrap
        os.environ["STREAMLEDGER_KAFKA_SECURITY_PROTOCOL"] = self.name
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def listeners(plaintext_port: int | None = None) -> list[Listener]:
    settings = CommonSettings()
    found = [Listener(settings.kafka_security_protocol, settings.kafka_bootstrap)]
    port = plaintext_port or StackSettings().kafka_plaintext_port
    if settings.kafka_security_protocol != "PLAINTEXT" and port:
        found.append(Listener("PLAINTEXT", f"127.0.0.1:{port}"))
    return found


def compare(rates: dict[str, dict[str, float]]) -> str:
    """A table of each measure on each listener, with secured / plaintext."""
    if set(rates) != {"SASL_SSL", "PLAINTEXT"}:
        return "(one listener only: start the stack with STREAMLEDGER_STACK_KAFKA_PLAINTEXT_PORT to compare)"
    lines = [f"{'':<46} {'SASL_SSL':>10} {'PLAINTEXT':>10}  secured/plaintext"]
    for what, secured in rates["SASL_SSL"].items():
        plain = rates["PLAINTEXT"].get(what)
        if plain:
            lines.append(f"{what:<46} {secured:>10,.0f} {plain:>10,.0f}  {secured / plain:8.2f}")
    return "\n".join(lines)
