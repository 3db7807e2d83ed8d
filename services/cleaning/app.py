"""`streamledger serve cleaning`: events.raw -> events.clean | events.deadletter.

Data path, one batch at a time (`cleaning_batch_size` messages at most):
1. poll the raw topic as a member of the consumer group (replicas share its partitions);
2. `Cleaner.handle` each message: decode, clean, hash, dedup, encode (`cleaner.py`);
3. append every output, and every change of the dedup window, to a producer batch of its
   partition (`Outbox`), send them all, and wait until Kafka acknowledged each (acks=all,
   idempotent producer, so the broker drops the copies its own retries would add);
4. only then commit the batch's offsets.
A delivery that fails stops the service before the commit: a restart re-reads from the last
commit (at least once), and the re-read messages are emitted again (keyed by event id, so
downstream stores converge).

The dedup window (`dedup.py`) lives in memory, one entry per event within the window, and
is kept durable in the compacted changelog topic `<group>-dedup-changelog`, partition for
partition with the raw topic, one record per batch and partition (`Changelog`). When the
group assigns this replica a partition, its entries are read back from the changelog before
any of its messages is handled; when a
partition is revoked, the batch in hand is finished and committed first, then its entries
are dropped. A message re-read after a crash is recognised by its partition and offset and
emitted again, not dropped as a duplicate of itself.

Why not faust any more: measured in `bench/pipeline.py`, faust-streaming's per-event path
(one `send` and one ack callback per event) cost about 0.7 CPU-seconds per 1,000 events
against 0.04 for the handler, and a kill -9 was seen to lose events in flight. Batches built
per partition cost aiokafka a few microseconds per record.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from collections import deque
from collections.abc import Iterator, MutableMapping

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from services.cleaning.cleaner import Cleaner
from services.cleaning.dedup import DedupWindow, Entry
from services.cleaning.metrics import BATCH_SECONDS, EXPIRED, LAG, handle_batch
from services.cleaning.settings import CleaningSettings
from streamledger import kafka
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.core.records import Consumed
from streamledger.kafka import topics
from streamledger.lifecycle import Loop, serve
from streamledger.logging import get_logger

log = get_logger("cleaning")


class CleaningService(Loop):
    def __init__(self, settings: CleaningSettings) -> None:
        super().__init__()
        self.settings = settings
        self.registry = SchemaRegistry.from_dir()
        self.rules = settings.rule_book()  # a bad rules file refuses the start
        self.batch_lock = asyncio.Lock()  # a rebalance waits for the batch in hand
        self.next_expiry = 0.0
        self.in_flight: deque[asyncio.Future] = deque()
        """Batches sent, waiting for their acknowledgements and commit, oldest first."""
        self.active: set[TopicPartition] = set()
        """The raw partitions the group gives this replica now."""
        self.latest_ms: dict[TopicPartition, int] = {}
        """Each partition's time: the timestamp of the last message read from it (the dedup
        window is measured in message time, so a backfill of old events is deduplicated too)."""

    async def start(self) -> None:
        s = self.settings
        await kafka.provision(s.kafka_bootstrap, [kafka.spec(topics.SCHEMAS)] + [
            kafka.spec(role, name, partitions=s.cleaning_partitions) for role, name in (
                (topics.RAW, s.cleaning_raw_topic), (topics.CLEAN, s.cleaning_clean_topic),
                (topics.DEADLETTER, s.cleaning_deadletter_topic))])
        # The changelog has a partition for each raw partition (ingestion may have created the
        # raw topic with its own count).
        partitions = len(await kafka.partitions_of(s.kafka_bootstrap, [s.cleaning_raw_topic]))
        await kafka.provision(s.kafka_bootstrap, [changelog_spec(s.changelog_topic, partitions)])
        changelog_partitions = len(await kafka.partitions_of(s.kafka_bootstrap, [s.changelog_topic]))
        if changelog_partitions < partitions:
            raise ValueError(f"{s.changelog_topic} has {changelog_partitions} partitions but {s.cleaning_raw_topic} "
                             f"has {partitions}: add partitions to the changelog (each raw partition's dedup "
                             "window is kept in the changelog partition of the same number)")
        self.producer = kafka.producer(s.kafka_bootstrap, linger_ms=20)
        await self.producer.start()
        await self.registry.publish(self.producer, ["CleanEvent", "DeadLetter"])
        await self.registry.load_from_topic(s.kafka_bootstrap)
        self.changelog = Changelog(s.changelog_topic)
        window = DedupWindow(self.changelog, window_ms=int(s.cleaning_dedup_window_seconds * 1000))
        self.cleaner = Cleaner(AvroCodec(self.registry), self.rules, window, max_message_bytes=s.cleaning_max_message_bytes)
        self.reader = kafka.consumer(s.kafka_bootstrap)  # group-less: reads changelog partitions back
        await self.reader.start()
        self.inbox = kafka.consumer(s.kafka_bootstrap, group_id=s.cleaning_group, max_poll_records=s.cleaning_batch_size,
                                    session_timeout_ms=int(s.cleaning_session_timeout_seconds * 1000))
        await self.inbox.start()  # before subscribing, so it does not wait for the group's first assignment
        self.inbox.subscribe([s.cleaning_raw_topic], listener=Rebalance(self))
        log.info("consuming", extra={"raw": s.cleaning_raw_topic, "group": s.cleaning_group})

    async def run(self, stopping: asyncio.Event) -> None:
        wait_ms = int(self.settings.cleaning_batch_wait_seconds * 1000)
        while not stopping.is_set():
            polled = await self.inbox.getmany(timeout_ms=wait_ms, max_records=self.settings.cleaning_batch_size)
            async with self.batch_lock:
                await self.hold_assigned()
                if polled:
                    await self.clean(polled)
                if time.monotonic() >= self.next_expiry:
                    await self.expire()

    async def hold_assigned(self) -> None:
        """Hold the dedup entries of exactly the partitions the group assigns us now: forget
        those it gave another member, read newly assigned ones back from the changelog.

        Done here, before handling a batch, and not in the rebalance listener: aiokafka starts
        fetching a new assignment while its listener still runs.
        """
        self.active = set(self.inbox.assignment())
        numbers = {tp.partition for tp in self.active}
        gone, new = self.changelog.held - numbers, numbers - self.changelog.held
        if not gone and not new:
            return
        self.changelog.forget(gone)
        started = time.monotonic()
        entries = await self.changelog.load(self.reader, self.settings.kafka_bootstrap, new) if new else 0
        log.info("partitions_held", extra={"partitions": sorted(numbers), "loaded": sorted(new), "forgotten": sorted(gone),
                                           "dedup_entries": entries, "seconds": round(time.monotonic() - started, 3)})

    async def clean(self, polled: dict[TopicPartition, list]) -> None:
        """Handle one polled batch and send its outputs; its offsets are committed by `settle`."""
        s = self.settings
        outbox = await Outbox.to(self.producer, [s.cleaning_clean_topic, s.cleaning_deadletter_topic])
        output = {"clean": s.cleaning_clean_topic, "deadletter": s.cleaning_deadletter_topic}
        offsets = {}
        for tp, records in polled.items():
            if tp not in self.active:  # revoked since the poll: its next owner re-reads it from the commit
                continue
            messages = [Consumed(tp, m.topic, m.partition, m.offset, m.key, m.value, m.timestamp) for m in records]
            for outcome in handle_batch(self.cleaner, messages):
                if outcome.value is not None:
                    outbox.add(output[outcome.kind], outcome.key, outcome.value)
            await outbox.send_full()
            offsets[tp] = records[-1].offset + 1
            self.latest_ms[tp] = max(self.latest_ms.get(tp, 0), records[-1].timestamp)
            highwater = self.inbox.highwater(tp)
            if highwater is not None:
                LAG.labels(str(tp.partition)).set(max(highwater - offsets[tp], 0))
        await self.send(outbox, offsets)

    async def send(self, outbox: Outbox, offsets: dict[TopicPartition, int]) -> None:
        """Send the outbox with the dedup window's changes, and have `settle` commit `offsets` once
        Kafka acknowledged them and every earlier batch is committed. The next batch is handled
        meanwhile; at most `cleaning_batches_in_flight` wait for their acknowledgements."""
        for partition, key, value in self.changelog.drain():
            outbox.add(self.changelog.topic, key, value, partition=partition)
        deliveries = await outbox.send_all()
        earlier = self.in_flight[-1] if self.in_flight else None
        self.in_flight.append(asyncio.ensure_future(self.settle(deliveries, offsets, earlier, time.perf_counter())))
        while len(self.in_flight) > self.settings.cleaning_batches_in_flight or (
                self.in_flight and self.in_flight[0].done()):
            await self.in_flight.popleft()  # a failed delivery is raised here, and stops the service

    async def settle(self, deliveries: list[asyncio.Future], offsets: dict[TopicPartition, int],
                     earlier: asyncio.Future | None, started: float) -> None:
        try:
            await asyncio.gather(*deliveries)
        except Exception as exc:
            log.error("output_not_delivered", extra={"error": f"{type(exc).__name__}: {exc}"})
            raise  # neither this batch nor any later one is committed; the restart re-reads them
        if earlier is not None:
            await earlier  # offsets are committed in the order the batches were read
        await kafka.commit(self.inbox, offsets)
        BATCH_SECONDS.observe(time.perf_counter() - started)

    async def settled(self) -> None:
        """Wait until every batch sent is acknowledged and committed."""
        while self.in_flight:
            await self.in_flight.popleft()

    async def expire(self) -> None:
        """Forget entries whose window ended, in each partition's time, and delete (by tombstone)
        the changelog segments all of whose entries have."""
        self.next_expiry = time.monotonic() + self.settings.cleaning_expire_every_seconds
        window_ms = self.cleaner.dedup.window_ms
        forgotten = 0
        for tp in self.active:
            if tp in self.latest_ms:
                forgotten += self.cleaner.dedup.expire(self.latest_ms[tp], partition=tp.partition)
                self.changelog.expire_segments(tp.partition, self.latest_ms[tp] - window_ms)
        EXPIRED.inc(forgotten)
        if self.changelog.tombstones:
            await self.send(Outbox(self.producer), {})

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        """Finish and commit the batch in hand before the group moves the partitions. Their
        entries stay in memory until the next batch sees whether they came back to us (nobody
        else can have handled them in between)."""
        async with self.batch_lock:
            await self.settled()
            self.active -= partitions
        log.info("partitions_revoked", extra={"partitions": sorted(tp.partition for tp in partitions)})

    async def stop(self) -> None:
        if hasattr(self, "inbox"):
            async with self.batch_lock:
                await self.settled()
        for client in ("inbox", "reader", "producer"):  # leave the group first; the producer flushes last
            if hasattr(self, client):
                await getattr(self, client).stop()


class Rebalance(ConsumerRebalanceListener):
    def __init__(self, service: CleaningService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked) -> None:
        await self.service.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        """Nothing here: the run loop takes the assignment up before its next batch."""


SEGMENT_ENTRIES = 5000
"""Most dedup entries in one changelog record (about 200 KiB)."""


def changelog_spec(name: str, partitions: int) -> topics.TopicSpec:
    """The dedup window's changelog: compacted, one partition per raw partition."""
    return topics.TopicSpec(name, partitions=partitions, compacted=True)


