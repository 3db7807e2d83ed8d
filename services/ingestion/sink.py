"""Writes validated RawEvents to Kafka and returns only once Kafka has acknowledged them.

Back-pressure is explicit: at most `max_pending` events may wait for acknowledgement at
any time, and a write that cannot get its acknowledgements within `ack_timeout_s` fails
with `KafkaUnavailableError`. Callers turn that into HTTP 503 + Retry-After or gRPC
UNAVAILABLE, so a slow or absent Kafka never grows memory without bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from services.common.avro import AvroCodec
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

    def give_back(self, count: int = 1) -> None:
        self.pending -= count
        PENDING_EVENTS.set(self.pending)


class RawEventWriter:
    """`await writer.write(records)` -> the event_ids, once Kafka (acks=all) has them all."""

    def __init__(self, producer: AIOKafkaProducer, codec: AvroCodec, topic: str,
                 budget: PendingBudget, ack_timeout_s: float) -> None:
        self.producer = producer
        self.codec = codec
        self.topic = topic
        self.budget = budget
        self.ack_timeout_s = ack_timeout_s

    async def write(self, records: Sequence[dict[str, Any]]) -> list[str]:
        if not records:
            return []
        if not self.budget.try_take(len(records)):
            raise KafkaUnavailableError(
                f"{self.budget.pending} events are already waiting for Kafka (limit {self.budget.limit}); retry later"
            )
        values = self.codec.encode_many("RawEvent", records)
        deadline = asyncio.get_running_loop().time() + self.ack_timeout_s
        futures: list[asyncio.Future] = []
        send_failure: Exception | None = None
        try:
            async with asyncio.timeout_at(deadline):
                for record, value in zip(records, values):
                    future = await self.producer.send(self.topic, value=value, key=record["event_id"].encode())
                    future.add_done_callback(self._acknowledged)
                    futures.append(future)
        except (TimeoutError, KafkaError) as exc:
            send_failure = exc
        finally:
            self.budget.give_back(len(records) - len(futures))  # never handed to the producer
        await _settle(futures, deadline)
        acked = _acked_ids(records, futures)
        if len(acked) < len(records):
            failed = send_failure or next(
                (f.exception() for f in futures if f.done() and not f.cancelled() and f.exception()), None)
            why = type(failed).__name__ if failed else f"no acknowledgement within {self.ack_timeout_s:g}s"
            raise KafkaUnavailableError(
                f"Kafka acknowledged {len(acked)} of {len(records)} events ({why}); retry later", acked
            )
        return acked

    def _acknowledged(self, _future: asyncio.Future) -> None:
        self.budget.give_back(1)


async def _settle(futures: list[asyncio.Future], deadline: float) -> None:
    """Wait until every future is done or the deadline passes (never cancels them: the
    producer still owns those messages, and their budget returns when they finish)."""
    remaining = deadline - asyncio.get_running_loop().time()
    if futures and remaining > 0:
        await asyncio.wait(futures, timeout=remaining)


def _acked_ids(records: Sequence[dict[str, Any]], futures: list[asyncio.Future]) -> list[str]:
    return [
        record["event_id"]
        for record, future in zip(records, futures)
        if future.done() and not future.cancelled() and future.exception() is None
    ]
