"""The canonical encoding (schemas/CANONICAL.md) and content_hash."""

from __future__ import annotations

import hashlib
import math
import struct
import unicodedata
from datetime import datetime, timezone

import pytest
import rfc8785

from streamledger.core.canonical import (
    CanonicalEncodingError,
    canonical_bytes,
    content_hash,
    es_number,
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


# -- the direct writer against the rfc8785 library, byte for byte --
SPECIAL_DOUBLES = [0.0, -0.0, 1.0, -1.0, 0.1, 1e-6, 1e-7, 9.99e-7, 1.5e-7, 123456.789, 1e20, 1e21, 1.5e21, -1e21,
                   1e22, float(2**53), 2.0**53 + 2, 2.0**53 - 1, 5e-324, 1.7976931348623157e308, 0.000001234, 1234567890123456789.0,
                   100.0, 1e15 + 0.5, 0.3, 2 / 3, -123.456e-9, 4.35, 1e-5, 12e20, 9.999999999999999e20]


def _random_text(rng, length: int) -> str:
    alphabet = ["a", "Z", "0", " ", '"', "\\", "\n", "\t", "\x00", "\x1f", "\x7f", "é", "e\u0301", "\u2028",
                "\ufeff", "\uffff", "😀", "𝄞", "中"]
    return "".join(rng.choice(alphabet) for _ in range(length))


def _random_value(rng):
    kind = rng.randrange(5)
    if kind == 0:
        return rng.choice(SPECIAL_DOUBLES)
    if kind == 1:
        return struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
    if kind == 2:
        return rng.uniform(-1e6, 1e6)
    if kind == 3:
        return rng.choice([True, False])
    return _random_text(rng, rng.randrange(6))


@pytest.mark.parametrize("seed", range(40))
def test_the_canonical_writer_matches_the_rfc8785_library_byte_for_byte(seed: int) -> None:
    import random

    rng = random.Random(seed)
    for _ in range(50):
        features = {}
        for _ in range(rng.randrange(8)):
            value = _random_value(rng)
            if isinstance(value, float) and not math.isfinite(value):
                continue
            features[_random_text(rng, rng.randrange(1, 5))] = value
        record = {"event_id": _random_text(rng, 8), "tenant": _random_text(rng, 3), "source": "s",
                  "ts": rng.randrange(-(2**53) + 1, 2**53), "features": features,
                  "label": rng.choice([None, True, 0.5, "x", -0.0])}
        document = {**{k: unicodedata.normalize("NFC", v) if isinstance(v, str) else v for k, v in record.items()},
                    "features": {unicodedata.normalize("NFC", k): unicodedata.normalize("NFC", v)
                                 if isinstance(v, str) else v for k, v in features.items()}}
        if len(document["features"]) < len(features):  # two names equal after NFC: refused, tested above
            continue
        assert canonical_bytes(record) == rfc8785.dumps(document)


@pytest.mark.parametrize("value", SPECIAL_DOUBLES)
def test_doubles_are_written_as_ecmascript_writes_them(value: float) -> None:
    assert es_number(value).encode() == rfc8785.dumps(value)


def test_a_ts_beyond_the_safe_integer_range_has_no_canonical_form() -> None:
    with pytest.raises(CanonicalEncodingError, match="safe integer range"):
        content_hash({**RECORD, "ts": 2**53})
