"""Faults of the two-organisation network (issue 20), on the real local network: the other
organisation's peer stopped, one and then two of the three Raft orderers stopped during a
stream of transfers, and what `stack status` and `up` do about stopped servers.

Every test stops shared servers: run this module alone, under both locks,

    flock /tmp/fault.lock flock /tmp/fabric.lock python -m pytest -q tests/integration/test_fabric_faults.py

and each restarts what it stopped (`Stack.up()`) in `finally`, then waits until a transaction
endorsed by both organisations commits again, so the network is left whole.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable

import grpc
import pytest

from devstack import Stack
from devstack.fabric import CHANNEL, FabricNetwork, Orderer
from devstack.settings import StackSettings
from streamledger.core.contract_errors import NotFound
from streamledger.fabric import (
    EndorsementUnavailable,
    GatewayError,
    RetryPolicy,
    SubmitError,
    Timeouts,
    is_transient,
)
from streamledger.ledger import LedgerClient
from streamledger.retry import NO_RETRY
from tests.integration.conftest import FABRIC_PARTS, identity

pytestmark = [pytest.mark.integration, pytest.mark.fabric, pytest.mark.fault, pytest.mark.timeout(600)]

SETTINGS = StackSettings(fabric=True)
SPANS_A_RESTART = RetryPolicy(attempts=60, initial_seconds=0.5, max_seconds=2.0)
"""About 2 minutes of tries: a restarted peer takes ~20 s before the other org's gateway
rediscovers it (gossip), an orderer a few seconds before Raft has a leader again."""
STREAM_RETRY = RetryPolicy(attempts=60, initial_seconds=0.05, max_seconds=1.0, jitter=1.0)
QUICK_COMMIT = Timeouts(commit_status=10.0)
"""A transaction a stopped Raft leader lost never commits: resubmit it after 10 s, not 60."""


def stack() -> Stack:
    return Stack(SETTINGS, say=lambda _msg: None)


def up_except(*kept_down: str) -> None:
    """`Stack.up()` over every part but `kept_down`: restarts the other stopped ones."""
    partial = stack()
    partial.parts = [p for p in partial.parts if p.name not in kept_down]
    partial.up()


def states() -> dict[str, str]:
    return {s.name: s.state for s in stack().status()}


async def wait_until(condition: Callable[[], bool | Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        outcome = condition()
        if await outcome if isinstance(outcome, Awaitable) else outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.3)


def client(user: str, org: str = "Org1", retry: RetryPolicy = NO_RETRY, timeouts: Timeouts = Timeouts(),
           **overrides: object) -> LedgerClient:
    ledger = LedgerClient.connect(identity(user, org, **overrides), retry=retry)
    ledger.gateway.timeouts = timeouts
    return ledger


def through_org1(network: FabricNetwork) -> dict[str, object]:
    """Settings overrides: use Org1's peer as the gateway (an Org2 client whose own peer is down)."""
    return {"fabric_peer_endpoint": network.org("Org1").peer_address,
            "fabric_peer_tls_root": network.peer_tls_ca(network.org("Org1"))}


class Observed:
    """Wraps a client's gateway stub (our own interface) to count the calls that failed, by
    method, and keep every request: the test sees a retry in progress without faking Fabric."""

    def __init__(self, ledger: LedgerClient) -> None:
        self.stub = ledger.gateway.client.stub
        self.failures: dict[str, int] = {}
        self.codes: dict[tuple[str, grpc.StatusCode], int] = {}
        self.requests: dict[str, list] = {}
        ledger.gateway.client.stub = self

    def __getattr__(self, method: str):
        call = getattr(self.stub, method)

        async def observed(request, **kwargs):
            self.requests.setdefault(method, []).append(request)
            try:
                return await call(request, **kwargs)
            except grpc.aio.AioRpcError as exc:
                self.failures[method] = self.failures.get(method, 0) + 1
                self.codes[method, exc.code()] = self.codes.get((method, exc.code()), 0) + 1
                raise

        return observed


async def balance(auditor: LedgerClient, account: str) -> int:
    try:
        return await auditor.balance(account)
    except GatewayError as exc:
        if isinstance(exc.contract_error, NotFound):
            return 0
        raise


async def both_orgs_commit(admin: LedgerClient) -> None:
    """Wait until a transaction endorsed by both organisations commits (the network is whole)."""
    committed = await admin.contract.submit("Mint", f"probe-{uuid.uuid4().hex[:8]}", 1)
    assert committed.endorsers == ("Org1MSP", "Org2MSP")


