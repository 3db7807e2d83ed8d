"""The StreamLedger contract as typed Python calls over the Fabric Gateway client.

    async with LedgerClient.connect(LedgerSettings()) as ledger:
        await ledger.mint("acct", 100)
        hold = await ledger.get_hold("hold-1")

Every call maps to one transaction function of `chaincode/`; submits return what the
contract returned (JSON-decoded) and commit before they return. The contract's own
refusals arrive as `EndorseError` (submit) or `EvaluateError` (query), whose
`contract_error` is the refusal typed (`streamledger.core.contract_errors`: `NotFound`,
`InvalidArgument`, `InsufficientFunds`, `AlreadySettled`, ...):

    except EndorseError as exc:
        if isinstance(exc.contract_error, InsufficientFunds): ...

Transient failures (errors.is_transient) are retried within `retry`, once around each
whole call; `DEFAULT_RETRY` unless the caller passes its own policy (NO_RETRY when the
caller retries itself, so retries never nest).

A service acts as its own identity (`service_identity`) and checks at start that the
ledger granted it the role it needs:

    ledger = LedgerClient.connect(settings, service_identity="settlement")
    me = await ledger.require_role("provider")   # MissingRole names the identity otherwise
    paid_to = me["ActsFor"]
"""

from __future__ import annotations

import logging
from typing import Any

from fabric_protos.common import common_pb2, ledger_pb2
from fabric_protos.peer import transaction_pb2

from streamledger.core.contract_errors import NotFound
from streamledger.core.receipts import Receipt
from streamledger.fabric import Committed, Contract, Gateway, load_msp
from streamledger.fabric.errors import EvaluateError
from streamledger.lifecycle import StartError
from streamledger.retry import RetryPolicy
from streamledger.settings import LedgerSettings

log = logging.getLogger("streamledger.ledger")

DEFAULT_RETRY = RetryPolicy(attempts=5, initial_seconds=0.1, max_seconds=2.0, jitter=1.0)
"""Five tries in all, exponential backoff from 0.1 s capped at 2 s, full jitter so
concurrent retries spread out."""


class MissingRole(StartError):
    """The identity a service acts as on the ledger was not granted the role the service needs."""


