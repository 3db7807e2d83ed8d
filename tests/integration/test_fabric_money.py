"""The contract's money rules (issue 21; deploy/fabric/README.md, "Pay per use") on the real
two-organisation network: every cheat a client, a provider or an operator could try is refused
with the code and the field the contract names, it moves no credit, and an honest client and
provider end with the balances the arithmetic says.

The parties are issued for this module by the organisations' CAs and granted their role by
their own organisation's admin, so their balances hold only what happens here: `client` and
`other` (Org2, client role), `shop` and `rival` (Org1, provider acting for itself). Org1's
`anchoring` and `registry` are the stack's two operators. After each test, credit is
conserved: what was minted to the clients is in their balances, their open holds and the
providers' balances, to the unit.

The local network's minimum settlement window is 30 s and the peers' timewindow 15 s
(`StackSettings`), so the one test that lets a hold's windows pass waits under a minute.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from devstack.fabric import FabricNetwork
from devstack.settings import StackSettings
from streamledger.core.contract_errors import (
    AlreadySettled,
    Conflict,
    ContractError,
    ExceedsHold,
    Forbidden,
    HoldExpired,
    InvalidArgument,
    InvalidReceipt,
    NotFound,
    StaleReceipt,
    WindowClosed,
    WindowOpen,
)
from streamledger.core.receipts import Receipt, hold_id, sign_receipt
from streamledger.fabric import GatewayError, Signer
from streamledger.ledger import LedgerClient
from streamledger.settings import LedgerSettings
from tests.integration.conftest import identity
from tests.integration.paying import (
    Sign,
    in_an_hour,
    issue_identity,
    new_nonce,
    signer_of_msp,
)

pytestmark = [pytest.mark.integration, pytest.mark.fabric]

ROOT = "ab" * 32  # any well-formed Merkle root
MINTED = {"client": 1000, "other": 200}


@dataclass
class Party:
    ledger: LedgerClient
    account: str
    sign: Sign
    """Signs with the party's own Fabric key (a client's receipts)."""


@dataclass
class Money:
    client: Party
    other: Party
    shop: Party
    rival: Party
    auditor: LedgerClient
    anchoring: LedgerClient
    registry: LedgerClient

    async def balance(self, party: Party) -> int:
        try:
            return await self.auditor.balance(party.account)
        except GatewayError as exc:
            if isinstance(exc.contract_error, NotFound):
                return 0  # a provider paid nothing yet has no account
            raise

    async def credit(self) -> int:
        """Every unit the parties have: balances plus the clients' open holds."""
        balances = [await self.balance(p) for p in (self.client, self.other, self.shop, self.rival)]
        holds = [h for p in (self.client, self.other) for h in await self.auditor.holds_of(p.account)]
        return sum(balances) + sum(h["amount"] for h in holds if h["status"] == "OPEN")

    async def assert_conserved(self) -> None:
        assert await self.credit() == sum(MINTED.values()), "credit was created or lost"


@pytest.fixture(scope="module")
async def money(network: FabricNetwork, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Money]:
    folder, run = tmp_path_factory.mktemp("money"), uuid.uuid4().hex[:8]
    opened: list[LedgerClient] = []

    def connect(settings: LedgerSettings) -> LedgerClient:
        opened.append(LedgerClient.connect(settings))
        return opened[-1]

    async def party(org: str, name: str, role: str, admin: LedgerClient) -> Party:
        settings = issue_identity(network, org, f"money-{name}-{run}", folder)
        ledger = connect(settings)
        account = (await ledger.who_am_i())["Account"]
        await admin.grant_role(account, role)  # a provider acts for itself
        return Party(ledger, account, signer_of_msp(settings))

    try:
        org1_admin, org2_admin = connect(identity("Admin")), connect(identity("Admin", "Org2"))
        world = Money(client=await party("Org2", "client", "client", org2_admin),
                      other=await party("Org2", "other", "client", org2_admin),
                      shop=await party("Org1", "shop", "provider", org1_admin),
                      rival=await party("Org1", "rival", "provider", org1_admin),
                      auditor=connect(identity("audit")), anchoring=connect(identity("anchoring")),
                      registry=connect(identity("registry")))
        for name, amount in MINTED.items():
            await org1_admin.mint(getattr(world, name).account, amount)
        await world.assert_conserved()
        yield world
    finally:
        for ledger in opened:
            await ledger.gateway.close()


async def refused(call: Awaitable[Any], kind: type[ContractError], field: str) -> ContractError:
    """The contract's refusal of `call`: a `kind` naming `field`."""
    with pytest.raises(GatewayError) as failure:
        await call
    refusal = failure.value.contract_error
    assert isinstance(refusal, kind), f"expected {kind.code}, got: {failure.value}"
    assert refusal.field == field, refusal
    return refusal


