"""The paid-serving rule of `services/inference/credit.py` on a fake ledger (our `HoldSource`):
receipts plus the credit window, reservations, restarts, and every refusal named."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.inference.authorization import (
    Hold,
    HoldClosed,
    HoldExhausted,
    HoldExpired,
    MalformedReceipt,
    NoHold,
    NothingToReserve,
    NotHoldClient,
    NotHoldProvider,
    ReceiptBeyondHold,
    ReceiptForAnotherHold,
    ReceiptNeeded,
    ReceiptNotSigned,
    StaleReceipt,
)
from services.inference.credit import FAST_CHUNK_SECONDS, CreditMeter
from streamledger.core.receipts import ReceiptKey, sign_receipt
from streamledger.fabric.identity import Signer

ALICE, BOB = "Org2MSP::CN=alice", "Org2MSP::CN=bob"
PROVIDER = "Org1MSP::CN=provider"


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def certified_signer(name: str) -> tuple[str, Signer]:
    """A self-signed certificate (PEM) and the signer of its key, as a Fabric client has."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode(), Signer(key)


ALICE_CERT, ALICE_KEY = certified_signer("alice")
_, MALLORY_KEY = certified_signer("mallory")


class FakeLedger:
    """Holds and `Authorize` as the contract keeps them, counting reads and reservations."""

    def __init__(self, *holds: Hold) -> None:
        self.holds = {h.hold_id: h for h in holds}
        self.reads = 0
        self.reserved: list[tuple[str, int]] = []
        self.gate: asyncio.Event | None = None
        """When set, reservations wait for it (a ledger round trip in flight)."""

    async def hold(self, hold_id: str) -> Hold | None:
        self.reads += 1
        return self.holds.get(hold_id)

    async def reserve(self, hold_id: str, credit: int) -> Hold:
        if self.gate is not None:
            await self.gate.wait()
        hold = self.holds[hold_id]
        if credit > hold.amount - hold.authorized:
            raise NothingToReserve(f"EXCEEDS_HOLD: hold {hold_id!r} has {hold.amount - hold.authorized} left")
        self.holds[hold_id] = hold = dataclasses.replace(hold, authorized=hold.authorized + credit)
        self.reserved.append((hold_id, credit))
        return hold


def a_hold(hold_id: str = "h", amount: int = 1_000, price: int = 2, **changes) -> Hold:
    return dataclasses.replace(Hold(hold_id, ALICE, expires_at=2_000.0, provider=PROVIDER, amount=amount,
                                    price_per_unit=price, client_cert=ALICE_CERT), **changes)


def meter(ledger: FakeLedger, clock: Clock | None = None, window: int = 10, reserve: int = 100) -> CreditMeter:
    return CreditMeter(ledger, window_units=window, reserve_units=reserve, provider=PROVIDER, clock=clock or Clock())


def receipt(units: int, sequence: int, hold: str = "h", signer: Signer = ALICE_KEY) -> str:
    return sign_receipt(signer.sign, hold, units, sequence).header


async def test_a_client_without_a_receipt_is_served_the_window_then_asked_for_one():
    credit = meter(FakeLedger(a_hold()), window=10)
    charge = await credit.charge("h", ALICE, 6)
    assert (charge.units, charge.price, charge.cost, charge.receipt) == (6, 2, 12, None)  # the hold's price
    await credit.charge("h", ALICE, 4)
    with pytest.raises(ReceiptNeeded, match=r"10 units served, no receipt yet, credit window 10 units: 1 more need a "
                                            r"receipt for at least 1 units; send a newer receipt in the "
                                            r"'streamledger-receipt' request metadata") as refused:
        await credit.charge("h", ALICE, 1)
    assert refused.value.code == "RESOURCE_EXHAUSTED"


