"""Settlement by `streamledger serve ledger` on the real stack: Kafka, FerretDB, the two-org Fabric network.

- an honest client and provider end with the arithmetically right balances: the provider is
  paid `receipt units x price` of the client's latest receipt (never more than it reserved),
  the client gets the rest back, through a kill -9 of the service; a usage record delivered
  twice is counted once, one carrying a receipt its client did not sign is not paid on
  (`invalid_receipt`), and the credit of client, provider and open holds is conserved;
- windows: the client's Release before `settle_by` is refused (WINDOW_OPEN), after the provider
  settled it gives nothing back, and from `settle_by` on it returns an unused hold; the service
  settles before `settle_by` minus the peers' timewindow even when its grace would be later,
  and records a long hold's latest receipt on the ledger (`RecordReceipt`) meanwhile;
- dead letters: usage beyond the frozen amount (`usage_exceeds_hold`), a Settle the contract
  refuses (`settlement_refused`, recorded as refused), usage of another provider's hold
  (`other_provider`), of an unknown hold, or after its hold closed.

The client is Org2's User5, signing receipts with its own Fabric key; the inference server is
played by the `inference` identity (reserving with Authorize, writing usage records); the
service settles as `settlement`; both act for Org1's `provider` account. Holds use the local
contract's minimum window (30 s) and the local peers' timewindow (15 s) as the margin.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import pytest

from streamledger import kafka
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.core.contract_errors import AlreadySettled, WindowOpen
from streamledger.core.receipts import Receipt, sign_receipt
from streamledger.fabric import EndorseError, Signer, load_msp
from streamledger.ledger import LedgerClient
from tests.integration.conftest import identity
from tests.integration.pipeline.conftest import (
    account_of,
    acts_for,
    balance_or_zero,
    made_provider,
    wait_until,
)
from tests.integration.pipeline.test_ledger_service import ledger_letters

pytestmark = [pytest.mark.integration, pytest.mark.fabric, pytest.mark.timeout(420)]

CODEC = AvroCodec(SchemaRegistry.from_dir())
MARGIN = 15
"""The local peers' timewindow (`StackSettings.fabric_timewindow_seconds`), the service's margin."""


@dataclass
class Client:
    """A client on the ledger, with the key that signs its receipts."""

    ledger: LedgerClient
    account: str
    signer: Signer

    @classmethod
    async def of(cls, ledger: LedgerClient, user: str, org: str = "Org2") -> Client:
        settings = identity(user, org)
        return cls(ledger, await account_of(ledger), load_msp(settings.msp_dir(), settings.fabric_msp_id)[1])

    def receipt(self, hold_id: str, units: int, sequence: int) -> Receipt:
        return sign_receipt(self.signer.sign, hold_id, units, sequence)

    async def freeze(self, provider: str, amount: int, price: int, expires_at: int) -> dict:
        """A hold at the contract's minimum settlement window."""
        return await self.ledger.freeze(uuid.uuid4().hex, provider, amount, price, expires_at)


@pytest.fixture
async def parties():
    """Org1's Admin (mints), the client (Org2's User5) and the inference server (`inference`,
    a provider acting for Org1's `provider`, which the holds pay)."""
    async with LedgerClient.connect(identity("Admin")) as admin, \
            LedgerClient.connect(identity("User5", "Org2")) as client, \
            LedgerClient.connect(identity("inference")) as server:
        yield admin, await Client.of(client, "User5"), server


def usage_record(hold_id: str, request_id: str, client_id: str, units: int, price: int,
                 receipt: Receipt | None = None) -> bytes:
    """What the inference server writes for a request served, with the latest receipt it had."""
    return CODEC.encode("UsageRecord", {
        "hold_id": hold_id, "request_id": request_id, "client": client_id, "model_id": "m", "model_version": 1,
        "units": units, "price": price, "ts": int(time.time() * 1000),
        "receipt_units": receipt.units if receipt else 0, "receipt_sequence": receipt.sequence if receipt else 0,
        "receipt_signature": receipt.signature if receipt else ""})