async def freeze(client: Party, provider: Party, amount: int, price: int, expires_at: int | None = None) -> str:
    """A hold `client` freezes for `provider` (the minimum settlement window); its id."""
    nonce = new_nonce()
    hold = await client.ledger.freeze(nonce, provider.account, amount, price, expires_at or in_an_hour())
    assert (hold["hold_id"], hold["status"], hold["price_per_unit"]) == (hold_id(client.account, nonce), "OPEN", price)
    return hold["hold_id"]


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} not within {timeout_s} s"
        await asyncio.sleep(0.2)


# -- the honest path --

async def test_an_honest_client_and_provider_end_with_the_arithmetically_right_balances(money: Money) -> None:
    client, shop = money.client, money.shop
    paid, earned = await money.balance(client), await money.balance(shop)

    hold = await freeze(client, shop, 100, 7)
    assert await money.balance(client) == paid - 100
    await shop.ledger.authorize(hold, 30)
    assert (await shop.ledger.authorize(hold, 40))["authorized"] == 70  # reservations add up
    recorded = await shop.ledger.record_receipt(sign_receipt(client.sign, hold, 4, 1))  # a checkpoint
    assert (recorded["receipt"]["units"], recorded["receipt"]["sequence"], recorded["status"]) == (4, 1, "OPEN")
    settled = (await shop.ledger.settle(hold, sign_receipt(client.sign, hold, 9, 2))).json()
    assert (settled["units"], settled["price_per_unit"], settled["authorized"], settled["charged"],
            settled["refunded"], settled["provider"]) == (9, 7, 70, 63, 37, shop.account)  # 9 x 7 = 63

    capped = await freeze(client, shop, 100, 10)  # a receipt worth more than was reserved pays the reservation
    await shop.ledger.authorize(capped, 30)
    settled = (await shop.ledger.settle(capped, sign_receipt(client.sign, capped, 5, 1))).json()
    assert (settled["charged"], settled["refunded"]) == (30, 70)  # min(5 x 10, 30)

    on_record = await freeze(client, shop, 50, 5)  # settled on the receipt recorded before
    await shop.ledger.authorize(on_record, 50)
    await shop.ledger.record_receipt(sign_receipt(client.sign, on_record, 6, 1))
    settled = (await shop.ledger.settle(on_record, None)).json()
    assert (settled["units"], settled["charged"], settled["refunded"]) == (6, 30, 20)

    assert await money.balance(client) == paid - 63 - 30 - 30
    assert await money.balance(shop) == earned + 63 + 30 + 30
    await money.assert_conserved()


async def test_the_client_releases_only_from_settle_by_and_the_provider_settles_only_before(money: Money) -> None:
    client, shop = money.client, money.shop
    paid, earned = await money.balance(client), await money.balance(shop)
    window = StackSettings().fabric_min_settlement_window_seconds
    expires_at = int(time.time()) + 8
    nonce = new_nonce()
    hold = await client.ledger.freeze(nonce, shop.account, 60, 5, expires_at)  # window 0: the minimum
    assert (hold["settlement_window_seconds"], hold["settle_by"]) == (window, expires_at + window)
    held = hold["hold_id"]
    await shop.ledger.authorize(held, 50)
    await shop.ledger.record_receipt(sign_receipt(client.sign, held, 6, 1))
    # Served, the client cannot take its credit back: not before expiry...
    refusal = await refused(client.ledger.release(held), WindowOpen, "hold_id")
    assert str(hold["settle_by"]) in refusal.detail

    await until(lambda: time.time() >= expires_at + 1, timeout_s=30, what="the hold's expiry")
    await refused(shop.ledger.authorize(held, 10), HoldExpired, "hold_id")  # no reserving after expiry
    await refused(client.ledger.release(held), WindowOpen, "hold_id")  # ...nor while the window is the provider's
    await shop.ledger.record_receipt(sign_receipt(client.sign, held, 8, 2))  # the provider's last receipt

    await until(lambda: time.time() >= hold["settle_by"] + 1, timeout_s=window + 30, what="settle_by")
    late = sign_receipt(client.sign, held, 10, 3)
    await refused(shop.ledger.settle(held, late), WindowClosed, "hold_id")
    await refused(shop.ledger.record_receipt(late), WindowClosed, "hold_id")
    released = await client.ledger.release(held)  # pays the recorded receipt, refunds the rest
    assert (released["status"], released["charged"], released["refunded"]) == ("RELEASED", 40, 20)  # 8 x 5
    assert await money.balance(client) == paid - 40
    assert await money.balance(shop) == earned + 40
    await money.assert_conserved()


