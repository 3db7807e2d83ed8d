"""From consumed Kafka messages to MongoDB upserts: pure mapping and batching, no I/O.

    plan = plan_batch(messages, codec, routes, now_ms)
    plan_batch(more_messages, codec, routes, now_ms, plan)   # a batch polled in parts
    plan.writes["events"]     # {_id: document}, last message per _id wins
    plan.dead_letters         # DeadLetter records for messages that do not decode
    plan.commit_offsets       # {TopicPartition-like key: next offset} to commit once written

Each topic maps to one collection and one record type, and each record to the `_id` that
makes its write idempotent: replaying a message replaces a document with itself. Event ids
and request ids are chosen by tenants and clients, so those `_id`s are scoped by their owner
(`scoped_id(tenant, event_id)`, `scoped_id(client, request_id)`, streamledger/core/scoped.py):
one tenant's event never replaces another's with the same id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Hashable

from streamledger.avro import AvroCodec, CodecError
from streamledger.core.records import Consumed, dead_letter
from streamledger.core.scoped import scoped_id

SERVICE = "storage"


class DocumentError(ValueError):
    """A decoded record that has no document form; the message names the field."""

    reason = "invalid_document"


@dataclass(frozen=True)
class Route:
    """Where a topic's records go: which record type it carries, which collection, which _id."""

    record: str
    collection: str
    document_id: Callable[[Mapping[str, Any]], str]
    to_document: Callable[[Mapping[str, Any]], dict[str, Any]] = lambda record: dict(record)


def _field(record: Mapping[str, Any], name: str) -> Any:
    value = record.get(name)
    if value is None or value == "":
        raise DocumentError(f"record has no {name!r}, which its document _id needs")
    return value


def _snapshot_metadata(record: Mapping[str, Any]) -> dict[str, Any]:
    # Model bytes stay in Kafka (and can be MBs): MongoDB keeps what queries and audits need.
    document = {name: value for name, value in record.items() if name != "model"}
    document["model_bytes"] = len(record.get("model") or b"")
    return document


def _dead_letter_id(record: Mapping[str, Any]) -> str:
    # One dead letter per service and source message, so a replay overwrites instead of adding.
    if record.get("source_offset") is not None:
        return f"{record['service']}:{record['source_topic']}:{record['source_partition']}:{record['source_offset']}"
    digest = hashlib.sha256(record.get("original") or b"").hexdigest()[:16]
    return f"{record['service']}:{record['source_topic']}:{record.get('key') or ''}:{digest}"


EVENTS = Route("CleanEvent", "events", lambda r: scoped_id(_field(r, "tenant"), _field(r, "event_id")))
# An unauthenticated request has no client (null): its id is scoped by the empty owner.
PREDICTIONS = Route("Prediction", "predictions", lambda r: scoped_id(r.get("client"), _field(r, "request_id")))
ANCHORS = Route("Anchor", "anchors", lambda r: _field(r, "batch_id"))
MODELS = Route(
    "ModelSnapshot",
    "models",
    # The topic is compacted by model_id; MongoDB keeps every version for provenance.
    lambda r: f"{_field(r, 'model_id')}:{r['version']}",
    _snapshot_metadata,
)
DEAD_LETTERS = Route("DeadLetter", "deadletters", _dead_letter_id)

INDEXES: dict[str, list[list[tuple[str, int]]]] = {
    "events": [[("tenant", 1), ("ts", 1)]],
    "predictions": [[("model_id", 1), ("model_version", 1)], [("ts", 1)]],
    "models": [[("model_id", 1), ("version", 1)]],
    "anchors": [[("topic", 1), ("partition", 1), ("first_offset", 1)]],
    "deadletters": [[("reason", 1), ("ts", 1)]],
}
"""Indexes per collection: tenant + time for events, model + version for models and predictions."""


@dataclass
class Write:
    document: dict[str, Any]
    source: Consumed


@dataclass
class BatchPlan:
    writes: dict[str, dict[str, Write]] = field(default_factory=dict)
    """collection -> _id -> the last document for that _id in the batch."""
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    commit_offsets: dict[Hashable, int] = field(default_factory=dict)
    """tp -> next offset to read, to commit once every write of the batch is acknowledged."""
    message_count: int = 0
    """Messages planned, written or not (tombstones, dead letters, replaced copies)."""
    byte_count: int = 0
    """Bytes of those messages' values."""

    @property
    def document_count(self) -> int:
        return sum(len(by_id) for by_id in self.writes.values())


def plan_batch(
    messages: Iterable[Consumed], codec: AvroCodec, routes: Mapping[str, Route], now_ms: int,
    plan: BatchPlan | None = None,
) -> BatchPlan:
    """Decode and map a batch (into `plan` when given: later messages extend it and win over
    its earlier copies); what cannot be stored becomes a dead letter, never an exception."""
    plan = BatchPlan() if plan is None else plan
    for message in messages:
        plan.message_count += 1
        plan.byte_count += len(message.value or b"")
        plan.commit_offsets[message.tp] = max(plan.commit_offsets.get(message.tp, 0), message.offset + 1)
        route = routes.get(message.topic)
        if route is None:
            plan.dead_letters.append(dead_letter(message, "unknown_topic", f"no route for topic {message.topic!r}", now_ms,
                                                 service=SERVICE))
            continue
        if message.value is None:
            continue  # a tombstone on a compacted topic: nothing to store
        try:
            record = codec.decode(message.value, reader=route.record)
            document_id = route.document_id(record)
            document = route.to_document(record)
        except (CodecError, DocumentError) as exc:
            plan.dead_letters.append(dead_letter(message, exc.reason, f"{route.record}: {exc}", now_ms, service=SERVICE))
            continue
        document["_id"] = document_id
        plan.writes.setdefault(route.collection, {})[document_id] = Write(document, message)
    return plan