def unix(timestamp: str) -> float:
    """An RFC 3339 timestamp of the contract (nanoseconds, Z) as unix seconds."""
    whole, _, fraction = timestamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(whole + "+00:00").timestamp() + float(f"0.{fraction or 0}")


async def until_visible(ledger: LedgerClient, hold_id: str) -> None:
    """Wait until the peer `ledger` reads from (each organisation its own) has the hold."""
    async def visible() -> bool:
        return await ledger.get_hold(hold_id) is not None
    await wait_until(visible, 30, f"hold {hold_id} on the peer of {ledger.identity}")


async def settled(mongo_db, *hold_ids: str) -> bool:
    return await mongo_db["settlements"].count_documents({"_id": {"$in": list(hold_ids)}}) == len(hold_ids)


async def test_an_honest_client_pays_for_its_receipts_once_through_a_kill_9_and_credit_is_conserved(
        bootstrap, mongo_db, ledger_env, services, parties) -> None:
    admin, client, server = parties
    usage_topic = ledger_env["STREAMLEDGER_LEDGER_USAGE_TOPIC"]
    ledger_env.update({"STREAMLEDGER_LEDGER_ANCHORING": "false", "STREAMLEDGER_LEDGER_SETTLE_GRACE_SECONDS": "1",
                       "STREAMLEDGER_LEDGER_RECORD_RECEIPT_EVERY_SECONDS": "2"})
    provider_id = await acts_for(server)
    await admin.mint(client.account, 1_100)

    async def balances() -> tuple[int, int]:
        return await client.ledger.balance(client.account), await balance_or_zero(server, provider_id)

    before = await balances()
    expires = int(time.time()) + 30
    a = (await client.freeze(provider_id, 600, 3, expires))["hold_id"]
    b = (await client.freeze(provider_id, 300, 5, expires))["hold_id"]
    unused = await client.freeze(provider_id, 200, 2, expires)
    holds = (a, b, unused["hold_id"])

    async def credit() -> int:
        """The client's and the provider's balances and the credit in this test's open holds."""
        open_holds = [h for h in [await client.ledger.get_hold(h) for h in holds] if h["status"] == "OPEN"]
        return sum(await balances()) + sum(h["amount"] for h in open_holds)
    assert await credit() == sum(before)
    await until_visible(server, holds[-1])  # frozen through Org2's peer; Org1's endorses the rest too

    with pytest.raises(EndorseError) as early:  # served or not, the credit is the provider's until settle_by
        await client.ledger.release(a)
    assert isinstance(early.value.contract_error, WindowOpen), early.value

    # The server reserves, serves, and writes each request's usage with the latest receipt it had:
    # on `a` 20 requests of 4 units at 3, each paid for by the client's receipt on the next one
    # (the last 4 units stay unreceipted: the server's credit window); on `b` 1, 3 and 2 units at
    # 5, each receipted as it is asked for, but only 20 of credit reserved.
    await server.authorize(a, 300)
    await server.authorize(b, 20)
    on_a = [usage_record(a, f"a-{n}", client.account, 4, 3, client.receipt(a, 4 * n, n) if n else None)
            for n in range(20)]
    on_b = [usage_record(b, f"b-{n}", client.account, units, 5, client.receipt(b, total, n + 1))
            for n, (units, total) in enumerate([(1, 1), (3, 4), (2, 6)])]
    forger = await Client.of(client.ledger, "User6")  # another client signs "for" User5's hold
    forged = usage_record(a, "a-forged", client.account, 50, 3, forger.receipt(a, 150, 99))
    unknown = usage_record(f"{uuid.uuid4().hex[:8]}-unknown", "u-0", client.account, 1, 1)

    ledger = services("ledger")  # settles as `settlement`
    await ledger.logged('"event": "settlement_started"')
    async with kafka.producer(bootstrap) as producer:
        for key, value in [(a, v) for v in on_a[:10]] + [(b, v) for v in on_b[:2]] + [("unknown", unknown)]:
            await producer.send(usage_topic, key=key.encode(), value=value)
        await producer.flush()
        checkpoint: dict = {}

        async def checkpointed() -> bool:  # the service recorded the latest receipt it had read
            checkpoint.update((await server.get_hold(a))["receipt"] or {})
            return bool(checkpoint)
        await wait_until(checkpointed, 30, f"a receipt of hold {a} recorded on the ledger", ledger.tail)
        assert 1 <= checkpoint["sequence"] <= 9 and checkpoint["units"] == 4 * checkpoint["sequence"], checkpoint
        ledger.kill9()  # with the first half read and nothing settled yet
        ledger.start()
        for key, value in [(a, v) for v in on_a[10:]] + [(b, on_b[2]), (a, on_a[5]), (a, forged)]:
            await producer.send(usage_topic, key=key.encode(), value=value)  # on_a[5] a second time
        await producer.flush()

        await wait_until(lambda: settled(mongo_db, a, b), 90, "holds a and b settled", ledger.tail)
        late = usage_record(a, "a-late", client.account, 1, 3, client.receipt(a, 80, 20))
        await producer.send_and_wait(usage_topic, key=a.encode(), value=late)

    async def client_sees_both_settled() -> bool:  # Org2's peer has the blocks too
        return all([(await client.ledger.get_hold(h))["status"] == "SETTLED" for h in (a, b)])
    await wait_until(client_sees_both_settled, 30, "the client's peer to show both holds settled")
    hold_a, hold_b = await client.ledger.get_hold(a), await client.ledger.get_hold(b)
    assert (hold_a["status"], hold_a["charged"], hold_a["refunded"]) == ("SETTLED", 76 * 3, 600 - 76 * 3), hold_a
    assert (hold_a["receipt"]["units"], hold_a["receipt"]["sequence"]) == (76, 19)
    assert (hold_b["status"], hold_b["charged"], hold_b["refunded"]) == ("SETTLED", 20, 280), hold_b  # reserved 20
    for hold in (hold_a, hold_b):  # settled after expiry, before a client's early-stamped Release could land
        assert hold["expires_at"] <= unix(hold["closed_at"]) < hold["settle_by"] - MARGIN, hold
    outcomes = {d["_id"]: d async for d in mongo_db["settlements"].find({})}
    assert {h: (o["status"], o["units"], o["price"], o["usage_units"], o["usage_records"], o["duplicates"])
            for h, o in outcomes.items()} == {a: ("SETTLED", 76, 3, 80, 20, 1), b: ("SETTLED", 6, 5, 6, 3, 0)}
    assert await mongo_db["settlement_plans"].count_documents({}) == 0
    assert await balances() == (before[0] - 1_100 + (600 - 228) + 280, before[1] + 228 + 20)

    # After the provider settled, the client's Release gives nothing back a second time.
    with pytest.raises(EndorseError) as again:
        await client.ledger.release(a)
    assert isinstance(again.value.contract_error, AlreadySettled), again.value

    # The unused hold stays frozen until settle_by; from then on its client releases it whole.
    assert (await client.ledger.get_hold(unused["hold_id"]))["status"] == "OPEN"

    async def window_over() -> bool:
        return time.time() >= unused["settle_by"]
    await wait_until(window_over, unused["settle_by"] - time.time() + 5, "the unused hold's settle_by")

    async def released() -> bool:
        try:
            await client.ledger.release(unused["hold_id"])
        except EndorseError as exc:
            if isinstance(exc.contract_error, WindowOpen):
                return False
            raise
        return True
    await wait_until(released, 30, "the client's release from settle_by on")  # the peers' clocks may lag ours
    assert (await client.ledger.get_hold(unused["hold_id"]))["refunded"] == 200
    assert await credit() == sum(before)
    assert await balances() == (before[0] - 1_100 + 372 + 280 + 200, before[1] + 248)

    # One dead letter per source record (the replay after the kill may send one twice).
    letters: dict[tuple[int, int], dict] = {}

    async def three_letters() -> bool:
        letters.update({(d["source_partition"], d["source_offset"]): d
                        for d in await ledger_letters(bootstrap, ledger_env["STREAMLEDGER_LEDGER_DEADLETTER_TOPIC"])})
        return len(letters) >= 3
    await wait_until(three_letters, 30, "dead letters for the unknown hold, the forged receipt, the late usage",
                     ledger.tail)
    by_reason = {d["reason"]: d for d in letters.values()}
    assert sorted(d["reason"] for d in letters.values()) == ["hold_closed", "invalid_receipt", "unknown_hold"]
    assert "'a-forged'" in by_reason["invalid_receipt"]["error"] and "not signed by its client" in \
        by_reason["invalid_receipt"]["error"]
    assert "'a-late'" in by_reason["hold_closed"]["error"]
    assert ledger.stop() == 0


