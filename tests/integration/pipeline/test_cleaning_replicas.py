"""Two cleaning replicas share a 4-partition raw topic; the dedup window follows its partitions
through a kill -9 and a restart.

Replicas a and b run as one consumer group. Fresh events stream in; a is killed with SIGKILL,
b takes its partitions over, and then copies of events already cleaned (same tenant and id,
new offsets, so the same partitions) arrive with more fresh events; a comes back, the group
rebalances again, and a third wave of copies and fresh events arrives. At the end every
fresh event is on the clean topic, and no copy is: two clean records of one event may only
be the same raw message emitted twice (a replay after the kill, at least once), never two
raw messages, which would mean a replica handled a partition without its dedup entries.

Run it alone: `flock /tmp/fault.lock pytest tests/integration/pipeline/test_cleaning_replicas.py`.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streamledger import kafka
from streamledger.avro import AvroCodec, SchemaRegistry
from tests.integration.pipeline import reference
from tests.integration.pipeline.conftest import ServiceProcess, caught_up, read_all, stop_all, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.timeout(180)]

CODEC = AvroCodec(SchemaRegistry.from_dir())
PARTITIONS = 4
WAVE = 1_500  # fresh events per wave


def raw(n: int) -> tuple[bytes, bytes]:
    event, _ = reference.valid_event(n, tenant=("acme", "globex")[n % 2])
    return event["event_id"].encode(), CODEC.encode("RawEvent", event)


async def produce(bootstrap: str, topic: str, numbers: list[int]) -> None:
    """Keyed by event id: a copy of an event lands on the partition of its first."""
    async with kafka.producer(bootstrap) as producer:
        for start in range(0, len(numbers), 300):
            for n in numbers[start:start + 300]:
                key, value = raw(n)
                await producer.send(topic, key=key, value=value)
            await producer.flush()
            await asyncio.sleep(0.02)


async def test_the_dedup_window_follows_partitions_between_replicas(bootstrap, pipeline_env, tmp_path: Path) -> None:
    started = time.monotonic()
    raw_topic, clean_topic = pipeline_env["STREAMLEDGER_CLEANING_RAW_TOPIC"], pipeline_env["STREAMLEDGER_CLEANING_CLEAN_TOPIC"]
    group = pipeline_env["STREAMLEDGER_CLEANING_GROUP"]
    pipeline_env["STREAMLEDGER_CLEANING_SESSION_TIMEOUT_SECONDS"] = "10"  # the killed member is let go sooner
    pipeline_env["STREAMLEDGER_CLEANING_BATCH_SIZE"] = "300"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka.connection())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(raw_topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    replicas = {name: ServiceProcess("cleaning", pipeline_env, (tmp_path / name)) for name in ("a", "b")}
    for name, replica in replicas.items():
        (tmp_path / name).mkdir()
        replica.start()
    a, b = replicas["a"], replicas["b"]

    def logs() -> str:
        return "\n".join(f"--- {name} ---\n{r.tail()}" for name, r in replicas.items())

    async def cleaned() -> dict[str, set[tuple[int, int]]]:
        """event id -> the raw positions its clean records came from."""
        where: dict[str, set[tuple[int, int]]] = defaultdict(set)
        for record in await read_all(bootstrap, clean_topic):
            event = CODEC.decode(record.value, reader="CleanEvent")
            where[event["event_id"]].add((event["raw_partition"], event["raw_offset"]))
        return where

    async def all_out(fresh: range) -> bool:
        assert b.alive(), logs()
        ids = await cleaned()
        return all(raw(n)[0].decode() in ids for n in fresh)

    try:
        await a.logged('"event": "partitions_held"')
        await b.logged('"event": "partitions_held"')
        first = range(0, WAVE)
        await produce(bootstrap, raw_topic, list(first))
        await wait_until(lambda: all_out(first), 60, "the first wave cleaned", logs)
        a.kill9()

        second = range(WAVE, 2 * WAVE)
        copies = list(range(0, WAVE, 3))  # copies of a third of the first wave, on every partition
        await produce(bootstrap, raw_topic, copies + list(second))
        await wait_until(lambda: all_out(second), 90, "the second wave cleaned by b alone", logs)

        a.start()
        await a.logged('"event": "partitions_held"')
        third = range(2 * WAVE, 3 * WAVE)
        copies = list(range(1, 2 * WAVE, 3))  # copies from both earlier waves, after the rebalance
        await produce(bootstrap, raw_topic, copies + list(third))
        await wait_until(lambda: all_out(third), 90, "the third wave cleaned", logs)
        await wait_until(lambda: caught_up(bootstrap, group, [raw_topic]), 30, "the group at the end of the raw topic",
                         logs)
        where = await cleaned()
    finally:
        stop_all(replicas.values())

    fresh = {raw(n)[0].decode() for n in range(3 * WAVE)}
    assert set(where) == fresh
    copied_twice = {event: positions for event, positions in where.items() if len(positions) > 1}
    assert not copied_twice, (f"{len(copied_twice)} events cleaned from two raw messages (a copy not deduplicated), "
                              f"e.g. {sorted(copied_twice.items())[:3]}")
    held = [line for r in replicas.values() for path in sorted(r.log_dir.glob("*.log"))
            for line in path.read_text().splitlines() if '"partitions_held"' in line]
    print(f"{3 * WAVE} events in three waves, {len(held)} handovers, {time.monotonic() - started:.0f}s")