async def test_an_honest_client_is_served_as_long_as_it_signs_and_each_receipt_is_checked_once(monkeypatch):
    credit = meter(FakeLedger(a_hold(amount=10_000)), window=10)
    checked: list[int] = []
    original = ReceiptKey.verify
    monkeypatch.setattr(ReceiptKey, "verify", lambda key, r: (checked.append(r.sequence), original(key, r)))
    received, sequence, header = 0, 0, None
    for n in range(50):
        received += (await credit.charge("h", ALICE, 8, header)).units
        sequence += 1  # the response arrived: the client signs for all it received
        header = receipt(received, sequence)
        if n % 10 == 9:  # the same receipt twice (two requests before the next response): checked once
            for _ in range(2):
                received += (await credit.charge("h", ALICE, 1, header)).units
            sequence += 1
            header = receipt(received, sequence)
    assert received == 410 and credit.line("h").served == 410
    assert checked == list(range(1, sequence)), "every receipt sent checked once, in order"


async def test_a_client_that_stops_signing_gets_at_most_the_window_more_then_is_told_to_send_a_receipt():
    credit = meter(FakeLedger(a_hold()), window=10)
    await credit.charge("h", ALICE, 5)
    await credit.charge("h", ALICE, 5, receipt(5, 1))
    last = receipt(10, 2)  # its last receipt: 10 units
    await credit.charge("h", ALICE, 5, last)
    served_after = 5  # the request it came with
    while True:
        try:
            served_after += (await credit.charge("h", ALICE, 1, last)).units
        except ReceiptNeeded as exc:
            assert "the latest receipt covers 10 (sequence 2)" in str(exc)
            break
    assert served_after == 10


@pytest.mark.parametrize("header, error, message", [
    (lambda: receipt(5, 3, signer=MALLORY_KEY), ReceiptNotSigned,
     "receipt sequence 3 is not signed by the certificate of client 'Org2MSP::CN=alice' that froze the hold"),
    (lambda: receipt(5, 1), StaleReceipt, "receipt sequence 1 is not newer than the one accepted, sequence 2"),
    (lambda: receipt(5, 2), StaleReceipt, "receipt sequence 2 is not newer than the one accepted"),  # same seq, other
    (lambda: receipt(4, 2, signer=MALLORY_KEY), ReceiptNotSigned, "receipt sequence 2 is not signed"),  # the same, forged
    (lambda: receipt(3, 3), StaleReceipt, "is for 3 units, fewer than the 4 of sequence 2 accepted"),
    (lambda: receipt(5, 3, hold="other"), ReceiptForAnotherHold, "the receipt (sequence 3) is for hold 'other'; "
                                                                 "the request is charged to hold 'h'"),
    (lambda: receipt(501, 3), ReceiptBeyondHold, "hold 'h' pays for at most 500 units (1000 at 2); the receipt says 501"),
    (lambda: "h,5,3", MalformedReceipt, "streamledger-receipt: a receipt is '<hold id>,<units>,<sequence>,<signature>'"),
    (lambda: "h,five,3,c2ln", MalformedReceipt, "with decimal units and sequence"),
    (lambda: "h,5,0,c2ln", MalformedReceipt, "sequence starts at 1"),
])
async def test_a_receipt_that_supersedes_nothing_or_is_not_the_clients_is_refused_naming_why(header, error, message):
    credit = meter(FakeLedger(a_hold()))
    await credit.charge("h", ALICE, 2)
    await credit.charge("h", ALICE, 2, receipt(2, 1))
    await credit.charge("h", ALICE, 1, receipt(4, 2))
    with pytest.raises(error) as refused:
        await credit.charge("h", ALICE, 10, header())  # 15 > 4 + 10: the request needs a newer receipt
    assert message in str(refused.value)
    assert refused.value.code == ("PERMISSION_DENIED" if error is ReceiptNotSigned else "INVALID_ARGUMENT")
    assert credit.line("h").receipt.sequence == 2, "the accepted receipt stays"


