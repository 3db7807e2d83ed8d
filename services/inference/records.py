"""Prediction and usage records to Kafka, off the request path.

A request only appends its record to a buffer (`offer`, a list append). One task wakes
when the buffer stops being empty and, every few milliseconds while records flow, builds
and Avro-encodes what has arrived (half a millisecond of work at a time between turns of the event loop, so a
request never waits behind many). Encoded records gather for `linger` seconds and then
go to the idempotent producer as whole batches, one per topic partition (`send_batch`):
a record costs an encode and a batch append rather than a `send()` of its own, and the
broker sees one produce request per linger, not one per few requests. While the previous
batch of a partition is still on its way, records pile up and leave in the next, larger
batch: the busier the server, the cheaper a record.

A full buffer is reported to the caller (`offer` returns False), so a slow broker slows
nothing but the records: the server drops sampled predictions (counted) and refuses paid
requests it could not meter.

A record is a dict, or a zero-argument callable returning one: the servicer passes the
latter for predictions, so their JSON is written by the sending task, after the response.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from services.common import metrics
from services.common.avro import AvroCodec, CodecError
from services.common.logging import get_logger

log = get_logger("inference")
RECORDS = metrics.counter("inference", "records", "Records sent to Kafka", ("topic",))
RECORD_ERRORS = metrics.counter("inference", "record_errors", "Records that could not be sent", ("topic",))

Record = Mapping[str, Any] | Callable[[], Mapping[str, Any]]
_TURN = 0.0005
"""Seconds of record building between two turns of the event loop: a request that arrives
meanwhile waits at most about this long (a 64-row record alone takes a few hundred µs)."""
_TICK = 0.005
"""While records flow, how often the task encodes what has arrived: a record is bytes a few
milliseconds after its response, so the objects it held die young (cheap for the GC)."""


class RecordSink:
    def __init__(self, producer: AIOKafkaProducer, codec: AvroCodec, queue_size: int = 10_000,
                 linger: float = 0.05) -> None:
        self.producer = producer
        self.codec = codec
        self.queue_size = queue_size
        self.linger = linger
        self._buffer: list[tuple[str, str, str, Record]] = []
        self._encoded: dict[tuple[str, int], list[tuple[bytes, bytes]]] = {}
        """(topic, partition) -> encoded (key, value) records waiting for the linger to end."""
        self._encoded_count = 0
        self._partitions: dict[str, list[int]] = {}
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._partitioner = DefaultPartitioner()

    def offer(self, topic: str, record_name: str, key: str, record: Record) -> bool:
        """Buffer a record for `topic`; False if the buffer is full (nothing buffered)."""
        buffer = self._buffer
        if len(buffer) + self._encoded_count >= self.queue_size:
            return False
        if not buffer:
            self._idle.clear()
            self._wakeup.set()
        buffer.append((topic, record_name, key, record))
        return True

    def pending(self) -> int:
        """Records offered and not yet handed to the producer."""
        return len(self._buffer) + self._encoded_count

    async def run(self) -> None:
        """Send buffered records until cancelled; call `drain` first to send what is buffered."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            started = loop.time()
            while self._buffer or self._encoded:
                taken, self._buffer = self._buffer, []
                self._wakeup.clear()
                await self._encode(taken)
                if loop.time() - started >= self.linger:
                    await self._send_encoded()
                    started = loop.time()
                elif not self._buffer:
                    await asyncio.sleep(min(_TICK, self.linger))  # requests never wait for this
            self._idle.set()

    async def drain(self) -> None:
        """Wait until every buffered record is handed to the producer and delivered."""
        await self._idle.wait()
        await self.producer.flush()

    async def _encode(self, items: list[tuple[str, str, str, Record]]) -> None:
        turned = time.perf_counter()
        for topic, record_name, key, record in items:
            if time.perf_counter() - turned >= _TURN:
                await asyncio.sleep(0)  # let requests that arrived meanwhile run
                turned = time.perf_counter()
            try:
                value = self.codec.encode(record_name, record() if callable(record) else record)
            except CodecError as exc:
                RECORD_ERRORS.labels(topic).inc()
                log.error("record_not_sent", extra={"topic": topic, "key": key, "error": repr(exc)})
                continue
            key_bytes = key.encode()
            known = self._partitions.get(topic)
            if known is None:
                known = self._partitions[topic] = await self._partitions_of(topic)
            # The producer's own rule (murmur2 of the key), so a key lands where `send` would put it.
            partition = known[0] if len(known) == 1 else self._partitioner(key_bytes, known, known)
            self._encoded.setdefault((topic, partition), []).append((key_bytes, value))
            self._encoded_count += 1

    async def _send_encoded(self) -> None:
        encoded, self._encoded = self._encoded, {}
        self._partitions.clear()  # read again for the next batches: a topic may have grown
        for (topic, partition), records in encoded.items():
            await self._send_partition(topic, partition, records)
            self._encoded_count -= len(records)

    async def _partitions_of(self, topic: str) -> list[int]:
        try:
            return sorted(await self.producer.partitions_for(topic))
        except KafkaError:
            return [0]  # metadata not known: send_batch below waits for it and reports the error

    async def _send_partition(self, topic: str, partition: int, records: list[tuple[bytes, bytes]]) -> None:
        builder, count = self.producer.create_batch(), 0
        for key, value in records:
            if builder.append(key=key, value=value, timestamp=None) is None:  # full (and now closed)
                if count:
                    await self._submit(builder, topic, partition, count)
                builder, count = self.producer.create_batch(), 0
                if builder.append(key=key, value=value, timestamp=None) is None:  # alone larger than a batch
                    RECORD_ERRORS.labels(topic).inc()
                    log.error("record_not_sent", extra={"topic": topic, "key": key.decode(), "error": "record too large"})
                    builder = self.producer.create_batch()
                    continue
            count += 1
        if count:
            await self._submit(builder, topic, partition, count)

    async def _submit(self, builder: Any, topic: str, partition: int, count: int) -> None:
        builder.close()  # complete: the producer sends it as it is, without lingering again
        try:
            # Returns once the batch is queued, after the partition's previous batch left;
            # delivery (acks=all, idempotent retries) completes in the background.
            delivered = await self.producer.send_batch(builder, topic, partition=partition)
        except KafkaError as exc:
            RECORD_ERRORS.labels(topic).inc(count)
            log.error("records_not_sent", extra={"topic": topic, "records": count, "error": repr(exc)})
            return
        delivered.add_done_callback(lambda future: _count_delivery(future, topic, count))


def _count_delivery(future: asyncio.Future, topic: str, count: int) -> None:
    if future.cancelled() or future.exception() is not None:
        RECORD_ERRORS.labels(topic).inc(count)
        error = "cancelled" if future.cancelled() else repr(future.exception())
        log.error("records_not_sent", extra={"topic": topic, "records": count, "error": error})
    else:
        RECORDS.labels(topic).inc(count)
