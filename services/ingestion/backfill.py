"""Historical backfill: a CSV, JSON Lines or Parquet file -> RawEvents on Kafka.

Each row becomes one event: `--id-column` gives its event_id (otherwise a UUIDv5 of
tenant, source, file name and row number, so a re-run produces the same ids and adds
nothing downstream), `--ts-column` its time (epoch milliseconds or ISO-8601 with a zone;
Parquet timestamps without a zone are taken as UTC), `--label-column` its label, and
every other column a feature. A row that fails validation is reported with its row
number, the column at fault and why; the other rows still go in.

CSV values are typed per column and batch: all numbers -> doubles, all true/false ->
booleans, otherwise each value is a number when it parses as one, else text; empty,
NA, NaN and null cells are missing values (null features).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from services.ingestion.encoding import encode_batch
from services.ingestion.payload import loads
from services.ingestion.settings import IngestionSettings
from services.ingestion.sink import PendingBudget, RawEventWriter
from services.ingestion.validation import Rejection, UnparseableLine
from streamledger import kafka
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.kafka import topics

BATCH_ROWS = 5_000
IN_FLIGHT_BATCHES = 4
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
# Namespace of the derived event ids (a fixed random UUID: changing it would change every id).
BACKFILL_NAMESPACE = uuid.UUID("6f1c2a0e-3b7d-4d51-9a43-2f8e5c1d7b90")
_NAMESPACE_BYTES = BACKFILL_NAMESPACE.bytes
_PLAIN = frozenset({float, str, bool, int, type(None)})


class BackfillError(ValueError):
    """The file as a whole cannot be backfilled (unknown format, missing column, unreadable)."""


@dataclass(frozen=True)
class BackfillOptions:
    tenant: str
    source: str
    ts_column: str = "ts"
    id_column: str | None = None
    label_column: str | None = None


@dataclass
class BackfillReport:
    rows: int = 0
    accepted: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    """One per rejected row; `index` is the 1-based row number in the file."""


@dataclass(frozen=True)
class Progress:
    rows: int
    done_fraction: float


def file_format(path: Path) -> str:
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise BackfillError(f"{path.name}: unknown file type {path.suffix!r}; use .csv, .jsonl/.ndjson or .parquet") from None


def derived_event_id(options: BackfillOptions, file_name: str, row: int) -> str:
    """The stable id of a row without an id column: the same file re-run gives the same ids."""
    # uuid.uuid5, spelled out: the same bytes without building a UUID object per row.
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + f"{options.tenant}/{options.source}/{file_name}/{row}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# -- reading: every format yields batches of plain row dicts ------------------------------

def read_rows(path: Path, options: BackfillOptions) -> Iterator[tuple[list[Any], float]]:
    """(rows, fraction of the file read) per batch; a row is a dict, or `UnparseableLine`."""
    kind = file_format(path)
    if not path.is_file():
        raise BackfillError(f"{path}: no such file")
    if kind == "parquet":
        yield from _parquet_rows(path)
    else:
        with path.open("rb") as file:
            size = max(path.stat().st_size, 1)
            reader = _csv_rows(file, options) if kind == "csv" else _jsonl_rows(file)
            for rows in reader:
                yield rows, min(file.tell() / size, 1.0)


def _parquet_rows(path: Path) -> Iterator[tuple[list[Any], float]]:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise BackfillError(f"{path.name}: not a readable Parquet file: {exc}") from None
    total = max(parquet.metadata.num_rows, 1)
    read = 0
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
        read += batch.num_rows
        yield batch.to_pylist(), read / total


def _csv_rows(file: BinaryIO, options: BackfillOptions) -> Iterator[list[Any]]:
    try:
        header = pa_csv.open_csv(file, read_options=pa_csv.ReadOptions(block_size=1 << 16)).schema.names
        file.seek(0)
        reader = pa_csv.open_csv(
            file,
            read_options=pa_csv.ReadOptions(block_size=1 << 20),
            # Read text and type each batch ourselves: Arrow's inference looks at the first
            # block only and would fail the whole file on a later odd value.
            convert_options=pa_csv.ConvertOptions(column_types={n: pa.string() for n in header}, strings_can_be_null=True),
        )
        for batch in reader:
            yield _typed_csv_rows(batch, options)
    except pa.ArrowInvalid as exc:
        raise BackfillError(f"CSV is not readable: {exc}") from None


def _typed_csv_rows(batch: pa.RecordBatch, options: BackfillOptions) -> list[dict[str, Any]]:
    names = batch.schema.names
    values: list[list[Any]] = []
    for name, column in zip(names, batch.columns):
        if name in (options.id_column, "event_id", "tenant", "source"):
            typed = column
        elif name == options.ts_column:
            typed = _try_cast(column, pa.int64())
            if typed is None:  # a mix of epoch milliseconds and ISO-8601 strings
                values.append([int(v) if v is not None and v.isdigit() else v for v in column.to_pylist()])
                continue
        else:
            typed = _try_cast(column, pa.float64()) or _try_cast(column, pa.bool_())
            if typed is None:  # a mixed column: type each cell
                values.append([_typed_cell(v) for v in column.to_pylist()])
                continue
        values.append(typed.to_pylist())
    return [dict(zip(names, row)) for row in zip(*values)]


def _try_cast(column: pa.Array, to: pa.DataType) -> pa.Array | None:
    try:
        return pc.cast(column, to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _typed_cell(text: str | None) -> Any:
    if text is None:
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return float(text)
    except ValueError:
        return text


def _jsonl_rows(file: BinaryIO) -> Iterator[list[Any]]:
    rows: list[Any] = []
    for number, line in enumerate(file, start=1):
        if not line.strip():
            rows.append(UnparseableLine(f"line {number} is empty"))
        else:
            try:
                rows.append(loads(line.decode("utf-8")))
            except UnicodeDecodeError as exc:
                rows.append(UnparseableLine(f"line {number} is not valid UTF-8 at byte {exc.start}"))
            except ValueError as exc:
                rows.append(UnparseableLine(f"line {number} is not valid JSON: {exc}"))
            except RecursionError:
                rows.append(UnparseableLine(f"line {number} is nested too deeply"))
        if len(rows) >= BATCH_ROWS:
            yield rows
            rows = []
    if rows:
        yield rows


# -- rows -> events -----------------------------------------------------------------------

def row_to_event(row: Any, row_number: int, file_name: str, options: BackfillOptions) -> Any:
    """The event object for one row, for `validate_event` to judge (non-dicts pass through)."""
    if not isinstance(row, dict):
        return row
    columns = dict(row)
    nested = columns.pop("features", None)
    if isinstance(nested, dict):  # JSON Lines already in event shape
        columns.update(nested)
    elif nested is not None:
        columns["features"] = nested
    event: dict[str, Any] = {"source": columns.pop("source", None) or options.source}
    if "tenant" in columns:
        event["tenant"] = columns.pop("tenant")
    if options.id_column:
        value = columns.pop(options.id_column, None)
        event["event_id"] = None if value is None else str(value)
    else:
        event["event_id"] = columns.pop("event_id", None) or derived_event_id(options, file_name, row_number)
    event["ts"] = _file_value(columns.pop(options.ts_column, None))
    if options.label_column:
        event["label"] = _file_value(columns.pop(options.label_column, None))
    event["features"] = {str(name): _file_value(value) for name, value in columns.items()}
    return event


def _file_value(value: Any) -> Any:
    """Arrow's Python values that RawEvent has no type for, as the nearest one it has."""
    if type(value) in _PLAIN:
        return value
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return math.floor(moment.timestamp() * 1000)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


