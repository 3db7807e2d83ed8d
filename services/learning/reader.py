"""The learning service's input, fetched from Kafka and decoded in a process of its own.

Fetching and decoding a CleanEvent costs a good part of what River spends learning from it
(fastavro alone ~11 µs each here; `SlimReader`, clean_event.py, reads what models use in a
third of that), so a single process doing both learns well below River's own speed. Here a
child process (`streamledger.child`: `python -m services.learning.reader`) fetches the input
partitions from the offsets the models need and decodes every record; the learner receives
ready-made batches and spends its time on the models, while the reader decodes the next batch
on the other core.

What crosses the connection is kept to what the learner uses: per fetched partition batch the
offsets, keys and raw values (the originals of dead letters), and per record either the
event's fields the models read (event_id, tenant, source, features, label; tenant, source
and feature names interned, so the pickle carries each name once) or the reason it did
not decode. Each message is one tuple:

    (topic, partition, offsets, keys, values, events, failures)

where `events` may cover only the first part of `values`: the learner decodes the rest.
The reader's settings travel as its hello (`ReaderHello`); it says ready once positioned.

The two processes balance themselves (`Balance`). The learner counts, in a word of
shared memory, each time it found no batch and had to wait for one more than 2 ms (a batch
a moment late, as when the reader was descheduled for another process, does not count: it
says nothing about which process is slower, and counting it left a slow model decoding part
of its input). When the count moved since
the reader's previous batch, the reader is the slower one and leaves a larger share of
each batch undecoded, for the learner to decode itself (the same `SlimReader`, so the same
events);
when the reader's last send blocked on a full connection, the learner is the slower one and
the share shrinks. Fast models (mini-batch ones) thus get both cores' decoding, slow ones
a core to themselves.

The reader uses no consumer group (the learner commits); it exits when the learner
closes the connection or is gone, so no orphan outlives a killed service. If it fails, the
learner's next `next()` raises `ChildDied`, and the service stops.
"""

from __future__ import annotations

import asyncio
import gc
import mmap
import os
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager

from aiokafka import TopicPartition

from services.learning.clean_event import SlimReader
from services.learning.fetched import Fetched
from streamledger import child, kafka
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.child import Child, Hello, Parent

Partition = tuple[str, int]
_BUFFER_BYTES = 512 * 1024
"""The connection's kernel buffer (doubled by Linux: 1 MiB, what the reader's pipe held before):
a batch or two ahead. Much more and the reader's sends would not block for a long while after
the learner fell behind, so the balance would leave the learner decoding long after it should."""
_BLOCKED = 0.002
"""A send that took longer than this (seconds) waited for the learner to read; a learner that
waited longer than this for a batch waited for the reader."""
_WAITS = struct.Struct("q")
"""Shared by both processes: how many times the learner waited for a batch."""


class ReaderHello(Hello):
    """The reader's settings (its hello frame)."""

    bootstrap: str
    start: list[tuple[str, int, int | None]]
    """(topic, partition, next offset to read); None: from the beginning."""
    max_records: int
    waits_fd: int
    """The shared-memory word of the learner's waits (a descriptor passed to the child)."""


