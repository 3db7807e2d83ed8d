"""The canonical encoding (schemas/CANONICAL.md) and content_hash."""

from __future__ import annotations

import hashlib
import math
from datetime import datetime, timezone

import pytest

from streamledger.core.canonical import (
    CanonicalEncodingError,
    canonical_bytes,
    content_hash,
)

RECORD = {
    "event_id": "e-1",
    "tenant": "acme",
    "source": "pos",
    "ts": datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc),
    "features": {"price": 12.5, "big": 1e21, "tiny": 1e-7, "one": 1.0, "city": "Café", "member": True},
    "label": None,
    "content_hash": "ignored",
    "raw_partition": 3,
    "raw_offset": 99,
}

# Written by hand from the spec in schemas/CANONICAL.md, not produced by the code under test.
EXPECTED = (
    '{"event_id":"e-1","features":{"big":1e+21,"city":"Café","member":true,"one":1,"price":12.5,'
    '"tiny":1e-7},"label":null,"source":"pos","tenant":"acme","ts":1767323045678}'
).encode()


def test_canonical_bytes_follow_the_spec() -> None:
    assert canonical_bytes(RECORD) == EXPECTED


def test_content_hash_is_sha256_of_the_canonical_bytes() -> None:
    assert content_hash(RECORD) == hashlib.sha256(EXPECTED).hexdigest()
    # The test vector of schemas/CANONICAL.md.
    assert content_hash(RECORD) == "1eab70fb3b405d3d4c24018bcd924b54e2fe577452c214e3fc9ad61a1020c02e"


def test_key_order_and_non_content_fields_do_not_matter() -> None:
    shuffled = {k: RECORD[k] for k in reversed(list(RECORD))}
    shuffled["features"] = dict(reversed(list(RECORD["features"].items())))
    shuffled["raw_offset"] = 12345
    assert content_hash(shuffled) == content_hash(RECORD)


def test_strings_are_hashed_in_nfc() -> None:
    decomposed = {**RECORD, "features": {**RECORD["features"], "city": "Cafe\u0301"}}
    assert content_hash(decomposed) == content_hash(RECORD)


def test_mongo_naive_utc_datetime_and_epoch_millis_hash_the_same() -> None:
    naive = RECORD["ts"].replace(tzinfo=None)  # what PyMongo returns by default
    assert content_hash({**RECORD, "ts": naive}) == content_hash(RECORD)
    assert content_hash({**RECORD, "ts": 1767323045678}) == content_hash(RECORD)


@pytest.mark.parametrize(
    "change",
    [
        {"label": True},
        {"label": "1"},
        {"event_id": "e-2"},
        {"features": {**RECORD["features"], "price": 12.500000000000002}},
        {"features": {**RECORD["features"], "member": "true"}},
        {"ts": datetime(2026, 1, 2, 3, 4, 5, 679000, tzinfo=timezone.utc)},
    ],
)
def test_any_content_change_changes_the_hash(change: dict) -> None:
    assert content_hash({**RECORD, **change}) != content_hash(RECORD)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({**RECORD, "features": {"x": math.nan}}, r"features\['x'\] is nan"),
        ({**RECORD, "label": math.inf}, "label is inf"),
        ({k: v for k, v in RECORD.items() if k != "tenant"}, "record has no field 'tenant'"),
        ({**RECORD, "ts": "yesterday"}, "ts must be a datetime"),
        ({**RECORD, "features": {"x": [1]}}, r"features\['x'\] must be a double, string or boolean"),
    ],
)
def test_records_without_a_canonical_form_name_the_field(record: dict, message: str) -> None:
    with pytest.raises(CanonicalEncodingError, match=message):
        content_hash(record)