async def restore(network: FabricNetwork) -> None:
    """Bring every stopped part back and wait until the network commits again."""
    await asyncio.to_thread(stack().up)
    await asyncio.to_thread(network.wait_for_raft_leader, 60)
    async with client("Admin", retry=SPANS_A_RESTART, timeouts=QUICK_COMMIT) as admin:
        await asyncio.wait_for(both_orgs_commit(admin), 180)


def orderer_channel(network: FabricNetwork, orderer: Orderer) -> dict[str, object]:
    """`osnadmin channel list --channelID` on one orderer: its relation, status and height."""
    admin = network.orderer_admin_tls
    listed = subprocess.run(
        [network.binaries.tool("osnadmin"), "channel", "list", "--channelID", CHANNEL,
         "-o", f"127.0.0.1:{orderer.admin_port}", "--ca-file", str(network.orderer_tls_ca),
         "--client-cert", str(admin / "client.crt"), "--client-key", str(admin / "client.key")],
        capture_output=True, text=True, timeout=30)
    assert "Status: 200" in listed.stdout, listed.stdout + listed.stderr
    return json.loads(listed.stdout.split("\n", 1)[1])


def peer_height(network: FabricNetwork, org: str) -> int:
    info = network.peer_cli("channel", "getinfo", "-c", CHANNEL, org=org, what=f"peer channel getinfo ({org})")
    return int(json.loads(info.split("Blockchain info:", 1)[1])["height"])


@pytest.fixture
def suffix() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def admin(network: FabricNetwork):
    async with client("Admin", retry=SPANS_A_RESTART, timeouts=QUICK_COMMIT) as ledger:
        yield ledger


@pytest.fixture
async def auditor(network: FabricNetwork):
    async with client("audit", retry=SPANS_A_RESTART) as ledger:
        yield ledger


# -- item 1: the other organisation's peer is down --
async def test_the_other_orgs_peer_down_is_a_typed_transient_error_and_nothing_commits_twice(
        network: FabricNetwork, admin: LedgerClient, auditor: LedgerClient, suffix: str) -> None:
    peer = stack().part("fabric-peer-org2")
    payer = client("User1", "Org2", **through_org1(network))  # NO_RETRY: each failure shows
    anchoring = client("anchoring")
    retrying_payer = client("User1", "Org2", retry=SPANS_A_RESTART, **through_org1(network))
    retrying_anchoring = client("anchoring", retry=SPANS_A_RESTART)
    payee, batch = f"payee-{suffix}", f"faults-{suffix}:0:0-2"  # the contract's <topic>:<partition>:<first>-<last>
    try:
        me = (await payer.who_am_i())["Account"]
        await admin.mint(me, 100)
        start = await balance(auditor, me)
        height = peer_height(network, "Org2")
        await asyncio.to_thread(peer.process.stop)
        assert states()["fabric-peer-org2"] == "stopped"

        # Without a policy each submit fails at once, typed, naming the org whose peer is down.
        with pytest.raises(EndorsementUnavailable) as down:
            await payer.transfer(payee, 5)
        assert down.value.orgs == ("Org2MSP",), down.value
        assert str(down.value).startswith("no peer of Org2MSP could endorse: endorse failed: ")
        assert is_transient(down.value)
        with pytest.raises(EndorsementUnavailable) as down:
            await anchoring.anchor_batch(batch, "ab" * 32, 3, 0, 2)
        assert down.value.orgs == ("Org2MSP",), down.value
        # Reads need only the gateway's own org: they still answer.
        assert (await payer.who_am_i())["MSPID"] == "Org2MSP"

        # With a policy spanning the restart, the same submits go on failing, then succeed.
        transfers, anchors = Observed(retrying_payer), Observed(retrying_anchoring)
        transfer = asyncio.create_task(retrying_payer.contract.submit("Transfer", payee, 7))
        anchor = asyncio.create_task(retrying_anchoring.anchor_batch(batch, "ab" * 32, 3, 0, 2))
        await wait_until(lambda: transfers.failures.get("Endorse", 0) >= 2 and anchors.failures.get("Endorse", 0) >= 2,
                         60, "both submits retrying while the peer is down")
        assert not transfer.done() and not anchor.done()
        await asyncio.to_thread(stack().up)
        assert states()["fabric-peer-org2"] == "healthy"
        assert peer_height(network, "Org2") >= height  # restarted with its ledger
        committed = await asyncio.wait_for(transfer, 180)
        anchored = await asyncio.wait_for(anchor, 180)
    finally:
        for ledger in (payer, anchoring, retrying_payer, retrying_anchoring):
            await ledger.gateway.close()
        await restore(network)

    assert committed.endorsers == anchored.endorsers == ("Org1MSP", "Org2MSP")
    # One transaction each, endorsed again and again under one id: it committed once.
    # Endorse retries may sign a new proposal once the first grows stale (FRESH_PROPOSAL_SECONDS):
    # none of those was ordered, and the balance and history below show one commit each.
    assert committed.transaction_id in {r.transaction_id for r in transfers.requests["Endorse"]}
    assert anchored.transaction_id in {r.transaction_id for r in anchors.requests["Endorse"]}
    assert await balance(auditor, payee) == 7  # not 5 + 7: the failed submit changed nothing
    assert await balance(auditor, me) == start - 7
    assert (await auditor.get_anchor(batch))["tx_id"] == anchored.transaction_id
    assert len(await auditor.history(f"anchor:{batch}")) == 1
    await wait_until(lambda: peer_height(network, "Org2") >= peer_height(network, "Org1"), 60,
                     "the restarted Org2 peer caught up with the channel")