class LedgerClient:
    def __init__(self, gateway: Gateway, contract: Contract, identity: str = "") -> None:
        self.gateway = gateway
        self.contract = contract
        self.identity = identity
        """Which identity this client acts as (a local identity's name or an MSP folder), for messages."""

    @classmethod
    def connect(cls, settings: LedgerSettings, retry: RetryPolicy = DEFAULT_RETRY, *,
                service_identity: str = "") -> LedgerClient:
        """A client acting as the identity the settings name, else as `service_identity` (a
        service's own local identity: "anchoring", "settlement", ...). An admin identity is
        logged as a warning: admins only mint and grant roles."""
        msp_dir = settings.msp_dir(service_identity)
        identity, signer = load_msp(msp_dir, settings.fabric_msp_id)
        if identity.is_admin:
            log.warning("ledger_identity_is_admin", extra={
                "msp_id": identity.msp_id, "service_identity": service_identity,
                "hint": "run each service as its own identity with only its role (README, Fabric)"})
        gateway = Gateway.connect(settings.peer_endpoint(), settings.tls_root().read_bytes(), identity, signer,
                                  server_name=settings.fabric_peer_server_name or None, retry=retry)
        name = str(msp_dir) if settings.fabric_msp_dir else settings.fabric_user or service_identity
        return cls(gateway, gateway.network(settings.fabric_channel).contract(settings.fabric_chaincode), name)

    async def __aenter__(self) -> LedgerClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.gateway.close()

    async def _submit(self, function: str, *args: str | int) -> Any:
        return (await self.contract.submit(function, *args)).json()

    async def _evaluate_or_none(self, function: str, *args: str | int) -> Any:
        """The query's answer, or None when the contract says NOT_FOUND."""
        try:
            return await self.contract.evaluate_json(function, *args)
        except EvaluateError as exc:
            if isinstance(exc.contract_error, NotFound):
                return None
            raise

    # -- accounts --
    async def who_am_i(self) -> dict[str, Any]:
        """The caller as the contract sees it: Account, MSPID, IsAdmin, Roles, ActsFor."""
        return await self.contract.evaluate_json("WhoAmI")

    async def require_role(self, role: str) -> dict[str, Any]:
        """`who_am_i()`, once it shows `role` among the caller's roles; else `MissingRole`, naming
        the identity, its account and the role (what a service says when it cannot start)."""
        me = await self.who_am_i()
        if role not in (me.get("Roles") or []):
            held = ", ".join(me.get("Roles") or []) or "none"
            admin = "; an admin holds no role unless granted one" if me.get("IsAdmin") else ""
            raise MissingRole(
                f"ledger identity {self.identity or me.get('Account')!r} ({me.get('Account')}) does not hold the "
                f"{role} role (it holds: {held}{admin}); an admin of {me.get('MSPID')} grants it with GrantRole, "
                f"or point STREAMLEDGER_FABRIC_USER / STREAMLEDGER_FABRIC_MSP_DIR at an identity that holds it")
        return me

    # -- roles: granted by an admin of the account's organisation --
    async def grant_role(self, account: str, role: str, acts_for: str = "") -> dict[str, Any]:
        """Give `account` a role (operator, provider, client, auditor); a provider acts for
        `acts_for`, the account its holds pay (default: its own)."""
        return await self._submit("GrantRole", account, role, acts_for)

    async def revoke_role(self, account: str, role: str) -> dict[str, Any]:
        return await self._submit("RevokeRole", account, role)

    async def get_roles(self, account: str) -> dict[str, Any]:
        return await self.contract.evaluate_json("GetRoles", account)

    async def balance(self, account: str) -> int:
        return (await self.contract.evaluate_json("Balance", account))["balance"]

    async def mint(self, account: str, amount: int) -> dict[str, Any]:
        return await self._submit("Mint", account, amount)

    async def transfer(self, to: str, amount: int) -> dict[str, Any]:
        return await self._submit("Transfer", to, amount)

    # -- holds: the client freezes, the provider reserves, records receipts and settles --
    async def freeze(self, nonce: str, provider: str, amount: int, price_per_unit: int, expires_at: int,
                     settlement_window_seconds: int = 0) -> dict[str, Any]:
        """Freeze `amount` of the caller's credit for `provider` at a price fixed for the hold's
        life; the hold id is `core.receipts.hold_id(caller, nonce)`. A window of 0 is the
        contract's minimum."""
        return await self._submit("Freeze", nonce, provider, amount, price_per_unit, expires_at,
                                  settlement_window_seconds)

    async def authorize(self, hold_id: str, amount: int) -> dict[str, Any]:
        """Reserve `amount` more of the hold (cumulative, capped by the amount) before serving it."""
        return await self._submit("Authorize", hold_id, amount)

    async def record_receipt(self, receipt: Receipt) -> dict[str, Any]:
        """Record the client's latest signed receipt without settling (it then bounds a release)."""
        return await self._submit("RecordReceipt", receipt.hold_id, receipt.units, receipt.sequence,
                                  receipt.signature)

    async def settle(self, hold_id: str, receipt: Receipt | None) -> Committed:
        """Charge the receipted units x price (at most what was reserved), refund the rest, once;
        without a receipt, on the recorded one or nothing."""
        if receipt is None:
            return await self.contract.submit("Settle", hold_id, 0, 0, "")
        return await self.contract.submit("Settle", hold_id, receipt.units, receipt.sequence, receipt.signature)

    async def release(self, hold_id: str) -> dict[str, Any]:
        return await self._submit("Release", hold_id)

    async def get_hold(self, hold_id: str) -> dict[str, Any] | None:
        """The hold, or None when the ledger has no hold with this id."""
        return await self._evaluate_or_none("GetHold", hold_id)

    async def holds_of(self, account: str) -> list[dict[str, Any]]:
        return await self.contract.evaluate_json("HoldsOf", account) or []

    # -- anchors, models, history --
    async def anchor_batch(self, batch_id: str, merkle_root: str, count: int, first_offset: int,
                           last_offset: int) -> Committed:
        return await self.contract.submit("AnchorBatch", batch_id, merkle_root, count, first_offset, last_offset)

    async def get_anchor(self, batch_id: str) -> dict[str, Any] | None:
        return await self._evaluate_or_none("GetAnchor", batch_id)

    async def register_model(self, model_id: str, version: int, sha256: str) -> dict[str, Any]:
        return await self._submit("RegisterModel", model_id, version, sha256)

    async def get_model(self, model_id: str, version: int) -> dict[str, Any] | None:
        return await self._evaluate_or_none("GetModel", model_id, version)

    async def get_topic(self, topic: str) -> dict[str, Any] | None:
        """Which operator account anchors `topic` (the first to anchor it), or None."""
        return await self._evaluate_or_none("GetTopic", topic)

    async def history(self, key: str) -> list[dict[str, Any]]:
        return await self.contract.evaluate_json("History", key) or []

    # -- blocks, from the peer's ledger through the qscc system chaincode --
    def _qscc(self) -> Contract:
        return self.gateway.network(self.contract.channel).contract("qscc")

    async def chain_height(self) -> int:
        """How many blocks this channel has (qscc `GetChainInfo`)."""
        raw = await self._qscc().evaluate("GetChainInfo", self.contract.channel)
        return ledger_pb2.BlockchainInfo.FromString(raw).height

    async def block_by_tx_id(self, tx_id: str) -> common_pb2.Block | None:
        """The block holding transaction `tx_id` (qscc `GetBlockByTxID` on this channel, evaluated
        through the gateway like any query), or None when the peer knows no such transaction."""
        try:
            raw = await self._qscc().evaluate("GetBlockByTxID", self.contract.channel, tx_id)
        except EvaluateError as exc:
            if "no such transaction" in str(exc):
                return None
            raise
        return common_pb2.Block.FromString(raw)

    async def transaction_block(self, tx_id: str) -> dict[str, Any] | None:
        """Where transaction `tx_id` landed: `block_number`, its `tx_index` in the block, the
        peer's `validation_code` for it (`VALID`, `MVCC_READ_CONFLICT`, ...), the block's
        `data_hash` and `previous_hash` (hex); None when the peer knows no such transaction."""
        block = await self.block_by_tx_id(tx_id)
        if block is None:
            return None
        tx_index = next((i for i, data in enumerate(block.data.data) if _tx_id_of(data) == tx_id), None)
        metadata = block.metadata.metadata
        flags = metadata[common_pb2.TRANSACTIONS_FILTER] if len(metadata) > common_pb2.TRANSACTIONS_FILTER else b""
        code = "UNKNOWN"  # a block without validation flags, or a transaction missing from its block
        if tx_index is not None and tx_index < len(flags):
            code = transaction_pb2.TxValidationCode.Name(flags[tx_index]) \
                if flags[tx_index] in transaction_pb2.TxValidationCode.values() else str(flags[tx_index])
        return {"block_number": block.header.number, "tx_index": tx_index, "validation_code": code,
                "data_hash": block.header.data_hash.hex(), "previous_hash": block.header.previous_hash.hex()}


def _tx_id_of(envelope_bytes: bytes) -> str:
    """The transaction id in an envelope's channel header."""
    payload = common_pb2.Payload.FromString(common_pb2.Envelope.FromString(envelope_bytes).payload)
    return common_pb2.ChannelHeader.FromString(payload.header.channel_header).tx_id
