"""Kafka for StreamLedger: one table of topics, producers and consumers with the project's
delivery guarantees, reading a compacted topic to its end, and committing offsets.

    from streamledger import kafka
    await kafka.provision(bootstrap, [kafka.spec(kafka.topics.CLEAN)])
    async with kafka.producer(bootstrap) as out: ...
"""

from streamledger.kafka import acls, topics
from streamledger.kafka.clients import (
           KafkaSecurity,
           admin,
           child_environment,
           commit,
           connection,
           consumer,
           partitions_of,
           producer,
           read_to_end,
)
from streamledger.kafka.topics import TopicSpec, provision, spec

__all__ = ["KafkaSecurity", "TopicSpec", "acls", "admin", "child_environment", "commit", "connection", "consumer",
           "partitions_of", "producer", "provision", "read_to_end", "spec", "topics"]
