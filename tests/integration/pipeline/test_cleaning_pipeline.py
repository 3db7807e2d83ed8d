"""raw -> cleaning -> clean -> storage -> MongoDB on the real stack, with bad input mixed in."""

from __future__ import annotations

import struct
from collections import Counter

import pytest
from aiokafka import AIOKafkaProducer

from streamledger import kafka
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.core.scoped import scoped_id
from tests.integration.pipeline import reference
from tests.integration.pipeline.conftest import create_topics, read_all, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CODEC = AvroCodec(SchemaRegistry.from_dir())
VALID = 300


async def test_valid_events_reach_mongo_and_bad_input_becomes_dead_letters(
    bootstrap, mongo_db, pipeline_env, services
) -> None:
    raw_topic = pipeline_env["STREAMLEDGER_CLEANING_RAW_TOPIC"]
    # Room for the 1 MB message on the raw topic; the cleaner must refuse it, not Kafka.
    await create_topics(bootstrap, [raw_topic], {"max.message.bytes": "4000000"})
    cleaning, storage = services("cleaning"), services("storage")
    await storage.logged('"event": "started"')  # collections exist before anything reads them

    expected_hash: dict[str, str] = {}
    bad: dict[str, str] = {}  # raw offset -> expected dead-letter reason
    async with kafka.producer(bootstrap, max_request_size=4_000_000) as producer:
        offset = 0

        async def send(value: bytes, key: bytes | None) -> None:
            nonlocal offset
            await producer.send_and_wait(raw_topic, key=key, value=value)
            offset += 1

        for i in range(VALID):
            raw, digest = reference.valid_event(i)
            expected_hash[raw["event_id"]] = digest
            await send(CODEC.encode("RawEvent", raw), raw["event_id"].encode())
            if i == 50:
                bad[str(offset)] = "non_finite"
                await send(CODEC.encode("RawEvent", reference.non_finite_event(1)), b"bad-1")
                bad[str(offset)] = "unknown_fingerprint"
                await send(reference.unknown_fingerprint_message(), b"unknown")
                bad[str(offset)] = "too_large"
                await send(reference.one_megabyte_event(CODEC, 1), b"huge-1")
            if i == 100:  # a duplicate event_id: dropped, neither clean nor dead letter
                await send(CODEC.encode("RawEvent", reference.valid_event(3)[0]), b"ev-000003")
    # Bytes that are not Avro at all, from a plain producer as any foreign client would write them.
    plain = AIOKafkaProducer(bootstrap_servers=bootstrap, **kafka.connection())
    async with plain:
        await plain.send_and_wait(raw_topic, key=b"foreign", value=b'{"event_id": "json-not-avro"}')
    bad[str(offset)] = "not_single_object"
    offset += 1
    async with kafka.producer(bootstrap) as producer:  # one valid event after all the bad ones
        raw, digest = reference.valid_event(VALID)
        expected_hash[raw["event_id"]] = digest
        await producer.send_and_wait(raw_topic, key=raw["event_id"].encode(), value=CODEC.encode("RawEvent", raw))

    events, letters = mongo_db["events"], mongo_db["deadletters"]

    async def all_stored() -> bool:
        assert cleaning.alive(), cleaning.tail()
        assert storage.alive(), storage.tail()
        return (await events.count_documents({}) >= len(expected_hash)
                and await letters.count_documents({}) >= len(bad))

    await wait_until(all_stored, 150, "every event and dead letter in MongoDB",
                     lambda: cleaning.tail() + "\n" + storage.tail())

    stored = {doc["event_id"]: doc async for doc in events.find({})}
    assert all(doc["_id"] == scoped_id(doc["tenant"], doc["event_id"]) for doc in stored.values())
    assert {i: d["content_hash"] for i, d in stored.items()} == expected_hash
    first = stored["ev-000001"]
    x = reference.valid_event(1)[0]["features"]["X"]
    assert struct.pack(">d", first["features"]["x"]) == struct.pack(">d", x)
    assert first["features"] == {"x": x, "amount_eur": 1.25, "member": True}
    assert first["tenant"] == "acme" and first["raw_offset"] == 1

    dead = {str(d["source_offset"]): d async for d in letters.find({})}
    assert {o: d["reason"] for o, d in dead.items()} == bad
    assert all(d["service"] == "cleaning" and d["error"] for d in dead.values())
    assert "feature 'x' is" in dead[[o for o, r in bad.items() if r == "non_finite"][0]]["error"]

    assert "tenant_1_ts_1" in await events.index_information()  # the sink created its index

    # MongoDB's _id would hide a duplicate: the topics themselves hold each event and letter once.
    clean = await read_all(bootstrap, pipeline_env["STREAMLEDGER_CLEANING_CLEAN_TOPIC"])
    assert Counter(r.key.decode() for r in clean) == {event_id: 1 for event_id in expected_hash}
    letters_sent = await read_all(bootstrap, pipeline_env["STREAMLEDGER_CLEANING_DEADLETTER_TOPIC"])
    assert Counter(str(CODEC.decode(r.value)["source_offset"]) for r in letters_sent) == {o: 1 for o in bad}
    assert cleaning.stop() == 0, cleaning.tail()
    assert storage.stop() == 0, storage.tail()


async def test_the_dedup_window_survives_a_restart(bootstrap, pipeline_env, services) -> None:
    raw_topic, clean_topic = (pipeline_env["STREAMLEDGER_CLEANING_RAW_TOPIC"],
                              pipeline_env["STREAMLEDGER_CLEANING_CLEAN_TOPIC"])
    await create_topics(bootstrap, [raw_topic, clean_topic])
    seen: list[str] = []
    reader = kafka.consumer(bootstrap, clean_topic)

    async def clean_ids(count: int) -> bool:
        for messages in (await reader.getmany(timeout_ms=200)).values():
            seen.extend(CODEC.decode(m.value)["event_id"] for m in messages)
        return len(seen) >= count

    async def send(i: int) -> None:
        async with kafka.producer(bootstrap) as producer:
            raw = reference.valid_event(i)[0]
            await producer.send_and_wait(raw_topic, key=raw["event_id"].encode(), value=CODEC.encode("RawEvent", raw))

    async with reader:
        cleaning = services("cleaning")
        await send(1)
        await wait_until(lambda: clean_ids(1), 60, "the first clean event", cleaning.tail)
        assert cleaning.stop() == 0, cleaning.tail()

        cleaning = services("cleaning")  # same group: restores the dedup table from its changelog
        await send(1)  # the same event_id again, at a new offset
        await send(2)
        await wait_until(lambda: clean_ids(2), 60, "the event after the duplicate", cleaning.tail)
        assert seen == ["ev-000001", "ev-000002"]
        assert cleaning.stop() == 0, cleaning.tail()
