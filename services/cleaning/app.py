"""`streamledger serve cleaning`: events.raw -> events.clean | events.deadletter (faust-streaming).

Data path: faust consumes the raw topic (raw bytes: our codec is Avro single-object, not
faust's), `Cleaner.handle` decodes, cleans, hashes and dedups each message, and the result
goes to the clean topic, or to the dead-letter topic with the rule and reason. Duplicates
are dropped. The dedup window is a faust Table whose changelog topic restores it after a
restart.

At least once, checked (issue 22): faust-streaming acks a message when the agent moves on
and, before committing, flushes the producer; but `topic.send()` only queues the output, and
the flush returns once every batch is *settled*, delivered or failed, so an output Kafka
refused in the end was committed past and lost. So the stream is `noack()`: a message is
acked (its offset becomes committable) only in the done-callback of its output's delivery,
once Kafka acknowledged it (acks=all); a failed delivery is never acked, which holds every
later offset of its partition back, and crashes the service. The producer is idempotent
(`IdempotentProducer`: faust enables idempotence only for transactions), so the broker drops
the copies its own retries would add. A replay after a crash re-emits what was not committed;
outputs are keyed by event_id, so downstream stores converge.

faust's App is a `mode` service, run inside `serve()` like every other service: entering
starts it (and returns once the dedup table is recovered), leaving stops it (the agent
finishes its message, the producer flushes, the offsets are committed).
"""

from __future__ import annotations

import asyncio

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from services.cleaning.cleaner import Cleaner
from services.cleaning.dedup import DedupWindow
from services.cleaning.metrics import EXPIRED, LAG, counted_handle
from services.cleaning.rules import RuleBook
from services.cleaning.settings import CleaningSettings
from streamledger import kafka
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.core.records import Consumed
from streamledger.kafka import topics
from streamledger.lifecycle import Loop, serve
from streamledger.logging import get_logger

log = get_logger("cleaning")

EXPIRE_EVERY = 10_000  # messages between sweeps of the dedup window
LAG_EVERY = 500  # messages between lag updates


class CleaningService(Loop):
    def __init__(self, settings: CleaningSettings) -> None:
        super().__init__()
        self.settings = settings
        self.registry = SchemaRegistry.from_dir()
        self.rules = settings.rule_book()  # a bad rules file refuses the start

    async def start(self) -> None:
        s = self.settings
        # Topics and schemas before faust starts; the dedup changelog must have as many
        # partitions as the raw topic, which ingestion may have created with its own count.
        await kafka.provision(s.kafka_bootstrap, [kafka.spec(topics.SCHEMAS)] + [
            kafka.spec(role, name, partitions=s.cleaning_partitions) for role, name in (
                (topics.RAW, s.cleaning_raw_topic), (topics.CLEAN, s.cleaning_clean_topic),
                (topics.DEADLETTER, s.cleaning_deadletter_topic))])
        async with kafka.producer(s.kafka_bootstrap) as producer:  # also waits for the topic's metadata
            await self.registry.publish(producer, ["CleanEvent", "DeadLetter"])
        await self.registry.load_from_topic(s.kafka_bootstrap)
        partitions = len(await kafka.partitions_of(s.kafka_bootstrap, [s.cleaning_raw_topic]))
        self.app = build_app(s, AvroCodec(self.registry), self.rules, partitions)
        await self.app.start()
        log.info("consuming", extra={"raw": s.cleaning_raw_topic, "group": s.cleaning_group})

    async def run(self, stopping: asyncio.Event) -> None:
        """faust works in its own tasks: wait for the stop, or for faust to end on its own (a crash fails us)."""
        faust_ended = asyncio.ensure_future(self.app.wait_until_stopped())  # returns on a crash too
        asked = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({faust_ended, asked}, return_when=asyncio.FIRST_COMPLETED)
        for waiter in (faust_ended, asked):
            waiter.cancel()
        if self.app.crash_reason is not None:
            raise self.app.crash_reason

    async def stop(self) -> None:
        await self.app.stop()


