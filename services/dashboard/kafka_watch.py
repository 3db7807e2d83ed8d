"""The dashboard's read-only view of Kafka: end offsets, consumer groups, and the feed topics.

It joins no consumer group (partitions are assigned by hand, nothing is committed), reads
the busy topics only by their end offsets, and decodes just the small feed topics in
bounded batches, so it never slows the pipeline or moves anyone's offsets. Kafka being
away is shown on the page and retried (`reconnect.keep_connected`, bounded and counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from services.dashboard.board import Board
from services.dashboard.lag import Partition
from services.dashboard.reconnect import keep_connected
from services.dashboard.settings import DashboardSettings
from streamledger import kafka, metrics
from streamledger.avro import AvroCodec, UnknownFingerprintError
from streamledger.logging import get_logger

log = get_logger("dashboard")
RECORDS = metrics.counter("dashboard", "records", "Feed-topic records read, by topic", ("topic",))
UNDECODABLE = metrics.counter("dashboard", "undecodable", "Feed-topic records that could not be shown, by topic",
                              ("topic",))
RECONNECTS = metrics.counter("dashboard", "kafka_reconnects", "Times the Kafka reader lost Kafka and started again")

TOPOLOGY_EVERY_S = 10.0
"""How often topics' partitions and the list of groups are looked up again."""
SCHEMA_RELOAD_EVERY_S = 30.0
END_OFFSETS_TIMEOUT_S = 10.0
EXPECTED = (KafkaError, OSError, TimeoutError)
"""How Kafka being down or unreachable shows: retried; anything else is a bug and stops the dashboard."""


@dataclass
class KafkaSession:
    admin: AIOKafkaAdminClient
    consumer: AIOKafkaConsumer
    opened: contextlib.AsyncExitStack

    async def close(self) -> None:
        await self.opened.aclose()


