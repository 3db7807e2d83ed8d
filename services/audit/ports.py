"""What the audit core reads, as two small interfaces, and the errors they may raise.

The core (`verification.py`, `provenance.py`, `statement.py`) knows only these; the adapters
are `mongo_store.MongoEvidenceStore` and `ledger_reader.FabricLedgerReader`, and unit tests
use in-memory fakes of the same interfaces.
"""

from __future__ import annotations

from typing import Any, Protocol


class AuditError(Exception):
    """Base of the audit's own errors."""


class InvalidArgument(AuditError, ValueError):
    """A malformed question; `field` names the part at fault (tenant, event_id, model_id, version, account)."""

    def __init__(self, field: str, why: str) -> None:
        self.field = field
        super().__init__(f"{field}: {why}")


class LedgerUnreachable(AuditError):
    """The ledger could not be read (peer down, timeout, refused): nothing it would say is known."""


class StoreUnreachable(AuditError):
    """MongoDB could not be read."""


class EvidenceStore(Protocol):
    """MongoDB's side: what was stored. Every method may raise StoreUnreachable."""

    async def event(self, tenant: str, event_id: str) -> dict[str, Any] | None:
        """The `events` document of this tenant's event id."""

    async def proof(self, tenant: str, event_id: str) -> dict[str, Any] | None:
        """The `proofs` document of this tenant's event id."""

    async def snapshot(self, model_id: str, version: int | None) -> dict[str, Any] | None:
        """The `models` document of this version; the highest version when `version` is None."""


class LedgerReader(Protocol):
    """The ledger's side: what was committed. Every method may raise LedgerUnreachable, and
    InvalidArgument when the contract refuses an argument as malformed."""

    async def require_role(self, role: str) -> dict[str, Any]:
        """WhoAmI of the identity the audit reads as, once it shows `role`; `MissingRole`
        (streamledger.ledger) when the ledger has not granted it."""

    async def anchor(self, batch_id: str) -> dict[str, Any] | None:
        """GetAnchor: batch_id, merkle_root, count, first_offset, last_offset, tx_id, anchored_at, submitter."""

    async def transaction_block(self, tx_id: str) -> dict[str, Any] | None:
        """Where a transaction was committed: block_number, validation_code (see LedgerClient)."""

    async def transaction(self, tx_id: str) -> dict[str, Any] | None:
        """The committed transaction (qscc GetTransactionByID): tx_id, channel, validation_code,
        creator_msp and endorsers (the MSP ids that endorsed it, sorted); None when the peer has none."""

    async def model(self, model_id: str, version: int) -> dict[str, Any] | None:
        """GetModel: model_id, version, sha256, tx_id, registered_at, submitter; version 0 = latest."""

    async def balance(self, account: str) -> int | None:
        """The account's balance, None when the ledger has no such account."""

    async def holds_of(self, account: str) -> list[dict[str, Any]]:
        """Every hold naming the account as client or provider (the contract's JSON holds)."""

    async def hold(self, hold_id: str) -> dict[str, Any] | None:
        """GetHold: the contract's JSON hold (terms, client_cert, receipt, ...), None when there is none."""

    async def history(self, key: str) -> list[dict[str, Any]]:
        """Every committed write of a contract key: tx_id, timestamp, is_delete, value (JSON text)."""
