"""The Python Fabric Gateway client (streamledger/fabric, streamledger/ledger.py)
against the real local two-organisation network: every rule of the contract through the
Gateway API, concurrent transfers with MVCC conflicts retried, chaincode events with resume,
and what the client wrote read back by Fabric's own `peer chaincode query` (an outside client).

Each call is made by the identity whose role allows it (deploy/fabric/identities.yaml):
Org1's `Admin` mints, `anchoring` and `registry` anchor and register, `settlement` settles
the holds paid to Org1's `provider`, `audit` reads anyone's balance and history; Org2's
User1..8 are clients (they freeze, and sign the receipts a provider settles on).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from devstack.fabric import CHANNEL, FabricNetwork
from devstack.fabric.network import CHAINCODE_NAME
from streamledger.core.contract_errors import (
    AlreadySettled,
    ExceedsHold,
    Forbidden,
    InsufficientFunds,
    InvalidArgument,
    NotFound,
)
from streamledger.core.receipts import hold_id, sign_receipt
from streamledger.fabric import (
    EndorseError,
    EvaluateError,
    Gateway,
    GatewayError,
    RetryPolicy,
    load_msp,
)
from streamledger.ledger import DEFAULT_RETRY, LedgerClient
from tests.integration.conftest import identity
from tests.integration.paying import in_an_hour, new_nonce, signer_of

pytestmark = [pytest.mark.integration, pytest.mark.fabric]

# Conflicting writers on one payee retry as new transactions; give them room.
CONFLICT_RETRY = RetryPolicy(attempts=40, initial_seconds=0.05, max_seconds=1.0)


def client(user: str, org: str = "Org1", retry: RetryPolicy = DEFAULT_RETRY, **overrides) -> LedgerClient:
    return LedgerClient.connect(identity(user, org, **overrides), retry=retry)


@pytest.fixture
async def admin(network: FabricNetwork) -> AsyncIterator[LedgerClient]:
    """Org1's admin: mints, nothing else."""
    async with client("Admin") as ledger:
        yield ledger


@pytest.fixture
async def user5(network: FabricNetwork) -> AsyncIterator[LedgerClient]:
    """A client of Org2, through its own org's gateway peer."""
    async with client("User5", "Org2") as ledger:
        yield ledger


@pytest.fixture
async def settlement(network: FabricNetwork) -> AsyncIterator[LedgerClient]:
    """Provider acting for Org1's `provider` account."""
    async with client("settlement") as ledger:
        yield ledger


@pytest.fixture
async def auditor(network: FabricNetwork) -> AsyncIterator[LedgerClient]:
    async with client("audit") as ledger:
        yield ledger


@pytest.fixture
def suffix() -> str:
    return uuid.uuid4().hex[:10]


async def account_of(ledger: LedgerClient) -> str:
    return (await ledger.who_am_i())["Account"]


async def acts_for(ledger: LedgerClient) -> str:
    """The provider account a provider identity authorizes and settles for."""
    return (await ledger.who_am_i())["ActsFor"]


async def balance_or_zero(ledger: LedgerClient, account: str) -> int:
    try:
        return await ledger.balance(account)
    except GatewayError as exc:
        if isinstance(exc.contract_error, NotFound):
            return 0
        raise


async def test_mint_transfer_balance_read_back_by_the_peer_cli(
        network: FabricNetwork, admin: LedgerClient, user5: LedgerClient, auditor: LedgerClient,
        suffix: str) -> None:
    me = await account_of(user5)
    start = await balance_or_zero(auditor, me)
    minted = await admin.contract.submit("Mint", me, 500)
    assert minted.transaction_id and minted.block_number > 0
    assert minted.endorsers == ("Org1MSP", "Org2MSP")
    payee = f"payee-{suffix}"
    await user5.transfer(payee, 120)
    assert await auditor.balance(payee) == 120
    assert await user5.balance(me) == start + 380
    # Fabric's own CLI, a client that shares no code with ours, reads the same state.
    assert json.loads(network.query("Balance", payee, user="audit"))["balance"] == 120
    assert json.loads(network.query("Balance", me, user="User5", org="Org2"))["balance"] == start + 380


