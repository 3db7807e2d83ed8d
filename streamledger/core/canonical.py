"""The canonical encoding of a clean event and its `content_hash` (spec: schemas/CANONICAL.md).

Auditors recompute the hash from the record stored in MongoDB, so the encoding must not
depend on Avro, on field order or on how a language prints floats: it is the JSON
Canonicalization Scheme (RFC 8785) of a fixed set of fields, strings in Unicode NFC.

    content_hash({"event_id": "e1", "tenant": "acme", "source": "demo",
                  "ts": 1700000000000, "features": {"x": 1.5}, "label": None})
    # -> 64 lower-case hex digits
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import rfc8785

HASHED_FIELDS = ("event_id", "tenant", "source", "ts", "features", "label")
"""The fields the hash covers; `content_hash` itself and the raw position are not content."""

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MILLISECOND = timedelta(milliseconds=1)


class CanonicalEncodingError(ValueError):
    """A record that has no canonical encoding; the message names the field at fault."""


def canonical_bytes(record: Mapping[str, Any]) -> bytes:
    """The RFC 8785 bytes of the hashed fields of a clean event (see schemas/CANONICAL.md)."""
    missing = [name for name in HASHED_FIELDS if name not in record]
    if missing:
        raise CanonicalEncodingError(f"record has no field {missing[0]!r}")
    document = {
        "event_id": _text(record["event_id"], "event_id"),
        "tenant": _text(record["tenant"], "tenant"),
        "source": _text(record["source"], "source"),
        "ts": _epoch_millis(record["ts"]),
        "features": _features(record["features"]),
        "label": _value(record["label"], "label", allow_null=True),
    }
    try:
        return rfc8785.dumps(document)
    except rfc8785.CanonicalizationError as exc:  # e.g. ts beyond the IEEE-754 safe range
        raise CanonicalEncodingError(f"record has no canonical form: {exc}") from None


def content_hash(record: Mapping[str, Any]) -> str:
    """Lower-case hex SHA-256 of `canonical_bytes(record)`."""
    return hashlib.sha256(canonical_bytes(record)).hexdigest()


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise CanonicalEncodingError(f"{field} must be a string, got {type(value).__name__}")
    return unicodedata.normalize("NFC", value)


def _epoch_millis(ts: Any) -> int:
    # A MongoDB document or Avro decode gives a datetime; an int is already epoch millis.
    if isinstance(ts, datetime):
        if ts.tzinfo is None:  # PyMongo returns naive UTC datetimes by default
            ts = ts.replace(tzinfo=timezone.utc)
        return (ts - _EPOCH) // _MILLISECOND
    if isinstance(ts, int) and not isinstance(ts, bool):
        return ts
    raise CanonicalEncodingError(f"ts must be a datetime or epoch milliseconds, got {type(ts).__name__}")


def _features(features: Any) -> dict[str, Any]:
    if not isinstance(features, Mapping):
        raise CanonicalEncodingError(f"features must be a map, got {type(features).__name__}")
    out: dict[str, Any] = {}
    for name, value in features.items():
        key = _text(name, "feature name")
        if key in out:
            raise CanonicalEncodingError(f"features has two names that are equal after NFC: {key!r}")
        out[key] = _value(value, f"features[{name!r}]", allow_null=False)
    return out


def _value(value: Any, field: str, allow_null: bool) -> Any:
    if value is None and allow_null:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise CanonicalEncodingError(f"{field} is {value!r}: only finite doubles have a canonical form")
        return value
    if isinstance(value, str):
        return _text(value, field)
    raise CanonicalEncodingError(f"{field} must be a double, string or boolean, got {type(value).__name__}")
