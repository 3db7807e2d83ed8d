"""Where model snapshots meet the ledger: the `ModelRegistry` the learner would register with.

The chaincode's `RegisterModel(model_id, version, sha256)` is the target, but the Fabric
network is not available yet, so NOTHING implements this interface and the service runs
with `registry=None`: snapshots are then verified only against the SHA-256 carried in
their own record, which catches corruption and naive tampering but not a writer who
rewrites both the bytes and the hash. Once the ledger service has a Fabric Gateway client,
an implementation goes here and `app.py` passes it in; the learner then registers each
snapshot after writing it, and refuses at restart a snapshot that is not registered.
"""

from __future__ import annotations

from typing import Protocol


class ModelRegistry(Protocol):
    async def register(self, model_id: str, version: int, sha256: str) -> None:
        """Record (model_id, version, sha256) on the ledger; raise if it was not committed."""

    async def is_registered(self, model_id: str, version: int, sha256: str) -> bool:
        """Whether the ledger holds exactly this (model_id, version, sha256)."""
