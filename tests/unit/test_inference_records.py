"""RecordSink without a broker: records leave in batches per partition, after the response."""

from __future__ import annotations

import asyncio

from services.common.avro import AvroCodec, SchemaRegistry
from services.inference.records import RecordSink

codec = AvroCodec(SchemaRegistry.from_dir())


class Batch:
    def __init__(self, room: int) -> None:
        self.records: list[tuple[bytes, bytes]] = []
        self.room = room
        self.closed = False

    def append(self, *, key: bytes, value: bytes, timestamp: None) -> object | None:
        if self.closed or len(self.records) == self.room:
            self.closed = True
            return None
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        self.closed = True


class Producer:
    """The four calls RecordSink makes, recorded."""

    def __init__(self, partitions: int = 1, room: int = 1000) -> None:
        self.partitions = partitions
        self.room = room
        self.sent: list[tuple[str, int, list[tuple[bytes, bytes]]]] = []
        self.flushed = False

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    def create_batch(self) -> Batch:
        return Batch(self.room)

    async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> asyncio.Future:
        assert batch.closed, "a batch is complete when handed over"
        self.sent.append((topic, partition, batch.records))
        delivered = asyncio.get_running_loop().create_future()
        delivered.set_result(None)
        return delivered

    async def flush(self) -> None:
        self.flushed = True


def usage(n: int) -> dict:
    return {"hold_id": f"h{n}", "request_id": f"r{n}", "client": "Org1MSP::CN=c", "model_id": "m",
            "model_version": 1, "units": 1, "price": 2, "ts": 1_700_000_000_000}


async def sink_run(producer: Producer, records: list, queue_size: int = 100) -> tuple[RecordSink, list[bool]]:
    sink = RecordSink(producer, codec, queue_size=queue_size, linger=0.01)
    task = asyncio.create_task(sink.run())
    accepted = [sink.offer("usage", "UsageRecord", r["hold_id"], r if n % 2 else (lambda r=r: r))
                for n, r in enumerate(records)]
    await asyncio.wait_for(sink.drain(), 5)
    task.cancel()
    return sink, accepted


async def test_records_leave_together_encoded_in_order_and_callables_are_built_by_the_task():
    producer = Producer()
    sink, accepted = await sink_run(producer, [usage(n) for n in range(30)])
    assert all(accepted) and producer.flushed and sink.pending() == 0
    assert len(producer.sent) == 1, "one lingering batch, not one send per record"
    topic, partition, records = producer.sent[0]
    assert (topic, partition) == ("usage", 0)
    assert [codec.decode(value)["request_id"] for _, value in records] == [f"r{n}" for n in range(30)]
    assert [key for key, _ in records] == [f"h{n}".encode() for n in range(30)]


async def test_keys_keep_their_partition_and_full_batches_are_split():
    producer = Producer(partitions=3, room=4)
    await sink_run(producer, [usage(n) for n in range(30)])
    by_key: dict[bytes, set[int]] = {}
    for _, partition, records in producer.sent:
        assert 1 <= len(records) <= 4
        for key, _ in records:
            by_key.setdefault(key, set()).add(partition)
    assert len(by_key) == 30 and all(len(p) == 1 for p in by_key.values())
    assert len({p for ps in by_key.values() for p in ps}) > 1, "keys spread over the partitions"


async def test_a_full_buffer_refuses_and_an_invalid_record_is_skipped():
    producer = Producer()
    sink = RecordSink(producer, codec, queue_size=3, linger=0.01)
    assert [sink.offer("usage", "UsageRecord", f"h{n}", usage(n)) for n in range(4)] == [True, True, True, False]
    assert sink.offer("usage", "UsageRecord", "bad", {"hold_id": "bad"}) is False  # still full
    task = asyncio.create_task(sink.run())
    await asyncio.wait_for(sink.drain(), 5)
    assert sink.offer("usage", "UsageRecord", "bad", {"hold_id": "bad"})  # room again; the record lacks fields
    assert sink.offer("usage", "UsageRecord", "h9", usage(9))
    await asyncio.wait_for(sink.drain(), 5)
    task.cancel()
    sent = [codec.decode(value)["request_id"] for _, _, records in producer.sent for _, value in records]
    assert sent == ["r0", "r1", "r2", "r9"]