class IdempotentProducer(faust_aiokafka.Producer):
    """faust's aiokafka producer with acks=all and idempotence, which faust sets only in transactions."""

    def _settings_extra(self) -> dict:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


class CleaningApp(faust.App):
    def _new_producer(self) -> IdempotentProducer:
        return IdempotentProducer(self.transport, loop=self.loop, beacon=self.beacon)


def ack_once_delivered(app: faust.App, event: faust.EventT, delivery: asyncio.Future) -> None:
    """Ack `event` (its offset may then be committed) once Kafka acknowledged its output; on a
    failed delivery leave it unacked, so nothing from its offset on is committed, and crash."""
    def settle(done: asyncio.Future) -> None:
        error = None if not done.cancelled() else asyncio.CancelledError("the delivery was cancelled")
        error = error or done.exception()
        if error is None:
            event.ack()
            return
        m = event.message
        log.error("output_not_delivered", extra={"partition": m.partition, "offset": m.offset, "error": str(error)})
        asyncio.ensure_future(app.crash(error))
    delivery.add_done_callback(settle)


def build_app(settings: CleaningSettings, codec: AvroCodec, rules: RuleBook, partitions: int) -> faust.App:
    settings.cleaning_data_dir.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
    app = CleaningApp(
        settings.cleaning_group, broker=f"kafka://{settings.kafka_bootstrap}",
        broker_credentials=kafka.faust_credentials(),  # SASL_SSL as the service's principal (settings)
        datadir=str(settings.cleaning_data_dir / settings.cleaning_group),
        store="memory://",  # the changelog topic is the durable copy of the dedup table
        key_serializer="raw", value_serializer="raw", topic_partitions=partitions, topic_replication_factor=1,
        producer_acks=-1, producer_compression_type="lz4", consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.cleaning_commit_interval_seconds,
        broker_session_timeout=settings.cleaning_session_timeout_seconds, web_enabled=False,
    )
    raw_topic = app.topic(settings.cleaning_raw_topic, key_type=bytes, value_type=bytes)
    output = {"clean": app.topic(settings.cleaning_clean_topic, key_type=bytes, value_type=bytes),
              "deadletter": app.topic(settings.cleaning_deadletter_topic, key_type=bytes, value_type=bytes)}
    seen = app.Table("dedup", partitions=partitions,
                     schema=faust.Schema(key_type=str, key_serializer="json", value_serializer="json"))
    window = DedupWindow(seen, window_ms=int(settings.cleaning_dedup_window_seconds * 1000))
    cleaner = Cleaner(codec, rules, window, max_message_bytes=settings.cleaning_max_message_bytes)

    @app.agent(raw_topic, name="clean")
    async def clean(stream: faust.StreamT) -> None:
        handled = 0
        async for event in stream.noack().events():  # acked by hand: see the module's docstring
            m = event.message  # faust gives the timestamp in seconds, as a float
            message = Consumed(m.tp, m.topic, m.partition, m.offset, m.key, m.value, round(m.timestamp * 1000))
            outcome = counted_handle(cleaner, message)
            if outcome.value is None:
                event.ack()  # a dropped duplicate has nothing to deliver
            else:
                delivery = await output[outcome.kind].send(key=outcome.key, value=outcome.value)
                ack_once_delivered(app, event, delivery)
            handled += 1
            if handled % LAG_EVERY == 0 and (highwater := app.consumer.highwater(TP(m.topic, m.partition))) is not None:
                LAG.labels(str(m.partition)).set(max(highwater - m.offset - 1, 0))
            if handled % EXPIRE_EVERY == 0:
                # Inside the stream, so the table's tombstones go to this partition's changelog.
                EXPIRED.inc(window.expire(message.timestamp_ms, partition=m.partition))

    return app


def main() -> None:
    serve("cleaning", CleaningSettings, CleaningService)
