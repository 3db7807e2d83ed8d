"""Two `streamledger serve ledger` replicas share a loop's partitions on the real stack (Kafka,
FerretDB, the Fabric network), through a kill -9 and a restart.

Anchoring: replicas a and b of a 4-partition clean topic run as one consumer group, each acting
as `anchoring`. Clean records stream in waves; a is killed with SIGKILL while a batch it
recorded (a plan in MongoDB) is not on the ledger yet, so b, taking a's partitions over, must
anchor exactly that batch from its plan; a second wave arrives while b holds every partition,
a comes back (the group rebalances again) and a third wave arrives. At the end every record is
in exactly one batch on the ledger: per partition the anchored batches tile the offsets (none
overlaps another, none is missing), every recorded plan is on the ledger, each record's proof
leads to its batch's root, and the group has committed every partition to its end. If b cut
a's partitions afresh instead of planning the recorded batches again, its first batch there
would lose to a's plan at every try ("plan_taken", "reread") and the second wave would never be
anchored; without plans keyed by first offset, a's last plan would never reach the ledger
("recorded batches never anchored") or two batches over the same records would both be
anchored ("overlap").

Settlement: two replicas of a 4-partition usage topic keyed by hold; see the test's docstring.

Run it under the Fabric lock: `flock /tmp/fabric.lock pytest tests/integration/pipeline/test_ledger_replicas.py`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import pytest

from streamledger import kafka
from streamledger.core.merkle import verify_proof
from streamledger.ledger import LedgerClient
from tests.integration.conftest import identity, stored_proofs
from tests.integration.pipeline.conftest import (
    ServiceProcess,
    acts_for,
    balance_or_zero,
    caught_up,
    stop_all,
    wait_until,
)
from tests.integration.pipeline.test_ledger_service import (
    CODEC,
    clean_event,
    create_topic,
    read_all,
)
from tests.integration.pipeline.test_ledger_settlement import (
    parties,  # noqa: F401 (the fixture: Org1's Admin, the client User5, the `inference` server)
    settled,
    until_visible,
    usage_record,
)

pytestmark = [pytest.mark.integration, pytest.mark.fabric, pytest.mark.timeout(180)]
PARTITIONS = 4
WAVE = 600


def assigned(replica: ServiceProcess) -> set[int] | None:
    """The partitions the replica was last assigned (None: not assigned yet since it started)."""
    if not replica.log_path.exists():
        return None
    found = None
    for line in replica.log_path.read_text(errors="replace").splitlines():
        if '"partitions_assigned"' in line:
            found = set(json.loads(line)["partitions"])
    return found


def logged(replica: ServiceProcess, event: str) -> list[dict]:
    """The replica's log events named `event`, over all its starts."""
    return [json.loads(line) for path in sorted(replica.log_dir.glob("ledger.*.log"))
            for line in path.read_text(errors="replace").splitlines()
            if line.startswith("{") and f'"event": "{event}"' in line]


def start_two(env: dict[str, str], folder: Path) -> tuple[ServiceProcess, ServiceProcess, Callable[[], str]]:
    """Two `serve ledger` replicas, a and b, each logging in its own folder (the Kafka client's group
    joins and assignments too); and their logs' tails."""
    env = {**env, "STREAMLEDGER_KAFKA_LOG_LEVEL": "INFO"}
    replicas = {name: ServiceProcess("ledger", env, folder / name) for name in ("a", "b")}
    for replica in replicas.values():
        replica.log_dir.mkdir()
        replica.start()

    def logs() -> str:
        return "\n".join(f"--- {name} ---\n{r.tail(60)}" for name, r in replicas.items())
    return replicas["a"], replicas["b"], logs


