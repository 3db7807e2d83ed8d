"""Online learning with River: events.clean -> prequential models -> snapshots and metrics.

Modules, from the pure core outwards:
    declarations.py   TOML model declarations -> River objects, through an allow-list
    prequential.py    OnlineModel: predict, update metrics, learn; label/feature checks; drift
    snapshots.py      seal/unseal model state with a SHA-256 checked before unpickling
    learners.py       LearnerSet: routes events to models, tracks offsets (ordering semantics)
    snapshot_topic.py reading the compacted snapshots topic back at start-up
    ledger_seam.py    the ModelRegistry interface the ledger will implement (not wired yet)
    app.py            the service: Kafka consumer and producer around LearnerSet
"""
