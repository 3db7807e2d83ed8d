"""Where model snapshots meet the ledger: the `ModelRegistry` the learner registers with.

    async with LedgerClient.connect(LedgerSettings(), service_identity="registry") as ledger:
        registry = LedgerModelRegistry(ledger)
        await registry.register("phishing-logreg", 3, sha256)
        assert await registry.is_registered("phishing-logreg", 3, sha256)

`LedgerModelRegistry` implements it over the contract's `RegisterModel` / `GetModel`
(chaincode/ledger/models.go). With `STREAMLEDGER_LEARNING_LEDGER=true`, `app.py` passes
it in: the learner registers each snapshot after writing it, refuses at restart a
snapshot that is not registered with exactly its sha256, and numbers new versions from
the latest registered one (the contract registers only latest + 1, and a version's hash can
never change on the ledger). Without it
(the default) the service runs with `registry=None`: snapshots are then verified only
against the SHA-256 carried in their own record, which catches corruption and naive
tampering but not a writer who rewrites both the bytes and the hash.

Registering needs the operator role: the service acts as the local identity `registry`
(or the one `STREAMLEDGER_FABRIC_USER` / `STREAMLEDGER_FABRIC_MSP_DIR` names), and refuses to
start when the ledger has not granted it operator. Ledger errors are not swallowed: a failed
registration or an unreadable ledger raises the gateway client's `GatewayError` (transient
ones already retried).
"""

from __future__ import annotations

from typing import Protocol

from streamledger.ledger import LedgerClient


class ModelRegistry(Protocol):
    async def register(self, model_id: str, version: int, sha256: str) -> None:
        """Record (model_id, version, sha256) on the ledger; raise if it was not committed."""

    async def is_registered(self, model_id: str, version: int, sha256: str) -> bool:
        """Whether the ledger holds exactly this (model_id, version, sha256)."""

    async def latest_version(self, model_id: str) -> int:
        """The highest version registered for `model_id`; 0 when none is."""


class LedgerModelRegistry:
    """`ModelRegistry` over the StreamLedger contract."""

    def __init__(self, ledger: LedgerClient) -> None:
        self.ledger = ledger

    async def register(self, model_id: str, version: int, sha256: str) -> None:
        # Commits before returning; the same hash again is a no-op, another hash a CONFLICT error.
        await self.ledger.register_model(model_id, version, sha256)

    async def is_registered(self, model_id: str, version: int, sha256: str) -> bool:
        model = await self.ledger.get_model(model_id, version)
        return model is not None and model["sha256"] == sha256

    async def latest_version(self, model_id: str) -> int:
        model = await self.ledger.get_model(model_id, 0)  # version 0: the highest registered
        return 0 if model is None else int(model["version"])
