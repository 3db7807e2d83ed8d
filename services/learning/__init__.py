"""Online learning with River: events.clean -> prequential models -> snapshots and metrics.

Modules, from the pure core outwards (model declarations and the snapshot format are in
`streamledger.core`, shared with inference):
    prequential.py    OnlineModel: predict, update metrics, learn; feature checks; drift responses
    learners.py       LearnerSet: routes events to models, tracks offsets (ordering semantics)
    fetched.py        Fetched: a run of records of one partition, as the reader hands it over
    reader.py         EventReader: the child process that fetches and decodes the input
    snapshot_topic.py resuming each model from the compacted snapshots topic at start-up
    publisher.py      dead letters, metrics and snapshots out to Kafka (and the ledger), commits
    shards.py         ShardMap, ShardHolder: the models sharded over replicas, handed over on rebalance
    shard_group.py    ShardGroup: the replicas' consumer group (membership, fence, positions, lag)
    ledger_seam.py    the ModelRegistry the learner registers snapshots with (the ledger's)
    settings.py       STREAMLEDGER_LEARNING_*
    app.py            the service: wiring, and the learning loop
"""
