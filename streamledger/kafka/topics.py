"""The Kafka topics StreamLedger services talk through (see ARCHITECTURE.md)."""

RAW = "events.raw"
CLEAN = "events.clean"
DEADLETTER = "events.deadletter"
SNAPSHOTS = "models.snapshots"  # compacted
MODEL_METRICS = "models.metrics"
PREDICTIONS = "predictions"
USAGE = "usage"
ANCHORS = "ledger.anchors"
SCHEMAS = "_schemas"  # compacted: every writer schema, keyed by fingerprint

COMPACTED = frozenset({SNAPSHOTS, SCHEMAS})
