"""Settings of the storage service (`STREAMLEDGER_STORAGE_*` environment variables)."""

from __future__ import annotations

from streamledger.kafka import topics
from streamledger.settings import CommonSettings


class StorageSettings(CommonSettings):
    storage_clean_topic: str = topics.CLEAN
    storage_predictions_topic: str = topics.PREDICTIONS
    storage_anchors_topic: str = topics.ANCHORS
    storage_snapshots_topic: str = topics.SNAPSHOTS
    storage_deadletter_topic: str = topics.DEADLETTER
    storage_group: str = "streamledger-storage"
    storage_batch_size: int = 5000
    """Most messages per batch, and so per bulk write (FerretDB spends about 10% less CPU per
    document in batches of 5,000 than of 2,000)."""
    storage_batch_max_bytes: int = 32 * 2**20
    """A batch stops filling once its messages hold this many bytes (snapshots and dead letters
    can be large): with the batch being written, the sink holds at most two such batches."""
    storage_batch_wait_seconds: float = 0.2
    """Longest wait for a batch to fill up, from its first message, while nothing is being written."""
    storage_retry_attempts: int = 200
    """Tries of a MongoDB write before the service gives up and stops (about 15 min at the 5 s cap)."""
    storage_backoff_initial_seconds: float = 0.2
    storage_backoff_max_seconds: float = 5.0
    """Cap on one wait between MongoDB retries."""
    storage_mongo_write_timeout_seconds: float = 30.0
    """A bulk write with no answer after this long is retried (as if MongoDB were down)."""
    storage_max_poll_interval_seconds: float = 600.0
    """How long the sink may stop polling (MongoDB down) before Kafka moves its partitions."""
