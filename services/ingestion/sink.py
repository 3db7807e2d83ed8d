"""Writes encoded RawEvents to Kafka and returns only once Kafka has acknowledged them.

Back-pressure is explicit: at most `budget.limit` events may wait for acknowledgement at
any time, and a write that cannot get its acknowledgements within `ack_timeout_seconds` fails
with `KafkaUnavailableError`. Callers turn that into HTTP 503 + Retry-After or gRPC
UNAVAILABLE, so a slow or absent Kafka never grows memory without bound.

Records go out as whole batches per partition (`create_batch` / `send_batch`): one future
per batch instead of one per record. Partitions are chosen by the producer's own default
partitioner (murmur2 of the key), exactly where `producer.send(key=...)` would put them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from services.ingestion.metrics import PENDING_EVENTS


class KafkaUnavailableError(RuntimeError):
    """Kafka did not acknowledge in time, or too many events are already waiting; retry later.

    `acknowledged` lists the event_ids of this write that Kafka did acknowledge: a retry of
    the whole request is safe, since downstream writes are idempotent by event_id.
    """

    def __init__(self, message: str, acknowledged: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.acknowledged = list(acknowledged)


class PendingBudget:
    """Counts events awaiting acknowledgement; refuses (never queues) beyond the limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending = 0

    def try_take(self, count: int) -> bool:
        if self.pending + count > self.limit:
            return False
        self.pending += count
        PENDING_EVENTS.set(self.pending)
        return True

    def give_back(self, count: int) -> None:
        self.pending -= count
        PENDING_EVENTS.set(self.pending)


class RawEventWriter:
    """`await writer.write(event_ids, values)` -> the event_ids, once Kafka (acks=all) has them all."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, budget: PendingBudget, ack_timeout_seconds: float,
                 renew: Callable[[], Awaitable[AIOKafkaProducer]] | None = None, renew_after_seconds: float = 20.0) -> None:
        self.producer = producer
        self.topic = topic
        self.budget = budget
        self.ack_timeout_seconds = ack_timeout_seconds
        self._partitioner = DefaultPartitioner()
        # After a broker restart aiokafka's idempotent producer can stay stuck (seen here:
        # LeaderNotAvailable forever); a writer failing this long starts a fresh producer.
        self._renew = renew
        self._renew_after_seconds = renew_after_seconds
        self._failing_since: float | None = None

    async def _note_outcome(self, ok: bool) -> None:
        now = asyncio.get_running_loop().time()
        if ok:
            self._failing_since = None
            return
        if self._failing_since is None:
            self._failing_since = now
        elif self._renew is not None and now - self._failing_since > self._renew_after_seconds:
            self._failing_since = now
            try:
                fresh = await self._renew()
            except KafkaError:
                return  # Kafka is still away; try again after another period
            stale, self.producer = self.producer, fresh
            asyncio.get_running_loop().create_task(stale.stop())  # its pending futures fail and free budget

    async def write(self, event_ids: Sequence[str], values: Sequence[bytes]) -> list[str]:
        if not event_ids:
            return []
        if not self.budget.try_take(len(event_ids)):
            raise KafkaUnavailableError(
                f"{self.budget.pending} events are already waiting for Kafka (limit {self.budget.limit}); retry later"
            )
        deadline = asyncio.get_running_loop().time() + self.ack_timeout_seconds
        sent: list[tuple[asyncio.Future, list[int]]] = []  # (batch future, positions of its records)
        send_failure: Exception | None = None
        try:
            async with asyncio.timeout_at(deadline):
                await self._send(event_ids, values, sent)
        except (TimeoutError, KafkaError) as exc:
            send_failure = exc
        finally:
            handed_over = sum(len(members) for _, members in sent)
            self.budget.give_back(len(event_ids) - handed_over)  # never reached the producer
        await _settle([future for future, _ in sent], deadline)

        acked: list[int] = []
        failure = send_failure
        for future, members in sent:
            if future.done():
                self.budget.give_back(len(members))
                if not future.cancelled() and future.exception() is None:
                    acked += members
                else:
                    failure = failure or future.exception()
            else:  # the producer still owns these; their budget returns when Kafka answers
                future.add_done_callback(lambda _f, n=len(members): self.budget.give_back(n))
        acked.sort()
        acked_ids = [event_ids[i] for i in acked]
        await self._note_outcome(len(acked_ids) == len(event_ids))
        if len(acked_ids) < len(event_ids):
            why = type(failure).__name__ if failure else f"no acknowledgement within {self.ack_timeout_seconds:g}s"
            raise KafkaUnavailableError(
                f"Kafka acknowledged {len(acked_ids)} of {len(event_ids)} events ({why}); retry later", acked_ids
            )
        return acked_ids

    async def _send(self, event_ids: Sequence[str], values: Sequence[bytes],
                    sent: list[tuple[asyncio.Future, list[int]]]) -> None:
        partitions = sorted(await self.producer.partitions_for(self.topic))
        by_partition: dict[int, list[int]] = {}
        keys = [event_id.encode() for event_id in event_ids]
        for position, key in enumerate(keys):
            by_partition.setdefault(self._partitioner(key, partitions, partitions), []).append(position)
        for partition, positions in by_partition.items():
            batch, members = self.producer.create_batch(), []
            for position in positions:
                if batch.append(key=keys[position], value=values[position], timestamp=None) is None:
                    sent.append((await self.producer.send_batch(batch, self.topic, partition=partition), members))
                    batch, members = self.producer.create_batch(), []
                    batch.append(key=keys[position], value=values[position], timestamp=None)  # an empty batch takes any record
                members.append(position)
            sent.append((await self.producer.send_batch(batch, self.topic, partition=partition), members))


async def _settle(futures: list[asyncio.Future], deadline: float) -> None:
    """Wait until every future is done or the deadline passes (never cancels them: the
    producer still owns those messages)."""
    remaining = deadline - asyncio.get_running_loop().time()
    if futures and remaining > 0:
        await asyncio.wait(futures, timeout=remaining)
