"""Prediction and usage records to Kafka, off the request path.

A request only enqueues its record (`offer`); one task encodes and sends them through the
idempotent producer. A full queue is reported to the caller (`offer` returns False), so a
slow broker slows nothing but the records: the server drops sampled predictions (counted)
and refuses paid requests it could not meter.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from services.common import metrics
from services.common.avro import AvroCodec, CodecError
from services.common.logging import get_logger

log = get_logger("inference")
RECORDS = metrics.counter("inference", "records", "Records sent to Kafka", ("topic",))
RECORD_ERRORS = metrics.counter("inference", "record_errors", "Records that could not be sent", ("topic",))


class RecordSink:
    def __init__(self, producer: AIOKafkaProducer, codec: AvroCodec, queue_size: int = 10_000) -> None:
        self.producer = producer
        self.codec = codec
        self.queue: asyncio.Queue[tuple[str, str, str, dict[str, Any]]] = asyncio.Queue(queue_size)

    def offer(self, topic: str, record_name: str, key: str, record: dict[str, Any]) -> bool:
        """Queue a record for `topic`; False if the queue is full (nothing queued)."""
        try:
            self.queue.put_nowait((topic, record_name, key, record))
        except asyncio.QueueFull:
            return False
        return True

    async def run(self) -> None:
        """Send queued records until cancelled; call `drain` first to send what is queued."""
        while True:
            item = await self.queue.get()
            try:
                await self._send(*item)
            finally:
                self.queue.task_done()

    async def drain(self) -> None:
        await self.queue.join()
        await self.producer.flush()

    async def _send(self, topic: str, record_name: str, key: str, record: dict[str, Any]) -> None:
        try:
            # send() returns once the record is in the producer's batch; delivery (acks=all,
            # idempotent retries) completes in the background and is awaited by flush().
            await self.producer.send(topic, self.codec.encode(record_name, record), key=key.encode())
            RECORDS.labels(topic).inc()
        except (KafkaError, CodecError) as exc:
            RECORD_ERRORS.labels(topic).inc()
            log.error("record_not_sent", extra={"topic": topic, "key": key, "error": repr(exc)})