async def test_rejections_carry_the_contracts_reason_and_each_peers_detail(
        admin: LedgerClient, user5: LedgerClient, auditor: LedgerClient, suffix: str) -> None:
    with pytest.raises(EndorseError) as overdraft:
        await user5.transfer(f"payee-{suffix}", 10**12)
    assert "INSUFFICIENT_FUNDS" in str(overdraft.value)
    assert isinstance(overdraft.value.contract_error, InsufficientFunds)
    assert overdraft.value.contract_error.field == "amount"
    assert overdraft.value.code == grpc.StatusCode.ABORTED
    assert overdraft.value.details and overdraft.value.details[0].msp_id == "Org2MSP"  # the client's own peer
    with pytest.raises(EndorseError, match="must be a positive integer"):
        await admin.mint(f"acct-{suffix}", -5)
    with pytest.raises(EndorseError, match="must be a positive integer"):
        await admin.mint(f"acct-{suffix}", 0)
    with pytest.raises(EndorseError, match="only an admin of Org1MSP may mint") as forbidden:
        await user5.mint(await account_of(user5), 1000)
    assert isinstance(forbidden.value.contract_error, Forbidden)
    assert forbidden.value.contract_error.field == "creator"
    with pytest.raises(EvaluateError) as malformed:
        await auditor.get_hold("not a valid id!")
    assert isinstance(malformed.value.contract_error, InvalidArgument)
    assert malformed.value.contract_error.field == "hold_id"


async def test_freeze_authorize_settle_then_a_second_settle_is_rejected(
        admin: LedgerClient, user5: LedgerClient, settlement: LedgerClient, auditor: LedgerClient,
        suffix: str) -> None:
    me, provider = await account_of(user5), await acts_for(settlement)
    await admin.mint(me, 200)
    before, earned = await user5.balance(me), await balance_or_zero(auditor, provider)
    nonce = new_nonce()
    hold = hold_id(me, nonce)
    frozen = await user5.freeze(nonce, provider, 100, 20, in_an_hour())  # 100 credit at 20 a unit
    assert (frozen["hold_id"], frozen["price_per_unit"], frozen["client"]) == (hold, 20, me)
    assert await user5.balance(me) == before - 100
    await settlement.authorize(hold, 60)
    signed = sign_receipt(signer_of("User5"), hold, 3, 1)  # the client signs for 3 units
    settled = await settlement.settle(hold, signed)
    assert settled.json()["charged"] == 60
    got = await settlement.get_hold(hold)
    assert got is not None and (got["status"], got["charged"], got["refunded"]) == ("SETTLED", 60, 40)
    assert await auditor.balance(provider) == earned + 60 and await user5.balance(me) == before - 60
    with pytest.raises(EndorseError, match="ALREADY_SETTLED") as again:
        await settlement.settle(hold, signed)
    assert isinstance(again.value.contract_error, AlreadySettled)
    assert await auditor.balance(provider) == earned + 60
    other_nonce = new_nonce()
    other = hold_id(me, other_nonce)
    await user5.freeze(other_nonce, provider, 10, 1, in_an_hour())  # pays for 10 units at most
    with pytest.raises(EndorseError, match="EXCEEDS_HOLD") as beyond:
        await settlement.settle(other, sign_receipt(signer_of("User5"), other, 11, 1))
    assert isinstance(beyond.value.contract_error, ExceedsHold) and beyond.value.contract_error.field == "units"
    assert await settlement.get_hold(hold_id(me, f"missing-{suffix}")) is None


async def test_anchor_model_and_history_read_back(admin: LedgerClient, auditor: LedgerClient, suffix: str) -> None:
    batch, root = f"gw-{suffix}:0:1000-1041", uuid.uuid4().hex * 2  # <topic>:<partition>:<first>-<last>
    async with client("anchoring") as anchoring, client("registry") as registry:
        committed = await anchoring.anchor_batch(batch, root, 42, 1000, 1041)
        anchor = await anchoring.get_anchor(batch)
        assert anchor is not None
        assert (anchor["merkle_root"], anchor["count"], anchor["tx_id"]) == (root, 42, committed.transaction_id)
        assert await anchoring.get_anchor(f"gw-{suffix}:0:0-999") is None
        model, digest = f"model-{suffix}", uuid.uuid4().hex * 2
        await registry.register_model(model, 1, uuid.uuid4().hex * 2)  # versions go up by one from 1
        await registry.register_model(model, 2, digest)
        assert (await registry.get_model(model, 2))["sha256"] == digest
        assert await registry.get_model(model, 3) is None
    account = f"audited-{suffix}"
    await admin.mint(account, 10)
    await admin.mint(account, 15)
    entries = await auditor.history(f"account:{account}")
    assert sorted(json.loads(e["value"])["balance"] for e in entries) == [10, 25]


