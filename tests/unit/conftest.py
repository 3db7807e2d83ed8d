"""Unit tests run without a server: the Kafka clients they build (to an address nobody answers)
connect in PLAINTEXT, so no local stack credentials are needed. A test of the secured settings
sets them itself. A fixture, not a module-level change of the environment: one pytest run over
all of `tests/` loads this file too, and the integration tests there connect with credentials."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _plaintext_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    if "STREAMLEDGER_KAFKA_SECURITY_PROTOCOL" not in os.environ:
        monkeypatch.setenv("STREAMLEDGER_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
