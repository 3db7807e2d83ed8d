"""Checks that turn untrusted event objects into RawEvent records, or say precisely why not.

Pure: no I/O. HTTP, gRPC and the file backfill all feed their parsed events through
`validate_event`, so every interface rejects the same things with the same words.

    record = validate_event({"event_id": "e1", "source": "pos", "ts": 1700000000000,
                             "features": {"amount": 12.5}}, tenant="acme")
    # -> {"event_id": "e1", "tenant": "acme", "source": "pos", "ts": 1700000000000,
    #     "features": {"amount": 12.5}, "label": None}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

FIELDS = ("event_id", "tenant", "source", "ts", "features", "label")
REQUIRED = ("event_id", "source", "ts")
MAX_ID_LENGTH = 256
MAX_FEATURES = 1024
MAX_TEXT_LENGTH = 64 * 1024
# Millisecond timestamps from 1970 up to the year 9999, the range datetimes can hold.
MAX_TS_MILLIS = 253_402_300_799_999


class InvalidEventError(ValueError):
    """An event that cannot become a RawEvent; `field` names the part at fault ("" = the whole event)."""

    def __init__(self, field: str, why: str) -> None:
        self.field = field
        self.why = why
        super().__init__(f"{field}: {why}" if field else why)


@dataclass(frozen=True)
class Rejection:
    """Why the event at `index` of a batch was not accepted."""

    index: int
    field: str
    error: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "error": self.error}


@dataclass(frozen=True)
class UnparseableLine:
    """A line of NDJSON (or a gRPC frame) that could not be parsed; it becomes a rejection at its index."""

    error: str


class NonFiniteNumber:
    """Stands in for the NaN/Infinity literals that Python's json accepts but JSON forbids.

    Parsing keeps them (instead of failing the whole body) so the rejection can name the field.
    """

    def __init__(self, literal: str) -> None:
        self.literal = literal

    def __repr__(self) -> str:
        return self.literal

    @property
    def why(self) -> str:
        return f"{self.literal} is not a number JSON allows; send null for a missing value"


class OversizedNumber(NonFiniteNumber):
    """Stands in for an integer literal too long for Python to convert (over 4,300 digits): one
    event is rejected naming its field, instead of the whole body failing."""

    def __init__(self, literal: str) -> None:
        super().__init__(f"a number of {len(literal.lstrip('-'))} digits")

    @property
    def why(self) -> str:
        return f"{self.literal} is too large for a double"


def validate_event(event: Any, tenant: str) -> dict[str, Any]:
    """The RawEvent record for one untrusted event owned by `tenant`, or `InvalidEventError`."""
    if not isinstance(event, dict):
        raise InvalidEventError("", f"an event must be a JSON object, got {_kind(event)}")
    unknown = [name for name in event if name not in FIELDS]
    if unknown:
        raise InvalidEventError(unknown[0], f"unknown field; allowed fields are {', '.join(FIELDS)}")
    for name in REQUIRED:
        if event.get(name) is None:
            raise InvalidEventError(name, "required field is missing")

    claimed = event.get("tenant")
    if claimed is not None and claimed != tenant:
        raise InvalidEventError("tenant", f"event claims tenant {_short(claimed)} but the API key belongs to {tenant!r}")

    return {
        "event_id": _identifier("event_id", event["event_id"]),
        "tenant": tenant,
        "source": _identifier("source", event["source"]),
        "ts": _timestamp("ts", event["ts"]),
        "features": _features(event.get("features", {})),
        "label": _scalar("label", event.get("label")),
    }


def parse_timestamp(field: str, value: Any) -> int:
    """Milliseconds since the epoch from an int/float of ms or an ISO-8601 string with a zone."""
    return _timestamp(field, value)


def _identifier(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidEventError(field, f"must be a string, got {_kind(value)}")
    if not value.strip():
        raise InvalidEventError(field, "must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidEventError(field, f"is {len(value)} characters, more than the limit of {MAX_ID_LENGTH}")
    return _unicode(field, value)


def _unicode(field: str, value: str) -> str:
    # JSON escapes can smuggle lone surrogates ("\\ud800") that no UTF-8 writer accepts.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidEventError(field, f"contains {value[exc.start]!r}, a lone surrogate that is not valid Unicode") from None
    return value


def _timestamp(field: str, value: Any) -> int:
    if isinstance(value, bool) or isinstance(value, NonFiniteNumber):
        raise InvalidEventError(field, f"must be milliseconds since the epoch or an ISO-8601 string, got {_kind(value)}")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise InvalidEventError(field, f"must be a whole number of milliseconds, got {value!r}")
        value = int(value)
    if isinstance(value, int):
        if not 0 <= value <= MAX_TS_MILLIS:
            raise InvalidEventError(field, f"{value} is outside 0..{MAX_TS_MILLIS} milliseconds since the epoch")
        return value
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidEventError(field, f"{_short(value)} is not an ISO-8601 date-time") from None
        if moment.tzinfo is None:
            raise InvalidEventError(field, f"{_short(value)} has no time zone; add Z or an offset such as +02:00")
        millis = math.floor(moment.timestamp() * 1000)
        if not 0 <= millis <= MAX_TS_MILLIS:
            raise InvalidEventError(field, f"{_short(value)} is before 1970")
        return millis
    raise InvalidEventError(field, f"must be milliseconds since the epoch or an ISO-8601 string, got {_kind(value)}")


def _features(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidEventError("features", f"must be an object of name -> value, got {_kind(value)}")
    if len(value) > MAX_FEATURES:
        raise InvalidEventError("features", f"has {len(value)} entries, more than the limit of {MAX_FEATURES}")
    out: dict[str, Any] = {}
    for name, item in value.items():
        # Fast paths for the common cases; anything else gets the full check and its message.
        if type(name) is not str or not name.isascii() or not name:
            if not isinstance(name, str) or not name:
                raise InvalidEventError("features", f"feature names must be non-empty strings, got {name!r}")
            _unicode("features", name)
        kind = type(item)
        if (kind is float and item - item == 0.0) or item is None or kind is bool or (
                kind is str and item.isascii() and len(item) <= MAX_TEXT_LENGTH):
            out[name] = item  # a finite double (inf - inf is nan), null, boolean or plain text
        else:
            out[name] = _scalar(f"features.{name}", item)
    return out


def _scalar(field: str, value: Any) -> float | str | bool | None:
    """null, boolean, finite number (as a double) or string: the values RawEvent can carry."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, NonFiniteNumber):
        raise InvalidEventError(field, value.why)
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:
            raise InvalidEventError(field, "number is too large for a double") from None
        if not math.isfinite(number):
            raise InvalidEventError(field, f"{value!r} is not a finite number")
        return number
    if isinstance(value, str):
        if len(value) > MAX_TEXT_LENGTH:
            raise InvalidEventError(field, f"string of {len(value)} characters is longer than the limit of {MAX_TEXT_LENGTH}")
        return _unicode(field, value)
    raise InvalidEventError(field, f"must be null, a boolean, a number or a string, got {_kind(value)}")


def _kind(value: Any) -> str:
    if isinstance(value, NonFiniteNumber):
        return value.literal
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "...'"
