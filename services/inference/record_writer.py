"""The record writer: a child process that builds, Avro-encodes and produces the inference records.

    serving process (RecordSink)                      record writer (this module, a child process)
      offer(kind, pieces) -> list append
      every tick: frame (seq, [(kind, pieces), ...]) --> build the record (records.py), encode it,
                                                         partition its key (murmur2, as `send` would);
                                                         `linger` after a wave's first frame: one batch
                                                         per partition to the idempotent producer
      ack (seqs, {topic: (sent, failed)}) <------------ once every batch of that wave is delivered (acks=all)

Building JSON and Avro for every record costs more CPU than the servicer's own work for the
request; here it runs under its own GIL and at idle scheduling priority, so requests never
wait behind it.
A record costs an encode and a batch append rather than a `send()` of its own, and the broker
sees one produce request per partition and linger. While the previous batch of a partition
is still on its way, the next wave waits for it and leaves larger: the busier, the cheaper.

A usage record is billing data: a batch of them that Kafka did not take (a send or a delivery
failed) is sent again, with backoff (`USAGE_REDELIVERY`), until it is delivered, and its frame is
acknowledged only then (meanwhile it counts against the server's queue). Only at shutdown does
the writer give up, `stop_seconds` after being asked to stop: it logs every usage record still
undelivered in full (`usage_not_recorded`, for an operator to replay) and counts it failed.
Predictions are sent once.

The writer stops when the serving side closes the connection (or dies): it sends what it
holds, waits for every delivery (usage retried as above), acknowledges it and exits. It is a child process of the
server (`streamledger.child`); its settings are its hello (`WriterHello`), frames and
acknowledgements the messages.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner, murmur2

from services.inference.records import RECORDS, USAGE, record_topics
from services.inference.settings import InferenceSettings
from streamledger import child, kafka
from streamledger.avro import AvroCodec, CodecError, SchemaRegistry
from streamledger.child import Hello, Parent
from streamledger.logging import get_logger
from streamledger.retry import RetryPolicy, retry

log = get_logger("inference")
USAGE_REDELIVERY = RetryPolicy(attempts=2**31, initial_seconds=0.2, max_seconds=5.0, jitter=0.5)
"""Usage batches are sent again until delivered (only a shutdown ends the retries)."""


class WriterHello(Hello):
    """The record writer's settings (its hello frame)."""

    bootstrap: str
    topics: dict[str, str]
    """Record kind -> its topic."""
    linger_seconds: float = 0.05
    stop_seconds: float = 10.0
    """After the server asks it to stop, how long undelivered usage is still retried."""

    @classmethod
    def of(cls, settings: InferenceSettings) -> WriterHello:
        return cls(bootstrap=settings.kafka_bootstrap, topics=record_topics(settings),
                   linger_seconds=settings.inference_records_linger_seconds,
                   stop_seconds=settings.inference_records_stop_seconds, log_level=settings.log_level)


@dataclass
class _Delivery:
    """One batch handed to the producer: its records, and the future of its delivery (None: the
    producer refused it at once, `error` says why)."""

    topic: str
    partition: int
    records: list[tuple[bytes, bytes]]
    future: asyncio.Future | None
    error: str = ""


@dataclass
class _Wave:
    """Records encoded since the last send, and the frames (seqs) they came in."""

    seqs: list[int] = field(default_factory=list)
    batches: dict[tuple[str, int], list[tuple[bytes, bytes]]] = field(default_factory=dict)
    """(topic, partition) -> encoded (key, value) records."""
    failed: Counter[str] = field(default_factory=Counter)
    partitions: dict[str, list[int]] = field(default_factory=dict)
    """Topic -> its partitions, read once per wave (a topic may grow)."""


