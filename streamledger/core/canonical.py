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
import json
import unicodedata
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import rfc8785

HASHED_FIELDS = ("event_id", "tenant", "source", "ts", "features", "label")
"""The fields the hash covers; `content_hash` itself and the raw position are not content."""

_SAFE_INTEGER = 2**53 - 1
"""The largest integer a double holds exactly: JCS writes numbers as doubles."""
_quote = json.encoder.encode_basestring  # '"' + only '"', '\\', U+0000..U+001F escaped (short forms, \u00xx) + '"'
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MILLISECOND = timedelta(milliseconds=1)
_INFINITIES = (float("inf"), float("-inf"))


class CanonicalEncodingError(ValueError):
    """A record that has no canonical encoding; the message names the field at fault."""


def canonical_bytes(record: Mapping[str, Any]) -> bytes:
    """The RFC 8785 bytes of the hashed fields of a clean event (see schemas/CANONICAL.md).

    Written directly for this one object shape (six members, a flat map of features), since a
    generic JCS library spends most of the cleaning service's time here; tests check it byte for
    byte against the `rfc8785` library on random records."""
    missing = [name for name in HASHED_FIELDS if name not in record]
    if missing:
        raise CanonicalEncodingError(f"record has no field {missing[0]!r}")
    ts = _epoch_millis(record["ts"])
    if abs(ts) > _SAFE_INTEGER:
        raise CanonicalEncodingError(f"record has no canonical form: ts {ts} is beyond the IEEE-754 safe "
                                     f"integer range (±{_SAFE_INTEGER})")
    features, ascii_names = _features(record["features"])
    names = sorted(features) if ascii_names else sorted(features, key=_utf16)
    text = "".join((
        '{"event_id":', _quote(_text(record["event_id"], "event_id")),
        ',"features":{', ",".join([_quote(name) + ":" + features[name] for name in names]),
        '},"label":', _value(record["label"], "label", allow_null=True),
        ',"source":', _quote(_text(record["source"], "source")),
        ',"tenant":', _quote(_text(record["tenant"], "tenant")),
        ',"ts":', str(ts), "}"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: not a Unicode scalar value
        raise CanonicalEncodingError(f"record has no canonical form: {exc.reason} at {exc.start}") from None


def content_hash(record: Mapping[str, Any]) -> str:
    """Lower-case hex SHA-256 of `canonical_bytes(record)`."""
    return hashlib.sha256(canonical_bytes(record)).hexdigest()


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise CanonicalEncodingError(f"{field} must be a string, got {type(value).__name__}")
    return value if value.isascii() else unicodedata.normalize("NFC", value)


def _utf16(name: str) -> bytes:
    """JCS sorts member names by their UTF-16 code units (not by code points)."""
    return name.encode("utf-16-be", "surrogatepass")


def _epoch_millis(ts: Any) -> int:
    # A MongoDB document or Avro decode gives a datetime; an int is already epoch millis.
    if isinstance(ts, datetime):
        if ts.tzinfo is None:  # PyMongo returns naive UTC datetimes by default
            ts = ts.replace(tzinfo=timezone.utc)
        return (ts - _EPOCH) // _MILLISECOND
    if isinstance(ts, int) and not isinstance(ts, bool):
        return ts
    raise CanonicalEncodingError(f"ts must be a datetime or epoch milliseconds, got {type(ts).__name__}")


def _features(features: Any) -> tuple[dict[str, str], bool]:
    """Feature name (NFC) -> its value written as JCS writes it; and whether every name is ASCII.

    The common cases (an ASCII name; a finite double or an ASCII string) are written out here,
    everything else goes through `_text` and `_value`."""
    if not isinstance(features, Mapping):
        raise CanonicalEncodingError(f"features must be a map, got {type(features).__name__}")
    out: dict[str, str] = {}
    ascii_names = True
    for name, value in features.items():
        if type(name) is str and name.isascii():
            key = name
        else:
            key = _text(name, "feature name")
            ascii_names = ascii_names and key.isascii()
        if key in out:
            raise CanonicalEncodingError(f"features has two names that are equal after NFC: {key!r}")
        kind = type(value)
        if kind is float and value - value == 0.0:  # finite
            out[key] = es_number(value)
        elif kind is str and value.isascii():
            out[key] = _quote(value)
        else:
            out[key] = _value(value, "features", allow_null=False, name=name)
    return out, ascii_names


def _value(value: Any, field: str, allow_null: bool, name: str | None = None) -> str:
    """A feature or label value written as JCS writes it (`name`: the feature's, for errors)."""
    if value is None and allow_null:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if type(value) is float or isinstance(value, float):
        if value != value or value in _INFINITIES:
            raise CanonicalEncodingError(f"{_where(field, name)} is {value!r}: only finite doubles have a canonical form")
        return es_number(value)
    if isinstance(value, str):
        return _quote(_text(value, _where(field, name)))
    raise CanonicalEncodingError(f"{_where(field, name)} must be a double, string or boolean, got {type(value).__name__}")


def _where(field: str, name: str | None) -> str:
    """The field an error names, built only when there is an error."""
    return field if name is None else f"{field}[{name!r}]"


def es_number(x: float) -> str:
    """A finite double as ECMAScript's Number.prototype.toString writes it (RFC 8785, 3.2.2.3):
    the shortest digits that read back to `x` (Python's repr finds the same ones), placed by
    ECMA-262's rule: plain from 1e-6 up to below 1e21, else `d.ddde±n`; -0 is `0`."""
    if x == 0:
        return "0"
    if x.is_integer():
        if -_SAFE_INTEGER <= x <= _SAFE_INTEGER:  # every digit exact: the shortest ones
            return str(int(x))
        text = repr(x)
    else:
        text = repr(x)
        if "e" not in text:  # Python writes 1e-4 <= |x| < 1e16 plainly, inside ECMA-262's plain range
            return text
    sign = "-" if text[0] == "-" else ""
    mantissa, _, exponent = text.lstrip("-").partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    stripped = digits.lstrip("0")
    n = len(whole) + int(exponent or 0) - (len(digits) - len(stripped))  # x = 0.DIGITS x 10^n
    digits = stripped.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + digits
    e = n - 1
    return sign + digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + ("+" if e > 0 else "-") + str(abs(e))
