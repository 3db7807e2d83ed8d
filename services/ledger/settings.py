"""`streamledger serve ledger`: anchoring of events.clean and settlement of usage."""

from __future__ import annotations

from streamledger.kafka import topics
from streamledger.settings import LedgerSettings


class LedgerServiceSettings(LedgerSettings):
    """Anchoring (events.clean -> Merkle batches) and settlement (usage -> Settle) settings."""

    clean_topic: str = topics.CLEAN
    anchors_topic: str = topics.ANCHORS
    usage_topic: str = topics.USAGE
    deadletter_topic: str = topics.DEADLETTER
    ledger_anchoring: bool = True
    """Anchor events.clean (off: this process only settles)."""
    ledger_settlement: bool = True
    """Settle usage (off: this process only anchors)."""
    ledger_anchor_group: str = "streamledger-ledger-anchoring"
    ledger_settlement_group: str = "streamledger-ledger-settlement"
    ledger_batch_records: int = 1000
    """A batch closes at this many records..."""
    ledger_batch_seconds: float = 1.0
    """...or when its oldest record has waited this long."""
    ledger_batches_in_flight: int = 8
    """Batches being anchored at once (each one Fabric transaction); more stops reading input."""
    ledger_settle_grace_seconds: float = 5.0
    """A hold settles this long after it expires, so usage still on its way is counted."""
    ledger_settle_every_seconds: float = 0.0
    """Settle a hold once it has been open this long, even before it expires (0: off)."""
    ledger_settle_tick_seconds: float = 1.0
    """How often holds are checked for settlement."""
    retry_attempts: int = 200
    """Tries of a ledger, MongoDB or Kafka call before the service gives up and stops."""
    backoff_initial_seconds: float = 0.2
    backoff_max_seconds: float = 5.0