# -- item 2: orderers --
async def test_200_transfers_all_commit_while_the_raft_leader_is_stopped(
        network: FabricNetwork, admin: LedgerClient, auditor: LedgerClient, suffix: str) -> None:
    users = [client(f"User{i}", "Org2", retry=STREAM_RETRY, timeouts=QUICK_COMMIT) for i in range(1, 9)]
    observed = [Observed(u) for u in users]
    payees = [f"stream-{suffix}-{i}" for i in range(8)]
    plan = {i: [1 + (i + n) % 3 for n in range(25)] for i in range(8)}
    committed = 0
    stopped: list[Orderer] = []
    try:
        senders = [(await u.who_am_i())["Account"] for u in users]
        for sender in senders:
            await admin.mint(sender, 200)
        start = {s: await balance(auditor, s) for s in senders}

        async def run(i: int) -> None:
            nonlocal committed
            for amount in plan[i]:
                await users[i].transfer(payees[i], amount)
                committed += 1

        async def stop_the_leader() -> None:
            await wait_until(lambda: committed >= 40, 120, "40 transfers committed")
            leader = network.raft_leader()
            assert leader is not None
            await asyncio.to_thread(stack().part(f"fabric-{leader.host}").process.stop)
            stopped.append(leader)
            assert committed < 200, "the stream ended before the leader stopped"
            assert states()[f"fabric-{leader.host}"] == "stopped"
            successor = await asyncio.to_thread(network.wait_for_raft_leader, 60)
            assert successor != leader

        await asyncio.wait_for(asyncio.gather(stop_the_leader(), *(run(i) for i in range(8))), 400)
        # Each transfer was sent once, plus once more after each failed send and after each commit
        # wait that ran out or whose stream the peer cancelled (a transaction the stopped leader lost
        # is sent again, same envelope).
        sent = sum(len(o.requests["Submit"]) for o in observed)
        resent = sum(o.failures.get("Submit", 0) + o.codes.get(("CommitStatus", grpc.StatusCode.DEADLINE_EXCEEDED), 0)
                     + o.codes.get(("CommitStatus", grpc.StatusCode.CANCELLED), 0) for o in observed)
        assert sent == 200 + resent
        assert committed == 200 and stopped
        for i, sender in enumerate(senders):
            assert await balance(auditor, sender) == start[sender] - sum(plan[i])
            assert await balance(auditor, payees[i]) == sum(plan[i])
        # `up` brings the stopped orderer back with its data: still a consenter of the channel, catching up.
        await asyncio.to_thread(stack().up)
        assert all(states()[name] == "healthy" for name in FABRIC_PARTS)
        await both_orgs_commit(admin)
        back = stopped[0]
        await wait_until(lambda: orderer_channel(network, back)["height"] == peer_height(network, "Org1"), 60,
                         f"{back.host} caught up with the channel")
        assert orderer_channel(network, back)["consensusRelation"] == "consenter"
        assert orderer_channel(network, back)["status"] == "active"
    finally:
        for u in users:
            await u.gateway.close()
        await restore(network)


