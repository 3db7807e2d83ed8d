"""The cleaning loop commits a batch's offsets only once Kafka acknowledged its outputs and the
dedup window's changes, in the order the batches were read; a failed delivery commits nothing
from that batch on and stops the service. Kafka is faked at the producer's and consumer's
surface (batches, deliveries, commits); tests/integration/pipeline runs the real thing."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError

from services.cleaning.app import Changelog, CleaningService, Outbox
from services.cleaning.dedup import DedupWindow, Seen
from services.cleaning.settings import CleaningSettings

RAW = TopicPartition("events.raw", 0)


class Batch:
    def __init__(self, room: int = 1000) -> None:
        self.records: list[tuple[bytes, bytes | None]] = []
        self.room = room

    def append(self, *, key: bytes, value: bytes | None, timestamp: None) -> object | None:
        if len(self.records) >= self.room:
            return None
        self.records.append((key, value))
        return object()


class Producer:
    """Each sent batch gets a delivery future the test resolves, as Kafka's acknowledgement would."""

    def __init__(self, room: int = 1000) -> None:
        self.sent: list[tuple[str, int, Batch, asyncio.Future]] = []
        self.room = room

    def create_batch(self) -> Batch:
        return Batch(self.room)

    async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> asyncio.Future:
        delivery = asyncio.get_running_loop().create_future()
        self.sent.append((topic, partition, batch, delivery))
        return delivery

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    def acknowledge(self, failure: Exception | None = None) -> None:
        for *_, delivery in self.sent:
            if not delivery.done():
                delivery.set_exception(failure) if failure else delivery.set_result(object())


class Inbox:
    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))


def service(in_flight: int = 4) -> CleaningService:
    cleaning = CleaningService(CleaningSettings(cleaning_batches_in_flight=in_flight))
    cleaning.producer, cleaning.inbox, cleaning.changelog = Producer(), Inbox(), Changelog("streamledger-cleaning-dedup-changelog")
    return cleaning


async def one_record(cleaning: CleaningService, key: bytes, value: bytes) -> Outbox:
    """An outbox of the clean topic holding one record."""
    outbox = await Outbox.to(cleaning.producer, ["events.clean"])
    outbox.add("events.clean", key, value)
    return outbox


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_offsets_are_committed_only_after_outputs_and_dedup_changes_are_acknowledged() -> None:
    cleaning = service()
    outbox = await Outbox.to(cleaning.producer, ["events.clean"])
    outbox.add("events.clean", b"e1", b"clean record")
    cleaning.changelog["0:acme:e1"] = [0, 41, 1_000]
    await cleaning.send(outbox, {RAW: 42})
    await settle()
    assert cleaning.inbox.commits == []  # sent, not acknowledged: nothing committed
    topics_sent = {(topic, partition) for topic, partition, *_ in cleaning.producer.sent}
    assert ("streamledger-cleaning-dedup-changelog", 0) in topics_sent  # the window's change, in raw partition 0's
    cleaning.producer.acknowledge()
    await cleaning.settled()
    assert cleaning.inbox.commits == [{RAW: 42}]


async def test_batches_commit_in_order_even_when_a_later_one_is_acknowledged_first() -> None:
    cleaning = service()
    first, second = await one_record(cleaning, b"e1", b"one"), await one_record(cleaning, b"e2", b"two")
    await cleaning.send(first, {RAW: 10})
    await cleaning.send(second, {RAW: 20})
    cleaning.producer.sent[1][3].set_result(object())  # the second batch's acknowledgement comes first
    await settle()
    assert cleaning.inbox.commits == []
    cleaning.producer.sent[0][3].set_result(object())
    await cleaning.settled()
    assert cleaning.inbox.commits == [{RAW: 10}, {RAW: 20}]


async def test_a_failed_delivery_commits_nothing_from_that_batch_on_and_stops_the_service() -> None:
    cleaning = service(in_flight=1)
    first, second = await one_record(cleaning, b"e1", b"one"), await one_record(cleaning, b"e2", b"two")
    await cleaning.send(first, {RAW: 10})
    cleaning.producer.sent[0][3].set_exception(KafkaTimeoutError("batch expired"))
    with pytest.raises(KafkaTimeoutError):
        await cleaning.send(second, {RAW: 20})  # over the in-flight limit: waits for the first, which failed
    cleaning.producer.acknowledge()
    with pytest.raises(KafkaTimeoutError):  # the second waits for the first before committing
        await cleaning.settled()
    assert cleaning.inbox.commits == []