async def test_the_server_serves_only_within_what_it_reserved_and_reserves_ahead_off_the_request_path():
    ledger, clock = FakeLedger(a_hold(amount=1_000, price=2)), Clock()
    credit = meter(ledger, clock, window=1_000, reserve=100)  # chunks of 100 units = 200 credit
    await credit.charge("h", ALICE, 10)
    assert ledger.reserved == [("h", 200)] and credit.reservations == 1
    clock.now += FAST_CHUNK_SECONDS  # a slow hold: the chunk stays
    for _ in range(5):
        await credit.charge("h", ALICE, 10)  # 60 units = 120 of 200: less than half a chunk left
    await asyncio.sleep(0)  # the reservation ahead runs in the background
    assert ledger.reserved == [("h", 200), ("h", 200)] and credit.line("h").reserved == 400

    ledger.gate = asyncio.Event()  # the ledger is slow now: a request beyond the reservation waits for it
    clock.now += 1  # and this chunk comes soon after the last: the next one doubles
    waiting = asyncio.ensure_future(credit.charge("h", ALICE, 140 + 1))  # 282 credit; 280 reserved and unspent
    await asyncio.sleep(0.01)
    assert not waiting.done()
    ledger.gate.set()
    await waiting
    await asyncio.sleep(0)  # then less than half the doubled chunk (400) is left: that is reserved ahead
    assert ledger.reserved[2:] == [("h", 200), ("h", 400)] and credit.reservations == 4
    assert credit.line("h").chunk_units == 400, "a busy hold: the chunk doubled at each reservation"


async def test_reservations_never_exceed_the_hold_and_an_exhausted_hold_is_refused():
    ledger = FakeLedger(a_hold(amount=50, price=2))  # 25 units
    credit = meter(ledger, window=100, reserve=100)
    await credit.charge("h", ALICE, 20)
    assert ledger.reserved == [("h", 50)], "capped by the amount"
    with pytest.raises(HoldExhausted, match=r"hold 'h' has 0 credit left to reserve \(amount 50, reserved by the "
                                            r"provider's servers 50, by this server 50, of which it served 40\); "
                                            r"this request needs 2 more: the client freezes a new hold") as refused:
        await credit.charge("h", ALICE, 6)
    assert refused.value.code == "RESOURCE_EXHAUSTED"
    assert (await credit.charge("h", ALICE, 5)).units == 5  # what is reserved is still served


async def test_a_restarted_or_second_server_reserves_anew_from_what_is_left_and_starts_from_the_latest_receipt():
    ledger = FakeLedger(a_hold(amount=100, price=1))
    first = meter(ledger, window=10, reserve=60)
    received, sequence, header = 0, 0, None
    for _ in range(3):
        received += (await first.charge("h", ALICE, 8, header)).units
        sequence += 1
        header = receipt(received, sequence)
    assert ledger.reserved == [("h", 60)] and received == 24

    second = meter(ledger, window=10, reserve=60)  # a restart: nothing of its own reserved
    charge = await second.charge("h", ALICE, 8, header)
    assert charge.receipt.units == 24 and second.line("h").served == 32, "from the client's latest receipt"
    assert ledger.reserved == [("h", 60), ("h", 40)], "only what the hold had left, never the full amount"
    with pytest.raises(ReceiptNeeded, match="32 units served, the latest receipt covers 24"):
        await second.charge("h", ALICE, 3, header)
    received += 8
    sequence += 1
    header = receipt(received, sequence)
    while second.line("h").unspent >= 8:
        received += (await second.charge("h", ALICE, 8, header)).units
        sequence += 1
        header = receipt(received, sequence)
    assert received == 24 + 40, "the second server served the 40 it reserved"
    with pytest.raises(HoldExhausted, match="has 0 credit left to reserve"):
        await second.charge("h", ALICE, 8, header)


async def test_a_reservation_another_server_outran_is_retried_with_what_is_left():
    ledger = FakeLedger(a_hold(amount=100, price=1))
    credit = meter(ledger, window=100, reserve=80)
    await credit.charge("h", ALICE, 1)  # reserves 80 of 100
    ledger.holds["h"] = dataclasses.replace(ledger.holds["h"], authorized=95)  # another server reserved 15
    await credit.charge("h", ALICE, 79)  # this server's read says 20 left; the ledger refuses 20, then 5 are reserved
    await credit.charge("h", ALICE, 3)
    assert ledger.reserved == [("h", 80), ("h", 5)]
    with pytest.raises(HoldExhausted):
        await credit.charge("h", ALICE, 3)