class Undecodable(ValueError):
    """A record the reader could not decode; `reason` is the codec's dead-letter reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class EventReader:
    """The reader process, seen from the learner.

        async with EventReader(bootstrap, {("events.clean", 0): 1200}, 2000, codec) as reader:
            batch = await reader.next(timeout=0.2)   # a Fetched run of one partition, None if none came
    """

    def __init__(self, bootstrap: str, start: dict[Partition, int | None], max_records: int, codec: AvroCodec,
                 log_level: str = "INFO") -> None:
        self._start = start
        self._hello = dict(bootstrap=bootstrap, start=[(t, p, o) for (t, p), o in start.items()],
                           max_records=max_records, log_level=log_level)
        self._slim = SlimReader(codec)
        """Decodes the share of each batch the reader leaves to the learner."""
        self._child: Child | None = None
        self._waits: mmap.mmap | None = None

    async def __aenter__(self) -> EventReader:
        waits_fd = os.memfd_create("learning-reader-waits")
        try:
            os.ftruncate(waits_fd, _WAITS.size)
            self._waits = mmap.mmap(waits_fd, _WAITS.size)
            topics = sorted({t for t, _ in self._start})
            # The label names the topics in `ps`, so an operator (or a test) can find the reader.
            self._child = await Child.start(__name__, ReaderHello(**self._hello, waits_fd=waits_fd),
                                            name="learning reader", label=tuple(topics), pass_fds=(waits_fd,),
                                            buffer_bytes=_BUFFER_BYTES)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        finally:
            os.close(waits_fd)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._child is not None:
            await self._child.close(timeout=5.0)  # the reader's next send fails and it exits
            self._child = None
        if self._waits is not None:
            self._waits.close()
            self._waits = None

    async def next(self, timeout: float) -> Fetched | None:
        """The next fetched partition batch in offset order (undecodable records as `Undecodable`),
        or None if none arrived within `timeout`.

        Raises `ChildDied` if the reader process ended.
        """
        assert self._child is not None and self._waits is not None, "next() outside `async with`"
        started = None if self._child.poll() else time.perf_counter()
        try:
            topic, partition, offsets, keys, values, events, failures = await self._child.receive(timeout)
        except TimeoutError:
            self._waited()
            return None
        if started is not None and time.perf_counter() - started > _BLOCKED:
            self._waited()  # a batch a moment late (the reader was descheduled) does not count
        if len(events) < len(values):  # the reader left the rest of the batch to decode here
            done = len(events)
            rest, rest_failures = self._slim.read(values[done:])
            events.extend(rest)
            failures.update({done + index: failure for index, failure in rest_failures.items()})
        for index, (reason, error) in failures.items():
            events[index] = Undecodable(reason, error)
        return Fetched(topic, partition, offsets, keys, values, events)

    def _waited(self) -> None:
        """Tell the reader the learner waited for a batch (it then leaves more of each to decode here)."""
        _WAITS.pack_into(self._waits, 0, _WAITS.unpack_from(self._waits)[0] + 1)


# -- the child process ---------------------------------------------------------------------


@contextmanager
def relaxed_gc(young: int = 200_000) -> Iterator[None]:
    """Collect cycles rarely while inside: a batch holds thousands of fresh acyclic dicts,
    which refcounting frees, and the default threshold (700) scans them many times per
    batch. Everything alive on entry is frozen out of the scans. Restored on exit."""
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(young, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


async def serve(hello: ReaderHello, parent: Parent) -> None:
    """The reader process: fetch, decode and send batches until the learner closes the connection."""
    slim = SlimReader(AvroCodec(SchemaRegistry.from_dir()))
    waits = mmap.mmap(hello.waits_fd, _WAITS.size)
    async with kafka.consumer(hello.bootstrap) as consumer:
        consumer.assign([TopicPartition(topic, partition) for topic, partition, _ in hello.start])
        for topic, partition, offset in hello.start:
            if offset is None:
                await consumer.seek_to_beginning(TopicPartition(topic, partition))
            else:
                consumer.seek(TopicPartition(topic, partition), offset)
        parent.ready()
        closed = asyncio.create_task(parent.receive())  # the learner sends nothing: this ends when it closes
        balance, seen, blocked = Balance(), 0, 0.0
        while not closed.done():
            fetched = await consumer.getmany(timeout_ms=200, max_records=hello.max_records)
            for tp, messages in fetched.items():
                values = [m.value for m in messages]
                head = (tp.topic, tp.partition, [m.offset for m in messages], [m.key for m in messages], values)
                count = _WAITS.unpack_from(waits)[0]
                waited, seen = count != seen, count
                share = balance.update(learner_waited=waited, reader_waited=blocked > _BLOCKED)
                parent.send((*head, *slim.read(values[:len(values) - round(len(values) * share)])))
                sent = time.perf_counter()
                await parent.drain()  # waits while the connection is full: the learner is behind
                blocked = time.perf_counter() - sent


class Balance:
    """The share of each batch the learner decodes: it grows while the learner waits for
    batches and shrinks while the reader waits for the learner (its send blocked on a full
    connection); the reader always decodes some."""

    STEP = 0.05
    MOST = 0.8

    def __init__(self) -> None:
        self.share = 0.0

    def update(self, learner_waited: bool, reader_waited: bool) -> float:
        if learner_waited:
            self.share = min(self.MOST, self.share + self.STEP)
        elif reader_waited:
            self.share = max(0.0, self.share - self.STEP)
        return self.share


if __name__ == "__main__":
    with relaxed_gc():
        child.run(serve, ReaderHello)
