"""`FabricLedgerReader`: the audit's queries of the contract, over `LedgerClient` (evaluate only).

    async with LedgerClient.connect(LedgerSettings(), service_identity="audit") as client:
        ledger = FabricLedgerReader(client)
        anchor = await ledger.anchor("events.clean:0:0-999")

Every call is an evaluate: the audit never submits a transaction. In the audit (`open_auditor`)
`RetriedLedgerReads` has already retried transient failures within its policy; what still fails is
`LedgerUnreachable` (the peer is down, timed out or refused to answer), except a refusal of
a malformed argument by the contract itself, which is the caller's `InvalidArgument`.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

from fabric_protos.common import common_pb2
from fabric_protos.msp import identities_pb2
from fabric_protos.peer import transaction_pb2
from google.protobuf.message import DecodeError

from services.audit.ledger_retry import RetriedLedgerReads
from services.audit.ports import InvalidArgument, LedgerUnreachable
from streamledger.core import contract_errors
from streamledger.fabric import GatewayError
from streamledger.fabric.transaction import endorsing_orgs
from streamledger.ledger import LedgerClient

T = TypeVar("T")


class FabricLedgerReader:
    def __init__(self, client: LedgerClient | RetriedLedgerReads) -> None:
        self.client = client

    async def require_role(self, role: str) -> dict[str, Any]:
        """Who the audit reads as (WhoAmI), once the ledger shows it holds `role`; `MissingRole`
        when it does not."""
        return await self._ask("WhoAmI", "creator", self.client.require_role(role))

    async def anchor(self, batch_id: str) -> dict[str, Any] | None:
        return await self._ask("GetAnchor", "batch_id", self.client.get_anchor(batch_id))

    async def transaction_block(self, tx_id: str) -> dict[str, Any] | None:
        return await self._ask("GetBlockByTxID", "tx_id", self.client.transaction_block(tx_id))

    async def transaction(self, tx_id: str) -> dict[str, Any] | None:
        raw = await self._ask("GetTransactionByID", "tx_id", self.client.processed_transaction(tx_id))
        return None if raw is None else processed_transaction(raw)

    async def model(self, model_id: str, version: int) -> dict[str, Any] | None:
        return await self._ask("GetModel", "model_id", self.client.get_model(model_id, version))

    async def balance(self, account: str) -> int | None:
        try:
            return await self.client.balance(account)
        except GatewayError as exc:
            # the contract's answer for an account it has never credited
            if isinstance(exc.contract_error, contract_errors.NotFound):
                return None
            raise _translated("Balance", "account", exc) from exc

    async def holds_of(self, account: str) -> list[dict[str, Any]]:
        return await self._ask("HoldsOf", "account", self.client.holds_of(account))

    async def hold(self, hold_id: str) -> dict[str, Any] | None:
        return await self._ask("GetHold", "hold_id", self.client.get_hold(hold_id))

    async def history(self, key: str) -> list[dict[str, Any]]:
        return await self._ask("History", "key", self.client.history(key))

    @staticmethod
    async def _ask(function: str, field: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except GatewayError as exc:
            raise _translated(function, field, exc) from exc


def processed_transaction(raw: bytes) -> dict[str, Any]:
    """What the audit shows of a committed transaction: its id, the peer's validation code, the
    MSP of its creator and the MSPs that endorsed it (LedgerUnreachable when the peer's answer
    does not parse: nothing it says is then known)."""
    try:
        processed = transaction_pb2.ProcessedTransaction.FromString(raw)
        envelope = processed.transactionEnvelope
        payload = common_pb2.Payload.FromString(envelope.payload)
        header = common_pb2.ChannelHeader.FromString(payload.header.channel_header)
        creator = identities_pb2.SerializedIdentity.FromString(
            common_pb2.SignatureHeader.FromString(payload.header.signature_header).creator)
        endorsers = list(endorsing_orgs(envelope))
    except (DecodeError, IndexError) as exc:
        raise LedgerUnreachable(f"GetTransactionByID: the peer's answer does not parse: {exc}") from exc
    code = processed.validationCode
    return {"tx_id": header.tx_id, "channel": header.channel_id,
            "validation_code": transaction_pb2.TxValidationCode.Name(code)
            if code in transaction_pb2.TxValidationCode.values() else str(code),
            "creator_msp": creator.mspid, "endorsers": endorsers}


def _translated(function: str, field: str, exc: GatewayError) -> InvalidArgument | LedgerUnreachable:
    if isinstance(exc.contract_error, contract_errors.InvalidArgument):
        return InvalidArgument(field, f"the ledger refused it: {exc.chaincode_message}")
    return LedgerUnreachable(f"{function}: {exc}")


class UnreachableLedger:
    """The reader when no gateway connection could even be set up (no identity or TLS root at
    the configured paths, e.g. the Fabric network was never created): every question is
    LedgerUnreachable, saying why, so the audit still answers and never guesses."""

    def __init__(self, why: str) -> None:
        self.why = why

    async def _refuse(self, *_args: object) -> Any:
        raise LedgerUnreachable(self.why)

    require_role = anchor = transaction_block = transaction = model = balance = holds_of = hold = history = _refuse
