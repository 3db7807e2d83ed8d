"""`streamledger serve ledger` on the real stack: Kafka, FerretDB and the Fabric network.

- anchoring: every clean record gets a proof that leads to a root on the ledger, through a
  kill -9 mid-stream and a restart with other batch limits: no record is anchored twice
  (no two batches on the ledger overlap) and none is skipped (the batches tile the log);
  a topic the ledger binds to another operator stops the service at once, saying whose it is;
- dead letters: a tombstone, a RawEvent or bytes that are no Avro between clean records are
  dead-lettered and every valid record around them is anchored;
- retries: a call to a ledger that stays away is tried `LEDGER_RETRY_ATTEMPTS` times, each
  retry counted, then the service exits 1 with a logged error;
- identities: the anchoring loop acts as `anchoring` (operator), the settlement loop as
  `settlement` (a provider acting for Org1's `provider` account, which the holds pay); as an
  identity without a loop's role the service does not start, naming the identity and the role.

Settlement (receipts, windows, credit) is driven in test_ledger_settlement.py. Every variable
of the service is `STREAMLEDGER_LEDGER_*` (`ledger_env`, conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from devstack import Stack
from devstack.settings import StackSettings
from streamledger import kafka
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.core.canonical import content_hash
from streamledger.core.merkle import verify_proof
from streamledger.core.scoped import scoped_id
from streamledger.ledger import LedgerClient
from tests.integration.conftest import identity, stored_proofs
from tests.integration.pipeline.conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fabric, pytest.mark.timeout(420)]

CODEC = AvroCodec(SchemaRegistry.from_dir())
PARTITIONS = 2
EVENTS = 3000


def clean_event(run: str, i: int) -> dict:
    record = {"event_id": f"{run}-{i:05d}", "tenant": "acme", "source": "ledger-test", "ts": 1_767_225_600_000 + i,
              "features": {"x": i * 0.37, "kind": "abc"[i % 3]}, "label": bool(i % 2),
              "raw_partition": 0, "raw_offset": i}
    record["content_hash"] = content_hash(record)
    return record


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka.connection())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def read_all(bootstrap: str, topic: str, reader: str) -> list[dict]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, **kafka.connection(), auto_offset_reset="earliest",
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
    async with LedgerClient.connect(identity("audit")) as client:  # an auditor reads every anchor
        while time.monotonic() < deadline:
            for plan in [d async for d in mongo_db["anchor_plans"].find({})]:
                if plan["batch_id"] in anchored:
                    continue
                if await client.get_anchor(plan["batch_id"]) is None:
                    ledger.kill9()
                    return
                anchored.add(plan["batch_id"])
            await asyncio.sleep(0.02)
    raise AssertionError(f"no batch was ever seen recorded and not yet anchored:\n{ledger.tail()}")


async def test_every_record_is_anchored_once_through_a_kill_9_and_a_restart(
        bootstrap, mongo_db, ledger_env, services) -> None:
    clean_topic = ledger_env["STREAMLEDGER_LEDGER_CLEAN_TOPIC"]
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
        records = await read_all(bootstrap, ledger_env["STREAMLEDGER_LEDGER_ANCHORS_TOPIC"], "Anchor")
        published.update({a["batch_id"]: a for a in records})
        return sum(a["count"] for a in published.values()) >= EVENTS
    await wait_until(all_anchored, 180, f"anchors covering {EVENTS} records", ledger.tail)
    assert '"event": "replanned"' in ledger.log_path.read_text(), f"the restart re-formed no batch:\n{ledger.tail()}"
    assert '"event": "dead_letter"' not in ledger.log_path.read_text(), ledger.tail()

    plans = [d async for d in mongo_db["anchor_plans"].find({})]
    async with LedgerClient.connect(identity("audit")) as client:
        on_ledger = {p["batch_id"]: await client.get_anchor(p["batch_id"]) for p in plans}
    # No record skipped or anchored twice: per partition the batches on the ledger tile the offsets.
    for partition in range(PARTITIONS):
        ranges = sorted((a["first_offset"], a["last_offset"]) for bid, a in on_ledger.items()
                        if a is not None and bid.startswith(f"{clean_topic}:{partition}:"))
        offsets = sorted(o for p, o in sent.values() if p == partition)
        assert ranges[0][0] == offsets[0] and ranges[-1][1] == offsets[-1]
        for (_, last), (first, _) in zip(ranges, ranges[1:]):
            assert first == last + 1, f"partition {partition}: batches {ranges} overlap or leave a gap"
    assert all(a is not None for a in on_ledger.values()), "a recorded batch never reached the ledger"

    proofs = {d["event_id"]: d for d in await stored_proofs(mongo_db)}
    assert set(proofs) == set(sent)
    assert all(d["_id"] == scoped_id("acme", d["event_id"]) for d in proofs.values())
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
    peer = stack.part("fabric-peer-org1")
    clean_topic = ledger_env["STREAMLEDGER_LEDGER_CLEAN_TOPIC"]
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
        records = await read_all(bootstrap, ledger_env["STREAMLEDGER_LEDGER_ANCHORS_TOPIC"], "Anchor")
        published.update({a["batch_id"]: a for a in records})
        return sum(a["count"] for a in published.values()) >= len(events)
    await wait_until(all_anchored, 120, "anchors covering every record after the outage", ledger.tail)
    ranges = sorted((a["first_offset"], a["last_offset"]) for a in published.values())
    assert ranges[0][0] == 0 and ranges[-1][1] == len(events) - 1
    assert all(first == last + 1 for (_, last), (first, _) in zip(ranges, ranges[1:])), ranges
    assert await mongo_db["proofs"].count_documents({}) == len(events)
    assert ledger.alive() and ledger.stop() == 0


async def committed_offset(bootstrap: str, group: str, topic: str) -> int | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **kafka.connection(), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.committed(TopicPartition(topic, 0))
    finally:
        await consumer.stop()


async def ledger_letters(bootstrap: str, topic: str) -> list[dict]:
    return [d for d in await read_all(bootstrap, topic, "DeadLetter") if d["service"] == "ledger"]


async def test_tombstones_and_records_that_are_no_clean_events_are_dead_lettered_and_the_rest_anchored(
        bootstrap, mongo_db, ledger_env, services) -> None:
    clean_topic = ledger_env["STREAMLEDGER_LEDGER_CLEAN_TOPIC"]
    await create_topic(bootstrap, clean_topic, 1)
    ledger_env.update({"STREAMLEDGER_LEDGER_SETTLEMENT": "false", "STREAMLEDGER_LEDGER_BATCH_RECORDS": "8",
                       "STREAMLEDGER_LEDGER_BATCH_SECONDS": "0.5"})
    run = uuid.uuid4().hex[:8]
    events = [clean_event(run, i) for i in range(24)]
    raw = {"event_id": f"{run}-raw", "tenant": "acme", "source": "ledger-test", "ts": 1_767_225_600_000,
           "features": {"x": 1.0}, "label": None}
    others = {5: ("empty_message", None), 11: ("incompatible_schema", CODEC.encode("RawEvent", raw)),
              17: ("not_single_object", b"no avro at all")}  # after event i
    offsets: dict[str, int] = {}
    expected_letters: dict[int, str] = {}
    # All on the topic before the service starts, so each of them comes in one fetch with valid
    # records after it (a tombstone used to end its fetch: the rest was neither anchored nor
    # dead-lettered, and the offsets moved past it).
    async with kafka.producer(bootstrap) as producer:
        for i, event in enumerate(events):
            meta = await (await producer.send(clean_topic, key=event["event_id"].encode(),
                                              value=CODEC.encode("CleanEvent", event)))
            offsets[event["event_id"]] = meta.offset
            if i in others:
                reason, value = others[i]
                meta = await (await producer.send(clean_topic, key=f"{run}-other-{i}".encode(), value=value))
                expected_letters[meta.offset] = reason
    end = len(events) + len(others)
    ledger = services("ledger")

    published: dict[str, dict] = {}

    async def all_anchored() -> bool:
        records = await read_all(bootstrap, ledger_env["STREAMLEDGER_LEDGER_ANCHORS_TOPIC"], "Anchor")
        published.update({a["batch_id"]: a for a in records})
        return sum(a["count"] for a in published.values()) >= len(events)
    await wait_until(all_anchored, 120, f"anchors covering the {len(events)} CleanEvents", ledger.tail)
    assert sum(a["count"] for a in published.values()) == len(events)

    # Every valid record: a proof in MongoDB that leads to its batch's root on the ledger.
    proofs = {d["event_id"]: d for d in await stored_proofs(mongo_db)}
    assert set(proofs) == set(offsets)
    async with LedgerClient.connect(identity("audit")) as client:
        on_ledger = {batch_id: await client.get_anchor(batch_id) for batch_id in published}
    for event in events:
        proof = proofs[event["event_id"]]
        anchor = on_ledger[proof["batch_id"]]
        assert anchor is not None and anchor["merkle_root"] == published[proof["batch_id"]]["merkle_root"]
        assert proof["offset"] == offsets[event["event_id"]] and proof["content_hash"] == event["content_hash"]
        assert verify_proof(bytes.fromhex(proof["content_hash"]), proof["index"], proof["size"],
                            [bytes.fromhex(s) for s in proof["siblings"]], bytes.fromhex(anchor["merkle_root"]))

    # Every other record: a dead letter with its reason.
    letters: dict[int, dict] = {}

    async def all_dead_lettered() -> bool:
        letters.update({d["source_offset"]: d for d in await ledger_letters(
            bootstrap, ledger_env["STREAMLEDGER_LEDGER_DEADLETTER_TOPIC"])})
        return len(letters) >= len(expected_letters)
    await wait_until(all_dead_lettered, 30, "a dead letter for each record that is no CleanEvent", ledger.tail)
    assert {offset: d["reason"] for offset, d in letters.items()} == expected_letters
    assert all(d["source_topic"] == clean_topic and d["error"].startswith("CleanEvent: ") for d in letters.values())

    # And the offsets committed cover all of them: nothing is left to read, nothing was skipped.
    async def all_committed() -> bool:
        return await committed_offset(bootstrap, ledger_env["STREAMLEDGER_LEDGER_ANCHOR_GROUP"], clean_topic) == end
    await wait_until(all_committed, 30, f"offset {end} committed", ledger.tail)
    assert ledger.stop() == 0


async def test_a_topic_bound_to_another_operator_stops_anchoring_at_once_naming_the_owner(
        bootstrap, ledger_env, services) -> None:
    """`registry` (an operator too) anchors the topic's first batch, so the ledger binds the topic
    to it; the service, anchoring as `anchoring`, stops with exit 1 instead of retrying."""
    clean_topic = ledger_env["STREAMLEDGER_LEDGER_CLEAN_TOPIC"]
    await create_topic(bootstrap, clean_topic, 1)
    async with LedgerClient.connect(identity("registry")) as squatter:
        owner = (await squatter.who_am_i())["Account"]
        await squatter.anchor_batch(f"{clean_topic}:0:0-0", "ab" * 32, 1, 0, 0)
    async with kafka.producer(bootstrap) as producer:
        event = clean_event(uuid.uuid4().hex[:8], 0)
        await producer.send_and_wait(clean_topic, key=event["event_id"].encode(), value=CODEC.encode("CleanEvent", event))
    ledger_env.update({"STREAMLEDGER_LEDGER_SETTLEMENT": "false"})
    ledger = services("ledger")

    async def exited() -> bool:
        return not ledger.alive()
    await wait_until(exited, 60, "the service to stop", ledger.tail)
    assert ledger.process.returncode == 1, ledger.tail()
    lines = [json.loads(line) for line in ledger.log_path.read_text().splitlines() if line.startswith("{")]
    failed = [e for e in lines if e["event"] == "failed"]
    assert len(failed) == 1 and failed[0]["errors"][0].startswith(
        f"topic {clean_topic!r} is anchored on the ledger by another operator only (it was bound to {owner!r}"), \
        ledger.tail()
    assert not [e for e in lines if e["event"] in ("retrying", "anchored")], ledger.tail()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def retries_counted(metrics_port: int, operation: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as answer:
            text = answer.read().decode()
    except OSError:
        return -1.0  # not serving (yet, or any more)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "streamledger_ledger_retries_total" and sample.labels == {"operation": operation}:
                return sample.value
    return 0.0


async def test_a_ledger_that_stays_away_stops_the_service_with_a_logged_error_once_retries_are_spent(
        ledger_env, services) -> None:
    """No peer listens at the endpoint: `WhoAmI` is tried 3 times by the service's retry loop,
    each retry counted in the metric and logged, then the service exits 1 saying what failed."""
    metrics_port = free_port()
    ledger_env.update({"STREAMLEDGER_FABRIC_PEER_ENDPOINT": f"127.0.0.1:{free_port()}",
                       "STREAMLEDGER_LEDGER_RETRY_ATTEMPTS": "3", "STREAMLEDGER_LEDGER_BACKOFF_INITIAL_SECONDS": "2",
                       "STREAMLEDGER_LEDGER_BACKOFF_MAX_SECONDS": "2", "STREAMLEDGER_METRICS_PORT": str(metrics_port)})
    ledger = services("ledger")

    async def two_retries_counted() -> bool:
        return await asyncio.to_thread(retries_counted, metrics_port, "who_am_i") == 2
    await wait_until(two_retries_counted, 60, "2 retries of who_am_i counted", ledger.tail)

    async def exited() -> bool:
        return not ledger.alive()
    await wait_until(exited, 30, "the service to give up", ledger.tail)
    assert ledger.process.returncode == 1, ledger.tail()
    lines = [json.loads(line) for line in ledger.log_path.read_text().splitlines() if line.startswith("{")]
    retried = [e for e in lines if e["event"] == "retrying"]
    assert [(e["operation"], e["attempt"]) for e in retried] == [("who_am_i", 1), ("who_am_i", 2)], ledger.tail()
    failed = [e for e in lines if e["event"] == "failed"]
    assert len(failed) == 1 and failed[0]["level"] == "error", ledger.tail()
    assert len(failed[0]["errors"]) == 1 and failed[0]["errors"][0].startswith(
        "RetriesSpent: who_am_i still failed after 3 attempts: EvaluateError: evaluate failed: UNAVAILABLE"), failed


async def test_as_an_identity_without_a_loops_role_the_service_does_not_start_and_says_which(
        ledger_env, services, network) -> None:
    """Org2's User1 is a client: neither operator (anchoring) nor provider (settlement)."""
    ledger_env.update({"STREAMLEDGER_FABRIC_MSP_ID": "Org2MSP", "STREAMLEDGER_FABRIC_USER": "User1"})
    ledger = services("ledger")

    async def exited() -> bool:
        return not ledger.alive()
    await wait_until(exited, 60, "the service to refuse to start", ledger.tail)
    assert ledger.process.returncode == 1, ledger.tail()
    last = ledger.log_path.read_text().strip().splitlines()[-1]
    assert last.startswith("ledger: cannot start: ledger identity 'User1' (Org2MSP::CN=User1@org2.streamledger.local"), \
        ledger.tail()
    assert "does not hold the operator role (it holds: client)" in last, last
