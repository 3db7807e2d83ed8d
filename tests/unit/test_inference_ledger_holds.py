"""The contract's JSON hold as the authorizer's `Hold`, and the provider check, without a ledger."""

from __future__ import annotations

import grpc
import pytest

from services.inference.authorization import Hold, HoldAuthorizer, NotHoldProvider
from services.inference.ledger_holds import LedgerHoldSource, hold_from_contract
from streamledger.fabric import EvaluateError

CONTRACT_HOLD = {"hold_id": "h-1", "client": "Org1MSP::CN=alice", "provider": "Org1MSP::CN=server",
                 "amount": 100, "authorized": 30, "charged": 0, "refunded": 0, "status": "OPEN",
                 "expires_at": 1_800_000_000, "created_at": "", "closed_at": "", "freeze_tx_id": "t", "close_tx_id": ""}


def test_an_open_hold_has_its_unauthorized_credit_left():
    assert hold_from_contract(CONTRACT_HOLD) == Hold("h-1", "Org1MSP::CN=alice", remaining=70,
                                                     expires_at=1_800_000_000.0, live=True,
                                                     provider="Org1MSP::CN=server")


@pytest.mark.parametrize("status, charged, refunded", [("SETTLED", 40, 60), ("RELEASED", 0, 100)])
def test_a_closed_hold_is_not_live_and_has_nothing_left(status, charged, refunded):
    hold = hold_from_contract(dict(CONTRACT_HOLD, status=status, charged=charged, refunded=refunded))
    assert hold.live is False and hold.remaining == 0


class OneHold:
    def __init__(self, hold: Hold) -> None:
        self._hold = hold

    async def hold(self, hold_id: str) -> Hold | None:
        return self._hold if hold_id == self._hold.hold_id else None


async def test_a_hold_paying_another_provider_is_refused():
    hold = hold_from_contract(CONTRACT_HOLD)
    ours = HoldAuthorizer(OneHold(hold), clock=lambda: 1_700_000_000.0, provider="Org1MSP::CN=server")
    assert (await ours.charge("h-1", hold.client, units=7, price=10)).cost == 70
    theirs = HoldAuthorizer(OneHold(hold), clock=lambda: 1_700_000_000.0, provider="Org1MSP::CN=other")
    with pytest.raises(NotHoldProvider, match="pays provider 'Org1MSP::CN=server', not this server"):
        await theirs.charge("h-1", hold.client, units=1, price=1)


class RefusingLedger:
    """A ledger that shows the hold only to its parties, as the contract does (GetHold)."""

    async def get_hold(self, hold_id: str) -> dict:
        raise EvaluateError(f'FORBIDDEN: "hold_id": only the client, the provider or an auditor '
                            f'may read hold "{hold_id}"', code=grpc.StatusCode.UNKNOWN)


async def test_a_hold_the_ledger_will_not_show_this_server_pays_another_provider():
    """The server's identity is no party to the hold: PERMISSION_DENIED, not UNAVAILABLE (retrying
    would never help)."""
    with pytest.raises(NotHoldProvider, match="pays another provider than the one this server acts for") as refused:
        await LedgerHoldSource(RefusingLedger()).hold("h-2")  # type: ignore[arg-type]
    assert refused.value.code == "PERMISSION_DENIED"
