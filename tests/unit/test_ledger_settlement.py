"""Totalling usage per hold: terms of Settle, when a hold is due, and offsets safe to commit."""

from __future__ import annotations

import pytest

from streamledger.core.settlement import UsageBook, UsageError, check_usage


def usage(**overrides: object) -> dict:
    return {"hold_id": "h1", "request_id": "r1", "units": 3, "price": 2, **overrides}


def test_one_price_settles_as_units_and_price() -> None:
    book = UsageBook()
    book.open("h1", 0, expires_at=100, amount=1000, now=0.0)
    for offset, units in ((5, 3), (9, 4)):
        book.add("h1", offset, units, 2)
    assert book.tallies["h1"].terms() == (7, 2, 0)


def test_mixed_prices_settle_the_total_charge_at_price_one() -> None:
    book = UsageBook()
    book.open("h1", 0, expires_at=100, amount=1000, now=0.0)
    book.add("h1", 0, 3, 2)
    book.add("h1", 1, 1, 5)
    assert book.tallies["h1"].terms() == (11, 1, 0)


def test_usage_beyond_the_frozen_amount_is_capped_and_reported() -> None:
    book = UsageBook()
    book.open("h1", 0, expires_at=100, amount=10, now=0.0)
    book.add("h1", 0, 7, 2)
    assert book.tallies["h1"].terms() == (5, 2, 4)


def test_a_hold_is_due_after_expiry_plus_grace_or_after_the_long_hold_cadence() -> None:
    book = UsageBook()
    book.open("short", 0, expires_at=100, amount=10, now=0.0)
    book.add("short", 0, 1, 1)
    book.open("long", 1, expires_at=10_000, amount=10, now=0.0)
    book.add("long", 0, 1, 1)
    assert book.due(now=50.0, wall_seconds=104.0, grace_seconds=5.0) == []
    assert [t.hold_id for t in book.due(now=50.0, wall_seconds=105.0, grace_seconds=5.0)] == ["short"]
    assert {t.hold_id for t in book.due(now=60.0, wall_seconds=105.0, grace_seconds=5.0,
                                        settle_every_seconds=60.0)} == {"short", "long"}


def test_offsets_commit_only_up_to_the_oldest_unsettled_hold_of_each_partition() -> None:
    book = UsageBook()
    book.open("a", 0, expires_at=100, amount=10, now=0.0)
    book.add("a", 4, 1, 1)
    book.add("a", 8, 1, 1)
    book.open("b", 0, expires_at=100, amount=10, now=0.0)
    book.add("b", 6, 1, 1)
    assert book.commit_offsets({0: 10, 1: 7}) == {0: 4, 1: 7}
    book.pop("a")
    assert book.commit_offsets({0: 10, 1: 7}) == {0: 6, 1: 7}
    book.pop("b")
    assert book.commit_offsets({0: 10}) == {0: 10}


@pytest.mark.parametrize("field,value", [("units", 0), ("units", -1), ("price", 0), ("units", 1.5),
                                         ("price", True), ("hold_id", "")])
def test_usage_that_cannot_be_charged_is_refused_by_field(field: str, value: object) -> None:
    with pytest.raises(UsageError, match=field) as raised:
        check_usage(usage(**{field: value}))
    assert raised.value.reason == "invalid_usage"
