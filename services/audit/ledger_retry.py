"""`RetriedLedgerReads`: the ledger reads the audit makes, each retried within one bounded policy.

    client = LedgerClient.connect(ledger_settings, retry=NO_RETRY, service_identity="audit")  # never retries
    ledger = FabricLedgerReader(RetriedLedgerReads(client, RetryPolicy(attempts=3)))

The one place the audit retries: a read whose peer was unavailable or too slow is tried again
up to `policy.attempts` times in all, each retry counted in
`streamledger_audit_ledger_retries_total{read}`; what still fails reaches `FabricLedgerReader`,
which answers LEDGER_UNREACHABLE.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from services.audit.metrics import LEDGER_RETRIES
from streamledger.fabric import EvaluateError, GatewayError
from streamledger.ledger import LedgerClient
from streamledger.retry import RetryPolicy, retry

T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, GatewayError) and exc.transient


class RetriedLedgerReads:
    """The `LedgerClient` reads `FabricLedgerReader` uses, with the same names and answers."""

    def __init__(self, client: LedgerClient, policy: RetryPolicy) -> None:
        self.client = client
        self.policy = policy

    async def require_role(self, role: str) -> dict[str, Any]:
        return await self._retried("WhoAmI", lambda: self.client.require_role(role))

    async def get_anchor(self, batch_id: str) -> dict[str, Any] | None:
        return await self._retried("GetAnchor", lambda: self.client.get_anchor(batch_id))

    async def transaction_block(self, tx_id: str) -> dict[str, Any] | None:
        return await self._retried("GetBlockByTxID", lambda: self.client.transaction_block(tx_id))

    async def processed_transaction(self, tx_id: str) -> bytes | None:
        """The peer's ProcessedTransaction of `tx_id` (qscc `GetTransactionByID`, serialized), None when
        the peer knows no such transaction."""
        async def read() -> bytes | None:
            qscc = self.client.gateway.network(self.client.contract.channel).contract("qscc")
            try:
                return await qscc.evaluate("GetTransactionByID", self.client.contract.channel, tx_id)
            except EvaluateError as exc:
                if "no such transaction" in str(exc) or "not found" in str(exc):
                    return None
                raise
        return await self._retried("GetTransactionByID", read)

    async def get_model(self, model_id: str, version: int) -> dict[str, Any] | None:
        return await self._retried("GetModel", lambda: self.client.get_model(model_id, version))

    async def balance(self, account: str) -> int:
        return await self._retried("Balance", lambda: self.client.balance(account))

    async def holds_of(self, account: str) -> list[dict[str, Any]]:
        return await self._retried("HoldsOf", lambda: self.client.holds_of(account))

    async def get_hold(self, hold_id: str) -> dict[str, Any] | None:
        return await self._retried("GetHold", lambda: self.client.get_hold(hold_id))

    async def history(self, key: str) -> list[dict[str, Any]]:
        return await self._retried("History", lambda: self.client.history(key))

    async def _retried(self, read: str, call: Callable[[], Awaitable[T]]) -> T:
        return await retry(call, self.policy, is_transient=is_transient,
                           on_retry=lambda _attempt, _exc, _delay: LEDGER_RETRIES.labels(read).inc())
