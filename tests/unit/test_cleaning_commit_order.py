"""The cleaning app acks a raw message only once its output is delivered, with an idempotent producer."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from aiokafka.errors import KafkaTimeoutError

from services.cleaning.app import IdempotentProducer, ack_once_delivered, build_app
from services.cleaning.rules import RuleBook
from services.cleaning.settings import CleaningSettings
from streamledger.avro import AvroCodec, SchemaRegistry


class Event:
    def __init__(self, offset: int) -> None:
        self.message = SimpleNamespace(partition=0, offset=offset)
        self.acked = False

    def ack(self) -> bool:
        self.acked = True
        return True


class App:
    def __init__(self) -> None:
        self.crashed: list[BaseException] = []

    async def crash(self, reason: BaseException) -> None:
        self.crashed.append(reason)


async def test_an_event_is_acked_only_after_its_output_is_delivered() -> None:
    app, event, delivery = App(), Event(7), asyncio.get_running_loop().create_future()
    ack_once_delivered(app, event, delivery)  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert not event.acked  # queued, not yet acknowledged by Kafka: its offset may not be committed
    delivery.set_result(object())
    await asyncio.sleep(0)
    assert event.acked and app.crashed == []


async def test_a_failed_delivery_leaves_the_event_unacked_and_crashes_the_app() -> None:
    app, event, delivery = App(), Event(8), asyncio.get_running_loop().create_future()
    ack_once_delivered(app, event, delivery)  # type: ignore[arg-type]
    delivery.set_exception(KafkaTimeoutError("batch expired"))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not event.acked
    assert [type(e) for e in app.crashed] == [KafkaTimeoutError]


async def test_the_producer_is_idempotent_with_acks_all(tmp_path) -> None:
    settings = CleaningSettings(cleaning_data_dir=tmp_path, cleaning_group="unit-commit-order")
    app = build_app(settings, AvroCodec(SchemaRegistry.from_dir()), RuleBook(), partitions=1)
    assert isinstance(app.producer, IdempotentProducer)
    client = app.producer._new_producer()  # the aiokafka producer faust would start (no connection yet)
    assert client._txn_manager is not None  # aiokafka's idempotence state: sequence numbers per partition
    assert app.producer._settings_extra() == {"acks": "all", "enable_idempotence": True}