async def test_every_record_is_anchored_once_by_two_replicas_through_a_kill_9(
        bootstrap, mongo_db, ledger_env, tmp_path: Path) -> None:
    started = time.monotonic()
    clean_topic = ledger_env["STREAMLEDGER_LEDGER_CLEAN_TOPIC"]
    group = ledger_env["STREAMLEDGER_LEDGER_ANCHOR_GROUP"]
    await create_topic(bootstrap, clean_topic, PARTITIONS)
    # Small batches closed by time, so a batch's range is known only from its recorded plan.
    ledger_env.update({"STREAMLEDGER_LEDGER_SETTLEMENT": "false", "STREAMLEDGER_LEDGER_BATCH_RECORDS": "100",
                       "STREAMLEDGER_LEDGER_BATCH_SECONDS": "0.3"})
    a, b, logs = start_two(ledger_env, tmp_path)
    replicas = {"a": a, "b": b}

    async def both_assigned() -> bool:
        assert a.alive() and b.alive(), logs()
        return bool(assigned(a)) and bool(assigned(b)) and assigned(a) | assigned(b) == set(range(PARTITIONS))

    run = uuid.uuid4().hex[:8]
    events = [clean_event(run, i) for i in range(3 * WAVE)]
    sent: dict[str, tuple[int, int]] = {}  # event id -> (partition, offset)
    published: dict[str, dict] = {}

    async def anchored_count() -> int:
        records = await read_all(bootstrap, ledger_env["STREAMLEDGER_LEDGER_ANCHORS_TOPIC"], "Anchor")
        published.update({r["batch_id"]: r for r in records})
        return sum(r["count"] for r in published.values())

    async def all_anchored(n: int) -> bool:
        assert b.alive(), logs()
        return await anchored_count() >= n

    try:
        await wait_until(both_assigned, 60, "both replicas holding partitions", logs)
        async with kafka.producer(bootstrap) as producer, LedgerClient.connect(identity("audit")) as auditor:
            async def produce(part: list[dict], per_second: float) -> None:
                for start in range(0, len(part), 30):
                    for e in part[start:start + 30]:
                        meta = await (await producer.send(clean_topic, key=e["event_id"].encode(),
                                                          value=CODEC.encode("CleanEvent", e)))
                        sent[e["event_id"]] = (meta.partition, meta.offset)
                    await asyncio.sleep(30 / per_second)

            async def kill_a_while_its_plan_is_not_anchored(timeout: float = 30) -> dict:
                """kill -9 a as soon as MongoDB holds a plan of one of a's partitions that the ledger does not."""
                held, seen = assigned(a), set()
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    async for plan in mongo_db["anchor_plans"].find({"partition": {"$in": sorted(held)}}):
                        if plan["batch_id"] not in seen:
                            if await auditor.get_anchor(plan["batch_id"]) is None:
                                a.kill9()
                                return plan
                            seen.add(plan["batch_id"])
                    await asyncio.sleep(0.02)
                raise AssertionError(f"no plan of a's partitions {held} seen recorded and not anchored\n{logs()}")

            # Wave 1, steady, so batches close by time; a dies with a recorded batch not anchored.
            feeding = asyncio.create_task(produce(events[:WAVE], per_second=250))
            await a.logged('"event": "anchored"', timeout=60)
            orphan = await kill_a_while_its_plan_is_not_anchored()
            await feeding
            # Wave 2, while only b is up: b takes a's partitions over (after the session timeout).
            await produce(events[WAVE:2 * WAVE], per_second=1000)
            await wait_until(lambda: all_anchored(2 * WAVE), 60, "the first two waves anchored by b", logs)
            # a comes back: the group rebalances again; wave 3.
            a.start()
            await wait_until(both_assigned, 60, "both replicas holding partitions again", logs)
            await produce(events[2 * WAVE:], per_second=1000)
        await wait_until(lambda: all_anchored(len(events)), 60, "every record anchored", logs)
        await wait_until(lambda: caught_up(bootstrap, group, [clean_topic]), 30,
                         "the group committed to the end of every partition", logs)
        plans = [d async for d in mongo_db["anchor_plans"].find({})]
        proofs = {d["event_id"]: d for d in await stored_proofs(mongo_db)}
        async with LedgerClient.connect(identity("audit")) as auditor:
            candidates = {p["batch_id"] for p in plans} | set(published)
            on_ledger = {bid: anchor for bid in candidates if (anchor := await auditor.get_anchor(bid)) is not None}
    finally:
        stop_all(replicas.values())

    # The batch a recorded just before its kill is on the ledger, anchored from its plan.
    assert orphan["batch_id"] in on_ledger, f"a's last recorded batch {orphan['batch_id']} was never anchored"
    replanned = [e for e in logged(b, "replanned") if orphan["partition"] == e["partition"]]
    assert replanned, f"b never planned a's recorded batches of partition {orphan['partition']} again\n{logs()}"
    never = sorted(p["batch_id"] for p in plans if p["batch_id"] not in on_ledger)
    assert not never, f"recorded batches never anchored: {never}"
    # Per partition the anchored batches tile the offsets: no record in two batches, none left out.
    for partition in range(PARTITIONS):
        ranges = sorted((x["first_offset"], x["last_offset"]) for bid, x in on_ledger.items()
                        if bid.startswith(f"{clean_topic}:{partition}:"))
        offsets = sorted(o for p, o in sent.values() if p == partition)
        assert ranges and ranges[0][0] == offsets[0] and ranges[-1][1] == offsets[-1], (partition, ranges, offsets)
        for (_, last), (first, _) in pairwise(ranges):
            assert first == last + 1, f"partition {partition}: batches {ranges} overlap or leave a gap"
    assert sum(x["count"] for x in on_ledger.values()) == len(events)
    # Each record's proof leads to the root of the one batch it is in.
    assert set(proofs) == set(sent)
    for event in events:
        proof = proofs[event["event_id"]]
        anchor = on_ledger[proof["batch_id"]]
        assert (proof["partition"], proof["offset"]) == sent[event["event_id"]]
        assert anchor["first_offset"] <= proof["offset"] <= anchor["last_offset"] and anchor["count"] == proof["size"]
        assert verify_proof(bytes.fromhex(event["content_hash"]), proof["index"], proof["size"],
                            [bytes.fromhex(s) for s in proof["siblings"]], bytes.fromhex(anchor["merkle_root"]))
    assert not logged(a, "dead_letter") and not logged(b, "dead_letter"), logs()
    taken = len(logged(a, "plan_taken")) + len(logged(b, "plan_taken"))
    print(f"{len(events)} records, {len(on_ledger)} batches, {len(plans)} plans, {taken} plans taken by the other "
          f"replica, {time.monotonic() - started:.0f}s")


