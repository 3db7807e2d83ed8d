"""Settling a hold on its client's latest receipt: which receipt, usage counted once per request,
when a hold is due (from expiry and settle_by), and offsets safe to commit."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from streamledger.core.receipts import InvalidReceipt, Receipt, sign_receipt
from streamledger.core.settlement import (
    HoldTerms,
    SettlementClock,
    UsageBook,
    UsageError,
    check_usage,
    receipt_of,
)
from streamledger.fabric.identity import Signer


class Client:
    """A client's key and the certificate a hold records at Freeze."""

    def __init__(self, name: str = "User5") -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                .sign(key, hashes.SHA256()))
        self.cert = cert.public_bytes(serialization.Encoding.PEM).decode()
        self.signer = Signer(key)

    def receipt(self, hold: str, units: int, sequence: int) -> Receipt:
        return sign_receipt(self.signer.sign, hold, units, sequence)


CLIENT = Client()


def terms(hold_id: str = "h1", *, amount: int = 100, price: int = 2, expires_at: int = 1000, window: int = 60,
          recorded: Receipt | None = None, client: Client = CLIENT) -> HoldTerms:
    return HoldTerms(hold_id, "Org2MSP::CN=User5", client.cert, amount, price, expires_at, expires_at + window,
                     recorded, authorized=amount)


def usage(**overrides: object) -> dict:
    return {"hold_id": "h1", "request_id": "r1", "units": 3, "price": 2, **overrides}


# -- which receipt --

def test_the_receipt_that_supersedes_the_others_is_kept_whatever_order_records_bring_them() -> None:
    book = UsageBook()
    tally = book.open(terms(), 0, now=0.0)
    r1, r2, r3 = CLIENT.receipt("h1", 4, 1), CLIENT.receipt("h1", 10, 2), CLIENT.receipt("h1", 10, 3)
    assert book.offer("h1", r2) and not book.offer("h1", r1)  # an older one, e.g. from a slower replica
    assert book.offer("h1", r3) and not book.offer("h1", r3)  # the same again changes nothing
    assert not book.offer("h1", CLIENT.receipt("h1", 9, 4))  # fewer units never supersede
    assert tally.receipt == r3 and tally.settling_receipt() == r3 and tally.paid_units == 10


@pytest.mark.parametrize("case", ["another signer", "another hold", "other numbers", "beyond the hold"])
def test_a_receipt_its_client_did_not_sign_for_this_hold_is_refused_and_not_kept(case: str) -> None:
    book = UsageBook()
    tally = book.open(terms(amount=100, price=2), 0, now=0.0)
    honest = CLIENT.receipt("h1", 5, 1)
    book.offer("h1", honest)
    forged = {
        "another signer": Client("User6").receipt("h1", 40, 2),
        "another hold": Receipt("h1", 40, 2, CLIENT.receipt("h2", 40, 2).signature),
        "other numbers": Receipt("h1", 45, 2, CLIENT.receipt("h1", 40, 2).signature),
        "beyond the hold": CLIENT.receipt("h1", 51, 2),  # 100 at 2 pays for 50 units
    }[case]
    with pytest.raises(InvalidReceipt, match="at most 50 units" if case == "beyond the hold" else "not signed by"):
        book.offer("h1", forged)
    assert tally.receipt == honest


def test_a_receipt_the_ledger_already_holds_or_passed_is_not_presented_again() -> None:
    recorded = CLIENT.receipt("h1", 8, 3)
    tally = UsageBook().open(terms(recorded=recorded), 0, now=0.0)
    assert tally.settling_receipt() is None and tally.paid_units == 8  # Settle on the recorded one
    tally.offer(CLIENT.receipt("h1", 6, 2))
    assert tally.settling_receipt() is None and tally.paid_units == 8
    later = CLIENT.receipt("h1", 12, 4)
    tally.offer(later)
    assert tally.settling_receipt() == later and tally.paid_units == 12


def test_no_receipt_pays_nothing() -> None:
    tally = UsageBook().open(terms(), 0, now=0.0)
    tally.add(0, "r1", 3)
    assert (tally.settling_receipt(), tally.paid_units, tally.units) == (None, 0, 3)


@pytest.mark.parametrize("fields,message", [
    ({"receipt_units": 0, "receipt_sequence": 0, "receipt_signature": ""}, None),
    ({"receipt_units": 4, "receipt_sequence": 2, "receipt_signature": "c2ln"}, None),
    ({"receipt_units": 4, "receipt_sequence": 0, "receipt_signature": ""}, "receipt_sequence 0 carries no receipt"),
    ({"receipt_units": 4, "receipt_sequence": 2, "receipt_signature": ""}, "needs receipt_sequence >= 1"),
    ({"receipt_units": -1, "receipt_sequence": 2, "receipt_signature": "c2ln"}, "receipt_units >= 0"),
])
def test_a_usage_record_carries_a_receipt_or_none(fields: dict, message: str | None) -> None:
    if message is None:
        receipt = receipt_of(usage(**fields))
        assert receipt == (Receipt("h1", 4, 2, "c2ln") if fields["receipt_sequence"] else None)
    else:
        with pytest.raises(UsageError, match=message) as raised:
            receipt_of(usage(**fields))
        assert raised.value.reason == "invalid_receipt"