async def test_concurrent_first_requests_read_the_hold_once_and_share_one_reservation():
    ledger = FakeLedger(a_hold())
    ledger.gate = asyncio.Event()
    credit = meter(ledger, window=100)
    requests = [asyncio.ensure_future(credit.charge("h", ALICE, 1)) for _ in range(20)]
    await asyncio.sleep(0.01)
    ledger.gate.set()
    assert len(await asyncio.gather(*requests)) == 20
    assert ledger.reads == 1 and ledger.reserved == [("h", 200)]


async def test_holds_are_cached_refreshed_in_the_background_and_refunded():
    """(The authorizer's test before receipts, adapted: cached, counted, refunded, refused by name.)"""
    clock = Clock()
    ledger = FakeLedger(a_hold(amount=10, price=2))
    credit = CreditMeter(ledger, window_units=100, reserve_units=100, cache_seconds=5.0, clock=clock)
    charge = await credit.charge("h", ALICE, 3)
    assert charge.cost == 6 and credit.line("h").unspent == 4
    with pytest.raises(HoldExhausted, match="this request needs 2 more"):
        await credit.charge("h", ALICE, 3)
    credit.refund(charge)
    await credit.charge("h", ALICE, 5)
    assert ledger.reads == 1
    clock.now += 6  # cache expired: read again in the background, this request served from what is known
    with pytest.raises(HoldExhausted):
        await credit.charge("h", ALICE, 1)
    await asyncio.sleep(0)
    assert ledger.reads == 2
    with pytest.raises(NotHoldClient, match="belongs to another client"):
        await credit.charge("h", BOB, 1)
    with pytest.raises(NoHold, match="no hold named"):
        await credit.charge(None, ALICE, 1)
    with pytest.raises(NoHold, match="'x' does not exist"):
        await credit.charge("x", ALICE, 1)
    clock.now = 2_000.0
    with pytest.raises(HoldExpired, match="'h' expired"):
        await credit.charge("h", ALICE, 1)


async def test_a_hold_closed_or_receipted_on_the_ledger_is_seen_at_the_next_read():
    clock = Clock()
    ledger = FakeLedger(a_hold())
    credit = CreditMeter(ledger, window_units=10, reserve_units=100, cache_seconds=5.0, clock=clock)
    await credit.charge("h", ALICE, 10)
    recorded = sign_receipt(ALICE_KEY.sign, "h", 10, 4)  # settlement recorded it (RecordReceipt)
    ledger.holds["h"] = dataclasses.replace(ledger.holds["h"], receipt=recorded)
    clock.now += 5
    with pytest.raises(ReceiptNeeded):
        await credit.charge("h", ALICE, 1)  # served from what was known while it reads again
    await asyncio.sleep(0)
    assert (await credit.charge("h", ALICE, 10)).receipt == recorded
    with pytest.raises(StaleReceipt, match="sequence 3 is not newer than the one accepted, sequence 4"):
        await credit.charge("h", ALICE, 1, receipt(10, 3))
    ledger.holds["h"] = dataclasses.replace(ledger.holds["h"], live=False)
    clock.now += 5
    await credit.charge("h", ALICE, 1, receipt(20, 5))
    await asyncio.sleep(0)
    with pytest.raises(HoldClosed, match="settled or released"):
        await credit.charge("h", ALICE, 1, receipt(21, 6))


async def test_a_hold_paying_another_provider_is_refused():
    credit = meter(FakeLedger(a_hold(provider="Org1MSP::CN=other")))
    with pytest.raises(NotHoldProvider, match="pays provider 'Org1MSP::CN=other', not this server"):
        await credit.charge("h", ALICE, 1)


