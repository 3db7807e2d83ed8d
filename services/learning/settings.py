"""Settings of the learning service: `STREAMLEDGER_LEARNING_*` on top of the common `STREAMLEDGER_*`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from streamledger import kafka
from streamledger.kafka import topics
from streamledger.settings import DEFAULT_MODELS_FILE, CommonSettings


class LearningSettings(CommonSettings):
    # Field names carry the service name so the common prefix gives STREAMLEDGER_LEARNING_*.
    learning_models_file: Path = DEFAULT_MODELS_FILE
    """TOML file of `[[model]]` declarations."""
    learning_input_topics: list[str] = [topics.CLEAN]
    """Topics of CleanEvents to learn from (a JSON list in the environment)."""
    learning_group_id: str = "streamledger-learning"
    """Consumer group the snapshot offsets are committed under (for lag monitoring only: the slowest
    model's, whichever replica holds it). The replicas share the models through the group
    `<this>-shards` on the topic `<this>-shards` (services/learning/shards.py)."""
    learning_shards: int = Field(default=12, ge=1)
    """Partitions of the shards topic when this service creates it: model m is learned by the replica
    the group gives shard crc32(m) % shards. Replicas beyond the shards holding models idle. An
    existing topic keeps its count (every replica reads it from the topic, so all agree)."""
    learning_session_timeout_seconds: float = Field(default=30.0, gt=0)
    """A replica not heard from for this long leaves the group; its models resume on the others from
    their last snapshots."""
    learning_rebalance_timeout_seconds: float = Field(default=120.0, gt=0)
    """How long the group waits for a replica to hand its models over (finish the batch in hand, write
    a final snapshot of each, registered on the ledger) before it gives them to another anyway."""
    learning_snapshot_topic: str = topics.SNAPSHOTS
    learning_metrics_topic: str = topics.MODEL_METRICS
    learning_deadletter_topic: str = topics.DEADLETTER
    learning_snapshot_every_events: int = 10_000
    learning_snapshot_every_seconds: float = 30.0
    learning_metrics_every_seconds: float = 5.0
    learning_fetch_max_records: int = 2_000
    """Upper bound of one fetched batch, so snapshot and metrics cadences are checked often."""
    learning_ledger: bool = True
    """A ledger is configured (the default, and the local stack's): register every snapshot's sha256
    on the ledger before publishing it, and resume only from snapshots the ledger vouches for
    (reached with `LedgerSettings`, `STREAMLEDGER_FABRIC_*`, as the identity `registry` unless they
    name another; it must hold the operator role). false: no ledger (a machine without Fabric, or a
    test of learning alone); the service then warns at start that its snapshots are unverified."""

    @property
    def shards_group(self) -> str:
        """The replicas' group and its topic (under the service's own `streamledger-learning` prefix)."""
        return f"{self.learning_group_id}-shards"

    def topic_specs(self) -> list[kafka.TopicSpec]:
        """The topics this service reads and writes, as the topic table describes them, and its shards topic
        (no records: its partitions are the shards, and the group's commits on them the shards' positions)."""
        return [*(kafka.spec(topics.CLEAN, name) for name in self.learning_input_topics),
                kafka.spec(topics.MODEL_METRICS, self.learning_metrics_topic),
                kafka.spec(topics.DEADLETTER, self.learning_deadletter_topic),
                kafka.spec(topics.SNAPSHOTS, self.learning_snapshot_topic),
                kafka.TopicSpec(self.shards_group, partitions=self.learning_shards, compacted=True)]
