"""The storage loop's one batch, on fakes of its sink and Kafka clients: write, dead letters, commit;
MongoDB retries bounded by `storage_retry_attempts` and counted; settings under their own prefix.
The loop: the next batch is polled while one is written, commits stay in order, and while a write
does not end, nothing is polled beyond one more batch; with nothing being written, a batch waits
`storage_batch_wait_seconds` for more messages."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from services.storage.app import StorageService
from services.storage.documents import BatchPlan
from services.storage.settings import StorageSettings
from services.storage.sink import MongoUnavailable
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.core.records import Consumed

CODEC = AvroCodec(SchemaRegistry.from_dir())
CLEAN = TopicPartition("clean", 0)


class FakeSink:
    """Fails `failures` times with `MongoUnavailable`, then accepts every write."""

    def __init__(self, log: list, failures: int = 0) -> None:
        self.log, self.failures = log, failures

    async def write(self, plan: BatchPlan) -> list:
        if self.failures:
            self.failures -= 1
            raise MongoUnavailable("MongoDB is down")
        self.log.append(("write", {c: sorted(w) for c, w in plan.writes.items()}))
        return []


class FakeInbox:
    def __init__(self, log: list) -> None:
        self.log = log
        self.assigned = {CLEAN}

    async def commit(self, offsets) -> None:
        self.log.append(("commit", dict(offsets)))

    def assignment(self) -> set:
        return set(self.assigned)

    def highwater(self, tp) -> int:
        assert tp in self.assigned, "Partition is not assigned"  # as aiokafka's consumer asserts
        return 10


class FakeProducer:
    def __init__(self, log: list) -> None:
        self.log = log

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        self.log.append(("send", topic, CODEC.decode(value)["reason"]))

    async def flush(self) -> None:
        self.log.append(("flush",))


def service(log: list, failures: int = 0, attempts: int = 3, **settings) -> StorageService:
    settings = StorageSettings(storage_clean_topic="clean", storage_deadletter_topic="dead",
                               storage_retry_attempts=attempts, storage_backoff_initial_seconds=0.001,
                               storage_backoff_max_seconds=0.001, **settings)
    storage = StorageService(settings)
    storage.sink, storage.inbox, storage.producer = FakeSink(log, failures), FakeInbox(log), FakeProducer(log)
    return storage


def clean_event(offset: int) -> Consumed:
    value = CODEC.encode("CleanEvent", {
        "event_id": f"e{offset}", "tenant": "acme", "source": "unit", "ts": datetime(2026, 1, 1, tzinfo=timezone.utc),
        "features": {"x": 1.0}, "label": None, "content_hash": "ab" * 32, "raw_partition": 0, "raw_offset": offset})
    return Consumed(CLEAN, "clean", 0, offset, f"e{offset}".encode(), value)


def retries() -> float:
    return REGISTRY.get_sample_value("streamledger_storage_write_retries_total") or 0.0


async def test_a_batch_is_written_then_dead_lettered_then_committed() -> None:
    log: list = []
    junk = Consumed(CLEAN, "clean", 0, 7, b"junk", b"\x00not avro")
    storage = service(log)
    await storage.store(storage.plan([clean_event(5), clean_event(6), junk]))
    assert log == [("write", {"events": ["4:acme:e5", "4:acme:e6"]}), ("send", "dead", "not_single_object"), ("flush",),
                   ("commit", {CLEAN: 8})]


async def test_a_partition_revoked_while_its_batch_was_written_costs_no_crash() -> None:
    """A rebalance during the write (another replica took the partition): the commit is the
    consumer's to refuse; the lag gauge skips a partition this replica no longer holds."""
    log: list = []
    storage = service(log)
    storage.inbox.assigned.clear()
    await storage.store(storage.plan([clean_event(5)]))
    assert log == [("write", {"events": ["4:acme:e5"]}), ("commit", {CLEAN: 6})]


async def test_mongo_unavailable_is_retried_and_each_retry_counted() -> None:
    log: list = []
    before = retries()
    storage = service(log, failures=2, attempts=3)
    await storage.store(storage.plan([clean_event(1)]))
    assert retries() - before == 2
    assert log == [("write", {"events": ["4:acme:e1"]}), ("commit", {CLEAN: 2})]


async def test_retries_are_bounded_and_nothing_is_committed_when_they_run_out() -> None:
    log: list = []
    before = retries()
    with pytest.raises(MongoUnavailable):
        storage = service(log, failures=5, attempts=3)
        await storage.store(storage.plan([clean_event(1)]))
    assert retries() - before == 2  # 3 tries in all
    assert log == []


