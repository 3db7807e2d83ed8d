"""Avro single-object encoding of StreamLedger records, with a schema registry.

Every Kafka value is one Avro single-object message as the Avro specification defines it:

    C3 01 | 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema | binary body

so any Avro implementation can read it given the writer schema. Readers find the writer
schema by fingerprint: first among the `.avsc` files in `schemas/`, then among schemas
learned at run time from the compacted `_schemas` topic (key = fingerprint hex, value =
the schema's JSON), where every producer publishes the schemas it writes.

    registry = SchemaRegistry.from_dir()
    codec = AvroCodec(registry)
    data = codec.encode("RawEvent", {"event_id": "e1", "tenant": "acme", ...})
    codec.decode(data)                     # -> dict, read with the writer schema
    codec.decode(data, reader="RawEvent")  # -> dict, resolved into the latest RawEvent

`timestamp-millis` fields accept an int (ms since the epoch) or an aware `datetime` on
encode and come back as UTC `datetime`s on decode (fastavro's logical-type mapping).

A message that cannot be decoded raises a `CodecError` subclass whose `reason` is a short
code for `events.deadletter`; callers dead-letter it and carry on, they never crash.
"""

from __future__ import annotations

import io
import json
import re
import struct
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint as schema_fingerprint
from fastavro.schema import to_parsing_canonical_form
from fastavro.validation import ValidationError, validate

from streamledger.kafka import topics

SCHEMAS_DIR = Path(str(resources.files("streamledger") / "schemas"))  # package data
MARKER = b"\xc3\x01"
HEADER_SIZE = len(MARKER) + 8

Fingerprint = bytes
"""The 8 bytes that follow the marker: CRC-64-AVRO of the parsing canonical form, little-endian."""


class CodecError(ValueError):
    """A message or record that cannot be encoded or decoded; `reason` is a short code."""

    reason = "codec_error"


class NotSingleObjectError(CodecError):
    """The bytes do not start with the single-object marker C3 01, or are shorter than the header."""

    reason = "not_single_object"


class UnknownFingerprintError(CodecError):
    """No known schema has the message's writer fingerprint."""

    reason = "unknown_fingerprint"

    def __init__(self, fingerprint: Fingerprint) -> None:
        self.fingerprint = fingerprint
        super().__init__(
            f"unknown writer schema fingerprint {fingerprint.hex()}: not in schemas/ nor in the "
            f"{topics.SCHEMAS} topic"
        )


_STREAM_REPR = re.compile(r"<_io\.BytesIO object at 0x[0-9a-f]+>")


class MalformedBodyError(CodecError):
    """The body after the header does not decode with the writer schema."""

    reason = "malformed_body"


class IncompatibleSchemaError(CodecError):
    """The writer schema cannot be resolved into the requested reader schema."""

    reason = "incompatible_schema"


class InvalidRecordError(CodecError):
    """A record does not match the schema it is being encoded with; names the field at fault."""

    reason = "invalid_record"