async def test_two_orderers_stopped_refuse_submits_clearly_until_one_is_back(
        network: FabricNetwork, admin: LedgerClient, auditor: LedgerClient, suffix: str) -> None:
    leader = await asyncio.to_thread(network.wait_for_raft_leader, 60)
    other = next(o for o in network.orderers if o != leader)
    payer = client("User2", "Org2", timeouts=QUICK_COMMIT)
    retrying = client("User3", "Org2", retry=SPANS_A_RESTART, timeouts=QUICK_COMMIT)
    first, second = f"two-down-{suffix}-a", f"two-down-{suffix}-b"
    try:
        for ledger in (payer, retrying):
            await admin.mint((await ledger.who_am_i())["Account"], 50)
        transaction = await payer.contract.new_proposal("Transfer", first, 7).endorse()
        for orderer in (leader, other):
            await asyncio.to_thread(stack().part(f"fabric-{orderer.host}").process.stop)
        assert states()[f"fabric-{leader.host}"] == states()[f"fabric-{other.host}"] == "stopped"

        # One orderer of three has no quorum: the orderers refuse the transaction.
        refusal: list[SubmitError] = []

        async def refused() -> bool:
            try:
                await transaction.submit()  # the same envelope each time: one transaction id
            except SubmitError as exc:
                refusal.append(exc)
                return True
            return False

        await wait_until(refused, 60, "the surviving orderer to refuse the transaction")
        error = refusal[0]
        assert error.code == grpc.StatusCode.UNAVAILABLE and is_transient(error), error
        assert str(error).startswith("submit failed: UNAVAILABLE: no orderers could successfully process transaction")
        # A refused connection for each stopped orderer; the survivor's refusal (no Raft leader: it
        # may itself fail to reach the stopped leader) comes with or without a detail.
        said = {d.address: d.message for d in error.details}
        assert all("connection refused" in said.get(o.address, "") for o in (leader, other)), said

        # A retrying submit keeps failing while two are down, and commits once one is back.
        observed = Observed(retrying)
        retried = asyncio.create_task(retrying.transfer(second, 5))
        await wait_until(lambda: observed.failures.get("Submit", 0) >= 2, 60, "the submit retrying")
        assert not retried.done()
        await asyncio.to_thread(up_except, f"fabric-{other.host}")
        assert states()[f"fabric-{leader.host}"] == "healthy"
        assert states()[f"fabric-{other.host}"] == "stopped"
        await asyncio.wait_for(retried, 180)
        resubmitted = await (await transaction.submit()).status()  # the envelope refused earlier
        assert resubmitted.transaction_id == transaction.transaction_id

        # The payer's commit status comes from its own org's peer; the auditor reads Org1's,
        # which may be a block behind just after the orderers came back.
        async def both_transfers_visible() -> bool:
            return await balance(auditor, first) == 7 and await balance(auditor, second) == 5
        await wait_until(both_transfers_visible, 30, "both transfers on the auditor's peer")
        assert await balance(auditor, first) == 7 and await balance(auditor, second) == 5  # once each
        await asyncio.to_thread(stack().up)
        assert all(states()[name] == "healthy" for name in FABRIC_PARTS)
        await both_orgs_commit(admin)
        await wait_until(lambda: orderer_channel(network, other)["height"] == peer_height(network, "Org1"), 60,
                         f"{other.host} caught up with the channel")
    finally:
        for ledger in (payer, retrying):
            await ledger.gateway.close()
        await restore(network)


# -- items 3 and 6: status, `up` twice, restarts --
async def test_status_up_twice_and_orderer_restarts_elect_a_leader_each_time(
        network: FabricNetwork, admin: LedgerClient) -> None:
    before = {s.name: s for s in stack().status()}
    assert {name: before[name].state for name in FABRIC_PARTS} == dict.fromkeys(FABRIC_PARTS, "healthy")
    after = {s.name: s for s in await asyncio.to_thread(stack().up)}
    assert {name: after[name].pid for name in FABRIC_PARTS} == {name: before[name].pid for name in FABRIC_PARTS}

    leader_seconds = []
    try:
        for round_ in range(3):
            # The leader first, then the others: each way an orderer stops must heal without help.
            orderer = network.raft_leader() if round_ == 0 else network.orderers[round_ % 3]
            assert orderer is not None
            part = stack().part(f"fabric-{orderer.host}")
            height = orderer_channel(network, orderer)["height"]
            pid = part.process.pid()
            if round_ == 1:  # ended behind the stack's back: the pid file stays, so `died`
                os.kill(pid, signal.SIGTERM)
                await wait_until(lambda: part.process.pid() is None, 30, f"{orderer.host} to exit")
                assert states()[part.name] == "died"
            else:
                await asyncio.to_thread(part.process.stop)
                assert states()[part.name] == "stopped"
            started = time.monotonic()
            await asyncio.to_thread(stack().up)
            await asyncio.to_thread(network.wait_for_raft_leader, 60)
            leader_seconds.append(time.monotonic() - started)
            assert part.process.pid() not in (None, pid) and states()[part.name] == "healthy"
            await both_orgs_commit(admin)
            channel = orderer_channel(network, orderer)
            assert (channel["consensusRelation"], channel["status"]) == ("consenter", "active")
            await wait_until(lambda o=orderer, h=height: orderer_channel(network, o)["height"] > h, 60,
                             f"{orderer.host}'s ledger growing after its restart")
    finally:
        await restore(network)
    assert len(leader_seconds) == 3 and max(leader_seconds) < 60, leader_seconds
