"""`LedgerHoldSource`: the `HoldSource` of paid mode, reading holds from the contract's `GetHold`.

    async with LedgerClient.connect(LedgerSettings(), service_identity="inference") as ledger:
        source = LedgerHoldSource(ledger)
        hold = await source.hold("hold-1")     # Hold(...) or None

The contract's hold (chaincode/ledger/holds.go) maps to `Hold` so: `remaining` is the
frozen `amount` less what the provider `authorized` so far while the hold is `OPEN`, and
nothing once it is `SETTLED` or `RELEASED` (then `live` is False).

Errors: a hold id the contract refuses as malformed is the caller's fault
(`InvalidHoldId`, INVALID_ARGUMENT); a hold the contract will not show this server's identity
(FORBIDDEN: it is no party, the hold pays another provider) is `NotHoldProvider`
(PERMISSION_DENIED); any other failure to read the ledger (peer down, timeout, endorsement
trouble) says nothing about the hold and is `HoldUnavailable` (UNAVAILABLE, retryable), never a
refusal. The gateway client has already retried
transient failures within its `RetryPolicy`.
"""

from __future__ import annotations

from typing import Any

from services.inference.authorization import (
    Hold,
    HoldUnavailable,
    InvalidHoldId,
    NotHoldProvider,
)
from streamledger.core import contract_errors
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
            if isinstance(exc.contract_error, contract_errors.InvalidArgument):
                raise InvalidHoldId(f"hold id {hold_id!r} refused by the ledger: {exc.chaincode_message}") from exc
            if isinstance(exc.contract_error, contract_errors.Forbidden):
                # The ledger shows a hold only to its parties: this server (a provider) is none of them.
                raise NotHoldProvider(f"hold {hold_id!r} pays another provider than the one this server acts for "
                                      f"(the ledger refused to show it: {exc.chaincode_message})") from exc
            log.error("ledger_unavailable", extra={"hold_id": hold_id, "code": getattr(exc.code, "name", None),
                                                   "error": str(exc)})
            raise HoldUnavailable(f"the ledger cannot be read right now (hold {hold_id!r}); retry: {exc}") from exc
        return None if found is None else hold_from_contract(found)


def hold_from_contract(record: dict[str, Any]) -> Hold:
    """A `Hold` from the contract's JSON hold."""
    live = record["status"] == OPEN
    return Hold(
        hold_id=record["hold_id"],
        client=record["client"],
        remaining=record["amount"] - record.get("authorized", 0) if live else 0,
        expires_at=float(record["expires_at"]),
        live=live,
        provider=record["provider"],
    )