class RecordWriter:
    """Frames in, batches out to `producer`, acknowledgements back through `acks`."""

    def __init__(self, producer: AIOKafkaProducer, codec: AvroCodec, topics: dict[str, str],
                 acks: Callable[[Any], None], redelivery: RetryPolicy = USAGE_REDELIVERY) -> None:
        self.producer = producer
        self.codec = codec
        self.topics = topics
        self.acks = acks
        """Called with each acknowledgement (seqs, {topic: (sent, failed)})."""
        self.redelivery = redelivery
        self._usage_topic = topics.get(USAGE)
        self._wave = _Wave()
        self._partitioner = DefaultPartitioner()
        self._deliveries: set[asyncio.Task] = set()
        self._redeliveries: set[asyncio.Task] = set()
        self._giving_up = False
        """Set `stop_seconds` after the end: usage not delivered by then is logged and counted failed,
        including a batch whose first attempt fails only later (it is not sent again)."""

    async def run(self, frames: asyncio.Queue, linger: float, stop_seconds: float = 10.0) -> None:
        """Add each frame from `frames` (None ends), sending a wave `linger` after its first frame;
        then send the last wave and wait until every record is delivered and acknowledged (usage
        still undelivered `stop_seconds` after the end: logged and counted failed)."""
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    frame = await frames.get()
            except TimeoutError:
                frame = ()  # the wave's linger is over
            if frame is None:
                break
            if frame:
                await self.add(*frame)
                if deadline is None:
                    deadline = loop.time() + linger
            if deadline is not None and loop.time() >= deadline:
                await self.send()
                deadline = None
        await self.send()
        if self._deliveries:
            await asyncio.wait(set(self._deliveries), timeout=stop_seconds)
        self._giving_up = True
        for redelivery in list(self._redeliveries):
            redelivery.cancel()  # shutting down: its usage is logged and counted failed
        await asyncio.gather(*self._deliveries)

    async def add(self, seq: int, items: list[tuple[str, Any]]) -> None:
        """Build, encode and partition the records of one frame (all of them into the current wave)."""
        wave = self._wave
        for kind in {kind for kind, _ in items}:
            topic = self.topics[kind]
            if topic not in wave.partitions:
                wave.partitions[topic] = await self._partitions_of(topic)
        assert wave is self._wave, "a frame is added whole to one wave"
        wave.seqs.append(seq)
        for kind, pieces in items:
            topic = self.topics[kind]
            try:
                key, record = RECORDS[kind](pieces)
                value = self.codec.encode(kind, record)
            except (CodecError, TypeError, ValueError) as exc:
                wave.failed[topic] += 1
                log.error("record_not_sent", extra={"topic": topic, "error": repr(exc)})
                if kind == USAGE:
                    log.error("usage_not_recorded", extra={"usage": _usage_fields(pieces)})
                continue
            key_bytes = key.encode()
            known = wave.partitions[topic]
            # The producer's own rule (murmur2 of the key), so a key lands where `send` would put it;
            # a usage record's key is its hold, the same for many records: its hash is remembered.
            if len(known) == 1:
                partition = known[0]
            elif kind == USAGE:
                partition = known[_key_hash(key_bytes) % len(known)]
            else:
                partition = self._partitioner(key_bytes, known, known)
            wave.batches.setdefault((topic, partition), []).append((key_bytes, value))

    async def send(self) -> None:
        """Hand the current wave to the producer, one batch per partition; acknowledge it once delivered."""
        wave, self._wave = self._wave, _Wave()
        if not wave.seqs:
            return
        delivered: list[_Delivery] = []
        for (topic, partition), records in wave.batches.items():
            await self._send_partition(wave, topic, partition, records, delivered)
        task = asyncio.create_task(self._acknowledge(wave, delivered))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _acknowledge(self, wave: _Wave, delivered: list[_Delivery]) -> None:
        pending = [d.future for d in delivered if d.future is not None]
        if pending:
            await asyncio.wait(pending)
        sent: Counter[str] = Counter()
        redeliveries: list[tuple[_Delivery, asyncio.Task]] = []
        for delivery in delivered:
            future, topic, count = delivery.future, delivery.topic, len(delivery.records)
            if future is not None and not future.cancelled() and future.exception() is None:
                sent[topic] += count
                continue
            error = delivery.error or ("cancelled" if future.cancelled() else repr(future.exception()))
            if topic == self._usage_topic and not self._giving_up:
                log.warning("usage_not_delivered_yet", extra={"topic": topic, "records": count, "error": error})
                task = asyncio.create_task(self._redeliver(delivery))
                self._redeliveries.add(task)
                task.add_done_callback(self._redeliveries.discard)
                redeliveries.append((delivery, task))
                continue
            wave.failed[topic] += count
            log.error("records_not_sent", extra={"topic": topic, "records": count, "error": error})
            if topic == self._usage_topic:  # shutting down: not sent again
                for _, value in delivery.records:
                    log.error("usage_not_recorded", extra={"usage": self._decoded(value)})
        if redeliveries:
            await asyncio.wait([task for _, task in redeliveries])
        for delivery, task in redeliveries:
            if not task.cancelled() and task.exception() is None:
                sent[delivery.topic] += len(delivery.records)
                continue
            wave.failed[delivery.topic] += len(delivery.records)
            error = "shutting down" if task.cancelled() else repr(task.exception())
            log.error("records_not_sent", extra={"topic": delivery.topic, "records": len(delivery.records),
                                                 "error": error})
            for _, value in delivery.records:
                log.error("usage_not_recorded", extra={"usage": self._decoded(value)})
        self.acks((wave.seqs, {topic: (sent[topic], wave.failed[topic]) for topic in sent | wave.failed}))

    async def _redeliver(self, delivery: _Delivery) -> None:
        """Send a usage batch again until Kafka has it (cancelled at shutdown)."""
        async def send_again() -> None:
            builder = self.producer.create_batch()
            for key, value in delivery.records:
                builder.append(key=key, value=value, timestamp=None)  # they fitted one batch before
            builder.close()
            await (await self.producer.send_batch(builder, delivery.topic, partition=delivery.partition))

        def retrying(attempt: int, exc: BaseException, delay: float) -> None:
            log.warning("usage_redelivery_failed", extra={"topic": delivery.topic, "records": len(delivery.records),
                                                          "attempt": attempt + 1, "retry_in_s": round(delay, 2),
                                                          "error": repr(exc)})
        await asyncio.sleep(self.redelivery.delay(0))
        await retry(send_again, self.redelivery, is_transient=lambda exc: isinstance(exc, KafkaError),
                    on_retry=retrying)
        log.info("usage_redelivered", extra={"topic": delivery.topic, "records": len(delivery.records)})

    def _decoded(self, value: bytes) -> Any:
        try:
            return self.codec.decode(value, reader=USAGE)
        except CodecError:
            return value.hex()

    async def _partitions_of(self, topic: str) -> list[int]:
        try:
            return sorted(await self.producer.partitions_for(topic))
        except KafkaError:
            return [0]  # metadata not known: send_batch below waits for it and reports the error

    async def _send_partition(self, wave: _Wave, topic: str, partition: int, records: list[tuple[bytes, bytes]],
                              delivered: list[_Delivery]) -> None:
        builder, batch = self.producer.create_batch(), []
        for key, value in records:
            if builder.append(key=key, value=value, timestamp=None) is None:  # full (and now closed)
                if batch:
                    delivered.append(await self._submit(builder, topic, partition, batch))
                builder, batch = self.producer.create_batch(), []
                if builder.append(key=key, value=value, timestamp=None) is None:  # alone larger than a batch
                    wave.failed[topic] += 1
                    log.error("record_not_sent", extra={"topic": topic, "key": key.decode(), "error": "record too large"})
                    if topic == self._usage_topic:
                        log.error("usage_not_recorded", extra={"usage": self._decoded(value)})
                    builder = self.producer.create_batch()
                    continue
            batch.append((key, value))
        if batch:
            delivered.append(await self._submit(builder, topic, partition, batch))

    async def _submit(self, builder: Any, topic: str, partition: int, records: list[tuple[bytes, bytes]]) -> _Delivery:
        builder.close()  # complete: the producer sends it as it is, without lingering again
        try:
            # Returns once the batch is queued, after the partition's previous batch left;
            # delivery (acks=all, idempotent retries) completes in the background.
            return _Delivery(topic, partition, records, await self.producer.send_batch(builder, topic,
                                                                                       partition=partition))
        except KafkaError as exc:
            return _Delivery(topic, partition, records, None, repr(exc))


