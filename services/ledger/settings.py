"""`streamledger serve ledger`: anchoring of events.clean and settlement of usage.

Every setting of this service is `STREAMLEDGER_LEDGER_*` (the `ledger_` prefix); the
shared ones (Kafka, MongoDB, `FABRIC_*`, log level, metrics port) come from `LedgerSettings`.

Identities: on the local network the anchoring loop acts as the local identity `anchoring`
(operator) and the settlement loop as `settlement` (provider), two ledger clients in one
process. `STREAMLEDGER_FABRIC_USER` / `STREAMLEDGER_FABRIC_MSP_DIR` name one identity for the
whole process, so a real deployment runs the loops as two processes, each with its own
certificate: `STREAMLEDGER_LEDGER_SETTLEMENT=false` and the operator's MSP folder for anchoring,
`STREAMLEDGER_LEDGER_ANCHORING=false` and the provider's MSP folder for settlement.
"""

from __future__ import annotations

from streamledger.kafka import topics
from streamledger.settings import LedgerSettings


class LedgerServiceSettings(LedgerSettings):
    """Anchoring (events.clean -> Merkle batches) and settlement (usage -> Settle) settings."""

    ledger_clean_topic: str = topics.CLEAN
    """Clean events to anchor."""
    ledger_anchors_topic: str = topics.ANCHORS
    """Where each anchored batch is published (root, offsets, tx id, block)."""
    ledger_usage_topic: str = topics.USAGE
    """Metered usage to settle."""
    ledger_deadletter_topic: str = topics.DEADLETTER
    ledger_anchoring: bool = True
    """Anchor events.clean (off: this process only settles). Needs an identity granted the
    operator role: by default the local `anchoring`; in a real deployment run anchoring as its
    own process (`STREAMLEDGER_LEDGER_SETTLEMENT=false`) with that identity's
    `STREAMLEDGER_FABRIC_MSP_DIR`."""
    ledger_settlement: bool = True
    """Settle usage (off: this process only anchors). Needs an identity granted the provider
    role, acting for the account the holds pay: by default the local `settlement`; in a real
    deployment run settlement as its own process (`STREAMLEDGER_LEDGER_ANCHORING=false`) with
    that identity's `STREAMLEDGER_FABRIC_MSP_DIR`."""
    ledger_anchor_group: str = "streamledger-ledger-anchoring"
    ledger_settlement_group: str = "streamledger-ledger-settlement"
    ledger_batch_records: int = 1000
    """A batch closes at this many records..."""
    ledger_batch_seconds: float = 1.0
    """...or when its oldest record has waited this long."""
    ledger_batches_in_flight: int = 8
    """Batches being anchored at once (each one Fabric transaction); more stops reading input."""
    ledger_settle_grace_seconds: float = 5.0
    """A hold settles this long after it expires, so usage (and receipts) still on their way
    are counted, unless its deadline comes first (below)."""
    ledger_settle_margin_seconds: float = 900.0
    """The peers' timewindow T (`peer.authentication.timewindow`, 15 min by default): a client
    may stamp its Release up to T early, so a hold is settled before `settle_by - T`, its
    deadline. The local stack's peers use 15 s (`StackSettings.fabric_timewindow_seconds`).
    When it is not shorter than a hold's settlement window, the hold settles at expiry."""
    ledger_settle_lead_seconds: float = 5.0
    """Settle at least this long before the deadline: time for the Settle's retries and commit."""
    ledger_record_receipt_every_seconds: float = 300.0
    """Record a hold's latest receipt on the ledger (`RecordReceipt`) when it has not been for
    this long, so that a client's Release pays for it even if settlement is down at the end
    (0: off)."""
    ledger_settle_tick_seconds: float = 1.0
    """How often holds are checked for settlement."""
    ledger_retry_attempts: int = 200
    """Tries of a ledger, MongoDB or Kafka call before the service gives up and stops (exit 1)."""
    ledger_backoff_initial_seconds: float = 0.2
    """Wait after a call's first transient failure; it doubles after each next one..."""
    ledger_backoff_max_seconds: float = 5.0
    """...up to this."""