# -- a provider's cheats --

async def test_settling_on_a_receipt_the_client_did_not_sign_is_refused(money: Money) -> None:
    client, shop = money.client, money.shop
    hold = await freeze(client, shop, 100, 10)
    await shop.ledger.authorize(hold, 100)
    signed = sign_receipt(client.sign, hold, 3, 2)
    await shop.ledger.record_receipt(signed)
    elsewhere = await freeze(client, shop, 100, 10)
    paid, earned = await money.balance(client), await money.balance(shop)

    stranger = Signer(ec.generate_private_key(ec.SECP256R1())).sign
    invalid = {
        "more units than signed": Receipt(hold, 5, 2, signed.signature),
        "a forged signature": Receipt(hold, 5, 3, base64.b64encode(os.urandom(71)).decode()),
        "a key no certificate holds": sign_receipt(stranger, hold, 5, 3),
        "another client's key": sign_receipt(money.other.sign, hold, 5, 3),
        "the provider's own key": sign_receipt(shop.sign, hold, 5, 3),
        "the client's receipt for another hold":
            Receipt(hold, 5, 3, sign_receipt(client.sign, elsewhere, 5, 3).signature),
    }
    for what, cheat in invalid.items():
        refusal = await refused(shop.ledger.settle(hold, cheat), InvalidReceipt, "signature")
        assert "is not signed by the certificate of client" in refusal.detail, what
        await refused(shop.ledger.record_receipt(cheat), InvalidReceipt, "signature")
    await refused(shop.ledger.settle(hold, sign_receipt(client.sign, hold, 3, 1)), StaleReceipt, "sequence")  # older
    await refused(shop.ledger.settle(hold, sign_receipt(client.sign, hold, 2, 3)), StaleReceipt, "units")  # fewer
    await refused(shop.ledger.settle(hold, sign_receipt(client.sign, hold, 11, 3)), ExceedsHold, "units")  # 11 x 10

    unchanged = await shop.ledger.get_hold(hold)
    assert (unchanged["status"], unchanged["receipt"]["units"], unchanged["receipt"]["sequence"]) == ("OPEN", 3, 2)
    assert (await money.balance(client), await money.balance(shop)) == (paid, earned)
    settled = (await shop.ledger.settle(hold, signed)).json()  # what the client signed for, and no more
    assert (settled["charged"], settled["refunded"]) == (30, 70)
    assert (await shop.ledger.release(elsewhere))["refunded"] == 100  # a provider may release at any time
    await money.assert_conserved()


async def test_a_hold_settles_once(money: Money) -> None:
    client, shop = money.client, money.shop
    hold = await freeze(client, shop, 50, 5)
    await shop.ledger.authorize(hold, 50)
    first = await shop.ledger.settle(hold, sign_receipt(client.sign, hold, 4, 1))
    assert first.json()["charged"] == 20
    paid, earned = await money.balance(client), await money.balance(shop)

    bigger = sign_receipt(client.sign, hold, 10, 2)  # a later receipt, genuinely signed
    for again in (shop.ledger.settle(hold, bigger), shop.ledger.settle(hold, None), shop.ledger.record_receipt(bigger),
                  shop.ledger.authorize(hold, 5), shop.ledger.release(hold), client.ledger.release(hold)):
        refusal = await refused(again, AlreadySettled, "hold_id")
        assert first.transaction_id in refusal.detail
    closed = await shop.ledger.get_hold(hold)
    assert (closed["status"], closed["charged"], closed["close_tx_id"]) == ("SETTLED", 20, first.transaction_id)
    assert (await money.balance(client), await money.balance(shop)) == (paid, earned)
    await money.assert_conserved()


async def test_another_provider_can_neither_settle_nor_touch_the_hold(money: Money) -> None:
    client, shop, rival = money.client, money.shop, money.rival
    hold = await freeze(client, shop, 40, 4)
    await shop.ledger.authorize(hold, 40)
    signed = sign_receipt(client.sign, hold, 10, 1)
    rival_earned = await money.balance(rival)

    for cheat in (rival.ledger.settle(hold, signed), rival.ledger.authorize(hold, 10),
                  rival.ledger.record_receipt(signed), rival.ledger.release(hold), money.other.ledger.release(hold)):
        refusal = await refused(cheat, Forbidden, "hold_id")
        assert shop.account in refusal.detail  # the refusal names whom the hold pays
    await refused(rival.ledger.get_hold(hold), Forbidden, "hold_id")  # nor read it

    untouched = await shop.ledger.get_hold(hold)
    assert (untouched["status"], untouched["authorized"], untouched["receipt"]) == ("OPEN", 40, None)
    settled = (await shop.ledger.settle(hold, signed)).json()
    assert (settled["provider"], settled["charged"]) == (shop.account, 40)
    assert await money.balance(rival) == rival_earned
    await money.assert_conserved()


