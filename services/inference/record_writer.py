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

The writer stops when the serving side closes the connection (or dies): it sends what it
holds, waits for every delivery, acknowledges it and exits. It is a child process of the
server (`streamledger.child`); its settings are its hello (`WriterHello`), frames and
acknowledgements the messages.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from services.inference.records import RECORDS, record_topics
from services.inference.settings import InferenceSettings
from streamledger import child, kafka
from streamledger.avro import AvroCodec, CodecError, SchemaRegistry
from streamledger.child import Hello, Parent
from streamledger.logging import get_logger

log = get_logger("inference")


class WriterHello(Hello):
    """The record writer's settings (its hello frame)."""

    bootstrap: str
    topics: dict[str, str]
    """Record kind -> its topic."""
    linger_seconds: float = 0.05

    @classmethod
    def of(cls, settings: InferenceSettings) -> WriterHello:
        return cls(bootstrap=settings.kafka_bootstrap, topics=record_topics(settings),
                   linger_seconds=settings.inference_records_linger_seconds, log_level=settings.log_level)


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
                 acks: Callable[[Any], None]) -> None:
        self.producer = producer
        self.codec = codec
        self.topics = topics
        self.acks = acks
        """Called with each acknowledgement (seqs, {topic: (sent, failed)})."""
        self._wave = _Wave()
        self._partitioner = DefaultPartitioner()
        self._deliveries: set[asyncio.Task] = set()

    async def run(self, frames: asyncio.Queue, linger: float) -> None:
        """Add each frame from `frames` (None ends), sending a wave `linger` after its first frame;
        then send the last wave and wait until every record is delivered and acknowledged."""
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
                continue
            key_bytes = key.encode()
            known = wave.partitions[topic]
            # The producer's own rule (murmur2 of the key), so a key lands where `send` would put it.
            partition = known[0] if len(known) == 1 else self._partitioner(key_bytes, known, known)
            wave.batches.setdefault((topic, partition), []).append((key_bytes, value))

    async def send(self) -> None:
        """Hand the current wave to the producer, one batch per partition; acknowledge it once delivered."""
        wave, self._wave = self._wave, _Wave()
        if not wave.seqs:
            return
        delivered: list[tuple[asyncio.Future, str, int]] = []
        for (topic, partition), records in wave.batches.items():
            await self._send_partition(wave, topic, partition, records, delivered)
        task = asyncio.create_task(self._acknowledge(wave, delivered))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _acknowledge(self, wave: _Wave, delivered: list[tuple[asyncio.Future, str, int]]) -> None:
        if delivered:
            await asyncio.wait([future for future, _, _ in delivered])
        sent: Counter[str] = Counter()
        for future, topic, count in delivered:
            if future.cancelled() or future.exception() is not None:
                wave.failed[topic] += count
                error = "cancelled" if future.cancelled() else repr(future.exception())
                log.error("records_not_sent", extra={"topic": topic, "records": count, "error": error})
            else:
                sent[topic] += count
        self.acks((wave.seqs, {topic: (sent[topic], wave.failed[topic]) for topic in sent | wave.failed}))

    async def _partitions_of(self, topic: str) -> list[int]:
        try:
            return sorted(await self.producer.partitions_for(topic))
        except KafkaError:
            return [0]  # metadata not known: send_batch below waits for it and reports the error

    async def _send_partition(self, wave: _Wave, topic: str, partition: int, records: list[tuple[bytes, bytes]],
                              delivered: list[tuple[asyncio.Future, str, int]]) -> None:
        builder, count = self.producer.create_batch(), 0
        for key, value in records:
            if builder.append(key=key, value=value, timestamp=None) is None:  # full (and now closed)
                if count:
                    await self._submit(wave, builder, topic, partition, count, delivered)
                builder, count = self.producer.create_batch(), 0
                if builder.append(key=key, value=value, timestamp=None) is None:  # alone larger than a batch
                    wave.failed[topic] += 1
                    log.error("record_not_sent", extra={"topic": topic, "key": key.decode(), "error": "record too large"})
                    builder = self.producer.create_batch()
                    continue
            count += 1
        if count:
            await self._submit(wave, builder, topic, partition, count, delivered)

    async def _submit(self, wave: _Wave, builder: Any, topic: str, partition: int, count: int,
                      delivered: list[tuple[asyncio.Future, str, int]]) -> None:
        builder.close()  # complete: the producer sends it as it is, without lingering again
        try:
            # Returns once the batch is queued, after the partition's previous batch left;
            # delivery (acks=all, idempotent retries) completes in the background.
            delivered.append((await self.producer.send_batch(builder, topic, partition=partition), topic, count))
        except KafkaError as exc:
            wave.failed[topic] += count
            log.error("records_not_sent", extra={"topic": topic, "records": count, "error": repr(exc)})


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
        await records.run(frames, hello.linger_seconds)
        await receiving
        await connected.flush()


if __name__ == "__main__":
    child.run(serve, WriterHello)