async def until(condition, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


async def test_with_a_check_delay_receipts_are_checked_in_the_background_newest_only(monkeypatch):
    checked: list[int] = []
    original = ReceiptKey.verify
    monkeypatch.setattr(ReceiptKey, "verify", lambda key, r: (checked.append(r.sequence), original(key, r)))
    credit = CreditMeter(FakeLedger(a_hold(amount=10_000)), window_units=50, reserve_units=1000, check_seconds=0.05,
                          clock=Clock())
    received, header = 0, None
    for sequence in range(1, 11):  # ten receipts within the window: none checked on a request's path
        received += (await credit.charge("h", ALICE, 2, header)).units
        header = receipt(received, sequence)
    assert checked == [] and credit.line("h").receipt is None
    await until(lambda: credit.line("h").receipt is not None)
    assert checked == [9], "one check, of the newest receipt received"
    assert (await credit.charge("h", ALICE, 2, header)).receipt.sequence == 9, "usage carries checked receipts"


async def test_a_receipt_the_window_needs_is_checked_on_the_path_and_a_forged_one_refused():
    credit = CreditMeter(FakeLedger(a_hold(amount=10_000)), window_units=10, reserve_units=1000, check_seconds=60,
                          clock=Clock())
    await credit.charge("h", ALICE, 10)
    assert (await credit.charge("h", ALICE, 5, receipt(10, 1))).receipt.sequence == 1  # needed: checked at once
    await credit.charge("h", ALICE, 5, receipt(15, 2, signer=MALLORY_KEY))  # 20 <= 10 + 10: not needed, not checked
    with pytest.raises(ReceiptNotSigned, match="receipt sequence 3 is not signed by the certificate of client"):
        await credit.charge("h", ALICE, 5, receipt(20, 3, signer=MALLORY_KEY))  # 25 > 20: needed, checked, refused
    assert credit.line("h").receipt.sequence == 1


async def test_a_forged_receipt_found_out_in_the_background_is_refused_on_sight():
    credit = CreditMeter(FakeLedger(a_hold(amount=10_000)), window_units=100, reserve_units=1000, check_seconds=0.001,
                          clock=Clock())
    await credit.charge("h", ALICE, 1)
    forged = receipt(1, 1, signer=MALLORY_KEY)
    await credit.charge("h", ALICE, 1, forged)  # within the window: served meanwhile
    await until(lambda: credit.line("h").forged == forged)
    with pytest.raises(ReceiptNotSigned, match="found out before"):
        await credit.charge("h", ALICE, 1, forged)
    assert (await credit.charge("h", ALICE, 1, receipt(3, 1))).units == 1  # its own receipt is fine


async def test_an_older_receipt_is_ignored_while_the_request_does_not_need_a_newer_one():
    """Requests sent at once may arrive out of order: the older receipt is no refusal by itself."""
    credit = meter(FakeLedger(a_hold()), window=10)
    await credit.charge("h", ALICE, 4)
    first, second = receipt(2, 1), receipt(4, 2)
    await credit.charge("h", ALICE, 2, second)  # sent after `first`, arrived before it
    assert (await credit.charge("h", ALICE, 2, first)).receipt.sequence == 2
    with pytest.raises(StaleReceipt, match="receipt sequence 1 is not newer than the one accepted, sequence 2"):
        await credit.charge("h", ALICE, 7, first)  # 15 > 4 + 10: it needed a newer one


async def test_a_background_check_verifies_in_a_worker_thread_while_requests_are_served(monkeypatch):
    """ECDSA verification (the costliest step of metering) leaves the event loop: requests are
    served while it runs, and a receipt that came meanwhile is checked next."""
    threads: list[str] = []
    release = threading.Event()
    original = ReceiptKey.verify

    def slow_verify(key, r):
        if r.hold_id == "w":  # not a check an earlier test's worker thread makes late (it would count here)
            threads.append(threading.current_thread().name)
            release.wait(5)
        return original(key, r)
    monkeypatch.setattr(ReceiptKey, "verify", slow_verify)
    credit = CreditMeter(FakeLedger(a_hold("w", amount=10_000)), window_units=50, reserve_units=1000, check_seconds=0.001,
                          clock=Clock())
    await credit.charge("w", ALICE, 2)
    await credit.charge("w", ALICE, 2, receipt(2, 1, "w"))
    await until(lambda: threads)  # the check of receipt 1 is on its way, blocked
    for n in range(2, 6):  # served meanwhile, with newer receipts
        assert (await credit.charge("w", ALICE, 2, receipt(2 * n, n, "w"))).receipt is None
    release.set()
    await until(lambda: credit.line("w").receipt is not None and credit.line("w").receipt.sequence == 5)
    assert threads and all(name.startswith("receipts") for name in threads), threads
    assert len(threads) == 2, "receipt 1, then the newest that came meanwhile (5)"
    assert (await credit.charge("w", ALICE, 2, receipt(12, 6, "w"))).receipt.sequence == 5


async def test_background_checks_go_to_the_verifier_given_which_finds_forgeries_too():
    """Paid mode verifies in its hold process (`verify`): no thread of the server's, same outcome."""
    checked: list[int] = []

    async def verify(cert: str, r) -> str | None:
        checked.append(r.sequence)
        assert cert == ALICE_CERT, "checked against the certificate that froze the hold"
        try:
            ReceiptKey(cert).verify(r)
        except ValueError as exc:
            return str(exc)
        return None
    credit = CreditMeter(FakeLedger(a_hold(amount=10_000)), window_units=100, reserve_units=1000, check_seconds=0.001,
                          clock=Clock(), verify=verify)
    await credit.charge("h", ALICE, 5)
    await credit.charge("h", ALICE, 1, receipt(5, 1))
    await until(lambda: credit.line("h").receipt is not None)
    assert credit.line("h").receipt.sequence == 1 and checked == [1] and credit._verifier is None
    await credit.charge("h", ALICE, 1, receipt(6, 2, signer=MALLORY_KEY))
    await until(lambda: credit.line("h").forged is not None)
    assert credit.line("h").receipt.sequence == 1 and checked == [1, 2]


async def test_a_forged_receipt_found_out_in_the_worker_thread_is_not_accepted():
    credit = CreditMeter(FakeLedger(a_hold(amount=10_000)), window_units=100, reserve_units=1000, check_seconds=0.001,
                          clock=Clock())
    await credit.charge("h", ALICE, 5)
    await credit.charge("h", ALICE, 1, receipt(5, 1, signer=MALLORY_KEY))
    await until(lambda: credit.line("h").forged is not None)
    assert credit.line("h").receipt is None and credit.line("h").pending is None


async def test_charge_now_serves_without_waiting_or_says_it_must_wait():
    """The usual paid request is charged with no coroutine; the first one (hold not read yet) and one
    beyond the credit reserved get None: `charge` waits for the ledger, then charges as the rule says."""
    ledger = FakeLedger(a_hold(amount=1_000, price=2))
    credit = meter(ledger, window=500, reserve=100)
    assert credit.charge_now("h", ALICE, 1) is None and ledger.reads == 0, "nothing read yet: the caller waits"
    assert (await credit.charge("h", ALICE, 1)).cost == 2 and ledger.reserved == [("h", 200)]
    charged = credit.charge_now("h", ALICE, 3, receipt(1, 1))
    assert (charged.units, charged.price, charged.cost) == (3, 2, 6)
    assert credit.charge_now("h", ALICE, 97) is None, "beyond the 200 reserved (8 spent): reserve first"
    assert credit.line("h").served == 4, "nothing charged for a request that must wait"
    with pytest.raises(NotHoldClient):
        credit.charge_now("h", BOB, 1)
    with pytest.raises(NoHold, match="no hold named"):
        credit.charge_now(None, ALICE, 1)
    assert (await credit.charge("h", ALICE, 97)).units == 97 and credit.line("h").served == 101