def test_settings_are_read_under_the_storage_prefix(monkeypatch) -> None:
    monkeypatch.setenv("STREAMLEDGER_STORAGE_CLEAN_TOPIC", "mine")
    monkeypatch.setenv("STREAMLEDGER_STORAGE_BATCH_WAIT_SECONDS", "0.5")
    monkeypatch.setenv("STREAMLEDGER_CLEAN_TOPIC", "someone-elses")
    settings = StorageSettings()
    assert (settings.storage_clean_topic, settings.storage_batch_wait_seconds) == ("mine", 0.5)
    assert "someone-elses" not in StorageService(settings).routes


class GatedSink:
    """Holds each write until the test opens its gate, as a slow (or down) MongoDB would."""

    def __init__(self, log: list) -> None:
        self.log, self.gates = log, []

    async def write(self, plan: BatchPlan) -> list:
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        self.log.append(("write", sorted(w.source.offset for w in plan.writes["events"].values())))
        return []


class Topic:
    """A consumer over one partition holding `count` clean events; counts what it handed out."""

    def __init__(self, log: list, count: int, per_poll: int | None = None) -> None:
        self.log, self.handed_out, self.per_poll = log, 0, per_poll
        self.records = [SimpleNamespace(topic="clean", partition=0, offset=m.offset, key=m.key, value=m.value,
                                        timestamp=None) for m in map(clean_event, range(count))]

    async def getmany(self, timeout_ms: int, max_records: int) -> dict:
        if self.handed_out == len(self.records):
            await asyncio.sleep(timeout_ms / 1000)  # a poll that finds nothing waits out its timeout
            return {}
        records = self.records[self.handed_out:self.handed_out + min(max_records, self.per_poll or max_records)]
        self.handed_out += len(records)
        return {CLEAN: records}

    async def commit(self, offsets) -> None:
        self.log.append(("commit", dict(offsets)))

    def assignment(self) -> set:
        return {CLEAN}

    def highwater(self, tp) -> int:
        return len(self.records)


async def until(condition, what: str, timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.001)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_the_next_batch_is_polled_during_a_write_and_no_further_while_it_lasts() -> None:
    log: list = []
    storage = service(log, storage_batch_size=2, storage_batch_wait_seconds=0.01)
    storage.sink, storage.inbox = GatedSink(log), Topic(log, 7)
    running = asyncio.create_task(storage.run(storage.stopping))
    try:
        await until(lambda: len(storage.sink.gates) == 1, "the first write")
        await until(lambda: storage.inbox.handed_out == 4, "the second batch, polled during the first write")
        for _ in range(20):  # the loop runs on, and polls nothing more: back-pressure
            await asyncio.sleep(0.001)
        assert storage.inbox.handed_out == 4 and log == []
        storage.sink.gates[0].set()
        await until(lambda: len(storage.sink.gates) == 2, "the second write")
        assert log == [("write", [0, 1]), ("commit", {CLEAN: 2})]
        for n in (1, 2, 3):
            await until(lambda: len(storage.sink.gates) > n, f"write {n + 1}")
            storage.sink.gates[n].set()
        await until(lambda: ("commit", {CLEAN: 7}) in log, "the last commit")
    finally:
        storage.stopping.set()
        for gate in storage.sink.gates:
            gate.set()
        await asyncio.wait_for(running, 5)
    assert [entry for entry in log if entry[0] == "commit"] == [("commit", {CLEAN: n}) for n in (2, 4, 6, 7)]
    assert [entry[1] for entry in log if entry[0] == "write"] == [[0, 1], [2, 3], [4, 5], [6]]


async def test_messages_trickling_in_while_nothing_is_written_wait_for_each_other() -> None:
    log: list = []
    storage = service(log, storage_batch_size=100, storage_batch_wait_seconds=0.5)
    storage.inbox = Topic(log, 5, per_poll=1)  # one message per poll, as at a low rate
    running = asyncio.create_task(storage.run(storage.stopping))
    try:
        await until(lambda: log, "the first write", timeout=5)
    finally:
        storage.stopping.set()
        await asyncio.wait_for(running, 5)
    assert log[:2] == [("write", {"events": [f"4:acme:e{n}" for n in range(5)]}), ("commit", {CLEAN: 5})]


async def test_a_write_that_fails_for_good_stops_the_loop_without_committing() -> None:
    log: list = []
    storage = service(log, failures=5, attempts=2, storage_batch_size=2, storage_batch_wait_seconds=0.01)
    storage.inbox = Topic(log, 3)
    with pytest.raises(MongoUnavailable):
        await asyncio.wait_for(storage.run(storage.stopping), 5)
    assert log == []
