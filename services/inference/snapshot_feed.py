"""Following the compacted snapshots topic: every ModelSnapshot, from the beginning, then live,
verified and offered to the shelf.

    await follow_snapshots(bootstrap, topic, codec, shelf, caught_up, stop, vouching)

`caught_up` is set once the records that were in the topic at start have all been handed
to the shelf, so the server says ready only when it serves the latest models. A snapshot
that does not verify is refused (logged, counted in `streamledger_inference_snapshots_refused_total`
by model and reason) and the shelf keeps what it had.

With `vouching` (whenever a ledger is configured: paid mode, or `STREAMLEDGER_INFERENCE_SNAPSHOT_LEDGER`),
a snapshot is unpickled only once the ledger vouches for it (`streamledger.snapshot_vouching`):
registered with exactly its sha256 by the model registrant. The records of one fetch are
looked up together, so a snapshot that waits for its registration to commit delays that fetch
by at most the bounded wait, not by one wait per record; they are then loaded in offset order.
Only a snapshot created in the last `RECENT_SECONDS` is waited for: an old one that was never
registered (written before learning registered by default) is refused at once, so it cannot
hold up start-up.
"""

from __future__ import annotations

import asyncio
import gc
import time
from datetime import datetime
from typing import Any

from aiokafka.errors import KafkaError

from services.inference.models import (
    ModelShelf,
    SnapshotRefused,
    UnknownModel,
    load_snapshot,
)
from streamledger import kafka, metrics
from streamledger.avro import AvroCodec, CodecError
from streamledger.core.snapshots import SnapshotNotVouched
from streamledger.kafka import topics
from streamledger.logging import get_logger
from streamledger.snapshot_vouching import SnapshotVouching

log = get_logger("inference")
LOADED = metrics.counter("inference", "snapshots_loaded", "Snapshots verified and served", ("model_id",))
REFUSED = metrics.counter("inference", "snapshots_refused", "Snapshots refused", ("model_id", "reason"))
SERVED_VERSION = metrics.gauge("inference", "model_version", "Latest version served", ("model_id",))
RECENT_SECONDS = 300.0
"""A snapshot created (its record's `created`, by this machine's clock) longer ago than this is not
waited for: its registration, if any, committed long ago."""


async def follow_snapshots(bootstrap: str, topic: str, codec: AvroCodec, shelf: ModelShelf,
                           caught_up: asyncio.Event, stop: asyncio.Event,
                           vouching: SnapshotVouching | None = None) -> None:
    async def hand_over(records) -> None:
        snapshots = []
        for record in records:
            if record.value is None:  # a tombstone: the model was deleted upstream
                continue
            try:
                snapshots.append(codec.decode(record.value, reader="ModelSnapshot"))
            except CodecError as exc:
                REFUSED.labels("", exc.reason).inc()
                log.error("snapshot_refused", extra={"reason": exc.reason, "error": str(exc)})
        vouched = await asyncio.gather(*(vouched_for(vouching, shelf, s) for s in snapshots))
        for snapshot, ok in zip(snapshots, vouched):
            if ok:
                await offer(shelf, snapshot)

    async with kafka.consumer(bootstrap, max_fetch_bytes=topics.MAX_SNAPSHOT_BYTES) as consumer:
        async for records in kafka.read_to_end(consumer, bootstrap, topic, timeout_s=None):
            await hand_over(records)
        caught_up.set()
        # The start-up models are loaded: move every object now alive (interpreter, libraries,
        # models) out of the cyclic GC's reach, so a full collection walks only what serving
        # made and takes a few milliseconds instead of a tail-latency spike of a hundred.
        gc.freeze()
        while not stop.is_set():
            try:
                batches = await consumer.getmany(timeout_ms=300)
            except KafkaError as exc:  # the broker is away: keep serving the models we have
                log.warning("snapshot_fetch_failed", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)
                continue
            for records in batches.values():
                await hand_over(records)


async def vouched_for(vouching: SnapshotVouching | None, shelf: ModelShelf, record: dict[str, Any]) -> bool:
    """Whether the ledger vouches for a ModelSnapshot record (always, without `vouching`); a refusal is
    logged and counted. A model not declared here is left to `offer` (it never asks the ledger)."""
    if vouching is None or record["model_id"] not in shelf.declarations:
        return True
    try:
        recent = time.time() - _seconds(record["created"]) < RECENT_SECONDS
        await vouching.check(record["model_id"], record["version"], record["sha256"], wait=recent)
    except SnapshotNotVouched as exc:
        refuse(record, exc.reason, str(exc))
        return False
    return True


async def offer(shelf: ModelShelf, record: dict[str, Any]) -> None:
    """Verify a ModelSnapshot record and offer it to the shelf; refuse it (logged, counted) otherwise."""
    try:
        declaration = shelf.declaration(record["model_id"])
        # Unpickling a large model takes a while: off the loop, so requests keep flowing.
        model = await asyncio.to_thread(load_snapshot, record, declaration)
    except UnknownModel:
        log.info("snapshot_ignored", extra={"model_id": record["model_id"], "why": "not declared here"})
        return
    except SnapshotRefused as exc:
        refuse(record, exc.reason, str(exc))
        return
    if shelf.offer(model):
        SERVED_VERSION.labels(model.model_id).set(model.version)
    LOADED.labels(model.model_id).inc()
    log.info("model_loaded", extra={"model_id": model.model_id, "version": model.version, "sha256": model.sha256,
                                    "features": len(model.features)})


def refuse(record: dict[str, Any], reason: str, error: str) -> None:
    REFUSED.labels(record["model_id"], reason).inc()
    log.error("snapshot_refused", extra={"model_id": record["model_id"], "version": record["version"],
                                         "reason": reason, "error": error})


def _seconds(created: datetime | int) -> float:
    """A ModelSnapshot's `created` in seconds since the epoch (Avro decodes timestamp-millis to a datetime)."""
    return created.timestamp() if isinstance(created, datetime) else created / 1000
