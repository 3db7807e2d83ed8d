"""kill -9 of the cleaning service right after it committed, under load: no raw event is lost.

Events stream into the raw topic while the cleaner runs; as soon as its consumer group's
committed offset moves (a commit just happened), the cleaner is killed with SIGKILL and
started again. Once it has committed the whole raw topic, every raw event must be on the
clean topic (valid ones) or the dead-letter topic (invalid ones), counted on the topics
themselves, not in MongoDB: duplicates are allowed (at least once), losses are not. A commit
past an output Kafka had not acknowledged would lose exactly those events.

Run it alone: `flock /tmp/fault.lock pytest tests/integration/pipeline/test_cleaning_commit_fault.py`.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streamledger import kafka
from streamledger.avro import AvroCodec, SchemaRegistry
from tests.integration.pipeline import reference
from tests.integration.pipeline.conftest import (
    caught_up,
    create_topics,
    read_all,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.timeout(90)]

CODEC = AvroCodec(SchemaRegistry.from_dir())
EVENTS = 5_000
INVALID_EVERY = 25  # every 25th raw event has a non-finite feature: a dead letter


def raw_messages() -> tuple[list[tuple[bytes, bytes]], set[str], set[str]]:
    """(key, value) in order, the valid event ids, the invalid ones."""
    messages, valid, invalid = [], set(), set()
    for n in range(EVENTS):
        if n % INVALID_EVERY == INVALID_EVERY - 1:
            raw = reference.non_finite_event(n)
            invalid.add(raw["event_id"])
        else:
            raw, _ = reference.valid_event(n, tenant=("acme", "globex")[n % 2])
            valid.add(raw["event_id"])
        messages.append((raw["event_id"].encode(), CODEC.encode("RawEvent", raw)))
    return messages, valid, invalid


async def test_a_kill_right_after_a_commit_loses_no_raw_event(bootstrap, pipeline_env, services) -> None:
    started = time.monotonic()
    raw_topic = pipeline_env["STREAMLEDGER_CLEANING_RAW_TOPIC"]
    group = pipeline_env["STREAMLEDGER_CLEANING_GROUP"]
    pipeline_env["STREAMLEDGER_CLEANING_BATCH_SIZE"] = "200"  # many commits while the stream runs
    pipeline_env["STREAMLEDGER_CLEANING_SESSION_TIMEOUT_SECONDS"] = "10"  # the killed member is let go sooner
    await create_topics(bootstrap, [raw_topic])
    messages, valid, invalid = raw_messages()
    cleaning = services("cleaning")
    await cleaning.logged('"event": "consuming"')

    async def produce() -> None:
        async with kafka.producer(bootstrap) as producer:
            for start in range(0, len(messages), 250):
                for key, value in messages[start:start + 250]:
                    await producer.send(raw_topic, key=key, value=value)
                await producer.flush()
                await asyncio.sleep(0.02)  # a live stream, not one burst

    producing = asyncio.create_task(produce())
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka.connection())
    await admin.start()
    try:
        tp, first_commit, killed_at = TopicPartition(raw_topic, 0), None, None
        deadline = time.monotonic() + 40
        while killed_at is None:
            assert cleaning.alive(), cleaning.tail()
            assert time.monotonic() < deadline, f"no second commit seen within 40 s\n{cleaning.tail()}"
            offsets = await admin.list_consumer_group_offsets(group)
            committed = offsets[tp].offset if tp in offsets else None
            if committed is not None and first_commit is None:
                first_commit = committed
            elif committed is not None and committed > first_commit:
                cleaning.kill9()  # right after a commit, with outputs of later offsets in flight
                killed_at = committed
            else:
                await asyncio.sleep(0.05)
    finally:
        await admin.close()
    assert killed_at < EVENTS, "the cleaner had already committed everything: the kill proves nothing"
    cleaning.start()
    await producing

    clean_topic = pipeline_env["STREAMLEDGER_CLEANING_CLEAN_TOPIC"]
    dead_topic = pipeline_env["STREAMLEDGER_CLEANING_DEADLETTER_TOPIC"]
    clean: list[str] = []
    letters: list[dict] = []

    async def every_event_out() -> bool:
        """What at-least-once promises: every raw event on the clean topic or among the dead letters
        (counted on the topics), and the group's offset at the end of the raw topic."""
        assert cleaning.alive(), cleaning.tail()
        clean[:] = [CODEC.decode(r.value, reader="CleanEvent")["event_id"] for r in await read_all(bootstrap, clean_topic)]
        letters[:] = [CODEC.decode(r.value, reader="DeadLetter") for r in await read_all(bootstrap, dead_topic)]
        dead = {letter["key"] for letter in letters if letter["reason"] == "non_finite"}
        return valid <= set(clean) and invalid <= dead and await caught_up(bootstrap, group, [raw_topic])

    try:
        await wait_until(every_event_out, 60, "every raw event on the clean topic or among the dead letters",
                         lambda: f"missing: {sorted(valid - set(clean))[:10]} of {len(valid - set(clean))} valid, "
                                 f"{len(invalid - {x['key'] for x in letters})} invalid\n{cleaning.tail()}")
    finally:
        print(f"committed in the end: {await caught_up(bootstrap, group, [raw_topic])} (whole raw topic)")
    dead = {letter["key"] for letter in letters if letter["reason"] == "non_finite"}
    assert not valid - set(clean), f"{len(valid - set(clean))} valid events never reached the clean topic"
    assert not invalid - dead, f"{len(invalid - dead)} invalid events never reached the dead letters"
    assert set(clean) <= valid and dead <= invalid
    print(f"killed after the commit at offset {killed_at}; {len(clean)} clean records for {len(valid)} events "
          f"({len(clean) - len(set(clean))} re-sent), {len(letters)} dead letters for {len(invalid)}, "
          f"{time.monotonic() - started:.0f}s")
