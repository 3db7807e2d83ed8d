"""Dead letters of the ledger service: records it cannot anchor or charge, with the reason.

    letters = DeadLetters(producer, codec, settings.ledger_deadletter_topic)
    await letters.send(consumed, "unknown_hold", "no hold 'h-1' on the ledger")

A letter is sent, not awaited: the loops flush the producer before they commit offsets past
its source (`OffsetCommitter`), so a letter is durable before its source is passed.
"""

from __future__ import annotations

import time

from aiokafka import AIOKafkaProducer

from streamledger import metrics
from streamledger.avro import AvroCodec
from streamledger.core.records import Consumed, dead_letter
from streamledger.logging import get_logger

log = get_logger("ledger")

DEAD_LETTERS = metrics.counter("ledger", "deadletters", "Messages dead-lettered, by reason", ("reason",))

EMPTY_MESSAGE = "empty_message"
"""The reason for a record with no value (a tombstone), as the cleaning service names it."""


class DeadLetters:
    def __init__(self, producer: AIOKafkaProducer, codec: AvroCodec, topic: str) -> None:
        self.producer = producer
        self.codec = codec
        self.topic = topic

    async def send(self, message: Consumed, reason: str, error: str) -> None:
        DEAD_LETTERS.labels(reason).inc()
        log.warning("dead_letter", extra={"reason": reason, "error": error, "source_topic": message.topic,
                                          "source_offset": message.offset})
        letter = dead_letter(message, reason, error, time.time_ns() // 1_000_000, service="ledger")
        await self.producer.send(self.topic, key=(letter["key"] or "").encode(),
                                 value=self.codec.encode("DeadLetter", letter))
