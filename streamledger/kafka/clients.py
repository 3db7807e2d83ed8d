"""Kafka producer and topic helpers with the delivery guarantees ARCHITECTURE.md asks for."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streamledger.kafka import topics


def reliable_producer(bootstrap: str, **overrides) -> AIOKafkaProducer:
    """An idempotent producer with acks=all, batching and compression.

    Use it as `async with reliable_producer(...) as producer:`.
    """
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


async def ensure_topics(bootstrap: str, names: Iterable[str], partitions: int = 1) -> None:
    """Create the topics that do not exist yet; compacted ones get cleanup.policy=compact."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(
                name,
                num_partitions=partitions,
                replication_factor=1,
                topic_configs={"cleanup.policy": "compact"} if name in topics.COMPACTED else {},
            )
            for name in dict.fromkeys(names)
            if name not in existing
        ]
        if new:
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass  # another service created it first
    finally:
        await admin.close()


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


async def ensure_compacted_topic(bootstrap: str, name: str, max_message_bytes: int) -> None:
    """Create `name` as a compacted topic if missing: each model keeps its latest snapshot forever."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if name not in set(await admin.list_topics()):
            try:
                config = {"cleanup.policy": "compact", "max.message.bytes": str(max_message_bytes)}
                await admin.create_topics([NewTopic(name, 1, 1, topic_configs=config)])
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()