async def test_the_in_flight_limit_holds_the_next_batch_until_the_oldest_is_committed() -> None:
    cleaning = service(in_flight=1)
    first, second = await one_record(cleaning, b"e1", b"one"), await one_record(cleaning, b"e2", b"two")
    await cleaning.send(first, {RAW: 10})
    sending = asyncio.ensure_future(cleaning.send(second, {RAW: 20}))
    await settle()
    assert not sending.done()  # two batches would be in flight
    cleaning.producer.acknowledge()
    await sending
    cleaning.producer.acknowledge()
    await cleaning.settled()
    assert cleaning.inbox.commits == [{RAW: 10}, {RAW: 20}]


async def test_a_full_producer_batch_is_sent_and_the_record_goes_into_a_new_one() -> None:
    producer = Producer(room=2)
    outbox = await Outbox.to(producer, ["events.clean"])
    for n in range(5):
        outbox.add("events.clean", b"same-key", f"v{n}".encode())
    deliveries = await outbox.send_all()
    assert [len(batch.records) for *_, batch, _ in producer.sent] == [2, 2, 1]
    assert len(deliveries) == 3 and {partition for _, partition, *_ in producer.sent} == {partition for _, partition, *_ in producer.sent[:1]}


async def test_records_are_spread_over_partitions_by_key_and_the_same_key_stays_put() -> None:
    producer = Producer()
    outbox = await Outbox.to(producer, ["events.clean"])
    for n in range(60):
        outbox.add("events.clean", f"e{n % 30}".encode(), b"v")
    await outbox.send_all()
    where: dict[bytes, set[int]] = {}
    for _, partition, batch, _ in producer.sent:
        for key, _ in batch.records:
            where.setdefault(key, set()).add(partition)
    assert all(len(parts) == 1 for parts in where.values())
    assert {next(iter(parts)) for parts in where.values()} == {0, 1, 2}


def test_a_batch_writes_one_segment_per_raw_partition_and_expired_segments_are_tombstoned() -> None:
    log = Changelog("changelog")
    window = DedupWindow(log, window_ms=1_000)
    assert window.observe("k1", partition=2, offset=5, at_ms=100) is Seen.FIRST
    assert window.observe("k1", partition=2, offset=5, at_ms=100) is Seen.REPLAY  # nothing added
    assert window.observe("k1", partition=2, offset=9, at_ms=200) is Seen.DUPLICATE
    assert window.observe("k2", partition=2, offset=10, at_ms=300) is Seen.FIRST
    assert window.observe("k3", partition=0, offset=4, at_ms=300) is Seen.FIRST
    assert log.drain() == [(2, b"2:5", b'[["k1",5,100],["k2",10,300]]'), (0, b"0:4", b'[["k3",4,300]]')]
    assert log.drain() == []
    assert window.expire(now_ms=1_200, partition=2) == 1  # k1 has left the window, k2 not yet
    assert log.expire_segments(2, horizon_ms=1_200 - 1_000) == 0  # its segment holds k2 still
    assert log.expire_segments(2, horizon_ms=5_000) == 1
    assert log.drain() == [(2, b"2:5", None)]


def test_segments_read_back_in_order_give_the_window_as_it_was() -> None:
    written = Changelog("changelog")
    window = DedupWindow(written, window_ms=1_000)
    window.observe("k1", partition=1, offset=1, at_ms=100)
    first = written.drain()
    window.observe("k1", partition=1, offset=7, at_ms=5_000)  # the window had passed: a new first
    window.observe("k2", partition=1, offset=8, at_ms=5_000)
    second = written.drain()
    read = Changelog("changelog")
    for partition, key, value in first + second:
        read.apply(key, partition, value)
    assert dict(read.items()) == {"k1": [1, 7, 5_000], "k2": [1, 8, 5_000]}
    read.apply(b"1:9", 1, b"not json")  # skipped, and said so
    assert len(read) == 2


def test_forgetting_a_partition_drops_its_entries_without_writing_tombstones() -> None:
    log = Changelog("changelog")
    log["a"], log["b"] = [0, 1, 10], [1, 1, 10]
    log.held = {0, 1}
    log.drain()
    log.forget({1})
    assert dict(log.items()) == {"a": [0, 1, 10]} and log.held == {0} and set(log.segments) == {b"0:1"}
    assert log.drain() == []  # the next owner of partition 1 reads its entries from the changelog