class Changelog(MutableMapping[str, Entry]):
    """The dedup window's entries in memory, written to the changelog topic in segments.

    The entries a batch adds for one raw partition go to that partition of the changelog as one
    record, a segment (at most `SEGMENT_ENTRIES` entries): its key is `<partition>:<offset>`,
    the first raw offset among them, its value the JSON list of `[scoped id, offset, first-seen
    ms]`. Read back in order, a later entry of an id replaces an earlier one. A segment whose
    newest entry has left the window is deleted by a tombstone (`expire_segments`): entries
    forgotten in memory need no record of their own. One record per batch and partition instead
    of one per event: the changelog costs the service a few records per batch.
    """

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.entries: dict[str, Entry] = {}
        self.added: dict[int, list[tuple[str, int, int]]] = {}
        """Per raw partition, the entries added since the last drain."""
        self.segments: dict[bytes, tuple[int, int]] = {}
        """The live segments of the partitions held: key -> (raw partition, newest first-seen ms)."""
        self.tombstones: list[bytes] = []
        self.held: set[int] = set()
        """The raw partitions whose entries are in memory."""

    def __getitem__(self, key: str) -> Entry:
        return self.entries[key]

    def get(self, key: str, default=None):
        return self.entries.get(key, default)

    def __setitem__(self, key: str, entry: Entry) -> None:
        self.entries[key] = entry
        partition, offset, first_ms = entry
        added = self.added.get(partition)
        if added is None:
            added = self.added[partition] = []
        added.append((key, offset, first_ms))

    def __delitem__(self, key: str) -> None:
        del self.entries[key]  # its segment goes when all of that segment has left the window

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def items(self):
        return self.entries.items()

    def drain(self) -> list[tuple[int, bytes, bytes | None]]:
        """The changelog records (partition, key, value) of what changed since the last drain:
        the tombstones of expired segments first, then the new segments."""
        records: list[tuple[int, bytes, bytes | None]] = [
            (int(key.split(b":", 1)[0]), key, None) for key in self.tombstones]
        for partition, added in self.added.items():
            for start in range(0, len(added), SEGMENT_ENTRIES):
                part = added[start:start + SEGMENT_ENTRIES]
                key = b"%d:%d" % (partition, part[0][1])
                self.segments[key] = (partition, max(first_ms for _, _, first_ms in part))
                records.append((partition, key, json.dumps(part, separators=(",", ":")).encode()))
        self.added, self.tombstones = {}, []
        return records

    def expire_segments(self, partition: int, horizon_ms: int) -> int:
        """Mark for deletion the segments of `partition` whose every entry was first seen before
        `horizon_ms`; returns how many."""
        stale = [key for key, (p, newest) in self.segments.items() if p == partition and newest < horizon_ms]
        for key in stale:
            del self.segments[key]
        self.tombstones.extend(stale)
        return len(stale)

    def forget(self, partitions: set[int]) -> None:
        """Drop the entries of raw partitions this replica no longer holds (not a change: the
        changelog keeps them for the replica that takes the partitions over)."""
        if partitions:
            self.entries = {key: entry for key, entry in self.entries.items() if entry[0] not in partitions}
            self.segments = {key: seg for key, seg in self.segments.items() if seg[0] not in partitions}
        self.held -= partitions

    async def load(self, reader: AIOKafkaConsumer, bootstrap: str, partitions: set[int]) -> int:
        """Read `partitions` of the changelog to their end into memory; returns the entries now held."""
        live: dict[bytes, tuple[int, bytes]] = {}  # segment key -> its last value, in the order last written
        async for records in kafka.read_to_end(reader, bootstrap, self.topic, timeout_s=None, partitions=partitions):
            for record in records:
                live.pop(record.key, None)
                if record.value is not None:
                    live[record.key] = (record.partition, record.value)
        reader.unsubscribe()
        for key, (partition, value) in live.items():
            self.apply(key, partition, value)
        self.held |= partitions
        return sum(1 for entry in self.entries.values() if entry[0] in partitions)

    def apply(self, key: bytes, partition: int, value: bytes) -> None:
        """One segment read back: its entries into memory (replacing older ones of the same ids)."""
        try:
            part = json.loads(value)
            entries = {str(event): [partition, int(offset), int(first_ms)] for event, offset, first_ms in part}
        except (ValueError, TypeError):
            log.warning("changelog_record_skipped", extra={"key": key.decode(errors="replace"), "partition": partition})
            return
        self.entries.update(entries)
        if entries:
            self.segments[key] = (partition, max(entry[2] for entry in entries.values()))


