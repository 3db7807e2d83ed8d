"""The Kafka topics StreamLedger services talk through (see ARCHITECTURE.md), in one table.

    await provision(bootstrap, [spec(topics.RAW, settings.ingestion_raw_topic), spec(topics.SCHEMAS)])

Every topic the project creates is described here once (`TopicSpec`: partitions, compaction,
`max.message.bytes`, retention, and which services write and read it), so whichever service
starts first creates it the same way, and the broker's ACLs (`acls.py`) follow from it.
A service that reads a topic under another name (a setting) asks for `spec(ROLE, name)`: the
table's configuration under that name.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from aiokafka.admin import NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from streamledger.kafka.clients import KafkaSecurity, admin, admin_retried

RAW = "events.raw"
CLEAN = "events.clean"
DEADLETTER = "events.deadletter"
SNAPSHOTS = "models.snapshots"  # compacted: each model's latest snapshot stays forever
MODEL_METRICS = "models.metrics"
PREDICTIONS = "predictions"
USAGE = "usage"
ANCHORS = "ledger.anchors"
SCHEMAS = "_schemas"  # compacted: every writer schema, keyed by fingerprint

# The services, each a Kafka principal of its own (a SCRAM user of that name).
INGESTION, CLEANING, STORAGE, LEARNING, INFERENCE, LEDGER, AUDIT, DASHBOARD = (
    "ingestion", "cleaning", "storage", "learning", "inference", "ledger", "audit", "dashboard")
SERVICES = (INGESTION, CLEANING, STORAGE, LEARNING, INFERENCE, LEDGER, AUDIT, DASHBOARD)

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
    writers: frozenset[str] = frozenset()
    """The services that may write it (and create it); no other principal but the admin can."""
    readers: frozenset[str] = frozenset()
    """The services that may read its records (and create it, as this table says)."""

    def configs(self) -> dict[str, str]:
        configs = {"cleanup.policy": "compact"} if self.compacted else {}
        if self.max_message_bytes is not None:
            configs["max.message.bytes"] = str(self.max_message_bytes)
        if self.retention_ms is not None:
            configs["retention.ms"] = str(self.retention_ms)
        return configs


class TopicCreationError(RuntimeError):
    """The broker refused to create a topic (the message names each, with Kafka's error)."""


def _only(*services: str) -> frozenset[str]:
    return frozenset(services)


TABLE: dict[str, TopicSpec] = {
    spec.name: spec
    for spec in (
        TopicSpec(RAW, partitions=3, writers=_only(INGESTION), readers=_only(CLEANING, AUDIT)),  # trace
        TopicSpec(CLEAN, writers=_only(CLEANING), readers=_only(STORAGE, LEARNING, LEDGER, AUDIT)),
        TopicSpec(DEADLETTER, writers=_only(CLEANING, STORAGE, LEARNING, LEDGER), readers=_only(STORAGE, DASHBOARD)),
        TopicSpec(SNAPSHOTS, compacted=True, max_message_bytes=MAX_SNAPSHOT_BYTES, writers=_only(LEARNING),
                  readers=_only(LEARNING, INFERENCE, STORAGE, DASHBOARD)),
        TopicSpec(MODEL_METRICS, writers=_only(LEARNING), readers=_only(DASHBOARD)),
        TopicSpec(PREDICTIONS, writers=_only(INFERENCE), readers=_only(STORAGE)),
        TopicSpec(USAGE, writers=_only(INFERENCE), readers=_only(LEDGER, AUDIT, DASHBOARD)),  # bill, trace
        TopicSpec(ANCHORS, writers=_only(LEDGER), readers=_only(STORAGE, AUDIT, DASHBOARD)),
        # Every writer of Avro records publishes its schemas; every reader resolves them.
        TopicSpec(SCHEMAS, compacted=True, writers=_only(INGESTION, CLEANING, STORAGE, LEARNING, INFERENCE, LEDGER),
                  readers=frozenset(SERVICES)),
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


def replication(brokers: int) -> tuple[int, int]:
    """(replication factor, `min.insync.replicas`) for a topic created on a cluster of `brokers`:
    up to 3 replicas, and an acks=all write needs all but one of them, so one broker may be down
    while producers go on and no acknowledged record lives on a single disk.

    >>> replication(1), replication(3), replication(5)
    ((1, 1), (3, 2), (3, 2))
    """
    if brokers < 1:
        raise ValueError(f"brokers must be at least 1, got {brokers}")
    factor = min(3, brokers)
    return factor, max(1, factor - 1)


async def provision(bootstrap: str, specs: Iterable[TopicSpec], replication_factor: int | None = None,
                    security: KafkaSecurity | None = None) -> None:
    """Create every topic of `specs` that does not exist yet, as its spec says.

    Replication follows the cluster (`replication`, from the brokers it lists now) unless
    `replication_factor` is given; with more than one replica the topic also gets its
    `min.insync.replicas`. A broker that is down when a topic is created is not counted: the
    topic gets one replica fewer (Kafka cannot place a replica on it).
    Existing topics are left as they are (another service may have created them a moment ago).
    On a secured cluster a principal sees, and may create, only the topics its ACLs name. A node
    that is down is asked around (`admin_retried`).
    """
    wanted = {s.name: s for s in specs}
    await admin_retried(lambda: _provision(bootstrap, wanted, replication_factor, security))


async def _provision(bootstrap: str, wanted: dict[str, TopicSpec], replication_factor: int | None,
                     security: KafkaSecurity | None) -> None:
    async with admin(bootstrap, security=security) as cluster:
        existing = set(await cluster.list_topics())
        missing = [s for name, s in wanted.items() if name not in existing]
        if not missing:
            return
        if replication_factor is None:
            replication_factor = replication(len((await cluster.describe_cluster())["brokers"]))[0]
        min_insync = replication(replication_factor)[1]
        durability = {"min.insync.replicas": str(min_insync)} if replication_factor > 1 else {}
        new = [NewTopic(s.name, num_partitions=s.partitions, replication_factor=replication_factor,
                        topic_configs={**durability, **s.configs()})
               for s in missing]
        try:
            response = await cluster.create_topics(new)
        except TopicAlreadyExistsError:
            return  # another service created it first
        refused = [(error[0], error[1]) for error in response.topic_errors
                   if error[1] not in (0, TopicAlreadyExistsError.errno)]
        if refused:
            raise TopicCreationError(", ".join(f"{name} (error {code}: {for_code(code).__name__})"
                                               for name, code in refused))