async def test_usage_beyond_the_frozen_amount_is_charged_up_to_the_receipt_before_the_deadline_whatever_the_grace(
        bootstrap, mongo_db, ledger_env, services, parties) -> None:
    """With 60 s of grace the old rule (expiry + grace) would settle after settle_by, when the
    contract refuses: the service settles by settle_by - margin - lead instead."""
    admin, client, server = parties
    usage_topic = ledger_env["STREAMLEDGER_LEDGER_USAGE_TOPIC"]
    ledger_env.update({"STREAMLEDGER_LEDGER_ANCHORING": "false", "STREAMLEDGER_LEDGER_SETTLE_GRACE_SECONDS": "60"})
    ledger = services("ledger")
    provider_id = await acts_for(server)
    await admin.mint(client.account, 100)
    await ledger.logged('"event": "settlement_started"')
    hold = await client.freeze(provider_id, 100, 5, int(time.time()) + 6)
    hold_id = hold["hold_id"]
    await until_visible(server, hold_id)
    await server.authorize(hold_id, 100)
    async with kafka.producer(bootstrap) as producer:
        for n in range(3):  # 3 x 10 units at 5: 150 of usage against 100 frozen, 20 units receipted
            receipt = client.receipt(hold_id, 10 * n, n) if n else None
            await producer.send(usage_topic, key=hold_id.encode(),
                                value=usage_record(hold_id, f"r{n}", client.account, 10, 5, receipt))
        await producer.send(usage_topic, key=hold_id.encode(), value=None)  # a tombstone is no usage either
        await producer.flush()

    await wait_until(lambda: settled(mongo_db, hold_id), 60, f"hold {hold_id} settled", ledger.tail)
    hold = await server.get_hold(hold_id)
    assert (hold["status"], hold["charged"], hold["refunded"]) == ("SETTLED", 100, 0), hold
    assert hold["expires_at"] <= unix(hold["closed_at"]) < hold["settle_by"] - MARGIN, hold
    outcome = await mongo_db["settlements"].find_one({"_id": hold_id})
    assert (outcome["status"], outcome["units"], outcome["price"], outcome["usage_units"]) == ("SETTLED", 20, 5, 30)

    letters: list[dict] = []

    async def two_letters() -> bool:
        letters[:] = await ledger_letters(bootstrap, ledger_env["STREAMLEDGER_LEDGER_DEADLETTER_TOPIC"])
        return len(letters) >= 2
    await wait_until(two_letters, 30, "dead letters for the excess and the tombstone", ledger.tail)
    by_reason = {d["reason"]: d for d in letters}
    assert sorted(by_reason) == ["empty_message", "usage_exceeds_hold"]
    excess = by_reason["usage_exceeds_hold"]
    assert excess["key"] == hold_id and excess["source_topic"] == usage_topic
    assert f"usage of hold {hold_id!r} came to 150, more than the 100 frozen; 50 was not charged" in excess["error"]
    assert json.loads(excess["original"]) == {"hold_id": hold_id, "usage_charge": 150, "frozen": 100, "excess": 50}
    assert ledger.stop() == 0


