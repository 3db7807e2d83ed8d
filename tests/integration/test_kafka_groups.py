"""Consumer groups as every service forms them (`kafka.consumer`), on the local stack's broker:
a member joining or leaving costs the group one rebalance, and the partitions stay where they
were where balance allows (streamledger/kafka/assignor.py).

The first test is what two ledger replicas once lacked: their consumers offered two assignors,
aiokafka 0.14 joined once per assignor offered, and each second join changed the member's
metadata and so rebalanced the group again (the broker logs "Updating metadata for member ...
during CompletingRebalance"); with two members the rebalances could chase each other for ever,
one replica never getting its partitions. Offering two assignors again, the group's generation
after the second member joins is 4 here instead of 2.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer

from streamledger import kafka

pytestmark = pytest.mark.integration
PARTITIONS = 4


def held(member: AIOKafkaConsumer) -> set[int]:
    return {tp.partition for tp in member.assignment()}


def generation(member: AIOKafkaConsumer) -> int:
    return member._coordinator.generation


async def poll_until(members: list[AIOKafkaConsumer], done, timeout: float = 30) -> None:
    """Poll every member (as the services do) until `done()` holds."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out: {[(sorted(held(m)), generation(m)) for m in members]}"
        for member in members:
            await member.getmany(timeout_ms=50)


async def test_each_join_and_leave_is_one_rebalance_and_partitions_stay(bootstrap: str, unique: str) -> None:
    topic = f"test.groups.{unique}"
    await kafka.provision(bootstrap, [kafka.TopicSpec(topic, partitions=PARTITIONS)])
    group = f"test-groups-{unique}"
    a, b = (kafka.consumer(bootstrap, group_id=group, heartbeat_interval_ms=500) for _ in range(2))
    try:
        await a.start()
        a.subscribe([topic])
        await poll_until([a], lambda: held(a) == set(range(PARTITIONS)))
        alone = generation(a)

        await b.start()
        b.subscribe([topic])
        await poll_until([a, b], lambda: len(held(a)) == len(held(b)) == PARTITIONS // 2)
        settled = generation(a)
        assert settled == alone + 1 == generation(b), "one rebalance for one member joining"
        kept, theirs = held(a), held(b)
        # Several heartbeats later the group is still at that generation: nothing rejoins.
        until = time.monotonic() + 3
        await poll_until([a, b], lambda: time.monotonic() > until)
        assert generation(a) == generation(b) == settled and held(a) == kept

        await a.stop()  # leaves the group: b takes a's partitions and keeps its own
        await poll_until([b], lambda: held(b) == set(range(PARTITIONS)))
        assert generation(b) == settled + 1 and theirs <= held(b)
    finally:
        await asyncio.gather(a.stop(), b.stop())
