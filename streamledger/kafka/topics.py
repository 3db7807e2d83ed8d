"""The Kafka topics StreamLedger services talk through (see ARCHITECTURE.md), in one table.

    await provision(bootstrap, [spec(topics.RAW, settings.ingestion_raw_topic), spec(topics.SCHEMAS)])

Every topic the project creates is described here once (`TopicSpec`: partitions, compaction,
`max.message.bytes`, retention), so whichever service starts first creates it the same way.
A service that reads a topic under another name (a setting) asks for `spec(ROLE, name)`: the
table's configuration under that name.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

RAW = "events.raw"
CLEAN = "events.clean"
DEADLETTER = "events.deadletter"
SNAPSHOTS = "models.snapshots"  # compacted: each model's latest snapshot stays forever
MODEL_METRICS = "models.metrics"
PREDICTIONS = "predictions"
USAGE = "usage"
ANCHORS = "ledger.anchors"
SCHEMAS = "_schemas"  # compacted: every writer schema, keyed by fingerprint

MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024
"""The largest model snapshot record: the snapshot topic's `max.message.bytes`, and what
producers and consumers of snapshots must allow."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 1
    compacted: bool = False
    max_message_bytes: int | None = None
    retention_ms: int | None = None
    """None: the broker's default retention."""

    def configs(self) -> dict[str, str]:
        configs = {"cleanup.policy": "compact"} if self.compacted else {}
        if self.max_message_bytes is not None:
            configs["max.message.bytes"] = str(self.max_message_bytes)
        if self.retention_ms is not None:
            configs["retention.ms"] = str(self.retention_ms)
        return configs


TABLE: dict[str, TopicSpec] = {
    spec.name: spec
    for spec in (
        TopicSpec(RAW, partitions=3),
        TopicSpec(CLEAN),
        TopicSpec(DEADLETTER),
        TopicSpec(SNAPSHOTS, compacted=True, max_message_bytes=MAX_SNAPSHOT_BYTES),
        TopicSpec(MODEL_METRICS),
        TopicSpec(PREDICTIONS),
        TopicSpec(USAGE),
        TopicSpec(ANCHORS),
        TopicSpec(SCHEMAS, compacted=True),
    )
}
COMPACTED = frozenset(name for name, spec in TABLE.items() if spec.compacted)


def spec(role: str, name: str | None = None, *, partitions: int | None = None) -> TopicSpec:
    """The table's spec for `role` (one of the names above), under `name` if configured otherwise,
    with `partitions` if given. A role the table does not know is a `KeyError` naming it."""
    try:
        found = TABLE[role]
    except KeyError:
        raise KeyError(f"no topic {role!r} in the topic table; known: {', '.join(sorted(TABLE))}") from None
    changes: dict = {}
    if name is not None:
        changes["name"] = name
    if partitions is not None:
        changes["partitions"] = partitions
    return replace(found, **changes) if changes else found


async def provision(bootstrap: str, specs: Iterable[TopicSpec], replication_factor: int = 1) -> None:
    """Create every topic of `specs` that does not exist yet, as its spec says.

    Existing topics are left as they are (another service may have created them a moment ago).
    """
    wanted = {s.name: s for s in specs}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(s.name, num_partitions=s.partitions, replication_factor=replication_factor,
                        topic_configs=s.configs())
               for name, s in wanted.items() if name not in existing]
        if new:
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass  # another service created it first
    finally:
        await admin.close()