REVOKED_PROVIDER = "User8"
"""Org1's user that settles as a provider acting for itself, until this test revokes its role."""
OTHER_PROVIDER = "User7"
"""Org1's user made a provider acting for itself: another provider than the service's."""


async def test_a_settle_the_contract_refuses_is_dead_lettered_and_recorded_as_refused(
        bootstrap, mongo_db, ledger_env, services, parties) -> None:
    """The service settles as Org1's User8, a provider acting for itself; once a hold for it is
    frozen and reserved, Org1's Admin revokes its provider role, so the contract refuses Settle
    (FORBIDDEN): the hold stays open for its provider, nothing is charged. Usage of a hold that
    pays another provider is not this service's to settle at all: `other_provider`."""
    admin, client, _ = parties
    usage_topic = ledger_env["STREAMLEDGER_LEDGER_USAGE_TOPIC"]
    own_id = await made_provider(admin, REVOKED_PROVIDER)
    other_id = await made_provider(admin, OTHER_PROVIDER)
    ledger_env.update({"STREAMLEDGER_FABRIC_USER": REVOKED_PROVIDER, "STREAMLEDGER_LEDGER_ANCHORING": "false",
                       "STREAMLEDGER_LEDGER_SETTLE_GRACE_SECONDS": "1"})
    ledger = services("ledger")
    async with LedgerClient.connect(identity(REVOKED_PROVIDER)) as own_provider:
        await admin.mint(client.account, 80)
        await ledger.logged('"event": "settlement_started"')
        expires = int(time.time()) + 6
        hold_id = (await client.freeze(own_id, 50, 2, expires))["hold_id"]
        theirs = (await client.freeze(other_id, 30, 1, expires))["hold_id"]
        await until_visible(own_provider, hold_id)
        await own_provider.authorize(hold_id, 50)
        try:
            await admin.revoke_role(own_id, "provider")
            async with kafka.producer(bootstrap) as producer:
                for n in range(2):
                    await producer.send(usage_topic, key=hold_id.encode(), value=usage_record(
                        hold_id, f"r{n}", client.account, 3, 2, client.receipt(hold_id, 3 * (n + 1), n + 1)))
                await producer.send(usage_topic, key=theirs.encode(),
                                    value=usage_record(theirs, "t0", client.account, 1, 1))
                await producer.flush()
            await wait_until(lambda: settled(mongo_db, hold_id), 60, f"the outcome of hold {hold_id}", ledger.tail)
        finally:
            await admin.grant_role(own_id, "provider", own_id)
        outcome = await mongo_db["settlements"].find_one({"_id": hold_id})
        assert (outcome["status"], outcome["charged"], outcome["units"], outcome["price"]) == ("REFUSED", 0, 6, 2)
        assert "FORBIDDEN" in outcome["error"] and "needs the provider role" in outcome["error"], outcome
        hold = await client.ledger.get_hold(hold_id)
        assert (hold["status"], hold["charged"]) == ("OPEN", 0), hold
        await own_provider.release(hold_id)  # its own provider may; the credit goes back to the client
        assert await mongo_db["settlements"].find_one({"_id": theirs}) is None
        async with LedgerClient.connect(identity(OTHER_PROVIDER)) as other_provider:
            await other_provider.release(theirs)

    letters: list[dict] = []

    async def two_letters() -> bool:
        letters[:] = await ledger_letters(bootstrap, ledger_env["STREAMLEDGER_LEDGER_DEADLETTER_TOPIC"])
        return len(letters) >= 2
    await wait_until(two_letters, 30, "dead letters for the refused Settle and the other provider's hold", ledger.tail)
    by_reason = {d["reason"]: d for d in letters}
    assert sorted(by_reason) == ["other_provider", "settlement_refused"]
    refused = by_reason["settlement_refused"]
    assert refused["key"] == hold_id and refused["source_topic"] == usage_topic
    assert f"Settle of hold {hold_id!r}" in refused["error"] and "FORBIDDEN" in refused["error"]
    assert by_reason["other_provider"]["key"] == theirs and "FORBIDDEN" in by_reason["other_provider"]["error"]
    assert ledger.stop() == 0