class Outbox:
    """Records batched per (topic, partition) as aiokafka's producer batches: `send_full` sends
    those that filled up, `send_all` the rest, and both keep the deliveries (futures set when
    Kafka acknowledged a batch).

    A record without a partition goes to the partition its key's CRC-32 picks (cheap, and the
    same for the same key; nothing downstream depends on which partition holds an event).
    """

    def __init__(self, producer: AIOKafkaProducer, partitions: dict[str, int] | None = None) -> None:
        self.producer = producer
        self.partitions = partitions or {}
        """How many partitions each output topic has (`to` asks the producer's metadata)."""
        self.batches: dict[tuple[str, int], object] = {}
        self.full: list[tuple[str, int, object]] = []
        self.deliveries: list[asyncio.Future] = []

    @classmethod
    async def to(cls, producer: AIOKafkaProducer, topics: list[str]) -> Outbox:
        """An outbox for records of `topics` (and records given their partition)."""
        return cls(producer, {topic: len(await producer.partitions_for(topic)) for topic in topics})

    def add(self, topic: str, key: bytes, value: bytes | None, partition: int | None = None) -> None:
        if partition is None:
            partition = zlib.crc32(key) % self.partitions[topic]
        batch = self.batches.get((topic, partition))
        if batch is None:
            batch = self.batches[topic, partition] = self.producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is None:  # full: to be sent, start another
            self.full.append((topic, partition, batch))
            batch = self.batches[topic, partition] = self.producer.create_batch()
            batch.append(key=key, value=value, timestamp=None)  # an empty batch takes any one record

    async def send_full(self) -> None:
        full, self.full = self.full, []
        for topic, partition, batch in full:
            self.deliveries.append(await self.producer.send_batch(batch, topic, partition=partition))

    async def send_all(self) -> list[asyncio.Future]:
        """Send what is left; the deliveries of everything this outbox sent."""
        self.full.extend((topic, partition, batch) for (topic, partition), batch in self.batches.items())
        self.batches = {}
        await self.send_full()
        deliveries, self.deliveries = self.deliveries, []
        return deliveries


def main() -> None:
    serve("cleaning", CleaningSettings, CleaningService)
