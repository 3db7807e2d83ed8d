"""Batching clean records into Merkle anchors, without I/O.

Records are batched per input partition, in offset order, until a batch holds
`max_records` or its oldest record has waited `max_seconds`. A batch's id is a function of
its partition and offset range only (`events.clean:2:1000-1999`), so after a restart the
same input gives the same batches: `AnchorBatch` of an id already on the ledger is a
replay, not a second anchor, and the consumer resumes after the last anchored offset, so
no record is skipped. The contract requires exactly this form of id, with the count within
the offset range (`check_topic` refuses a topic whose ids it would not take), and binds a
topic to the operator account that anchored it first. The Merkle leaves are the records' content hashes (32 raw bytes),
hashed with RFC 6962's leaf prefix by `MerkleTree`.

A batch closed by time is not reproducible from the input alone (how many records arrived
within the second is not in the log). So the service records each closed batch's range
before anchoring it, and on restart `plan`s those ranges again: a planned batch closes at
exactly its recorded last offset, whatever the size and time limits say.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from streamledger.core.ids import RECORD_ID, batch_id
from streamledger.core.merkle import MerkleTree, leaves_text
from streamledger.core.scoped import scoped_id


class AnchoringError(ValueError):
    """A record that cannot be anchored; the message names the record and field."""

    reason = "unanchorable"
    """The dead-letter reason."""


LONGEST_SUFFIX = len(f":{2**31 - 1}:{2**63 - 1}-{2**63 - 1}")
"""The longest `:<partition>:<first>-<last>` Kafka's numbers allow."""


def check_topic(topic: str) -> None:
    """Refuse a topic whose batch ids the contract would not take, naming the rule."""
    if not RECORD_ID.fullmatch(batch_id(topic, 2**31 - 1, 2**63 - 1, 2**63 - 1)):
        raise ValueError(f"topic {topic!r} cannot be anchored: its batch ids <topic>:<partition>:<first>-<last> "
                         f"must start with a letter or digit, hold only letters, digits, '.', '_', ':' and '-', "
                         f"and be at most 128 characters (a topic of at most {128 - LONGEST_SUFFIX})")


@dataclass(frozen=True)
class AnchoredRecord:
    tenant: str
    event_id: str
    offset: int
    content_hash: bytes


@dataclass
class Batch:
    topic: str
    partition: int
    opened_at: float
    records: list[AnchoredRecord] = field(default_factory=list)

    @property
    def batch_id(self) -> str:
        return batch_id(self.topic, self.partition, self.records[0].offset, self.records[-1].offset)

    @property
    def first_offset(self) -> int:
        return self.records[0].offset

    @property
    def last_offset(self) -> int:
        return self.records[-1].offset

    def tree(self) -> MerkleTree:
        return MerkleTree([r.content_hash for r in self.records])

    def proofs(self) -> Iterator[dict]:
        """One inclusion-proof document per record, for MongoDB, keyed like its stored event:
        `scoped_id(tenant, event_id)`, since event ids are unique only within a tenant. Its
        siblings are not stored: they come from the batch's tree document (`tree_document`)."""
        for index, record in enumerate(self.records):
            yield {"_id": scoped_id(record.tenant, record.event_id), "tenant": record.tenant,
                   "event_id": record.event_id, "batch_id": self.batch_id, "topic": self.topic, "partition": self.partition,
                   "index": index, "size": len(self.records),
                   "content_hash": record.content_hash.hex(), "offset": record.offset}

    def tree_document(self) -> dict:
        """The batch's whole Merkle tree, as its leaves (`leaves_text`): one document per batch, from
        which every record's siblings are computed when its proof is read."""
        return {"_id": self.batch_id, "topic": self.topic, "partition": self.partition,
                "first_offset": self.first_offset, "size": len(self.records),
                "leaves": leaves_text([r.content_hash for r in self.records])}


class Batcher:
    """Collects records per partition and hands out batches that are full or due."""

    def __init__(self, topic: str, max_records: int = 1000, max_seconds: float = 1.0) -> None:
        if max_records < 1 or max_seconds <= 0:
            raise ValueError("max_records must be >= 1 and max_seconds > 0")
        self.topic = topic
        self.max_records = max_records
        self.max_seconds = max_seconds
        self._open: dict[int, Batch] = {}
        self._planned: dict[int, list[tuple[int, int]]] = {}

    def plan(self, partition: int, first_offset: int, last_offset: int) -> None:
        """Make the partition's next batch from `first_offset` end exactly at `last_offset`.

        Plans are given in offset order, before the records they cover are added.
        """
        if last_offset < first_offset:
            raise ValueError(f"planned range {first_offset}-{last_offset} is empty")
        plans = self._planned.setdefault(partition, [])
        if plans and first_offset <= plans[-1][1]:
            raise ValueError(f"planned range {first_offset}-{last_offset} overlaps {plans[-1]} on partition {partition}")
        plans.append((first_offset, last_offset))

    def forget(self, partition: int) -> None:
        """Drop what is open or planned for a partition (it was assigned to another consumer)."""
        self._open.pop(partition, None)
        self._planned.pop(partition, None)

    def add(self, partition: int, offset: int, event_id: str, content_hash: str, now: float, *,
            tenant: str) -> Batch | None:
        """Add `tenant`'s record; the partition's batch if this record filled it (or ended its plan)."""
        try:
            digest = bytes.fromhex(content_hash)
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise AnchoringError(f"record {event_id!r} at {self.topic}:{partition}:{offset}: content_hash must be "
                                 f"64 hex digits (a SHA-256), got {content_hash!r}")
        batch = self._open.setdefault(partition, Batch(self.topic, partition, now))
        if batch.records and offset <= batch.records[-1].offset:
            raise AnchoringError(f"offset {offset} on partition {partition} is not after {batch.records[-1].offset}")
        batch.records.append(AnchoredRecord(tenant, event_id, offset, digest))
        plan = self._plan_of(partition, batch.first_offset)
        if plan is not None:
            if offset >= plan[1]:
                if offset > plan[1]:
                    raise AnchoringError(f"offset {offset} on partition {partition} passed the planned end {plan[1]} "
                                         f"of batch {batch_id(self.topic, partition, *plan)}")
                self._planned[partition].pop(0)
                return self._open.pop(partition)
            return None
        if len(batch.records) >= self.max_records:
            return self._open.pop(partition)
        return None

    def _plan_of(self, partition: int, first_offset: int) -> tuple[int, int] | None:
        plans = self._planned.get(partition)
        if plans and plans[0][0] <= first_offset:
            return plans[0]
        return None

    def open_from(self, partition: int) -> int | None:
        """First offset of the partition's open batch, if it has one."""
        batch = self._open.get(partition)
        return batch.first_offset if batch else None

    def due(self, now: float) -> list[Batch]:
        """Unplanned batches whose oldest record has waited `max_seconds`, removed from the open set."""
        ready = [p for p, b in self._open.items()
                 if now - b.opened_at >= self.max_seconds and self._plan_of(p, b.first_offset) is None]
        return [self._open.pop(p) for p in ready]

    def drain(self) -> list[Batch]:
        """Every open batch (on shutdown)."""
        batches, self._open = list(self._open.values()), {}
        return batches
