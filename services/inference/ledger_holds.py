"""`LedgerHoldSource`: the `HoldSource` of paid mode: holds read with the contract's `GetHold` and
reserved with its `Authorize`.

    async with LedgerClient.connect(LedgerSettings(), service_identity="inference") as ledger:
        source = LedgerHoldSource(ledger)
        hold = await source.hold(hold_id)             # Hold(...) or None
        hold = await source.reserve(hold_id, 500)     # 500 credit more reserved; the hold after it

The contract's hold (chaincode/ledger/holds.go) maps to `Hold` field by field: its client
and the client's certificate (`client_cert`), provider, amount, `price_per_unit`, what the
provider's servers `authorized` so far, the `receipt` recorded, `expires_at`; it is `live`
while `OPEN` (SETTLED and RELEASED are closed).

Errors: a hold id the contract refuses as malformed is the caller's fault (`InvalidHoldId`,
INVALID_ARGUMENT); a hold the contract will not show this server's identity (FORBIDDEN: it is
no party, the hold pays another provider) is `NotHoldProvider` (PERMISSION_DENIED). A
reservation beyond what the hold has left is `NothingToReserve` (EXCEEDS_HOLD), one after expiry
`HoldExpired`, on a closed hold `HoldClosed`. Any other failure to reach the ledger (peer down,
timeout, endorsement trouble) says nothing about the hold and is `HoldUnavailable` (UNAVAILABLE,
retryable), never a refusal. The gateway client has already retried transient failures
within its `RetryPolicy`.
"""

from __future__ import annotations

from typing import Any

from services.inference.authorization import (
    Hold,
    HoldClosed,
    HoldExpired,
    HoldUnavailable,
    InvalidHoldId,
    NoHold,
    NothingToReserve,
    NotHoldProvider,
)
from streamledger.core import contract_errors
from streamledger.core.receipts import Receipt
from streamledger.fabric import GatewayError
from streamledger.ledger import LedgerClient
from streamledger.logging import get_logger

log = get_logger("inference")
OPEN = "OPEN"  # chaincode/ledger/holds.go HoldOpen; SETTLED and RELEASED are closed


class LedgerHoldSource:
    def __init__(self, ledger: LedgerClient) -> None:
        self.ledger = ledger

    async def hold(self, hold_id: str) -> Hold | None:
        try:
            found = await self.ledger.get_hold(hold_id)
        except GatewayError as exc:
            raise _refusal(exc, hold_id, "read") from exc
        return None if found is None else hold_from_contract(found)

    async def reserve(self, hold_id: str, credit: int) -> Hold:
        try:
            return hold_from_contract(await self.ledger.authorize(hold_id, credit))
        except GatewayError as exc:
            refused = exc.contract_error
            if isinstance(refused, contract_errors.ExceedsHold):
                raise NothingToReserve(f"hold {hold_id!r}: {refused}") from exc
            if isinstance(refused, contract_errors.HoldExpired):
                raise HoldExpired(f"hold {hold_id!r} can no longer be reserved: {refused}") from exc
            if isinstance(refused, (contract_errors.AlreadySettled, contract_errors.HoldClosed)):
                raise HoldClosed(f"hold {hold_id!r} is settled or released: {refused}") from exc
            if isinstance(refused, contract_errors.NotFound):
                raise NoHold(f"hold {hold_id!r} does not exist on the ledger") from exc
            raise _refusal(exc, hold_id, "reserve credit on") from exc


def _refusal(exc: GatewayError, hold_id: str, action: str) -> Exception:
    """What a failed GetHold (`action` "read") or Authorize says about the hold, as the error to answer with."""
    if isinstance(exc.contract_error, contract_errors.InvalidArgument) and exc.contract_error.field in ("hold_id", ""):
        return InvalidHoldId(f"hold id {hold_id!r} refused by the ledger: {exc.chaincode_message}")
    if isinstance(exc.contract_error, contract_errors.Forbidden):
        # The ledger shows a hold only to its parties: this server (a provider) is none of them.
        return NotHoldProvider(f"hold {hold_id!r} pays another provider than the one this server acts for "
                               f"(the ledger refused to {action} it: {exc.chaincode_message})")
    log.error("ledger_unavailable", extra={"hold_id": hold_id, "action": action,
                                           "code": getattr(exc.code, "name", None), "error": str(exc)})
    return HoldUnavailable(f"the ledger cannot be reached right now to {action} hold {hold_id!r}; retry: {exc}")


def hold_from_contract(record: dict[str, Any]) -> Hold:
    """A `Hold` from the contract's JSON hold."""
    receipt = record.get("receipt")
    return Hold(
        hold_id=record["hold_id"],
        client=record["client"],
        expires_at=float(record["expires_at"]),
        provider=record["provider"],
        amount=record["amount"],
        price_per_unit=record.get("price_per_unit", 1),
        authorized=record.get("authorized", 0),
        client_cert=record.get("client_cert", ""),
        receipt=None if not receipt else Receipt(record["hold_id"], receipt["units"], receipt["sequence"],
                                                  receipt["signature"]),
        live=record["status"] == OPEN,
    )