class KafkaWatch:
    def __init__(self, settings: DashboardSettings, board: Board, codec: AvroCodec) -> None:
        self.settings = settings
        self.board = board
        self.codec = codec
        self.partitions: dict[str, list[int]] = {}
        self.positions: dict[TopicPartition, int] = {}
        """Next offset to read per feed partition, so a reconnect resumes instead of re-reading."""
        self.relevant_groups: set[str] = set()
        self.checked_groups: dict[str, float] = {}
        self.schemas_loaded_at = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Watch until `stop` is set; Kafka being down is shown on the page and retried, up to
        `dashboard_kafka_retry_attempts` tries in a row (then the last error propagates)."""
        await keep_connected(self._connect, self._follow, stop, self.settings.kafka_retry(),
                             is_transient=lambda exc: isinstance(exc, EXPECTED), lost=self._lost)

    def _lost(self, exc: BaseException) -> None:
        self.board.kafka_unreachable(_error_text(exc))
        RECONNECTS.inc()
        log.warning("kafka_unreachable", extra={"error": _error_text(exc)})

    async def _connect(self) -> KafkaSession:
        bootstrap = self.settings.kafka_bootstrap
        self.partitions = {}  # a new consumer starts with no assignment
        async with contextlib.AsyncExitStack() as opened:
            admin = await opened.enter_async_context(kafka.admin(bootstrap, request_timeout_ms=5000))
            consumer = await opened.enter_async_context(
                kafka.consumer(bootstrap, request_timeout_ms=5000, max_partition_fetch_bytes=256 * 1024))
            await self._load_schemas()
            await self._refresh_topology(admin, consumer)
            return KafkaSession(admin, consumer, opened.pop_all())

    async def _follow(self, session: KafkaSession, stop: asyncio.Event) -> None:
        loops = [self._offsets_loop(session.admin, session.consumer, stop), self._groups_loop(session.admin, stop),
                 self._feed_loop(session.consumer, stop)]
        tasks = [asyncio.create_task(loop) for loop in loops]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raise a loop's failure so `run` can show and retry it
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> bool:
        """Wait `seconds` or until stop; True when stopping."""
        try:
            await asyncio.wait_for(stop.wait(), seconds)
            return True
        except TimeoutError:
            return False

    # -- topology ----------------------------------------------------------------------------

    async def _refresh_topology(self, admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer) -> None:
        described = await admin.describe_topics(self.settings.watched_topics())
        partitions = {d["topic"]: sorted(p["partition"] for p in d["partitions"])
                      for d in described if not d["error_code"] and d["partitions"]}
        self.partitions = partitions
        watched = {TopicPartition(t, p) for t, ps in partitions.items() for p in ps}
        new = watched - consumer.assignment()
        if not new:
            return
        feed_topics = set(self.settings.feed_topics())
        for tp in consumer.assignment():  # re-assigning forgets positions: keep them
            if tp.topic in feed_topics:
                self.positions[tp] = await consumer.position(tp)
        # Every watched partition is assigned, so the consumer keeps metadata (leaders) for
        # all of them and end offsets stay cheap; those only counted are paused: never fetched.
        consumer.assign(sorted(consumer.assignment() | new))
        consumer.pause(*[tp for tp in consumer.assignment() if tp.topic not in feed_topics])
        new_feed = [tp for tp in consumer.assignment() if tp.topic in feed_topics]
        if new_feed:
            # Start near the end: the page shows the latest records, not the whole history.
            begin = await consumer.beginning_offsets(new_feed)
            end = await consumer.end_offsets(new_feed)
            for tp in new_feed:
                tail = max(begin[tp], end[tp] - self.settings.dashboard_feed_tail)
                resume = self.positions.get(tp)
                consumer.seek(tp, resume if resume is not None and begin[tp] <= resume <= end[tp] else tail)

    async def _load_schemas(self) -> None:
        now = time.monotonic()
        if now - self.schemas_loaded_at < SCHEMA_RELOAD_EVERY_S:
            return
        self.schemas_loaded_at = now
        learned = await self.codec.registry.load_from_topic(self.settings.kafka_bootstrap, timeout_s=5.0)
        if learned:
            log.info("schemas_learned", extra={"count": learned})

    # -- loops -------------------------------------------------------------------------------

    async def _offsets_loop(self, admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        topology_at = time.monotonic()
        while not stop.is_set():
            if time.monotonic() - topology_at > TOPOLOGY_EVERY_S or not self.partitions:
                await self._refresh_topology(admin, consumer)
                await self._load_schemas()  # picks up writer schemas published since the last look
                topology_at = time.monotonic()
            tps = [TopicPartition(t, p) for t, ps in self.partitions.items() for p in ps]
            if tps:
                async with asyncio.timeout(END_OFFSETS_TIMEOUT_S):  # not wait_for: it can lose a cancellation
                    ends = await consumer.end_offsets(tps)
                self.board.observe_offsets(time.time(), {(tp.topic, tp.partition): o for tp, o in ends.items()})
            if await self._sleep(stop, self.settings.dashboard_tick_seconds):
                return

    async def _groups_loop(self, admin: AIOKafkaAdminClient, stop: asyncio.Event) -> None:
        watched = set(self.settings.watched_topics())
        while not stop.is_set():
            now = time.monotonic()
            listed = {group for group, _ in await admin.list_consumer_groups()}
            for gone in self.relevant_groups - listed:
                self.relevant_groups.discard(gone)
                self.board.forget_group(gone)
            # A group is shown once it has committed on a watched topic; the others are
            # looked at again now and then, not every tick (a shared broker has many).
            self.checked_groups = {g: t for g, t in self.checked_groups.items() if g in listed}
            recheck = self.settings.dashboard_group_recheck_seconds
            due = [g for g in listed - self.relevant_groups if now - self.checked_groups.get(g, -recheck) >= recheck]
            for group in sorted(self.relevant_groups) + due:
                self.checked_groups[group] = now
                try:
                    offsets = await admin.list_consumer_group_offsets(group)
                except KafkaError as exc:
                    # One group being deleted or moving coordinator must not blank the page.
                    log.info("group_unreadable", extra={"group": group, "error": _error_text(exc)})
                    continue
                committed: dict[Partition, int] = {(tp.topic, tp.partition): meta.offset
                                                   for tp, meta in offsets.items()
                                                   if tp.topic in watched and meta.offset >= 0}
                if not committed:
                    continue
                self.relevant_groups.add(group)
                try:
                    members, state = await self._describe(admin, group)
                except KafkaError as exc:
                    log.info("group_unreadable", extra={"group": group, "error": _error_text(exc)})
                    continue
                self.board.observe_group(time.time(), group, committed, members, state)
            if await self._sleep(stop, self.settings.dashboard_lag_seconds):
                return

    @staticmethod
    async def _describe(admin: AIOKafkaAdminClient, group: str) -> tuple[int, str]:
        (response,) = await admin.describe_consumer_groups([group])
        described = response.to_object()["groups"][0]
        return len(described["members"]), described["state"]

    async def _feed_loop(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not consumer.assignment():
                if await self._sleep(stop, self.settings.dashboard_tick_seconds):
                    return
                continue
            batches = await consumer.getmany(timeout_ms=500, max_records=self.settings.dashboard_batch_max)
            for tp, messages in batches.items():
                for message in messages:
                    self._take(tp.topic, message.value)
                if messages:
                    self.positions[tp] = messages[-1].offset + 1
            # Leave the broker and the event loop room between bounded batches.
            await asyncio.sleep(0.05)

    def _take(self, topic: str, value: bytes | None) -> None:
        if value is None:
            return  # a compaction tombstone
        RECORDS.labels(topic).inc()
        try:
            record = self.codec.decode(value)
            self.board.on_record(topic, record)
        except UnknownFingerprintError:
            UNDECODABLE.labels(topic).inc()
            self.board.on_undecodable(topic)
            self.schemas_loaded_at = min(self.schemas_loaded_at, time.monotonic() - SCHEMA_RELOAD_EVERY_S + 5)
        except (ValueError, KeyError, TypeError) as exc:
            # A record we cannot read is counted and shown, never a reason to stop watching.
            UNDECODABLE.labels(topic).inc()
            self.board.on_undecodable(topic)
            log.warning("undecodable_record", extra={"topic": topic, "error": _error_text(exc)})


def _error_text(exc: BaseException) -> str:
    """`Type: message`, once (aiokafka's messages often start with their type already)."""
    name, text = type(exc).__name__, str(exc)
    return text if text.startswith(name) else f"{name}: {text}"
