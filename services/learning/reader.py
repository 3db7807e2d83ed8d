"""The learning service's input, fetched from Kafka and decoded in a process of its own.

Decoding a CleanEvent costs about as much as River learning from it (~10 µs each here),
so a single process doing both learns at half of River's own speed. Here a child process
fetches the input partitions from the offsets the models need and decodes every record;
the learner receives ready-made batches through a pipe and spends its time on the models,
while the reader decodes the next batch on the other core.

What crosses the pipe is kept to what the learner uses: per fetched partition batch the
offsets, keys and raw values (the originals of dead letters), and per record either the
event's fields the models read (event_id, tenant, source, features, label; tenant, source
and feature names interned, so the pickle carries each name once) or the reason it did
not decode. Each message is one pickled tuple:

    ("ready",)                                    the consumer is positioned
    ("batch", topic, partition, offsets, keys, values, events, failures)
    ("failed", error)                             the reader stopped on an error

where `events` may cover only the first part of `values`: the learner decodes the rest.

The two processes balance themselves (`Balance`). The learner counts, in a word of
shared memory, each time it found no batch and had to wait. When the count moved since
the reader's previous batch, the reader is the slower one and leaves a larger share of
each batch undecoded, for the learner to decode itself (the same `decode`, so the same
events);
when the reader's last send blocked on a full pipe, the learner is the slower one and the
share shrinks. Fast models (mini-batch ones) thus get both cores' decoding, slow ones
a core to themselves.

The reader uses no consumer group (the learner commits); it exits when the learner
closes the pipe or is gone (its parent changes), so no orphan outlives a killed service.
"""

from __future__ import annotations

import asyncio
import fcntl
import gc
import json
import mmap
import os
import pickle
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.lifecycle import child_environment
from services.learning.learners import Consumed

Partition = tuple[str, int]
_PIPE_BYTES = 4 * 1024 * 1024
"""Pipe buffer asked of the kernel (up to its limit): whole batches, so the reader runs ahead."""
_BLOCKED = 0.002
"""A send that took longer than this (seconds) waited for the learner to read."""
_F_SETPIPE_SZ = 1031
_WAITS = struct.Struct("q")
"""Shared by both processes: how many times the learner found no batch waiting."""


class ReaderFailed(RuntimeError):
    """The reader process stopped: the learner cannot go on without its input."""


class Undecodable(ValueError):
    """A record the reader could not decode; `reason` is the codec's dead-letter reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class EventReader:
    """The reader process, seen from the learner.

        async with EventReader(bootstrap, {("events.clean", 0): 1200}, 2000) as reader:
            batch = await reader.next(timeout=0.2)   # [(Consumed, event | Undecodable)], [] if none came
    """

    def __init__(self, bootstrap: str, start: dict[Partition, int | None], max_records: int, codec: AvroCodec,
                 log_level: str = "INFO") -> None:
        self._args = (bootstrap, start, max_records, log_level)
        self._codec = codec
        """Decodes the share of each batch the reader leaves to the learner."""
        self._process: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._readable: asyncio.Event | None = None
        self._waits: mmap.mmap | None = None

    async def __aenter__(self) -> EventReader:
        read_fd, write_fd = os.pipe()
        _grow_pipe(read_fd)
        waits_fd = os.memfd_create("learning-reader-waits")
        os.ftruncate(waits_fd, _WAITS.size)
        self._waits = mmap.mmap(waits_fd, _WAITS.size)
        bootstrap, start, max_records, log_level = self._args
        # A plain child interpreter (not multiprocessing): nothing of this process is
        # re-imported or inherited but the pipe's write end.
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(write_fd), str(waits_fd), str(os.getpid()), bootstrap,
             json.dumps([[t, p, o] for (t, p), o in start.items()]), str(max_records), log_level],
            pass_fds=(write_fd, waits_fd), stdin=subprocess.DEVNULL, env=child_environment(),
        )
        os.close(write_fd)
        os.close(waits_fd)
        self._conn = Connection(read_fd, writable=False)
        self._readable = asyncio.Event()
        asyncio.get_running_loop().add_reader(read_fd, self._readable.set)
        try:
            message = await self._receive(timeout=60.0)
        except ReaderFailed as exc:
            message = ("failed", str(exc))
        if message is None or message[0] != "ready":
            await self.__aexit__(None, None, None)
            raise ReaderFailed(f"reader process did not start: {message[1] if message else 'no answer in 60 s'}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._conn is not None:
            asyncio.get_running_loop().remove_reader(self._conn.fileno())
            self._conn.close()  # the reader's next send fails and it exits
            self._conn = None
        if self._waits is not None:
            self._waits.close()
            self._waits = None
        if self._process is not None:
            try:
                await asyncio.to_thread(self._process.wait, 5.0)
            except subprocess.TimeoutExpired:
                self._process.kill()
                await asyncio.to_thread(self._process.wait)
            self._process = None

    async def next(self, timeout: float) -> list[tuple[Consumed, dict[str, Any] | Undecodable]]:
        """The next fetched partition batch in offset order, or [] if none arrived within `timeout`."""
        message = await self._receive(timeout)
        if message is None:
            return []
        if message[0] != "batch":
            raise ReaderFailed(f"reader process stopped: {message[1]}")
        _, topic, partition, offsets, keys, values, events, failures = message
        if len(events) < len(values):  # the reader left the rest of the batch to decode here
            done = len(events)
            rest, rest_failures = decode(self._codec, values[done:])
            events.extend(rest)
            failures.update({done + index: failure for index, failure in rest_failures.items()})
        for index, (reason, error) in failures.items():
            events[index] = Undecodable(reason, error)
        return list(zip(map(Consumed, [topic] * len(offsets), [partition] * len(offsets), offsets, keys, values),
                        events))

    async def _receive(self, timeout: float) -> tuple | None:
        assert self._readable is not None and self._conn is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # The loop's readiness callback may have been queued before the last message was
        # taken: an event that is set only says "look again", never "there is data".
        while not self._conn.poll():
            _WAITS.pack_into(self._waits, 0, _WAITS.unpack_from(self._waits)[0] + 1)
            self._readable.clear()
            try:
                await asyncio.wait_for(self._readable.wait(), deadline - loop.time())
            except TimeoutError:
                return None
        try:
            return pickle.loads(self._conn.recv_bytes())
        except (EOFError, OSError):
            raise ReaderFailed(f"reader process exited (exit code {await self._exit_code()})") from None

    async def _exit_code(self) -> int | None:
        """The reader's exit code once it is gone (its end of the pipe closed: it is about to be)."""
        try:
            return await asyncio.to_thread(self._process.wait, 2.0) if self._process is not None else None
        except subprocess.TimeoutExpired:
            return None


