"""Committing a loop's input offsets only past what the ledger (or a dead letter) holds.

    committer = OffsetCommitter(consumer, topic, producer)
    await committer.commit({partition: next_offset_safe_to_skip})
    committer.forget(partitions)          # revoked: their new owner commits them

Both loops compute which offsets are safe (`Anchorer.safe_offsets`, `UsageBook.commit_offsets`);
this commits the ones that moved, after flushing the producer so the dead letters sent so far
are durable before the records they stand for are passed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streamledger import kafka


class OffsetCommitter:
    def __init__(self, consumer: AIOKafkaConsumer, topic: str, producer: AIOKafkaProducer) -> None:
        self.consumer = consumer
        self.topic = topic
        self.producer = producer
        self.committed: dict[int, int] = {}

    async def commit(self, offsets: Mapping[int, int]) -> None:
        """Commit the offsets that moved; dead letters are made durable first."""
        moved = {TopicPartition(self.topic, p): o for p, o in offsets.items() if o > self.committed.get(p, -1)}
        if not moved:
            return
        await self.producer.flush()
        if await kafka.commit(self.consumer, moved):  # False: the partitions moved to another consumer
            self.committed.update({tp.partition: o for tp, o in moved.items()})

    def forget(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self.committed.pop(partition, None)