@functools.lru_cache(maxsize=4096)
def _key_hash(key: bytes) -> int:
    """`DefaultPartitioner`'s hash of a key (murmur2 in pure Python, ~10 us), as it takes it."""
    return murmur2(key) & 0x7FFFFFFF


def _usage_fields(pieces: Any) -> Any:
    try:
        return RECORDS[USAGE](pieces)[1]
    except (TypeError, ValueError, IndexError):
        return repr(pieces)


def _lower_priority() -> None:
    # Records are not urgent, requests are: the kernel runs this process only on CPU time nothing
    # else wants (a waking server preempts it at once). A machine too busy to spare any shows as a
    # full buffer in the server: predictions dropped and counted, paid requests refused (retry).
    if hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    else:
        os.nice(19)


async def serve(hello: WriterHello, parent: Parent, producer: AIOKafkaProducer | None = None) -> None:
    """The record writer process: frames from `parent` to `producer` (by default an idempotent one on
    `hello.bootstrap`) until the server closes the connection; then deliver the rest and return."""
    _lower_priority()
    frames: asyncio.Queue = asyncio.Queue()

    async def receive() -> None:
        while (frame := await parent.receive()) is not None:
            frames.put_nowait(frame)
        frames.put_nowait(None)

    async with producer or kafka.producer(hello.bootstrap) as connected:
        records = RecordWriter(connected, AvroCodec(SchemaRegistry.from_dir()), hello.topics, parent.send)
        parent.ready()
        receiving = asyncio.create_task(receive())
        await records.run(frames, hello.linger_seconds, hello.stop_seconds)
        await receiving
        await connected.flush()


if __name__ == "__main__":
    child.run(serve, WriterHello)