def _grow_pipe(fd: int) -> None:
    try:
        limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
        fcntl.fcntl(fd, _F_SETPIPE_SZ, min(_PIPE_BYTES, limit))
    except (OSError, ValueError):
        pass  # the default buffer works, with less read-ahead


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


def main(argv: list[str]) -> None:
    from streamledger.logging import configure_logging, get_logger

    fd, waits_fd, parent, bootstrap, start, max_records, log_level = argv
    configure_logging(log_level)
    log = get_logger("learning")
    conn = Connection(int(fd), readable=False)
    offsets = {(t, p): o for t, p, o in json.loads(start)}
    try:
        with relaxed_gc():
            asyncio.run(_read(conn, mmap.mmap(int(waits_fd), _WAITS.size), int(parent), bootstrap, offsets,
                              int(max_records)))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the learner closed the pipe: it is stopping
    except Exception as exc:  # noqa: BLE001 - reported to the learner, which stops with it
        log.error("reader_failed", extra={"error": repr(exc)})
        try:
            conn.send_bytes(pickle.dumps(("failed", repr(exc))))
        except OSError:
            pass
        sys.exit(1)


async def _read(conn: Any, waits: mmap.mmap, parent: int, bootstrap: str, start: dict[Partition, int | None], max_records: int) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    codec = AvroCodec(SchemaRegistry.from_dir())
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(t, p) for t, p in start])
        for (t, p), offset in start.items():
            if offset is None:
                await consumer.seek_to_beginning(TopicPartition(t, p))
            else:
                consumer.seek(TopicPartition(t, p), offset)
        conn.send_bytes(pickle.dumps(("ready",)))
        balance, seen, blocked = Balance(), 0, 0.0
        while os.getppid() == parent:
            fetched = await consumer.getmany(timeout_ms=200, max_records=max_records)
            for tp, messages in fetched.items():
                values = [m.value for m in messages]
                head = ("batch", tp.topic, tp.partition, [m.offset for m in messages], [m.key for m in messages], values)
                count = _WAITS.unpack_from(waits)[0]
                waited, seen = count != seen, count
                share = balance.update(learner_waited=waited, reader_waited=blocked > _BLOCKED)
                message = (*head, *decode(codec, values[:len(values) - round(len(values) * share)]))
                payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
                sent = time.perf_counter()
                conn.send_bytes(payload)  # blocks while the pipe is full: the learner is behind
                blocked = time.perf_counter() - sent
    finally:
        await consumer.stop()


class Balance:
    """The share of each batch the learner decodes: it grows while the learner waits for
    batches and shrinks while the reader waits for the learner (its send blocked on a full
    pipe); the reader always decodes some."""

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


def decode(codec: AvroCodec, values: list[bytes]) -> tuple[list[dict | None], dict[int, tuple[str, str]]]:
    """CleanEvents cut to the fields models read, and the decode errors by index (reason, message)."""
    intern = sys.intern
    decoded = codec.decode_many(values, reader="CleanEvent")
    events: list[dict | None] = []
    failures: dict[int, tuple[str, str]] = {}
    for index, event in enumerate(decoded):
        if isinstance(event, dict):
            events.append({"event_id": event["event_id"], "tenant": intern(event["tenant"]),
                           "source": intern(event["source"]),
                           "features": {intern(k): v for k, v in event["features"].items()},
                           "label": event["label"]})
        else:
            events.append(None)
            failures[index] = (getattr(event, "reason", "undecodable"), str(event))
    return events, failures


if __name__ == "__main__":
    main(sys.argv[1:])
