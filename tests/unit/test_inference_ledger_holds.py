"""The contract's JSON hold as a `Hold`, and the contract's refusals of GetHold and Authorize as
the errors a paid request is answered with, without a ledger."""

from __future__ import annotations

import grpc
import pytest

from services.inference.authorization import (
    Hold,
    HoldClosed,
    HoldExpired,
    HoldUnavailable,
    NothingToReserve,
    NotHoldProvider,
)
from services.inference.credit import CreditMeter
from services.inference.ledger_holds import LedgerHoldSource, hold_from_contract
from streamledger.core.receipts import Receipt
from streamledger.fabric import EndorseError, EvaluateError

CERT = "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n"
CONTRACT_HOLD = {"hold_id": "h-1", "nonce": "n-1", "client": "Org1MSP::CN=alice", "client_cert": CERT,
                 "provider": "Org1MSP::CN=server", "amount": 100, "price_per_unit": 2, "authorized": 30,
                 "receipt": None, "charged": 0, "refunded": 0, "status": "OPEN", "expires_at": 1_800_000_000,
                 "settlement_window_seconds": 1800, "settle_by": 1_800_001_800, "created_at": "", "closed_at": "",
                 "freeze_tx_id": "t", "close_tx_id": ""}


def test_an_open_hold_reads_as_the_contract_keeps_it():
    hold = hold_from_contract(CONTRACT_HOLD)
    assert hold == Hold("h-1", "Org1MSP::CN=alice", expires_at=1_800_000_000.0, provider="Org1MSP::CN=server",
                        amount=100, price_per_unit=2, authorized=30, client_cert=CERT, receipt=None, live=True)
    assert (hold.remaining, hold.units) == (70, 50)


def test_the_recorded_receipt_comes_with_the_hold():
    recorded = {"hold_id": "h-1", "units": 12, "sequence": 3, "signature": "c2ln", "tx_id": "t2", "recorded_at": ""}
    assert hold_from_contract(dict(CONTRACT_HOLD, receipt=recorded)).receipt == Receipt("h-1", 12, 3, "c2ln")


@pytest.mark.parametrize("status, charged, refunded", [("SETTLED", 40, 60), ("RELEASED", 0, 100)])
def test_a_closed_hold_is_not_live_and_has_nothing_left(status, charged, refunded):
    hold = hold_from_contract(dict(CONTRACT_HOLD, status=status, charged=charged, refunded=refunded))
    assert hold.live is False and hold.remaining == 0


class OneHold:
    def __init__(self, hold: Hold) -> None:
        self._hold = hold

    async def hold(self, hold_id: str) -> Hold | None:
        return self._hold if hold_id == self._hold.hold_id else None

    async def reserve(self, hold_id: str, credit: int) -> Hold:
        return self._hold


async def test_a_hold_paying_another_provider_is_refused():
    hold = hold_from_contract(CONTRACT_HOLD)
    ours = CreditMeter(OneHold(hold), window_units=10, reserve_units=10, clock=lambda: 1_700_000_000.0,
                       provider="Org1MSP::CN=server")
    assert (await ours.charge("h-1", hold.client, units=7)).cost == 14
    theirs = CreditMeter(OneHold(hold), window_units=10, reserve_units=10, clock=lambda: 1_700_000_000.0,
                         provider="Org1MSP::CN=other")
    with pytest.raises(NotHoldProvider, match="pays provider 'Org1MSP::CN=server', not this server"):
        await theirs.charge("h-1", hold.client, units=1)


class RefusingLedger:
    """A ledger that refuses as the contract does: GetHold only to the hold's parties; Authorize as `refusal` says."""

    def __init__(self, refusal: str = "", code: grpc.StatusCode = grpc.StatusCode.UNKNOWN) -> None:
        self.refusal, self.code = refusal, code

    async def get_hold(self, hold_id: str) -> dict:
        raise EvaluateError(f'FORBIDDEN: "hold_id": only the client, the provider or an auditor '
                            f'may read hold "{hold_id}"', code=grpc.StatusCode.UNKNOWN)

    async def authorize(self, hold_id: str, amount: int) -> dict:
        raise EndorseError(self.refusal, code=self.code)


async def test_a_hold_the_ledger_will_not_show_this_server_pays_another_provider():
    """The server's identity is no party to the hold: PERMISSION_DENIED, not UNAVAILABLE (retrying
    would never help)."""
    with pytest.raises(NotHoldProvider, match="pays another provider than the one this server acts for") as refused:
        await LedgerHoldSource(RefusingLedger()).hold("h-2")  # type: ignore[arg-type]
    assert refused.value.code == "PERMISSION_DENIED"


@pytest.mark.parametrize("refusal, code, error, status", [
    ('chaincode response 500, EXCEEDS_HOLD: "amount": hold "h-2" has 5 left of 100, asked 10',
     grpc.StatusCode.UNKNOWN, NothingToReserve, None),
    ('HOLD_EXPIRED: "hold_id": hold "h-2" expired at 17', grpc.StatusCode.UNKNOWN, HoldExpired, "PERMISSION_DENIED"),
    ('ALREADY_SETTLED: "hold_id": hold "h-2" was already settled in tx t', grpc.StatusCode.UNKNOWN, HoldClosed,
     "PERMISSION_DENIED"),
    ('FORBIDDEN: "hold_id": hold "h-2" is paid to "x"', grpc.StatusCode.UNKNOWN, NotHoldProvider, "PERMISSION_DENIED"),
    ("peer unavailable", grpc.StatusCode.UNAVAILABLE, HoldUnavailable, "UNAVAILABLE"),
])
async def test_a_refused_reservation_is_named_by_what_the_contract_said(refusal, code, error, status):
    with pytest.raises(error) as refused:
        await LedgerHoldSource(RefusingLedger(refusal, code)).reserve("h-2", 10)  # type: ignore[arg-type]
    assert status is None or refused.value.code == status
