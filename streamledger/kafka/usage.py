"""The usage records of one hold, read from the usage topic (no consumer group, nothing committed).

    records = await usage_of(bootstrap, "usage", hold_id, since_ms=created_ms, codec=codec)
    [(r["request_id"], r["units"], r["receipt_sequence"], r["partition"], r["offset"]) for r in records]

Usage records are keyed by hold id, but the record's own `hold_id` is what counts: every record
of every partition from `since_ms` (Kafka's time index: a hold's usage cannot precede its Freeze)
to `until_ms` (or the end offsets at the start of the call) is decoded, and those of the hold are returned in
offset order. Records that do not decode as a UsageRecord are counted in `skipped`, never
guessed at. A topic that does not exist has no usage. Anything that stops the reading (broker
away, `timeout_s` passed) is `UsageUnreadable`, so no caller mistakes an unread topic for an
empty one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from streamledger.avro import AvroCodec, CodecError
from streamledger.kafka.clients import consumer, partitions_of

RECORD = "UsageRecord"


class UsageUnreadable(Exception):
    """The usage topic could not be read (to its end); nothing is known about the hold's usage."""


@dataclass
class HoldUsage:
    topic: str
    records: list[dict[str, Any]] = field(default_factory=list)
    """The hold's UsageRecords, each with its `partition` and `offset`, in offset order per partition."""
    skipped: int = 0
    """Records read that do not decode as a UsageRecord."""


async def usage_of(bootstrap: str, topic: str, hold_id: str, *, since_ms: int, codec: AvroCodec,
                   timeout_s: float = 30.0, until_ms: int | None = None) -> HoldUsage:
    """Every usage record of `hold_id` written at or after `since_ms` (unix milliseconds), and
    before `until_ms` when given (a closed hold's usage ends with it: no need to read on)."""
    return await usage_where(bootstrap, topic, lambda r: r.get("hold_id") == hold_id, since_ms=since_ms,
                             codec=codec, timeout_s=timeout_s, until_ms=until_ms)


async def usage_where(bootstrap: str, topic: str, wanted: Callable[[Mapping[str, Any]], bool], *, since_ms: int,
                      codec: AvroCodec, timeout_s: float = 30.0, until_ms: int | None = None) -> HoldUsage:
    """Every usage record for which `wanted(record)` holds, read as `usage_of` reads (e.g. the
    predictions of some model versions, for `audit trace`)."""
    found = HoldUsage(topic)
    reader = consumer(bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        async with asyncio.timeout(timeout_s):
            try:
                await reader.start()
                if topic not in await reader.topics():
                    return found
                # The consumer knows the topic's name now, not yet its partitions: ask the cluster.
                tps = [TopicPartition(t, p) for t, p in await partitions_of(bootstrap, [topic], timeout_s)]
                reader.assign(tps)
                starts = await reader.offsets_for_times({tp: since_ms for tp in tps})
                ends = await reader.end_offsets(tps)
                if until_ms is not None:
                    stops = await reader.offsets_for_times({tp: until_ms for tp in tps})
                    ends = {tp: stops[tp].offset if stops.get(tp) is not None else ends[tp] for tp in tps}
                pending = set()
                for tp in tps:
                    start = starts.get(tp)
                    if start is not None and start.offset < ends[tp]:
                        reader.seek(tp, start.offset)
                        pending.add(tp)
                while pending:
                    batches = await reader.getmany(*pending, timeout_ms=500)
                    for tp, messages in batches.items():
                        for message in messages:
                            if message.offset < ends[tp]:
                                _keep(found, message, wanted, codec)
                    pending = {tp for tp in pending if await reader.position(tp) < ends[tp]}
            finally:
                await reader.stop()
    except TimeoutError:
        raise UsageUnreadable(f"topic {topic!r} at {bootstrap} was not read to its end within {timeout_s} s") from None
    except (KafkaError, OSError) as exc:
        raise UsageUnreadable(f"topic {topic!r} at {bootstrap} could not be read: {exc}") from exc
    found.records.sort(key=lambda r: (r["partition"], r["offset"]))
    return found


def _keep(found: HoldUsage, message: Any, wanted: Callable[[Mapping[str, Any]], bool], codec: AvroCodec) -> None:
    if message.value is None:
        return
    try:
        record = codec.decode(message.value, reader=RECORD)
    except CodecError:
        found.skipped += 1
        return
    if wanted(record):
        found.records.append({**record, "partition": message.partition, "offset": message.offset})
