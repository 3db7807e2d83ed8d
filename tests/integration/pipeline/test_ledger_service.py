"""`streamledger serve ledger` on the real stack: Kafka, FerretDB and the Fabric network.

- anchoring: every clean record gets a proof that leads to a root on the ledger, through a
  kill -9 mid-stream and a restart with other batch limits: no record is anchored twice
  (no two batches on the ledger overlap) and none is skipped (the batches tile the log);
- settlement: usage is totalled per hold and settled once after the hold expires, through
  a kill -9; the provider gets exactly the sum of the usage, the client the rest, and the
  credit of client, provider and open holds is conserved; usage for an unknown hold, or
  after its hold closed, becomes a dead letter with a reason.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streamledger.core.canonical import content_hash
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger import kafka
from streamledger.ledger import LedgerClient
from streamledger.core.merkle import verify_proof
from streamledger.settings import LedgerSettings
from devstack import Stack
from devstack.settings import StackSettings
from tests.integration.pipeline.conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fabric, pytest.mark.timeout(420)]

CODEC = AvroCodec(SchemaRegistry.from_dir())
PARTITIONS = 2
EVENTS = 3000


@pytest.fixture
def ledger_env(pipeline_env: dict[str, str], unique: str, network) -> dict[str, str]:
    pipeline_env.update({
        "STREAMLEDGER_USAGE_TOPIC": f"usage-{unique}",
        "STREAMLEDGER_LEDGER_ANCHOR_GROUP": f"anchoring-{unique}",
        "STREAMLEDGER_LEDGER_SETTLEMENT_GROUP": f"settlement-{unique}",
    })
    return pipeline_env


def clean_event(run: str, i: int) -> dict:
    record = {"event_id": f"{run}-{i:05d}", "tenant": "acme", "source": "ledger-test", "ts": 1_767_225_600_000 + i,
              "features": {"x": i * 0.37, "kind": "abc"[i % 3]}, "label": bool(i % 2),
              "raw_partition": 0, "raw_offset": i}
    record["content_hash"] = content_hash(record)
    return record


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def read_all(bootstrap: str, topic: str, reader: str) -> list[dict]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    records = []
    try:
        while True:
            polled = await consumer.getmany(timeout_ms=1500)
            if not polled:
                return records
            records += [CODEC.decode(m.value, reader=reader) for ms in polled.values() for m in ms]
    finally:
        await consumer.stop()


async def kill_while_a_recorded_batch_is_not_anchored(mongo_db, ledger, timeout: float = 60) -> None:
    """kill -9 the service as soon as MongoDB holds a batch plan the ledger does not have yet."""
    anchored: set[str] = set()
    deadline = time.monotonic() + timeout
    async with LedgerClient.connect(LedgerSettings()) as client:
        while time.monotonic() < deadline:
            for plan in [d async for d in mongo_db["anchor_plans"].find({})]:
                if plan["_id"] in anchored:
                    continue
                if await client.get_anchor(plan["_id"]) is None:
                    ledger.kill9()
                    return
                anchored.add(plan["_id"])
            await asyncio.sleep(0.02)
    raise AssertionError(f"no batch was ever seen recorded and not yet anchored:\n{ledger.tail()}")


async def test_every_record_is_anchored_once_through_a_kill_9_and_a_restart(
        bootstrap, mongo_db, ledger_env, services) -> None:
    clean_topic = ledger_env["STREAMLEDGER_CLEAN_TOPIC"]
    await create_topic(bootstrap, clean_topic, PARTITIONS)
    ledger_env.update({"STREAMLEDGER_LEDGER_SETTLEMENT": "false", "STREAMLEDGER_LEDGER_BATCH_RECORDS": "150",
                       "STREAMLEDGER_LEDGER_BATCH_SECONDS": "0.3"})
    ledger = services("ledger")
    await ledger.logged('"event": "anchoring_started"')
    run = uuid.uuid4().hex[:8]
    events = [clean_event(run, i) for i in range(EVENTS)]
    sent: dict[str, tuple[int, int]] = {}  # event id -> (partition, offset)

    async with kafka.producer(bootstrap) as producer:
        async def produce(part: list[dict], per_second: float) -> None:
            for start in range(0, len(part), 50):
                for e in part[start:start + 50]:
                    meta = await (await producer.send(clean_topic, key=e["event_id"].encode(),
                                                      value=CODEC.encode("CleanEvent", e)))
                    sent[e["event_id"]] = (meta.partition, meta.offset)
                await asyncio.sleep(50 / per_second)

        # Steady input, so batches closed by time, of uneven sizes, are recorded; it dies while
        # one of them is recorded but not on the ledger yet.
        feeding = asyncio.create_task(produce(events[:2000], per_second=800))
        await ledger.logged('"event": "anchored"', timeout=90)
        await kill_while_a_recorded_batch_is_not_anchored(mongo_db, ledger)
        await feeding
        # Restarted with other limits: a batch it may have anchored must come out the same.
        ledger_env.update({"STREAMLEDGER_LEDGER_BATCH_RECORDS": "1000", "STREAMLEDGER_LEDGER_BATCH_SECONDS": "2"})
        ledger.start()
        await produce(events[2000:], per_second=2000)

    published: dict[str, dict] = {}

    async def all_anchored() -> bool:
        records = await read_all(bootstrap, ledger_env["STREAMLEDGER_ANCHORS_TOPIC"], "Anchor")
        published.update({a["batch_id"]: a for a in records})
        return sum(a["count"] for a in published.values()) >= EVENTS
    await wait_until(all_anchored, 180, f"anchors covering {EVENTS} records", ledger.tail)
    assert '"event": "replanned"' in ledger.log_path.read_text(), f"the restart re-formed no batch:\n{ledger.tail()}"
    assert '"event": "dead_letter"' not in ledger.log_path.read_text(), ledger.tail()

    plans = [d async for d in mongo_db["anchor_plans"].find({})]
    async with LedgerClient.connect(LedgerSettings()) as client:
        on_ledger = {p["_id"]: await client.get_anchor(p["_id"]) for p in plans}
    # No record skipped or anchored twice: per partition the batches on the ledger tile the offsets.
    for partition in range(PARTITIONS):
        ranges = sorted((a["first_offset"], a["last_offset"]) for bid, a in on_ledger.items()
                        if a is not None and bid.startswith(f"{clean_topic}:{partition}:"))
        offsets = sorted(o for p, o in sent.values() if p == partition)
        assert ranges[0][0] == offsets[0] and ranges[-1][1] == offsets[-1]
        for (_, last), (first, _) in zip(ranges, ranges[1:]):
            assert first == last + 1, f"partition {partition}: batches {ranges} overlap or leave a gap"
    assert all(a is not None for a in on_ledger.values()), "a recorded batch never reached the ledger"

    proofs = {d["_id"]: d async for d in mongo_db["proofs"].find({})}
    assert set(proofs) == set(sent)
    for event in events:
        proof = proofs[event["event_id"]]
        anchor = on_ledger[proof["batch_id"]]
        assert proof["content_hash"] == event["content_hash"]
        assert (proof["partition"], proof["offset"]) == sent[event["event_id"]]
        assert anchor["first_offset"] <= proof["offset"] <= anchor["last_offset"] and anchor["count"] == proof["size"]
        assert verify_proof(bytes.fromhex(proof["content_hash"]), proof["index"], proof["size"],
                            [bytes.fromhex(s) for s in proof["siblings"]], bytes.fromhex(anchor["merkle_root"]))

    # ledger.anchors carries each batch with its Fabric transaction and block.
    assert set(published) == set(on_ledger)
    assert all(published[b]["tx_id"] == a["tx_id"] and published[b]["block"] for b, a in on_ledger.items())
    assert ledger.stop() == 0


@pytest.mark.fault
async def test_a_ledger_outage_holds_anchoring_back_and_loses_nothing(
        bootstrap, mongo_db, ledger_env, services) -> None:
    """The Fabric peer stops for 10 s mid-stream: anchoring waits (retrying), then catches up;
    every record ends up in exactly one batch on the ledger."""
    stack = Stack(StackSettings(fabric=True), say=lambda _msg: None)
    await asyncio.to_thread(stack.up)  # fault tests run last: another may have stopped the network
    peer = stack.part("fabric-peer")
    clean_topic = ledger_env["STREAMLEDGER_CLEAN_TOPIC"]
    await create_topic(bootstrap, clean_topic, 1)
    ledger_env.update({"STREAMLEDGER_LEDGER_SETTLEMENT": "false", "STREAMLEDGER_LEDGER_BATCH_RECORDS": "100",
                       "STREAMLEDGER_LEDGER_BATCH_SECONDS": "0.3"})
    ledger = services("ledger")
    await ledger.logged('"event": "anchoring_started"')
    run = uuid.uuid4().hex[:8]
    events = [clean_event(run, i) for i in range(1200)]
    async with kafka.producer(bootstrap) as producer:
        async def produce(part: list[dict]) -> None:
            for e in part:
                await producer.send(clean_topic, key=e["event_id"].encode(), value=CODEC.encode("CleanEvent", e))
            await producer.flush()

        await produce(events[:400])
        await ledger.logged('"event": "anchored"', timeout=60)
        peer.process.stop()
        try:
            await produce(events[400:800])
            await ledger.logged('"event": "retrying"', timeout=30)  # the ledger is down: it waits
            await asyncio.sleep(10)
        finally:
            await asyncio.to_thread(stack.up)  # the peer comes back (and rejoins its channel)
        await produce(events[800:])

    published: dict[str, dict] = {}

    async def all_anchored() -> bool:
        records = await read_all(bootstrap, ledger_env["STREAMLEDGER_ANCHORS_TOPIC"], "Anchor")
        published.update({a["batch_id"]: a for a in records})
        return sum(a["count"] for a in published.values()) >= len(events)
    await wait_until(all_anchored, 120, "anchors covering every record after the outage", ledger.tail)
    ranges = sorted((a["first_offset"], a["last_offset"]) for a in published.values())
    assert ranges[0][0] == 0 and ranges[-1][1] == len(events) - 1
    assert all(first == last + 1 for (_, last), (first, _) in zip(ranges, ranges[1:])), ranges
    assert await mongo_db["proofs"].count_documents({}) == len(events)
    assert ledger.alive() and ledger.stop() == 0


async def test_usage_is_settled_once_per_hold_and_credit_is_conserved(
        bootstrap, mongo_db, ledger_env, services) -> None:
    usage_topic = ledger_env["STREAMLEDGER_USAGE_TOPIC"]
    deadletter_topic = ledger_env["STREAMLEDGER_DEADLETTER_TOPIC"]
    # The provider settles its own holds: the service acts as User6, which is no operator, so
    # it only settles here.
    ledger_env.update({"STREAMLEDGER_FABRIC_USER": "User6", "STREAMLEDGER_LEDGER_ANCHORING": "false",
                       "STREAMLEDGER_LEDGER_SETTLE_GRACE_SECONDS": "1"})
    run = uuid.uuid4().hex[:8]
    async with LedgerClient.connect(LedgerSettings()) as admin, \
            LedgerClient.connect(LedgerSettings(fabric_user="User5")) as client, \
            LedgerClient.connect(LedgerSettings(fabric_user="User6")) as provider:
        client_id = (await client.who_am_i())["Account"]
        provider_id = (await provider.who_am_i())["Account"]
        await admin.mint(client_id, 10_000)

        async def credit() -> tuple[int, int, int]:
            open_holds = sum(h["amount"] for h in await client.holds_of(client_id) if h["status"] == "OPEN")
            return await client.balance(client_id), await provider.balance(provider_id), open_holds

        before = await credit()
        expires = int(time.time()) + 12
        holds = {f"{run}-a": 500, f"{run}-b": 300, f"{run}-c": 200}
        for hold_id, amount in holds.items():
            await client.freeze(hold_id, client_id, provider_id, amount, expires)
        assert sum(await credit()) == sum(before)

        def usage(hold_id: str, n: int, units: int, price: int) -> bytes:
            return CODEC.encode("UsageRecord", {
                "hold_id": hold_id, "request_id": f"{hold_id}-r{n}", "client": client_id, "model_id": "m",
                "model_version": 1, "units": units, "price": price, "ts": int(time.time() * 1000)})

        plan = {f"{run}-a": [(4, 3)] * 20, f"{run}-b": [(1, 2), (3, 5), (2, 2)]}  # c: frozen, never used
        expected = {h: sum(u * p for u, p in uses) for h, uses in plan.items()}
        ledger = services("ledger")
        await ledger.logged('"event": "settlement_started"')
        async with kafka.producer(bootstrap) as producer:
            for hold_id, uses in plan.items():
                for n, (units, price) in enumerate(uses[:len(uses) // 2]):
                    await producer.send(usage_topic, key=hold_id.encode(), value=usage(hold_id, n, units, price))
            await producer.send(usage_topic, key=b"nope", value=usage(f"{run}-unknown", 0, 1, 1))
            await producer.flush()
            await asyncio.sleep(2)
            ledger.kill9()  # with the first half read and nothing settled yet
            ledger.start()
            for hold_id, uses in plan.items():
                for n, (units, price) in enumerate(uses[len(uses) // 2:], start=len(uses) // 2):
                    await producer.send(usage_topic, key=hold_id.encode(), value=usage(hold_id, n, units, price))
            await producer.flush()

            async def settled() -> bool:
                return await mongo_db["settlements"].count_documents({}) >= len(plan)
            await wait_until(settled, 60, "both used holds settled", ledger.tail)
            # Usage after its hold was settled is not charged: it is a dead letter.
            await producer.send_and_wait(usage_topic, key=f"{run}-a".encode(), value=usage(f"{run}-a", 99, 1, 1))

        for hold_id, amount in holds.items():
            hold = await client.get_hold(hold_id)
            if hold_id in expected:
                assert (hold["status"], hold["charged"], hold["refunded"]) == \
                    ("SETTLED", expected[hold_id], amount - expected[hold_id]), hold
            else:
                assert hold["status"] == "OPEN"  # no usage: nothing to settle; the client releases it
        outcomes = {d["_id"]: d async for d in mongo_db["settlements"].find({})}
        assert {h: o["charged"] for h, o in outcomes.items()} == expected
        assert await mongo_db["settlement_plans"].count_documents({}) == 0
        after = await credit()
        assert sum(after) == sum(before), (before, after)
        assert after[1] - before[1] == sum(expected.values())

        # One dead letter per source message (a replay after the kill may send one twice; the
        # storage service keeps one document per source offset).
        letters: dict[tuple[int, int], dict] = {}

        async def two_letters() -> bool:
            letters.update({(d["source_partition"], d["source_offset"]): d
                            for d in await read_all(bootstrap, deadletter_topic, "DeadLetter")
                            if d["service"] == "ledger"})
            return len(letters) >= 2
        await wait_until(two_letters, 30, "dead letters for the unknown hold and the late usage", ledger.tail)
        assert sorted(d["reason"] for d in letters.values()) == ["hold_closed", "unknown_hold"]
        assert all(run in d["error"] for d in letters.values())
        assert ledger.stop() == 0
