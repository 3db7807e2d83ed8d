"""`streamledger demo` (`make demo`): the command brings the stack up with Fabric and runs the
demo; Ctrl-C ends the demo's live stream as --seconds does, so it still prints its ending (the
client's holds, one trace, one bill), and a second Ctrl-C stops at once. No stack, no services."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from devstack.settings import StackSettings

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_command_brings_the_stack_up_with_fabric_then_runs_the_demo(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import devstack
    import devstack.demo
    import devstack.runner
    from services.cli import app

    asked: list[StackSettings] = []
    ran: list[tuple[float | None, float, list[str]]] = []

    class RecordingStack:
        def __init__(self, settings: StackSettings, say) -> None:
            asked.append(settings)

        def up(self) -> list:
            return []

    async def run_demo(settings, console, seconds, rate, names) -> None:
        ran.append((seconds, rate, names))

    monkeypatch.setattr(devstack, "Stack", RecordingStack)
    monkeypatch.setattr(devstack.demo, "run_demo", run_demo)
    monkeypatch.setattr(devstack.runner, "built_services", lambda services: list(services))
    monkeypatch.setenv("STREAMLEDGER_STACK_HOME", str(tmp_path))
    monkeypatch.delenv("STREAMLEDGER_STACK_KAFKA_BROKERS", raising=False)
    result = CliRunner().invoke(app, ["demo", "--seconds", "5", "--rate", "20"])
    assert result.exit_code == 0, result.output
    assert [(s.fabric, s.kafka_brokers) for s in asked] == [(True, 1)]
    [(seconds, rate, names)] = ran
    assert (seconds, rate) == (5.0, 20.0) and "inference" in names and "audit" in names


CTRL_C = """
import asyncio
from devstack.demo import ctrl_c_ends

async def main():
    with ctrl_c_ends(asyncio.Event()) as interrupted:
        print("live", flush=True)
        await asyncio.wait_for(interrupted.wait(), 60)
    print("ending printed", flush=True)
    await asyncio.sleep(60)

try:
    asyncio.run(main())
except KeyboardInterrupt:
    print("stopped", flush=True)
"""


def test_ctrl_c_ends_the_live_stream_so_the_ending_prints_and_a_second_one_stops_at_once() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    demo = subprocess.Popen([sys.executable, "-c", CTRL_C], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert demo.stdout.readline() == "live\n", demo.stderr.read() if demo.poll() is not None else ""
        demo.send_signal(signal.SIGINT)
        assert demo.stdout.readline() == "ending printed\n"  # not cancelled: asyncio.run's handler would
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert (out, demo.returncode) == ("stopped\n", 0), err


# -- the holds an earlier demo run left open --

class FakeWallet:
    """The two `Wallet` calls `release_leftovers` makes, on holds kept here; `refuse` names the holds
    whose release the ledger refuses, and with what."""

    def __init__(self, holds: list[dict], refuse: dict[str, str] | None = None) -> None:
        self.rows = {h["hold_id"]: h for h in holds}
        self.refuse = refuse or {}
        self.released: list[str] = []

    async def holds(self) -> dict:
        return {"status": "OK", "account": "me", "holds": list(self.rows.values())}

    async def release(self, hold_id: str) -> dict:
        from streamledger.client.wallet import WalletError

        if hold_id in self.refuse:
            raise WalletError(self.refuse[hold_id], f"Release refused: hold {hold_id} is not open")
        self.released.append(hold_id)
        hold = self.rows[hold_id]
        charged = hold["receipt_units"] or 0
        hold.update(status="RELEASED", charged=charged, refunded=hold["amount"] - charged)
        return {"status": "OK", "hold": hold}


def hold(hold_id: str, *, status: str = "OPEN", settle_by: int = 1000, role: str = "client",
         receipt_units: int | None = None) -> dict:
    return {"hold_id": hold_id, "role": role, "status": status, "amount": 400, "settle_by": settle_by,
            "receipt_units": receipt_units, "charged": 0, "refunded": 0}


async def test_the_demo_releases_its_clients_holds_left_open_past_their_settlement_window() -> None:
    from devstack.demo import release_leftovers

    wallet = FakeWallet([hold("past", receipt_units=296), hold("past-unpaid"), hold("at-settle-by", settle_by=1500),
                         hold("in-window", settle_by=1501), hold("settled", status="SETTLED"),
                         hold("released", status="RELEASED"), hold("for-me-as-provider", role="provider")])
    leftovers = await release_leftovers(wallet, now=1500)
    assert wallet.released == ["past", "past-unpaid", "at-settle-by"]  # the contract releases from settle_by on
    assert [h["status"] for h in leftovers.released] == ["RELEASED"] * 3 and not leftovers.refused
    assert leftovers.line() == ("released 3 holds of the demo client that an earlier run left open past their "
                                "settlement window: 296 credit paid for their receipts, 904 back to the client")


async def test_a_hold_the_ledger_will_not_release_is_said_and_the_others_are_released() -> None:
    from devstack.demo import release_leftovers

    wallet = FakeWallet([hold("closed-meanwhile"), hold("past")], refuse={"closed-meanwhile": "HOLD_CLOSED"})
    leftovers = await release_leftovers(wallet, now=2000)
    assert wallet.released == ["past"]
    assert leftovers.refused == {"closed-meanwhile": "HOLD_CLOSED: Release refused: hold closed-meanwhile is not open"}
    assert leftovers.line().endswith("; 1 could not be released (closed-meanwhile: HOLD_CLOSED: Release refused: "
                                     "hold closed-meanwhile is not open)")


async def test_with_no_hold_left_open_the_demo_says_so() -> None:
    from devstack.demo import release_leftovers

    wallet = FakeWallet([hold("in-window", settle_by=3000), hold("settled", status="SETTLED")])
    leftovers = await release_leftovers(wallet, now=2000)
    assert wallet.released == [] and leftovers.released == []
    assert leftovers.line() == "no hold of the demo client was left open past its settlement window"
