"""Paid mode's holds read and reserved in a child process (services/inference/hold_process.py): holds,
reservations and refusals cross the process as they are; a dead child makes every call UNAVAILABLE.

The child here runs this module (`python -m`), answering from a fake ledger, not Fabric."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from services.inference import hold_process
from services.inference.authorization import (
    Hold,
    HoldExpired,
    HoldUnavailable,
    NothingToReserve,
)
from services.inference.hold_process import HoldHello, HoldProcess
from streamledger import child
from streamledger.core.receipts import Receipt, sign_receipt
from streamledger.settings import LedgerSettings

HOLD = Hold("h", "Org2MSP::CN=alice", expires_at=2_000_000_000.0, provider="Org1MSP::CN=provider", amount=100,
            price_per_unit=2, authorized=10, client_cert="PEM", receipt=Receipt("h", 3, 1, "c2ln"))


class FakeLedger:
    """Hold "h" (100 credit), reservations up to its amount; "gone" has expired; "slow" answers late."""

    def __init__(self) -> None:
        self.authorized = HOLD.authorized

    async def hold(self, hold_id: str) -> Hold | None:
        if hold_id == "slow":
            await asyncio.sleep(0.2)
        return HOLD if hold_id in ("h", "slow") else None

    async def reserve(self, hold_id: str, credit: int) -> Hold:
        if hold_id == "gone":
            raise HoldExpired("hold 'gone' can no longer be reserved: HOLD_EXPIRED")
        if hold_id == "broken":
            raise KeyError("authorized")
        if self.authorized + credit > HOLD.amount:
            raise NothingToReserve(f"hold {hold_id!r}: EXCEEDS_HOLD")
        self.authorized += credit
        return Hold(**{**HOLD.__dict__, "authorized": self.authorized})


def holds() -> HoldProcess:
    hello = HoldHello.of(LedgerSettings(fabric_user="inference"), "inference", "WARNING")
    return HoldProcess(hello, program=__name__)


async def test_holds_reservations_and_refusals_cross_the_process_as_they_are():
    async with holds() as source:
        assert source.pid != os.getpid()
        assert await source.hold("h") == HOLD
        assert await source.hold("nothing") is None
        slow = asyncio.ensure_future(source.hold("slow"))  # calls run concurrently: a slow one delays no other
        assert (await source.reserve("h", 60)).authorized == 70
        assert not slow.done()
        assert await slow == HOLD
        with pytest.raises(NothingToReserve, match="EXCEEDS_HOLD"):
            await source.reserve("h", 40)
        with pytest.raises(HoldExpired, match="HOLD_EXPIRED") as refused:
            await source.reserve("gone", 1)
        assert refused.value.code == "PERMISSION_DENIED"
        with pytest.raises(HoldUnavailable, match=r"reserve failed unexpectedly: KeyError\('authorized'\)"):
            await source.reserve("broken", 1)
    assert not source.died.is_set()
    with pytest.raises(HoldUnavailable, match="stopping"):
        await source.hold("h")


async def test_receipts_are_verified_in_the_hold_process_against_the_hold_clients_certificate():
    from tests.unit.test_inference_credit import ALICE_CERT, ALICE_KEY, MALLORY_KEY

    async with holds() as source:
        assert await source.verify(ALICE_CERT, sign_receipt(ALICE_KEY.sign, "h", 12, 3)) is None
        forged = await source.verify(ALICE_CERT, sign_receipt(MALLORY_KEY.sign, "h", 12, 3))
        assert forged == "the signature does not verify against the hold's client certificate"
        assert "the client certificate cannot be read" in await source.verify("not a PEM", Receipt("h", 1, 1, "c2ln"))


async def test_a_dead_hold_process_makes_every_call_unavailable_and_says_so():
    async with holds() as source:
        waiting = asyncio.ensure_future(source.hold("slow"))
        await asyncio.sleep(0.05)
        os.kill(source.pid, signal.SIGKILL)
        with pytest.raises(HoldUnavailable, match="ledger holds process exited"):
            await asyncio.wait_for(waiting, 10)
        await asyncio.wait_for(source.died.wait(), 10)
        assert source.failure is not None and source.failure.exit_code == -signal.SIGKILL
        with pytest.raises(HoldUnavailable, match="ledger holds process exited"):
            await source.hold("h")


if __name__ == "__main__":
    async def _serve(hello: HoldHello, parent: child.Parent) -> None:
        parent.ready()
        await hold_process.answer_calls(FakeLedger(), parent)

    child.run(_serve, HoldHello)
