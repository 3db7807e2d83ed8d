"""Kafka producers and consumers with the delivery guarantees ARCHITECTURE.md asks for.

    async with producer(bootstrap) as out:            # idempotent, acks=all
        await out.send_and_wait(topic, value)
    async with consumer(bootstrap, topic, group_id="storage") as inbox:
        batches = await inbox.getmany(timeout_ms=500)
        ...                                            # handle, and have the outputs acknowledged
        await commit(inbox, offsets)                   # only then move the group's offsets
    async with consumer(bootstrap) as reader:          # no group: read a compacted topic whole
        async for records in read_to_end(reader, bootstrap, topics.SNAPSHOTS):
            ...
    async with admin(bootstrap) as cluster:            # topics, groups and their offsets
        groups = await cluster.list_consumer_groups()

Consumers never commit on their own (`enable_auto_commit=False`): a service commits with
`commit` once what it made of the records is durable (at-least-once).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CommitFailedError, IllegalStateError

from streamledger.logging import get_logger

log = get_logger("kafka")


def producer(bootstrap: str, **overrides) -> AIOKafkaProducer:
    """An idempotent producer with acks=all, batching and compression (use it with `async with`)."""
    options = dict(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        compression_type="lz4",
        linger_ms=5,
        max_batch_size=256 * 1024,
        request_timeout_ms=30_000,
    )
    options.update(overrides)
    return AIOKafkaProducer(**options)


def consumer(bootstrap: str, *topics: str, group_id: str | None = None, max_fetch_bytes: int | None = None,
             **overrides) -> AIOKafkaConsumer:
    """A consumer that commits only when told (`commit`), from the earliest offset of a new group.

    `topics` subscribes (with `group_id`, the group balances partitions); none: assign by hand
    (`read_to_end`). `max_fetch_bytes` raises the fetch limits for topics of large records.
    """
    options = dict(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False,
                   auto_offset_reset="earliest")
    if max_fetch_bytes is not None:
        options.update(fetch_max_bytes=max_fetch_bytes, max_partition_fetch_bytes=max_fetch_bytes)
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


@contextlib.asynccontextmanager
async def admin(bootstrap: str, **overrides) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client, closed on leaving the `async with`."""
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **overrides)
    await client.start()
    try:
        yield client
    finally:
        await client.close()


async def commit(consumer: AIOKafkaConsumer, offsets: Mapping[TopicPartition, int]) -> bool:
    """Commit `offsets` (partition -> next offset to read); False when the group took them away.

    After a rebalance the partitions belong to another member, which re-reads from the last
    commit; every StreamLedger consumer's outputs are idempotent, so that is harmless.
    """
    if not offsets:
        return True
    try:
        await consumer.commit(dict(offsets))
    except (CommitFailedError, IllegalStateError) as exc:
        log.warning("commit_skipped", extra={"error": str(exc)})
        return False
    return True


async def partitions_of(bootstrap: str, topics: list[str], timeout_s: float = 30.0) -> list[tuple[str, int]]:
    """Every partition of `topics`, once the cluster describes each with at least one partition.

    A topic created a moment ago can be described before its partitions are ready, so this
    asks again until each has partitions or the timeout passes (then `TimeoutError`).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                described = await admin.describe_topics(list(topics))
                found = {d["topic"]: sorted(p["partition"] for p in d["partitions"]) for d in described
                         if d["error_code"] == 0}
                if all(found.get(t) for t in topics):
                    return [(t, p) for t in topics for p in found[t]]
                await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def read_to_end(consumer: AIOKafkaConsumer, bootstrap: str, topic: str,
                      timeout_s: float | None = 30.0) -> AsyncIterator[list[ConsumerRecord]]:
    """Assign every partition of `topic` to the started, group-less `consumer` from the beginning,
    and yield the records in fetched batches until each partition reaches the end offset it had
    when the call began (`TimeoutError` if that takes longer than `timeout_s`).

    The consumer stays assigned where the reading stopped, so a caller can go on following the
    topic live with `getmany`. Tombstones (records without a value) are yielded too.
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    tps = [TopicPartition(t, p) for t, p in await partitions_of(bootstrap, [topic], timeout_s or 30.0)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    end = await consumer.end_offsets(tps)
    pending = {tp for tp in tps if end[tp] > 0}
    while pending:
        if deadline is not None and loop.time() > deadline:
            raise TimeoutError(f"{topic}: not read to its end within {timeout_s} s")
        batches = await consumer.getmany(*pending, timeout_ms=500)
        for records in batches.values():
            if records:
                yield records
        pending = {tp for tp in pending if await consumer.position(tp) < end[tp]}