def check_columns(first_row: Any, options: BackfillOptions, file_name: str) -> None:
    """Fail fast when a named column is not in the file at all (rather than rejecting every row)."""
    if not isinstance(first_row, dict):
        return
    for flag, column in (("--ts-column", options.ts_column), ("--id-column", options.id_column),
                         ("--label-column", options.label_column)):
        if column and column not in first_row:
            raise BackfillError(
                f"{file_name}: no column {column!r} ({flag}); columns are: {', '.join(map(str, first_row))}")


# -- the run --------------------------------------------------------------------------------

async def backfill(path: Path, options: BackfillOptions, settings: IngestionSettings,
                   on_progress: Callable[[Progress], None] = lambda _p: None) -> BackfillReport:
    """Write every valid row of `path` to `settings.ingestion_raw_topic`; returns once Kafka acknowledged them.

    Raises `KafkaUnavailableError` if Kafka stops acknowledging: re-running the same command
    is safe and completes the job, since ids are stable.
    """
    path = Path(path)
    report = BackfillReport()
    registry = SchemaRegistry.from_dir()
    topic = settings.ingestion_raw_topic
    await kafka.provision(settings.kafka_bootstrap, [
        kafka.spec(topics.RAW, topic, partitions=settings.ingestion_raw_partitions), kafka.spec(topics.SCHEMAS)])
    # Bigger batches and a longer linger than the live service: throughput over latency.
    async with kafka.producer(settings.kafka_bootstrap, linger_ms=20, max_batch_size=1 << 20) as producer:
        await registry.publish(producer, ["RawEvent"])
        codec = AvroCodec(registry)
        writer = RawEventWriter(producer, topic, PendingBudget(BATCH_ROWS * (IN_FLIGHT_BATCHES + 1)),
                                ack_timeout_seconds=60)
        in_flight: set[asyncio.Task] = set()
        try:
            for rows, fraction in read_rows(path, options):
                if report.rows == 0 and rows:
                    check_columns(rows[0], options, path.name)
                first = report.rows + 1
                events = [row_to_event(row, first + i, path.name, options) for i, row in enumerate(rows)]
                encoded = encode_batch(events, options.tenant, codec, settings.ingestion_max_event_bytes, first_index=first)
                report.rows += len(rows)
                report.rejected += encoded.rejected
                for start in range(0, len(encoded.event_ids), BATCH_ROWS):  # CSV blocks vary in rows
                    while len(in_flight) >= IN_FLIGHT_BATCHES:
                        done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                        report.accepted += sum(len(task.result()) for task in done)
                    chunk = slice(start, start + BATCH_ROWS)
                    in_flight.add(asyncio.create_task(writer.write(encoded.event_ids[chunk], encoded.values[chunk])))
                on_progress(Progress(report.rows, fraction))
            for task in asyncio.as_completed(in_flight):
                report.accepted += len(await task)
        finally:
            for task in in_flight:
                task.cancel()
    return report
