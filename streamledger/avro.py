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
from collections.abc import Iterable, Mapping
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

    # -- encode ----------------------------------------------------------------------------

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        """One record as a single-object message, written with the latest schema of `name`."""
        fp = self.registry.fingerprint(name)
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
        return _read_body(data, self.registry.writer(fp), self._reader_for(fp, reader))

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
                out.append(_read_body(data, *pair))
            except CodecError as exc:
                out.append(exc)
        return out


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
        raise MalformedBodyError(f"{writer['name']} body does not decode: {type(exc).__name__}: {exc}") from None
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
