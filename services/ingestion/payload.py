"""Request bodies -> lists of untrusted event objects. Pure: no I/O.

Two formats: a JSON array of events (or one event object), and NDJSON (one event per
line). With NDJSON a line that is not JSON rejects that event only; with a JSON array a
syntax error rejects the whole body, since no event boundary can be trusted after it.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

from services.ingestion.validation import (
    NonFiniteNumber,
    OversizedNumber,
    UnparseableLine,
)

NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines")


class BodyError(ValueError):
    """The request body as a whole is unusable; `status` is the HTTP status to answer with."""

    status = 400


class BodyTooLargeError(BodyError):
    status = 413


class UnsupportedEncodingError(BodyError):
    status = 415


def gunzip(data: bytes, limit: int) -> bytes:
    """Decompress a gzip body, refusing to produce more than `limit` bytes (gzip bombs)."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise BodyError(f"body is not valid gzip: {exc}") from None
    if len(out) > limit:
        raise BodyTooLargeError(f"body decompresses to more than the limit of {limit} bytes")
    if not inflater.eof:
        raise BodyError("gzip body is truncated")
    return out


def decode_content(data: bytes, content_encoding: str | None, limit: int) -> bytes:
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return data
    if encoding in ("gzip", "x-gzip"):
        return gunzip(data, limit)
    raise UnsupportedEncodingError(f"Content-Encoding {encoding!r} is not supported; use gzip or none")


def parse_events(data: bytes, content_type: str | None, max_events: int) -> list[Any]:
    """The events of a body: JSON objects, other JSON values, or `UnparseableLine`s."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(f"body is not valid UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start}") from None
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise BodyError("body is empty; send a JSON array of events or NDJSON, one event per line")

    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type in NDJSON_TYPES or (media_type != "application/json" and not text.lstrip().startswith("[")):
        events = _ndjson(text, max_events)
    else:
        events = _json_document(text)
    if len(events) > max_events:
        raise BodyTooLargeError(f"body holds more than the limit of {max_events} events per request")
    if not events:
        raise BodyError("body holds no events")
    return events


def loads(text: str) -> Any:
    """json.loads that keeps NaN/Infinity as `NonFiniteNumber` and integers too long to convert as
    `OversizedNumber`, so validation rejects that one event naming the field."""
    return json.loads(text, parse_constant=NonFiniteNumber, parse_int=_int)


def _int(literal: str) -> int | OversizedNumber:
    try:
        return int(literal)
    except ValueError:  # longer than sys.get_int_max_str_digits() allows
        return OversizedNumber(literal)


def _json_document(text: str) -> list[Any]:
    try:
        document = loads(text)
    except json.JSONDecodeError as exc:
        raise BodyError(f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise BodyError("body is not acceptable JSON: nested too deeply") from None
    return document if isinstance(document, list) else [document]


def _ndjson(text: str, max_events: int) -> list[Any]:
    events: list[Any] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if len(events) >= max_events:  # stop parsing early; the caller reports the limit
            events.append(None)
            break
        try:
            events.append(loads(line))
        except json.JSONDecodeError as exc:
            events.append(UnparseableLine(f"line {number} is not valid JSON: {exc.msg} at column {exc.colno}"))
        except RecursionError:
            events.append(UnparseableLine(f"line {number} is nested too deeply"))
    return events