async def test_200_concurrent_transfers_from_8_tasks_end_with_the_right_balances(
        network: FabricNetwork, admin: LedgerClient, auditor: LedgerClient, suffix: str) -> None:
    users = [client(f"User{i}", "Org2", retry=CONFLICT_RETRY) for i in range(1, 9)]  # Org2's clients
    try:
        senders = [await account_of(u) for u in users]
        for sender in senders:
            await admin.mint(sender, 10_000)
        start = {s: await auditor.balance(s) for s in senders}
        payees = [f"shared-{suffix}-{k}" for k in range(4)]  # shared: concurrent writers conflict
        plan = {i: [(payees[(i + n) % 4], 1 + (i * 25 + n) % 7) for n in range(25)] for i in range(8)}

        async def run(i: int) -> None:
            for payee, amount in plan[i]:
                await users[i].transfer(payee, amount)

        await asyncio.gather(*(run(i) for i in range(8)))
    finally:
        for u in users:
            await u.gateway.close()
    for i, sender in enumerate(senders):
        assert await auditor.balance(sender) == start[sender] - sum(a for _, a in plan[i])
    for payee in payees:
        expected = sum(a for steps in plan.values() for p, a in steps if p == payee)
        assert await auditor.balance(payee) == expected
        assert json.loads(network.query("Balance", payee, user="audit"))["balance"] == expected


async def test_chaincode_events_from_a_block_and_resumed_after_a_transaction(
        admin: LedgerClient, user5: LedgerClient, settlement: LedgerClient, auditor: LedgerClient) -> None:
    me, provider = await account_of(user5), await acts_for(settlement)
    await admin.mint(me, 50)
    nonces = new_nonce(), new_nonce()
    first = await user5.contract.submit("Freeze", nonces[0], provider, 5, 1, in_an_hour(), 0)
    second = await user5.contract.submit("Freeze", nonces[1], provider, 5, 1, in_an_hour(), 0)
    network = auditor.gateway.network(CHANNEL)

    async def events_until(tx_id: str, **start) -> list:
        seen = []
        async with asyncio.timeout(30):
            async for event in network.chaincode_events(CHAINCODE_NAME, **start):
                seen.append(event)
                if event.transaction_id == tx_id:
                    return seen
        return seen

    seen = await events_until(second.transaction_id, start_block=first.block_number)
    frozen = [e for e in seen if e.name == "HoldFrozen"]
    assert [json.loads(e.payload)["hold_id"] for e in frozen[:2]] == [hold_id(me, n) for n in nonces]
    assert frozen[0].block_number == first.block_number
    resumed = await events_until(second.transaction_id, start_block=first.block_number,
                                 after_transaction_id=first.transaction_id)
    assert first.transaction_id not in [e.transaction_id for e in resumed]
    assert resumed[-1].transaction_id == second.transaction_id


class CallCounter(grpc.aio.UnaryUnaryClientInterceptor):
    """Counts the gateway calls that really went out on the channel, by method."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        method = client_call_details.method
        method = (method.decode() if isinstance(method, bytes) else method).rsplit("/", 1)[-1]
        self.calls[method] = self.calls.get(method, 0) + 1
        return await continuation(client_call_details, request)


def unreachable_gateway(counter: CallCounter, **kwargs) -> Gateway:
    settings = identity("User5", "Org2")
    who, signer = load_msp(settings.msp_dir(), settings.fabric_msp_id)
    channel = grpc.aio.secure_channel("127.0.0.1:1", grpc.ssl_channel_credentials(settings.tls_root().read_bytes()),
                                      interceptors=[counter])
    return Gateway(channel, who, signer, **kwargs)


async def test_an_unreachable_peer_is_a_transient_error_after_bounded_retries(network: FabricNetwork) -> None:
    counter = CallCounter()
    retry = RetryPolicy(attempts=3, initial_seconds=0.01, max_seconds=0.05)
    async with unreachable_gateway(counter, retry=retry) as gateway:
        contract = gateway.network(CHANNEL).contract(CHAINCODE_NAME)
        started = time.monotonic()
        with pytest.raises(GatewayError) as failure:
            await contract.evaluate("WhoAmI")
        assert failure.value.code == grpc.StatusCode.UNAVAILABLE and failure.value.transient
        assert time.monotonic() - started < 30
        assert counter.calls == {"Evaluate": 3}  # the policy's attempts, in one place: no nested retries
        with pytest.raises(EndorseError) as failure:
            await contract.submit("Mint", "nobody", 1)
        assert failure.value.transient
        assert counter.calls == {"Evaluate": 3, "Endorse": 3}


async def test_without_a_policy_the_gateway_tries_once(network: FabricNetwork) -> None:
    counter = CallCounter()
    async with unreachable_gateway(counter) as gateway:
        with pytest.raises(GatewayError) as failure:
            await gateway.network(CHANNEL).contract(CHAINCODE_NAME).evaluate("WhoAmI")
        assert failure.value.code == grpc.StatusCode.UNAVAILABLE
        assert counter.calls == {"Evaluate": 1}
