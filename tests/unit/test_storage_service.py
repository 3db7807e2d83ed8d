"""The storage loop's one batch, on fakes of its sink and Kafka clients: write, dead letters, commit;
MongoDB retries bounded by `storage_retry_attempts` and counted; settings under their own prefix."""

from __future__ import annotations

from datetime import datetime, timezone

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

    async def commit(self, offsets) -> None:
        self.log.append(("commit", dict(offsets)))

    def highwater(self, tp) -> int:
        return 10


class FakeProducer:
    def __init__(self, log: list) -> None:
        self.log = log

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        self.log.append(("send", topic, CODEC.decode(value)["reason"]))

    async def flush(self) -> None:
        self.log.append(("flush",))


def service(log: list, failures: int = 0, attempts: int = 3) -> StorageService:
    settings = StorageSettings(storage_clean_topic="clean", storage_deadletter_topic="dead",
                               storage_retry_attempts=attempts, storage_backoff_initial_seconds=0.001,
                               storage_backoff_max_seconds=0.001)
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
