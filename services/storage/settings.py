"""Settings of the storage service (`STREAMLEDGER_*` environment variables)."""

from __future__ import annotations

from streamledger.kafka import topics
from streamledger.settings import CommonSettings


class StorageSettings(CommonSettings):
    clean_topic: str = topics.CLEAN
    predictions_topic: str = topics.PREDICTIONS
    anchors_topic: str = topics.ANCHORS
    snapshots_topic: str = topics.SNAPSHOTS
    deadletter_topic: str = topics.DEADLETTER
    storage_group: str = "streamledger-storage"
    storage_batch_size: int = 2000
    """Most messages per poll, and so per bulk write."""
    storage_batch_wait_ms: int = 200
    """Longest wait for a poll to fill up."""
    retry_attempts: int = 200
    """Tries of a MongoDB write before the service gives up and stops (about 15 min at the 5 s cap)."""
    backoff_initial_seconds: float = 0.2
    backoff_max_seconds: float = 5.0
    """Cap on one wait between MongoDB retries (the retries themselves go on until it is back)."""
    mongo_write_timeout_seconds: float = 30.0
    """A bulk write with no answer after this long is retried (as if MongoDB were down)."""
    max_poll_interval_ms: int = 600_000
    """How long the sink may stop polling (MongoDB down) before Kafka moves its partitions."""