# -- a client's cheats: hold ids --

async def test_a_nonce_names_a_hold_of_its_own_client_only(money: Money) -> None:
    client, other, shop = money.client, money.other, money.shop
    nonce, expires_at = new_nonce(), in_an_hour()
    theirs = await other.ledger.freeze(nonce, shop.account, 20, 2, expires_at)  # the other client took it first
    mine = await client.ledger.freeze(nonce, shop.account, 20, 2, expires_at)  # and took nothing of ours
    assert theirs["hold_id"] == hold_id(other.account, nonce) and theirs["client"] == other.account
    assert mine["hold_id"] == hold_id(client.account, nonce) and mine["client"] == client.account
    assert mine["hold_id"] != theirs["hold_id"]

    paid = await money.balance(client)
    again = await client.ledger.freeze(nonce, shop.account, 20, 2, expires_at)  # a retried submission
    assert (again["hold_id"], again["freeze_tx_id"]) == (mine["hold_id"], mine["freeze_tx_id"])
    for terms in ((shop, 30, 2, expires_at), (money.rival, 20, 2, expires_at), (shop, 20, 1, expires_at),
                  (shop, 20, 2, expires_at + 60)):
        provider, amount, price, expires = terms
        refusal = await refused(client.ledger.freeze(nonce, provider.account, amount, price, expires),
                                Conflict, "nonce")
        assert mine["hold_id"] in refusal.detail, terms
    assert await money.balance(client) == paid  # frozen once
    assert (await other.ledger.get_hold(theirs["hold_id"]))["amount"] == 20
    for hold in (mine["hold_id"], theirs["hold_id"]):
        await shop.ledger.release(hold)
    await money.assert_conserved()


# -- an operator's cheats: names another operator uses --

async def test_a_future_model_version_cannot_be_taken(money: Money) -> None:
    registry, anchoring = money.registry, money.anchoring
    model = f"money-model-{uuid.uuid4().hex[:10]}"
    digests = {v: uuid.uuid4().hex * 2 for v in (1, 2, 3)}
    refusal = await refused(registry.register_model(model, 2, digests[2]), Conflict, "version")  # before version 1
    assert "the next version" in refusal.detail and "is 1" in refusal.detail
    first = await registry.register_model(model, 1, digests[1])
    await refused(anchoring.register_model(model, 2, digests[2]), Forbidden, "model_id")  # another operator
    await refused(registry.register_model(model, 3, digests[3]), Conflict, "version")  # skipping one
    assert await registry.get_model(model, 2) is None
    await registry.register_model(model, 2, digests[2])
    latest = await registry.get_model(model, 0)
    assert (latest["version"], latest["sha256"], latest["submitter"]) == (2, digests[2], first["submitter"])


async def test_a_topic_is_anchored_by_its_first_operator_only(money: Money) -> None:
    anchoring, registry = money.anchoring, money.registry
    topic = f"money-{uuid.uuid4().hex[:10]}"
    first = await anchoring.anchor_batch(f"{topic}:0:0-9", ROOT, 10, 0, 9)
    owner = await registry.get_topic(topic)
    operator = (await anchoring.who_am_i())["Account"]
    assert (owner["owner"], owner["tx_id"]) == (operator, first.transaction_id)

    for batch, first_offset, last_offset in ((f"{topic}:0:10-19", 10, 19), (f"{topic}:1:0-9", 0, 9)):
        refusal = await refused(registry.anchor_batch(batch, ROOT, 10, first_offset, last_offset),
                                Forbidden, "batch_id")
        assert operator in refusal.detail
    await refused(anchoring.anchor_batch(f"{topic}-0-10-19", ROOT, 10, 10, 19), InvalidArgument, "batch_id")
    await refused(anchoring.anchor_batch(f"{topic}:0:10-19", ROOT, 10, 10, 20), InvalidArgument, "batch_id")
    await refused(anchoring.anchor_batch(f"{topic}:0:10-19", ROOT, 11, 10, 19), InvalidArgument, "count")
    assert await registry.get_anchor(f"{topic}:0:10-19") is None
    gaps = await anchoring.anchor_batch(f"{topic}:0:10-19", ROOT, 8, 10, 19)  # offsets may have gaps
    assert (await registry.get_anchor(f"{topic}:0:10-19"))["tx_id"] == gaps.transaction_id