class UnknownSchemaError(CodecError, KeyError):
    """No schema of that record name is known."""

    reason = "unknown_schema"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def fingerprint_of(schema: Mapping[str, Any] | str) -> Fingerprint:
    """CRC-64-AVRO fingerprint of a schema (a dict or its JSON text), as single-object bytes."""
    if isinstance(schema, str):
        schema = json.loads(schema)
    # fastavro returns the fingerprint as hex of the little-endian bytes, the wire order.
    return bytes.fromhex(schema_fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


def _unhex(key: bytes) -> Fingerprint:
    try:
        return bytes.fromhex(key.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return b""


def _short_name(schema: Mapping[str, Any]) -> str:
    return str(schema["name"]).rsplit(".", 1)[-1]


class SchemaRegistry:
    """Writer schemas by fingerprint, and the latest schema of each record by short name."""

    def __init__(self) -> None:
        self._parsed: dict[Fingerprint, dict] = {}
        self._json: dict[Fingerprint, str] = {}
        self._latest: dict[str, Fingerprint] = {}

    @classmethod
    def from_dir(cls, path: Path | str = SCHEMAS_DIR) -> SchemaRegistry:
        """Load every `*.avsc` directly in `path`; each is the latest version of its record."""
        registry = cls()
        files = sorted(Path(path).glob("*.avsc"))
        if not files:
            raise FileNotFoundError(f"no .avsc schema files in {path}")
        for file in files:
            try:
                schema = json.loads(file.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"{file.name}: not valid JSON: {exc}") from exc
            fp = registry.register(schema)
            registry._latest[_short_name(schema)] = fp
        return registry

    def register(self, schema: Mapping[str, Any] | str) -> Fingerprint:
        """Learn a writer schema (a dict or its JSON text); returns its fingerprint."""
        if isinstance(schema, str):
            schema = json.loads(schema)
        fp = fingerprint_of(schema)
        if fp not in self._parsed:
            # One named-type table per schema: two versions of a record share a name.
            self._parsed[fp] = fastavro.parse_schema(dict(schema), named_schemas={})
            self._json[fp] = json.dumps(schema, separators=(",", ":"))
        return fp

    def schema(self, name: str) -> dict:
        """The parsed latest schema of a record by short name, e.g. "RawEvent"."""
        return self._parsed[self.fingerprint(name)]

    def fingerprint(self, name: str) -> Fingerprint:
        """The fingerprint of the latest schema of a record by short name."""
        try:
            return self._latest[name]
        except KeyError:
            raise UnknownSchemaError(
                f"unknown record name {name!r}; known: {', '.join(sorted(self._latest))}"
            ) from None

    def writer(self, fp: Fingerprint) -> dict:
        """The parsed writer schema with this fingerprint."""
        try:
            return self._parsed[fp]
        except KeyError:
            raise UnknownFingerprintError(fp) from None

    def names(self) -> list[str]:
        return sorted(self._latest)

    def __contains__(self, fp: object) -> bool:
        return fp in self._parsed

    async def publish(self, producer, names: Iterable[str] | None = None, topic: str = topics.SCHEMAS) -> None:
        """Write the latest schemas of `names` (default: all known schemas) to `_schemas`.

        `producer` is a started aiokafka producer; the topic should exist as compacted
        (the topic table makes it so: `kafka.provision`), so each fingerprint keeps one value forever.
        """
        fps = [self.fingerprint(n) for n in names] if names is not None else list(self._parsed)
        for fp in fps:
            await producer.send(topic, key=fp.hex().encode(), value=self._json[fp].encode())
        await producer.flush()

    async def load_from_topic(self, bootstrap: str, topic: str = topics.SCHEMAS, timeout_s: float = 10.0) -> int:
        """Read `_schemas` from the beginning to its current end; returns how many new schemas it held.

        A value whose fingerprint does not match its key, or that is not a schema, is
        skipped: a reader must never trust a fingerprint it cannot recompute.
        """
        from streamledger import kafka  # only this method needs Kafka

        async with kafka.admin(bootstrap) as admin:
            (described,) = await admin.describe_topics([topic])
        if described["error_code"] or not described["partitions"]:
            return 0  # no schemas published yet
        learned = 0
        async with kafka.consumer(bootstrap) as consumer:
            async for records in kafka.read_to_end(consumer, bootstrap, topic, timeout_s):
                learned += sum(1 for r in records if r.value is not None and self._learn(r.key, r.value))
        return learned

    def _learn(self, key: bytes | None, value: bytes) -> bool:
        if key is not None and self._json.get(_unhex(key), "").encode() == value:
            return False  # a copy of a schema already known, by its very text: nothing to recompute
        try:
            schema = json.loads(value)
            fp = fingerprint_of(schema)
        except (ValueError, TypeError, KeyError, fastavro.schema.SchemaParseException):
            return False
        if key is not None and key != fp.hex().encode():
            return False
        if fp in self._parsed:
            return False
        self.register(schema)
        return True


class AvroCodec:
    """Single-object encode/decode of records by short name, against a `SchemaRegistry`."""

    def __init__(self, registry: SchemaRegistry) -> None:
        self.registry = registry
        self._readers: dict[Fingerprint, _Reader | None] = {}  # the fast path's, by writer schema
        self._writers: dict[Fingerprint, _Writer | None] = {}

    # -- encode ----------------------------------------------------------------------------

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        """One record as a single-object message, written with the latest schema of `name`."""
        fp = self.registry.fingerprint(name)
        data = self._write_fast(fp, record)
        if data is not None:
            return data
        schema = self.registry.writer(fp)
        buffer = io.BytesIO()
        buffer.write(MARKER)
        buffer.write(fp)
        self._write(buffer, name, schema, record)
        return buffer.getvalue()

    def encode_many(self, name: str, records: Iterable[Mapping[str, Any]]) -> list[bytes]:
        """Each record as a single-object message; raises on the first invalid record."""
        fp = self.registry.fingerprint(name)
        schema = self.registry.writer(fp)
        header = MARKER + fp
        buffer = io.BytesIO()
        out: list[bytes] = []
        for index, record in enumerate(records):
            buffer.seek(0)
            buffer.truncate()
            buffer.write(header)
            try:
                self._write(buffer, name, schema, record)
            except InvalidRecordError as exc:
                raise InvalidRecordError(f"record {index}: {exc}") from exc
            out.append(buffer.getvalue())
        return out

    @staticmethod
    def _write(buffer: io.BytesIO, name: str, schema: dict, record: Mapping[str, Any]) -> None:
        if type(record) is not dict and not isinstance(record, Mapping):
            raise InvalidRecordError(f"{name}: expected a mapping of fields, got {type(record).__name__}")
        try:
            # strict: an unknown field is an error rather than silently dropped data.
            fastavro.schemaless_writer(buffer, schema, record, strict_allow_default=True)
        except (ValueError, TypeError, OverflowError, AttributeError, KeyError) as exc:
            raise InvalidRecordError(f"{name}: {_field_error(schema, record, exc)}") from None

    # -- decode ----------------------------------------------------------------------------

    def decode(self, data: bytes, reader: str | None = None) -> dict:
        """The record in a single-object message, optionally resolved into the latest `reader` schema."""
        fp = _fingerprint(data)
        writer = self.registry.writer(fp)
        resolved = self._reader_for(fp, reader)
        if resolved is None:
            record = self._read_fast(fp, writer, data)
            if record is not None:
                return record
        return _read_body(data, writer, resolved)

    def decode_many(self, datas: Iterable[bytes], reader: str | None = None) -> list[dict | CodecError]:
        """Each message decoded, or the `CodecError` that says why it could not be."""
        if reader is not None:
            self.registry.fingerprint(reader)  # an unknown reader name is the caller's error, raised here
        schemas: dict[Fingerprint, tuple[dict, dict | None]] = {}
        out: list[dict | CodecError] = []
        for data in datas:
            try:
                fp = _fingerprint(data)
                pair = schemas.get(fp)
                if pair is None:
                    pair = schemas[fp] = (self.registry.writer(fp), self._reader_for(fp, reader))
                record = self._read_fast(fp, pair[0], data) if pair[1] is None else None
                out.append(record if record is not None else _read_body(data, *pair))
            except CodecError as exc:
                out.append(exc)
        return out

    def _write_fast(self, fp: Fingerprint, record: Mapping[str, Any]) -> bytes | None:
        """The message as fastavro would write it, or None to ask fastavro."""
        fast = self._writers.get(fp, _NOT_COMPILED)
        if fast is _NOT_COMPILED:
            fast = self._writers[fp] = _compile_writer(self.registry.writer(fp))
        if fast is None:
            return None
        out = bytearray(MARKER)
        out += fp
        try:
            fast(record, out)
        except Exception:  # noqa: BLE001 - anything the fast path does not cover goes through fastavro
            return None
        return bytes(out)

    def _read_fast(self, fp: Fingerprint, writer: dict, data: bytes) -> dict | None:
        """The record as fastavro would read it with its writer schema, or None to ask fastavro."""
        fast = self._readers.get(fp, _NOT_COMPILED)
        if fast is _NOT_COMPILED:
            fast = self._readers[fp] = _compile_reader(writer)
        if fast is None:
            return None
        try:
            record, end = fast(data, HEADER_SIZE)
        except Exception:  # noqa: BLE001 - malformed or unusual bytes: fastavro reads them, or says why not
            return None
        return record if end == len(data) else None

    def _reader_for(self, writer: Fingerprint, reader: str | None) -> dict | None:
        """The reader schema to resolve into; None when there is none, or it is the writer's own
        (resolving a schema into itself changes nothing and costs a third of the decode)."""
        if reader is None or self.registry.fingerprint(reader) == writer:
            return None
        return self.registry.schema(reader)


def _fingerprint(data: bytes) -> Fingerprint:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise NotSingleObjectError(f"expected bytes, got {type(data).__name__}")
    if len(data) < HEADER_SIZE:
        raise NotSingleObjectError(f"message is {len(data)} bytes, shorter than the {HEADER_SIZE}-byte header")
    if data[:2] != MARKER:
        raise NotSingleObjectError(f"message starts with {bytes(data[:2]).hex()}, not the single-object marker c301")
    return bytes(data[2:HEADER_SIZE])


def _read_body(data: bytes, writer: dict, reader: dict | None) -> dict:
    body = io.BytesIO(data)
    body.seek(HEADER_SIZE)
    try:
        record = fastavro.schemaless_reader(body, writer, reader)
    except fastavro.read.SchemaResolutionError as exc:
        raise IncompatibleSchemaError(
            f"writer {writer['name']} cannot be read as reader {reader['name'] if reader else '?'}: {exc}"
        ) from None
    except (EOFError, StopIteration, ValueError, TypeError, IndexError, OverflowError, MemoryError) as exc:
        # fastavro names the stream it read from by its address ("cannot read double from
        # <_io.BytesIO object at 0x...>"): the message says "the body" instead, the same each time.
        why = _STREAM_REPR.sub("the body", str(exc))
        raise MalformedBodyError(f"{writer['name']} body does not decode: {type(exc).__name__}: {why}") from None
    if body.tell() != len(data):
        raise MalformedBodyError(
            f"{writer['name']} body has {len(data) - body.tell()} trailing bytes after the record"
        )
    return record


def _field_error(schema: dict, record: Mapping[str, Any], exc: Exception) -> str:
    """The writer's error, or the validator's when that one names the field path."""
    message = str(exc)
    if "field" in message:
        return message
    try:
        validate(record, schema, raise_errors=True)
    except ValidationError as detail:
        lines = json.loads(str(detail))  # fastavro renders its error list as JSON
        return str(lines[0]) if lines else message
    return message


# -- the compiled fast path ------------------------------------------------------------------
#
# fastavro's generic reader and writer walk the schema for every message; for the common
# shapes (records of strings, longs, doubles, booleans, timestamps, maps of and unions of
# those) a reader or writer made once per schema from closures is quicker (measured on the
# bench's events: RawEvent read in ~3/4 of fastavro's time, CleanEvent written in ~2/3). It is
# only a fast path: whatever it does not cover exactly (another type, a value of an unexpected
# Python type, any malformed or unusual byte) makes it give up, and the message goes through
# fastavro as before, which returns the same record or raises the same error. So it returns
# exactly what fastavro would, or nothing.

_Reader = Callable[[bytes, int], tuple[Any, int]]
"""(message, position) -> (value, position after it)."""
_Writer = Callable[[Any, bytearray], None]
_NOT_COMPILED = object()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DOUBLE = struct.Struct("<d")
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_TIMESTAMP_MILLIS = {"type": "long", "logicalType": "timestamp-millis"}
_UNION_TYPES = {"null": type(None), "boolean": bool, "double": float, "string": str}
"""Union branches the fast path tells apart by exact Python type, as fastavro does for these."""


class _GiveUp(Exception):
    """The fast path does not handle this value or these bytes: use fastavro."""


def _type_of(schema: Any) -> Any:
    """A parsed schema's type without the decorations the fast path ignores (doc, name, ...)."""
    if isinstance(schema, dict) and "logicalType" in schema:
        timestamp = schema["type"] == "long" and schema["logicalType"] == "timestamp-millis"
        return _TIMESTAMP_MILLIS if timestamp else None
    return schema


def _read_long(data: bytes, pos: int) -> tuple[int, int]:
    """A zig-zag varint of at most 9 bytes (63 bits: fastavro reads those the same way)."""
    byte = data[pos]
    pos += 1
    if byte < 0x80:
        return (byte >> 1) ^ -(byte & 1), pos
    n, shift = byte & 0x7F, 7
    while True:
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (n >> 1) ^ -(n & 1), pos
        shift += 7
        if shift > 56:
            raise _GiveUp


def _read_string(data: bytes, pos: int) -> tuple[str, int]:
    size = data[pos]
    if size < 0x80 and not size & 1:  # a length under 64, in one byte: the common case, inline
        size >>= 1
        pos += 1
    else:
        size, pos = _read_long(data, pos)
        if size < 0:
            raise _GiveUp
    end = pos + size
    if end > len(data):
        raise _GiveUp
    return data[pos:end].decode(), end


def _read_double(data: bytes, pos: int) -> tuple[float, int]:
    return _DOUBLE.unpack_from(data, pos)[0], pos + 8


def _read_boolean(data: bytes, pos: int) -> tuple[bool, int]:
    byte = data[pos]
    if byte > 1:
        raise _GiveUp
    return byte == 1, pos + 1


def _read_null(data: bytes, pos: int) -> tuple[None, int]:
    return None, pos


def _read_int(data: bytes, pos: int) -> tuple[int, int]:
    n, pos = _read_long(data, pos)
    if not _INT32[0] <= n <= _INT32[1]:
        raise _GiveUp
    return n, pos


def _read_timestamp_millis(data: bytes, pos: int) -> tuple[datetime, int]:
    n, pos = _read_long(data, pos)
    # fastavro's epoch + timedelta(microseconds=n * 1000), the same exact value (ints), the
    # milliseconds passed by position (quicker); OverflowError out of datetime's range: give up.
    return _EPOCH + timedelta(0, 0, 0, n), pos


_PRIMITIVE_READERS: dict[str, _Reader] = {
    "string": _read_string, "long": _read_long, "int": _read_int, "double": _read_double,
    "boolean": _read_boolean, "null": _read_null,
}


def _compile_reader(schema: Any) -> _Reader | None:
    """A reader for a parsed writer schema, or None if the fast path does not cover it."""
    schema = _type_of(schema)
    if isinstance(schema, str):
        return _PRIMITIVE_READERS.get(schema)
    if isinstance(schema, list):
        if not schema or any(not isinstance(branch, str) or branch not in _UNION_TYPES for branch in schema) or len(set(schema)) < len(schema):
            return None
        branches = tuple(_PRIMITIVE_READERS[branch] for branch in schema)

        def read_union(data: bytes, pos: int) -> tuple[Any, int]:
            index = data[pos]  # one byte: a zig-zag index under 64 (a longer varint is >= 64 here)
            if index & 1:  # a negative index
                raise _GiveUp
            return branches[index >> 1](data, pos + 1)  # IndexError past the last branch: give up
        return read_union
    if schema == _TIMESTAMP_MILLIS:
        return _read_timestamp_millis
    if not isinstance(schema, dict):
        return None
    if schema.get("type") == "map":
        values = _compile_reader(schema["values"])
        if values is None:
            return None

        def read_map(data: bytes, pos: int) -> tuple[dict, int]:
            out = {}
            while True:
                count, pos = _read_long(data, pos)
                if count == 0:
                    return out, pos
                if count < 0:  # a block with its byte size: rare, left to fastavro
                    raise _GiveUp
                for _ in range(count):
                    key, pos = _read_string(data, pos)
                    out[key], pos = values(data, pos)
        return read_map
    if schema.get("type") == "record":
        fields = tuple((field["name"], _compile_reader(field["type"])) for field in schema["fields"])
        if any(reader is None for _name, reader in fields):
            return None

        def read_record(data: bytes, pos: int) -> tuple[dict, int]:
            out = {}
            for name, reader in fields:
                out[name], pos = reader(data, pos)
            return out, pos
        return read_record
    return None


def _write_long(n: int, out: bytearray) -> None:
    if type(n) is not int:
        raise _GiveUp
    if 0 <= n < 64:
        out.append(n << 1)
        return
    if not _INT64[0] <= n <= _INT64[1]:
        raise _GiveUp
    n = (n << 1) ^ (n >> 63)
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _write_int(n: int, out: bytearray) -> None:
    if type(n) is not int or not _INT32[0] <= n <= _INT32[1]:
        raise _GiveUp
    _write_long(n, out)


def _write_string(text: str, out: bytearray) -> None:
    if type(text) is not str:
        raise _GiveUp
    data = text.encode()  # a lone surrogate raises: give up
    size = len(data)
    if size < 64:
        out.append(size << 1)
    else:
        _write_long(size, out)
    out += data


def _write_double(x: float, out: bytearray) -> None:
    if type(x) is not float:
        raise _GiveUp
    out += _DOUBLE.pack(x)


def _write_boolean(flag: bool, out: bytearray) -> None:
    if type(flag) is not bool:
        raise _GiveUp
    out.append(1 if flag else 0)


def _write_null(value: None, out: bytearray) -> None:
    if value is not None:
        raise _GiveUp


def _write_timestamp_millis(ts: int | datetime, out: bytearray) -> None:
    if type(ts) is datetime and ts.tzinfo is not None:  # fastavro's own formula for an aware datetime
        delta = ts - _EPOCH
        ts = (delta.days * 24 * 3600 + delta.seconds) * 1000 + int(delta.microseconds / 1000)
    _write_long(ts, out)


_PRIMITIVE_WRITERS: dict[str, _Writer] = {
    "string": _write_string, "long": _write_long, "int": _write_int, "double": _write_double,
    "boolean": _write_boolean, "null": _write_null,
}


def _compile_writer(schema: Any) -> _Writer | None:
    """A writer for a parsed schema, or None if the fast path does not cover it."""
    schema = _type_of(schema)
    if isinstance(schema, str):
        return _PRIMITIVE_WRITERS.get(schema)
    if isinstance(schema, list):
        if not schema or any(not isinstance(branch, str) or branch not in _UNION_TYPES for branch in schema) or len(set(schema)) < len(schema):
            return None
        # fastavro writes the first branch the value validates against; for these four types
        # that is the branch of the value's exact type (a bool is not a double for it).
        by_type = {_UNION_TYPES[branch]: (2 * index, _PRIMITIVE_WRITERS[branch]) for index, branch in enumerate(schema)}

        def write_union(value: Any, out: bytearray) -> None:
            tag, write = by_type[type(value)]  # KeyError for another type: give up
            out.append(tag)
            write(value, out)
        return write_union
    if schema == _TIMESTAMP_MILLIS:
        return _write_timestamp_millis
    if not isinstance(schema, dict):
        return None
    if schema.get("type") == "map":
        values = _compile_writer(schema["values"])
        if values is None:
            return None

        def write_map(mapping: dict, out: bytearray) -> None:
            if type(mapping) is not dict:
                raise _GiveUp
            if mapping:
                _write_long(len(mapping), out)
                for key, value in mapping.items():
                    _write_string(key, out)
                    values(value, out)
            out.append(0)
        return write_map
    if schema.get("type") == "record":
        fields = tuple((field["name"], _compile_writer(field["type"])) for field in schema["fields"])
        if any(writer is None for _name, writer in fields):
            return None
        count = len(fields)

        def write_record(record: dict, out: bytearray) -> None:
            # Exactly the schema's fields: a missing one (fastavro may fill in its default) or
            # an unknown one (fastavro's strict error) is fastavro's to handle.
            if type(record) is not dict or len(record) != count:
                raise _GiveUp
            for name, writer in fields:
                writer(record[name], out)  # KeyError: give up
        return write_record
    return None
