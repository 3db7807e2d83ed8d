"""A snapshot is unpickled only if the ledger vouches for it: the model registry's record of
(model id, version) holds exactly its SHA-256 and was registered by the model registrant.

    vouching = SnapshotVouching(ledger, registrant="Org1MSP::CN=registry@org1...", wait=wait_for(10.0))
    await vouching.check("phishing-logreg", 7, sha256)   # raises SnapshotNotVouched(reason, message)

The hash in a ModelSnapshot record only proves the bytes were not corrupted: whoever can write
the snapshots topic can rewrite both. The ledger's `GetModel` cannot be rewritten that way, and
only an operator may register a model (the contract checks it); `registrant` pins the one operator
account whose registrations count (the learning service's identity, `registry` on the local stack).

The learning service registers a snapshot on the ledger before it publishes it, so a snapshot
is normally registered by the time anyone reads it; a reader whose peer has not yet committed
the registration finds no record. Such a lookup is asked again under `wait` (a `RetryPolicy`)
before the snapshot is refused as `not_registered`. A ledger error (the client already retried
what was transient) refuses it as `ledger_unreachable`. `wait_for(0)` asks once.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from streamledger.core.snapshots import SnapshotNotVouched, ledger_verdict
from streamledger.fabric.errors import GatewayError
from streamledger.fabric.identity import Identity
from streamledger.retry import NO_RETRY, RetryPolicy, retry
from streamledger.settings import LedgerSettings

REGISTRANT_IDENTITY = "registry"
"""The local identity that registers model snapshots (deploy/fabric/identities.yaml): an operator."""


class ModelReader(Protocol):
    """What vouching reads from the ledger (`streamledger.ledger.LedgerClient` is one)."""

    async def get_model(self, model_id: str, version: int) -> Mapping[str, Any] | None:
        """The contract's Model record (model_id, version, sha256, submitter, ...), or None if not registered."""


def wait_for(seconds: float) -> RetryPolicy:
    """Lookups of a not-yet-registered snapshot spread over about `seconds` (0: one lookup)."""
    if seconds <= 0:
        return NO_RETRY
    policy = RetryPolicy(attempts=2, initial_seconds=0.1, max_seconds=1.0)
    while sum(policy.delay(n) for n in range(policy.attempts - 1)) < seconds:
        policy = RetryPolicy(attempts=policy.attempts + 1, initial_seconds=0.1, max_seconds=1.0)
    return policy


class SnapshotVouching:
    def __init__(self, reader: ModelReader, registrant: str, wait: RetryPolicy = NO_RETRY) -> None:
        if not registrant:
            raise ValueError("vouching needs the registrant's account (<MSP id>::<certificate subject>)")
        self.reader = reader
        self.registrant = registrant
        self.wait = wait

    async def check(self, model_id: str, version: int, sha256: str, wait: bool = True) -> None:
        """Return if the ledger vouches for the snapshot; raise `SnapshotNotVouched` otherwise (at
        once with `wait=False`: for a snapshot too old to be waiting for its registration)."""
        async def look_up() -> None:
            try:
                registered = await self.reader.get_model(model_id, version)
            except GatewayError as exc:
                raise SnapshotNotVouched("ledger_unreachable", f"model {model_id!r} version {version}: "
                                         f"the ledger could not be read: {exc}") from None
            verdict = ledger_verdict(registered, model_id, version, sha256, self.registrant)
            if verdict is not None:
                raise verdict

        await retry(look_up, self.wait if wait else NO_RETRY, is_transient=_may_yet_be_registered)


def _may_yet_be_registered(exc: BaseException) -> bool:
    return isinstance(exc, SnapshotNotVouched) and exc.reason == "not_registered"


def local_registrant(settings: LedgerSettings, identity: str = REGISTRANT_IDENTITY) -> str:
    """The ledger account of the local identity `identity` of the settings' organisation, read from
    its certificate alone (never its key) as the contract names accounts; `FileNotFoundError` if the
    local stack has no such identity."""
    msp_dir = settings.model_copy(update={"fabric_msp_dir": None, "fabric_user": ""}).msp_dir(identity)
    certificates = sorted(Path(msp_dir, "signcerts").glob("*.pem"))
    if not certificates:
        raise FileNotFoundError(f"no certificate of the local identity {identity!r} in {msp_dir}/signcerts")
    return Identity(settings.fabric_msp_id, certificates[0].read_bytes()).account
