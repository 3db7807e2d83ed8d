"""Resuming from the compacted snapshots topic at start-up (the Kafka adapter of a restart).

    await resume(learners, bootstrap, topic, codec, registry)   # each model from its newest verified snapshot
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from services.learning.learners import LearnerSet
from services.learning.ledger_seam import ModelRegistry
from streamledger import kafka, metrics
from streamledger.avro import AvroCodec, CodecError
from streamledger.core.snapshots import SnapshotNotVouched
from streamledger.kafka import topics
from streamledger.logging import get_logger

log = get_logger("learning")
REFUSED = metrics.counter("learning", "snapshots_refused", "Snapshots refused at start-up", ("model_id", "reason"))


async def resume(learners: LearnerSet, bootstrap: str, topic: str, codec: AvroCodec,
                 registry: ModelRegistry | None, model_ids: list[str] | None = None) -> None:
    """Load each model's (or each of `model_ids`') newest snapshot that verifies (and, with a registry,
    that the ledger vouches for: registered with exactly its hash by this service's account); log and
    count every refused one."""
    found, undecodable = await read_snapshots(bootstrap, topic, codec)
    for error in undecodable:
        REFUSED.labels("", error.reason).inc()
        log.error("snapshot_refused", extra={"reason": error.reason, "error": str(error)})
    for model_id in learners.models if model_ids is None else model_ids:
        candidates = found.get(model_id, [])
        if registry is not None:
            vouched = []
            for s in candidates:
                try:
                    await registry.vouch(model_id, s["version"], s["sha256"])
                except SnapshotNotVouched as exc:
                    REFUSED.labels(model_id, exc.reason).inc()
                    log.error("snapshot_refused", extra={"model_id": model_id, "version": s["version"],
                                                         "reason": exc.reason, "error": str(exc)})
                    continue
                vouched.append(s)
            candidates = vouched
        version, refusals = learners.resume(model_id, candidates)
        if registry is not None:
            # The contract registers only the next version (latest + 1), so new snapshots are
            # numbered from the ledger's latest; a refused snapshot's number may be reused, with
            # another hash: a reader that checks the ledger never loaded it.
            tracked = learners.models[model_id]
            tracked.version = max(tracked.version, await registry.latest_version(model_id))
        for refusal in refusals:
            reason = getattr(refusal.error, "reason", "declaration_changed")
            REFUSED.labels(model_id, reason).inc()
            log.error("snapshot_refused", extra={"model_id": model_id, "version": refusal.version,
                                                 "reason": reason, "error": str(refusal.error)})
        tracked = learners.models[model_id]
        log.info("model_resumed" if version is not None else "model_fresh",
                 extra={"model_id": model_id, "version": version, "events_seen": tracked.online.learned,
                        "offsets": {f"{t}/{p}": o for (t, p), o in tracked.offsets.items()}})


async def read_snapshots(
    bootstrap: str, topic: str, codec: AvroCodec, timeout_s: float = 30.0
) -> tuple[dict[str, list[dict[str, Any]]], list[CodecError]]:
    """Every ModelSnapshot in `topic` up to its current end, by model_id, and the undecodable ones.

    All versions still in the log are returned (compaction may not have run yet), so a
    newest snapshot that is refused can fall back to an older one.
    """
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    errors: list[CodecError] = []
    async with kafka.consumer(bootstrap, max_fetch_bytes=topics.MAX_SNAPSHOT_BYTES) as consumer:
        async for records in kafka.read_to_end(consumer, bootstrap, topic, timeout_s):
            values = [r.value for r in records if r.value is not None]  # None: a deleted model
            for snapshot in codec.decode_many(values, reader="ModelSnapshot"):
                if isinstance(snapshot, CodecError):
                    errors.append(snapshot)
                else:
                    found[snapshot["model_id"]].append(snapshot)
    return dict(found), errors
