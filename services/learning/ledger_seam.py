"""Where model snapshots meet the ledger: the `ModelRegistry` the learner registers with.

    async with LedgerClient.connect(LedgerSettings(), service_identity="registry") as ledger:
        registry = LedgerModelRegistry(ledger, registrant=(await ledger.who_am_i())["Account"])
        await registry.register("phishing-logreg", 3, sha256)
        await registry.vouch("phishing-logreg", 3, sha256)   # SnapshotNotVouched unless registered so

`LedgerModelRegistry` implements it over the contract's `RegisterModel` / `GetModel`
(chaincode/ledger/models.go). Whenever a ledger is configured (`STREAMLEDGER_LEARNING_LEDGER`,
true by default), `app.py` passes it in: the learner registers each snapshot BEFORE it publishes
it (so a reader that checks the ledger finds it registered), resumes at restart only from a
snapshot the ledger vouches for (registered with exactly its sha256, by this service's own
account: `streamledger.snapshot_vouching`), and numbers new versions from the latest registered
one (the contract registers only latest + 1, and a version's hash can never change on the
ledger). With `STREAMLEDGER_LEARNING_LEDGER=false` the service runs with `registry=None` and says
loudly that its snapshots are unverified: they are then checked only against the SHA-256 carried
in their own record, which catches corruption but not a writer who rewrites both bytes and hash.

Registering needs the operator role: the service acts as the local identity `registry`
(or the one `STREAMLEDGER_FABRIC_USER` / `STREAMLEDGER_FABRIC_MSP_DIR` names), and refuses to
start when the ledger has not granted it operator. Ledger errors are not swallowed: a failed
registration raises the gateway client's `GatewayError` (transient ones already retried).
"""

from __future__ import annotations

from typing import Protocol

from streamledger.ledger import LedgerClient
from streamledger.snapshot_vouching import SnapshotVouching


class ModelRegistry(Protocol):
    async def register(self, model_id: str, version: int, sha256: str) -> None:
        """Record (model_id, version, sha256) on the ledger; raise if it was not committed."""

    async def vouch(self, model_id: str, version: int, sha256: str) -> None:
        """Return if the ledger holds exactly this (model_id, version, sha256), registered by this
        service's account; raise `SnapshotNotVouched` (its `reason` says why) otherwise."""

    async def latest_version(self, model_id: str) -> int:
        """The highest version registered for `model_id`; 0 when none is."""


class LedgerModelRegistry:
    """`ModelRegistry` over the StreamLedger contract; `registrant` is the account whose
    registrations count (the service's own, from `WhoAmI`)."""

    def __init__(self, ledger: LedgerClient, registrant: str) -> None:
        self.ledger = ledger
        # At restart nobody else will register what is missing: one lookup, no wait.
        self.vouching = SnapshotVouching(ledger, registrant)

    async def register(self, model_id: str, version: int, sha256: str) -> None:
        # Commits before returning; the same hash again is a no-op, another hash a CONFLICT error.
        await self.ledger.register_model(model_id, version, sha256)

    async def vouch(self, model_id: str, version: int, sha256: str) -> None:
        await self.vouching.check(model_id, version, sha256)

    async def is_registered(self, model_id: str, version: int, sha256: str) -> bool:
        model = await self.ledger.get_model(model_id, version)
        return model is not None and model["sha256"] == sha256

    async def latest_version(self, model_id: str) -> int:
        model = await self.ledger.get_model(model_id, 0)  # version 0: the highest registered
        return 0 if model is None else int(model["version"])