# -- usage, once per request --

def test_a_duplicate_request_is_counted_once() -> None:
    book = UsageBook()
    tally = book.open(terms(price=5), 0, now=0.0)
    assert book.add("h1", 3, "r1", 4) and book.add("h1", 4, "r2", 2)
    assert not book.add("h1", 7, "r1", 4)  # delivered twice
    assert (tally.units, tally.records, tally.duplicates, tally.usage_charge) == (6, 2, 1, 30)
    assert (tally.first_offset, tally.last_offset) == (3, 4)


def test_usage_beyond_the_frozen_amount_is_reported_as_excess() -> None:
    tally = UsageBook().open(terms(amount=10, price=2), 0, now=0.0)
    tally.add(0, "r1", 7)
    assert (tally.usage_charge, tally.excess) == (14, 4)


# -- when --

def test_a_hold_settles_after_expiry_plus_grace_unless_its_deadline_comes_first() -> None:
    clock = SettlementClock(grace_seconds=5, margin_seconds=15, lead_seconds=5)
    local = terms(expires_at=1000, window=30)  # the local stack: minimum window 30 s, timewindow 15 s
    assert clock.deadline(local) == 1015 and clock.settle_at(local) == 1005
    slow = SettlementClock(grace_seconds=60, margin_seconds=15, lead_seconds=5)
    assert slow.settle_at(local) == 1010  # deadline 1015 less the lead
    real = SettlementClock(grace_seconds=5, margin_seconds=900, lead_seconds=5)
    assert real.settle_at(terms(expires_at=1000, window=1800)) == 1005 and real.margin_fits(
        terms(expires_at=1000, window=1800))


def test_a_margin_not_shorter_than_the_window_settles_at_expiry_never_before() -> None:
    clock = SettlementClock(grace_seconds=5, margin_seconds=900, lead_seconds=5)
    local = terms(expires_at=1000, window=30)
    assert not clock.margin_fits(local)
    assert clock.settle_at(local) == 1000


def test_due_holds_are_those_whose_time_has_come() -> None:
    clock = SettlementClock(grace_seconds=5, margin_seconds=15, lead_seconds=5)
    book = UsageBook()
    book.open(terms("short", expires_at=100, window=30), 0, now=0.0)
    book.open(terms("long", expires_at=10_000, window=30), 1, now=0.0)
    assert book.due(clock, now=104.0) == []
    assert [t.hold_id for t in book.due(clock, now=105.0)] == ["short"]
    assert {t.hold_id for t in book.due(clock, now=10_005.0)} == {"short", "long"}


def test_a_long_holds_latest_receipt_is_checkpointed_once_a_period_while_it_is_not_on_the_ledger() -> None:
    book = UsageBook()
    tally = book.open(terms(expires_at=10_000), 0, now=100.0)
    assert book.checkpoints(60, now=500.0) == []  # no receipt yet
    receipt = CLIENT.receipt("h1", 5, 1)
    tally.offer(receipt)
    assert book.checkpoints(60, now=159.0) == [] and book.checkpoints(0, now=500.0) == []
    assert book.checkpoints(60, now=160.0) == [tally]
    tally.recorded, tally.checkpointed_at = receipt, 160.0
    assert book.checkpoints(60, now=500.0) == []  # recorded: nothing new to record


# -- offsets --

def test_offsets_commit_only_up_to_the_oldest_unsettled_hold_of_each_partition() -> None:
    book = UsageBook()
    book.open(terms("a"), 0, now=0.0)
    book.add("a", 4, "r1", 1)
    book.add("a", 8, "r2", 1)
    book.open(terms("b"), 0, now=0.0)
    book.add("b", 6, "r3", 1)
    assert book.commit_offsets({0: 10, 1: 7}) == {0: 4, 1: 7}
    book.pop("a")
    assert book.commit_offsets({0: 10, 1: 7}) == {0: 6, 1: 7}
    book.pop("b")
    assert book.commit_offsets({0: 10}) == {0: 10}


@pytest.mark.parametrize("field,value", [("units", 0), ("units", -1), ("price", 0), ("units", 1.5),
                                         ("price", True), ("hold_id", ""), ("request_id", "")])
def test_usage_that_cannot_be_charged_is_refused_by_field(field: str, value: object) -> None:
    with pytest.raises(UsageError, match=field) as raised:
        check_usage(usage(**{field: value}))
    assert raised.value.reason == "invalid_usage"
