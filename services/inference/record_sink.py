"""Prediction and usage records out of the serving process, never on a request's path.

    async with RecordSink(WriterHello(bootstrap=..., topics={...}, linger_seconds=0.25), queue_size) as sink:
        sink.offer(PREDICTION, pieces)   # False: buffer full or writer gone (nothing buffered)

A request only appends its record's raw pieces (a tuple, see `records.py`) to a list. A few
milliseconds later (`_TICK`) the list leaves as one frame to the record writer, a child
process (`record_writer.py`, started with `streamledger.child`) that builds, encodes and
produces the records and acknowledges each frame once Kafka has it. So the serving process does no JSON, no Avro and
no producing, and a record counts against `queue_size` from `offer` until its delivery.

The writer sends a usage record again until Kafka has it (its frame stays unacknowledged
meanwhile); at shutdown it gives up after its `stop_seconds` and logs each one left in full.
A full buffer is reported to the caller (`offer` returns False), so a slow broker slows
nothing but the records: the server drops sampled predictions (counted) and refuses paid
requests it could not meter. If the writer dies, `offer` refuses from then on, `alive` is
False, `died` is set and `failure` says how (`ChildDied`, with its exit code); every usage
record it had not acknowledged is logged in full (`usage_not_recorded`, billing data an
operator can replay) and counted as not sent.
"""

from __future__ import annotations

import asyncio
from typing import Any

from services.inference.record_writer import WriterHello
from services.inference.records import PREDICTION, USAGE, usage_record
from streamledger import metrics
from streamledger.child import Child, ChildDied
from streamledger.logging import get_logger

log = get_logger("inference")
RECORDS = metrics.counter("inference", "records", "Records sent to Kafka", ("topic",))
RECORD_ERRORS = metrics.counter("inference", "record_errors", "Records that could not be sent", ("topic",))

_TICK = 0.005
"""How long offered records gather before they leave as one frame: one pickle and one write
per tick instead of per request; the writer lingers far longer anyway."""
WRITER = "services.inference.record_writer"
_STUCK_SECONDS = 20.0
"""Beyond its own `stop_seconds`, how long a stopping writer may take (its producer's last flush)."""


class RecordSink:
    def __init__(self, writer: WriterHello, queue_size: int = 10_000, program: str = WRITER) -> None:
        self.settings = writer
        self.queue_size = queue_size
        self.program = program
        """The writer's module (`python -m`): a test may run the writer with a producer of its own."""
        self.died = asyncio.Event()
        """Set if the writer process ended before `close`."""
        self.failure: ChildDied | None = None
        """How it ended, once `died` is set."""
        self._buffer: list[tuple[str, Any]] = []
        self._unacknowledged: dict[int, tuple[int, list[Any]]] = {}
        """Frame seq -> (records in it, the usage pieces among them), until the writer acknowledges it."""
        self._in_flight = 0
        self._seq = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._alive = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: Child | None = None
        self._receiving: asyncio.Task | None = None

    @property
    def alive(self) -> bool:
        return self._alive

    @property
    def pid(self) -> int | None:
        return self._writer.pid if self._writer is not None else None

    async def __aenter__(self) -> RecordSink:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._flush()
        await self.close()  # the writer delivers all it was given (usage retried, within its stop_seconds)

    async def start(self) -> None:
        """Start the writer process and wait until its producer is connected (`ChildDied` if it cannot).

        A fresh interpreter (no copy of the server's threads, locks or gRPC state) that imports
        only the writer, with the server's import path."""
        self._loop = asyncio.get_running_loop()
        self._writer = await Child.start(self.program, self.settings, name="record writer")
        self._alive = True
        self._receiving = asyncio.create_task(self._receive())
        log.info("record_writer_started", extra={"pid": self._writer.pid})

    def offer(self, kind: str, pieces: Any) -> bool:
        """Buffer a record (its `records.py` pieces); False if the buffer is full or the writer is gone."""
        buffer = self._buffer
        if len(buffer) + self._in_flight >= self.queue_size or not self._alive:
            return False
        if not buffer:
            self._idle.clear()
            self._loop.call_later(_TICK, self._flush)
        buffer.append((kind, pieces))
        return True

    def pending(self) -> int:
        """Records offered and not yet delivered (or reported failed)."""
        return len(self._buffer) + self._in_flight

    async def drain(self) -> None:
        """Wait until every buffered record is delivered (or the writer is gone)."""
        self._flush()
        await self._idle.wait()

    async def close(self) -> None:
        """Close the connection: the writer sends what it holds, acknowledges it and exits (killed if it
        has not `_STUCK_SECONDS` after its `stop_seconds`; then every usage record it owes is logged)."""
        if self._writer is not None:
            self._writer.finish()
        if self._receiving is not None:
            done, _ = await asyncio.wait({self._receiving}, timeout=self.settings.stop_seconds + _STUCK_SECONDS)
            if not done:  # killed, so that every usage record it still owes is logged as not recorded
                log.error("record_writer_stuck", extra={"pid": self.pid, "waited_s": self.settings.stop_seconds
                                                        + _STUCK_SECONDS})
                self._writer.process.kill()
                await self._receiving
        if self._writer is not None:
            await self._writer.close(timeout=30)
        self._alive = False

    def _flush(self) -> None:
        items, self._buffer = self._buffer, []
        if not items or not self._alive:
            return
        self._seq += 1
        self._unacknowledged[self._seq] = (len(items), [pieces for kind, pieces in items if kind == USAGE])
        self._in_flight += len(items)
        self._writer.send((self._seq, items))

    async def _receive(self) -> None:
        try:
            while (ack := await self._writer.receive()) is not None:
                seqs, counts = ack
                for seq in seqs:
                    self._in_flight -= self._unacknowledged.pop(seq)[0]
                for topic, (sent, failed) in counts.items():
                    RECORDS.labels(topic).inc(sent)
                    RECORD_ERRORS.labels(topic).inc(failed)
                if not self._buffer and not self._in_flight:
                    self._idle.set()
        except ChildDied as exc:  # crashed, killed, or ended before it was asked to
            self._writer_died(exc)
            return
        if self._unacknowledged:  # it finished as asked, yet owes acknowledgements
            self._writer_died(ChildDied(self._writer.name, 0, f"{len(self._unacknowledged)} frames unacknowledged"))

    def _writer_died(self, failure: ChildDied) -> None:
        self._alive = False
        exit_code = failure.exit_code
        lost = len(self._buffer) + self._in_flight
        usages = [pieces for kind, pieces in self._buffer if kind == USAGE]
        usages += [pieces for _, kept in self._unacknowledged.values() for pieces in kept]
        log.error("record_writer_died", extra={"exit_code": exit_code, "records_lost": lost,
                                               "usage_records_lost": len(usages)})
        for pieces in usages:
            log.error("usage_not_recorded", extra={"usage": usage_record(pieces)[1]})
        for kind, count in ((USAGE, len(usages)), (PREDICTION, lost - len(usages))):
            if count:
                RECORD_ERRORS.labels(self.settings.topics[kind]).inc(count)
        self._buffer, self._unacknowledged, self._in_flight = [], {}, 0
        self._idle.set()
        self.failure = failure
        self.died.set()
