"""The storage sink alone on the real stack: every routed topic, idempotent replays, bad input."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from streamledger import kafka
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.core.scoped import scoped_id
from tests.integration.pipeline.conftest import caught_up, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

CODEC = AvroCodec(SchemaRegistry.from_dir())
E0, E1 = scoped_id("acme", "e0"), scoped_id("acme", "e1")  # storage's _id: events are keyed per tenant
TS = datetime(2026, 1, 1, tzinfo=timezone.utc)


def records() -> dict[str, list[tuple[str, bytes]]]:
    """Topic setting -> (key, value) messages, including a second copy of e0 that must win."""
    clean = [
        ("e0", {"x": 1.0}), ("e1", {"x": 2.0}), ("e0", {"x": 3.0}),
    ]
    return {
        "STREAMLEDGER_STORAGE_CLEAN_TOPIC": [
            (eid, CODEC.encode("CleanEvent", {"event_id": eid, "tenant": "acme", "source": "t", "ts": TS,
                                              "features": f, "label": None, "content_hash": "ab" * 32,
                                              "raw_partition": 0, "raw_offset": n}))
            for n, (eid, f) in enumerate(clean)
        ] + [("junk", b"\x00not avro")],
        "STREAMLEDGER_STORAGE_PREDICTIONS_TOPIC": [
            (f"r{n}", CODEC.encode("Prediction", {"request_id": f"r{n}", "model_id": "m", "model_version": 2,
                                                  "inputs": "{}", "outputs": "{}", "latency_ms": 1.5, "ts": TS}))
            for n in range(5)
        ],
        "STREAMLEDGER_STORAGE_ANCHORS_TOPIC": [
            ("b1", CODEC.encode("Anchor", {"batch_id": "b1", "merkle_root": "cd" * 32, "count": 2, "topic": "clean",
                                           "partition": 0, "first_offset": 0, "last_offset": 1, "ts": TS}))
        ],
        "STREAMLEDGER_STORAGE_SNAPSHOTS_TOPIC": [
            ("m", CODEC.encode("ModelSnapshot", {"model_id": "m", "version": v, "sha256": "ef" * 32, "offsets": [],
                                                 "events_seen": v * 10, "metrics": {"mae": 0.5},
                                                 "model": b"\x80" * 100_000, "created": TS}))
            for v in (1, 2)
        ],
    }


async def test_sink_stores_every_topic_by_key_and_a_replay_changes_nothing(
    bootstrap, mongo_db, pipeline_env, services
) -> None:
    async with kafka.producer(bootstrap) as producer:
        for setting, messages in records().items():
            for key, value in messages:
                await producer.send_and_wait(pipeline_env[setting], key=key.encode(), value=value)

    expected = {"events": 2, "predictions": 5, "anchors": 1, "models": 2, "deadletters": 1}

    async def counts() -> dict[str, int]:
        return {name: await mongo_db[name].count_documents({}) for name in expected}

    storage = services("storage")
    await storage.logged('"event": "started"')  # collections exist before anything reads them

    async def stored() -> bool:
        assert storage.alive(), storage.tail()
        return await counts() == expected

    await wait_until(stored, 60, f"collections to hold {expected}", storage.tail)
    assert (await mongo_db["events"].find_one({"_id": E0}))["features"] == {"x": 3.0}
    model = await mongo_db["models"].find_one({"_id": "m:2"})
    assert model["model_bytes"] == 100_000 and "model" not in model and model["metrics"] == {"mae": 0.5}
    letter = await mongo_db["deadletters"].find_one({})
    assert (letter["service"], letter["reason"], letter["original"]) == ("storage", "not_single_object", b"\x00not avro")
    assert letter["source_topic"] == pipeline_env["STREAMLEDGER_STORAGE_CLEAN_TOPIC"]
    assert "model_id_1_version_1" in await mongo_db["models"].index_information()
    assert "model_id_1_model_version_1" in await mongo_db["predictions"].index_information()
    assert storage.stop() == 0, storage.tail()
    before = await documents(mongo_db, expected)

    # Damage the store behind the sink's back: one document changed, one deleted.
    await mongo_db["events"].delete_one({"_id": E1})
    await mongo_db["events"].insert_one({**before["events"][E1], "features": {"x": -1.0}})
    await mongo_db["predictions"].delete_one({"_id": scoped_id(None, "r3")})

    # A new consumer group re-reads every topic from the start: upserts by key put back exactly
    # what the first run stored, and change nothing else.
    pipeline_env["STREAMLEDGER_STORAGE_GROUP"] += "-replay"
    replay = services("storage")
    sources = [v for k, v in pipeline_env.items() if k.startswith("STREAMLEDGER_STORAGE_") and k.endswith("_TOPIC")]

    async def replayed() -> bool:
        assert replay.alive(), replay.tail()
        return await caught_up(bootstrap, pipeline_env["STREAMLEDGER_STORAGE_GROUP"], sources)

    await wait_until(replayed, 60, "the replaying sink to commit every topic to its end", replay.tail)
    assert await counts() == expected
    again = await documents(mongo_db, expected)
    # The junk message is dead-lettered again: the same letter, only its time differs.
    assert [{k: v for k, v in d.items() if k != "ts"} for d in again.pop("deadletters").values()] == \
           [{k: v for k, v in d.items() if k != "ts"} for d in before.pop("deadletters").values()]
    assert again == before
    assert again["events"][E1]["features"] == {"x": 2.0} and again["events"][E0]["features"] == {"x": 3.0}
    assert replay.stop() == 0, replay.tail()


async def documents(db, collections) -> dict[str, dict[str, dict]]:
    """collection -> _id -> document, for each of `collections`."""
    return {name: {d["_id"]: d async for d in db[name].find({})} for name in collections}