HOLDS = 6
REQUESTS = 8
"""Usage records per hold, 3 units each, each carrying the client's receipt for all so far."""


async def test_two_replicas_settle_each_hold_once_on_its_latest_receipt_through_a_kill_9(
        bootstrap, mongo_db, ledger_env, tmp_path: Path, parties) -> None:  # noqa: F811
    """Holds keyed by hold on a 4-partition usage topic, settled by two replicas: one is killed
    -9 after it has opened holds of its partitions and before any is due, the other takes them
    over and reads their usage again from the commit, the first comes back (the group
    rebalances again); each hold is settled once, for all its usage: the latest receipt's units
    x price, and its outcome counts every request once. A hold settled on part of its usage (a
    tally not dropped with its partition, or not read again by the next owner) fails the
    counts; a commit past an unsettled hold leaves it unsettled (the wait times out)."""
    started = time.monotonic()
    admin, client, server = parties
    usage_topic = ledger_env["STREAMLEDGER_LEDGER_USAGE_TOPIC"]
    await create_topic(bootstrap, usage_topic, PARTITIONS)
    ledger_env.update({"STREAMLEDGER_LEDGER_ANCHORING": "false", "STREAMLEDGER_LEDGER_SETTLE_GRACE_SECONDS": "1"})
    a, b, logs = start_two(ledger_env, tmp_path)
    replicas = {"a": a, "b": b}

    def usage_assigned(replica: ServiceProcess) -> set[int]:
        found: set[int] = set()
        if replica.log_path.exists():
            for line in replica.log_path.read_text(errors="replace").splitlines():
                if '"usage_partitions_assigned"' in line:
                    found = set(json.loads(line)["partitions"])
        return found

    async def both_assigned() -> bool:
        assert a.alive() and b.alive(), logs()
        return bool(usage_assigned(a)) and bool(usage_assigned(b))

    provider_id = await acts_for(server)
    before = await balance_or_zero(server, provider_id)
    prices = [2 + i % 3 for i in range(HOLDS)]
    try:
        await wait_until(both_assigned, 60, "both replicas holding usage partitions", logs)
        await admin.mint(client.account, 200 * HOLDS)
        expires = int(time.time()) + 35  # time for a kill -9, the handover and a restart before any is due
        holds = [(await client.freeze(provider_id, 200, price, expires))["hold_id"] for price in prices]
        await until_visible(server, holds[-1])
        for hold_id in holds:
            await server.authorize(hold_id, 200)
        records = {h: [usage_record(h, f"{h[:8]}-{n}", client.account, 3, price, client.receipt(h, 3 * (n + 1), n + 1))
                       for n in range(REQUESTS)] for h, price in zip(holds, prices)}
        async with kafka.producer(bootstrap) as producer:
            async def produce(n_from: int, n_to: int) -> None:
                for hold_id, values in records.items():
                    for value in values[n_from:n_to]:
                        await producer.send(usage_topic, key=hold_id.encode(), value=value)
                await producer.flush()

            await produce(0, REQUESTS // 2)

            def opened(replica: ServiceProcess) -> set[str]:
                return {e["hold_id"] for e in logged(replica, "hold_opened")}

            async def all_opened() -> bool:
                assert a.alive() and b.alive(), logs()
                return opened(a) | opened(b) == set(holds)
            await wait_until(all_opened, 30, "every hold opened by one replica or the other", logs)
            # a, unless every hold happened to land on b's partitions.
            victim, survivor = (a, b) if opened(a) else (b, a)
            opened_by_victim = opened(victim)
            victim.kill9()
            await produce(REQUESTS // 2, REQUESTS)
            await produce(2, 3)  # the third request of every hold delivered twice: counted once

            async def taken_over() -> bool:  # the survivor reads the victim's holds' usage again, from the commit
                assert survivor.alive(), logs()
                return opened_by_victim <= opened(survivor)
            await wait_until(taken_over, 30, f"the survivor opening the holds the killed replica had opened: "
                                             f"{sorted(opened_by_victim)}", logs)
            victim.start()
            await wait_until(both_assigned, 30, "both replicas holding usage partitions again", logs)
        assert time.time() < expires, "the handover took past the holds' expiry: the test proves less than it says"
        await wait_until(lambda: settled(mongo_db, *holds), 60, "every hold settled", logs)
        outcomes = {d["_id"]: d async for d in mongo_db["settlements"].find({})}
        pending = await mongo_db["settlement_plans"].count_documents({})
        on_ledger = {h: await server.get_hold(h) for h in holds}
        after = await balance_or_zero(server, provider_id)
    finally:
        stop_all(replicas.values())

    for hold_id, price in zip(holds, prices):
        hold, outcome = on_ledger[hold_id], outcomes[hold_id]
        assert (hold["status"], hold["charged"], hold["refunded"]) == \
            ("SETTLED", 3 * REQUESTS * price, 200 - 3 * REQUESTS * price), hold
        assert (hold["receipt"]["units"], hold["receipt"]["sequence"]) == (3 * REQUESTS, REQUESTS), hold
        assert (outcome["status"], outcome["units"], outcome["usage_units"], outcome["usage_records"],
                outcome["duplicates"]) == ("SETTLED", 3 * REQUESTS, 3 * REQUESTS, REQUESTS, 1), outcome
    assert pending == 0
    assert after - before == sum(3 * REQUESTS * price for price in prices)  # each hold paid once
    settlers = {e["hold_id"]: name for name, r in replicas.items() for e in logged(r, "settled")}
    print(f"{HOLDS} holds, {len(opened_by_victim)} opened by the replica killed, settled by "
          f"{sorted(settlers.items())}, {time.monotonic() - started:.0f}s")
