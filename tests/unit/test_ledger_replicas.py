"""The ledger loops as one replica of several, without servers: what a rebalance or another
replica does between two steps of the loop.

- anchoring: a batch whose plan loses to another replica's (recorded from the same offset
  first) is never anchored, nor is any batch cut after it; the partition is read again and
  anchored on the recorded plans. Plans are recorded in offset order. Records fetched before a
  revocation and handled after it are not batched, and nothing past them is committed;
- settlement: usage read while its partition is revoked is not tallied (its next owner settles
  the hold), and usage counted by a plan another replica recorded is not dead-lettered as late.
(Each consumer's assignor of its own: tests/unit/test_kafka_assignor.py.)

The stand-ins are those of tests/unit/test_ledger_anchorer.py and test_ledger_settler.py; the
real replicas are driven in tests/integration/pipeline/test_ledger_replicas.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition

from services.ledger.anchorer import Anchorer
from services.ledger.anchoring import Batch
from services.ledger.dead_letters import DeadLetters
from services.ledger.ports import Ports
from services.ledger.retries import Retries
from services.ledger.settings import LedgerServiceSettings
from services.ledger.store import PlanTaken
from streamledger.retry import RetryPolicy
from tests.unit import test_ledger_settler as settling
from tests.unit.test_ledger_anchorer import (
    CODEC,
    OPERATOR,
    TOPIC,
    TP,
    Ledger,
    Producer,
    clean_event,
    message,
)


class Log:
    """A consumer over one partition's records: reads from its position, `seek` moves it, commits
    are kept; `stop` is set once everything is read and `idle()` says the loop has nothing left."""

    def __init__(self, values: list[bytes | None], stop: asyncio.Event) -> None:
        self.values = values
        self.position = 0
        self.stop_event = stop
        self.committed: dict[TopicPartition, int] = {}
        self.seeks: list[int] = []
        self.idle = lambda: True

    def subscribe(self, topics: list[str], listener: object) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def getmany(self, timeout_ms: int, max_records: int) -> dict:
        if self.position < len(self.values):
            start, self.position = self.position, len(self.values)
            return {TP: [message(o, self.values[o]) for o in range(start, len(self.values))]}
        await asyncio.sleep(0.01)
        if self.idle():
            self.stop_event.set()
        return {}

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append(offset)
        self.position = offset

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.update(offsets)


class Plans:
    """anchor_plans keyed as MongoDB keys them (partition, first offset); `race` is recorded by
    another replica just before this one records its first plan; `slow` plans take a while."""

    def __init__(self, race: list[tuple[int, int]] = (), slow: set[int] = frozenset()) -> None:
        self.recorded: dict[tuple[int, int], dict] = {}
        self.order: list[tuple[int, int]] = []
        self.race = list(race)
        self.slow = slow
        self.proofs: dict[str, dict] = {}

    async def plans_from(self, topic: str, partition: int, offset: int) -> list[dict]:
        return sorted((p for (part, _), p in self.recorded.items() if part == partition and p["last_offset"] >= offset),
                      key=lambda p: p["first_offset"])

    async def record_plan(self, batch: Batch, merkle_root: str) -> None:
        for first, last in self.race:
            self.recorded[(batch.partition, first)] = {"batch_id": f"{TOPIC}:{batch.partition}:{first}-{last}",
                                                       "first_offset": first, "last_offset": last}
        self.race = []
        if batch.first_offset in self.slow:
            await asyncio.sleep(0.05)
        key = (batch.partition, batch.first_offset)
        stored = self.recorded.setdefault(key, {"batch_id": batch.batch_id, "first_offset": batch.first_offset,
                                                "last_offset": batch.last_offset})
        if stored["last_offset"] != batch.last_offset:
            raise PlanTaken(batch, stored)
        self.order.append((batch.first_offset, batch.last_offset))

    async def write_proofs(self, tree: dict, documents: list[dict]) -> None:
        self.proofs.update({d["_id"]: d for d in documents})


def anchorer_of(values: list[bytes | None], store: Plans, batch_records: int,
                producer: Producer | None = None) -> tuple[Anchorer, asyncio.Event, Log, Ledger]:
    stop = asyncio.Event()
    consumer, producer, ledger = Log(values, stop), producer or Producer(), Ledger()
    settings = LedgerServiceSettings(ledger_clean_topic=TOPIC, ledger_anchors_topic="anchors-unit",
                                     ledger_deadletter_topic="dead-unit", ledger_batch_records=batch_records,
                                     ledger_batch_seconds=0.05)
    retries = Retries(RetryPolicy(attempts=2, initial_seconds=0.001, max_seconds=0.001), stop)
    ports = Ports(ledger, store, producer, CODEC, retries, DeadLetters(producer, CODEC, "dead-unit"))  # type: ignore[arg-type]
    anchorer = Anchorer(settings, consumer, ports, OPERATOR)  # type: ignore[arg-type]
    consumer.idle = lambda: not anchorer.tasks and not anchorer.rewinds and anchorer.batcher.open_from(0) is None
    return anchorer, stop, consumer, ledger


def ranges(ledger: Ledger) -> list[tuple[int, int]]:
    return sorted((first, last) for _, _, first, last in ledger.anchors.values())


async def test_a_batch_whose_plan_another_replica_recorded_differently_is_dropped_and_the_plan_anchored() -> None:
    # This replica cuts 0-4 and 5-9; another one, still cutting the partition, recorded 0-3 and
    # 4-8 a moment before. 0-4 loses; 5-9 (which overlaps 4-8) must not even be recorded.
    store = Plans(race=[(0, 3), (4, 8)])
    anchorer, stop, consumer, ledger = anchorer_of([clean_event(i) for i in range(10)], store, batch_records=5)

    await asyncio.wait_for(anchorer.run(stop), timeout=10)

    assert consumer.seeks == [0]  # read again from the lost batch's first offset
    assert ranges(ledger) == [(0, 3), (4, 8), (9, 9)]
    assert (5, 9) not in store.order and (0, 4) not in store.order
    assert consumer.committed == {TP: 10}


async def test_plans_are_recorded_in_offset_order_whatever_order_their_batches_finish() -> None:
    store = Plans(slow={0})
    anchorer, stop, consumer, ledger = anchorer_of([clean_event(i) for i in range(6)], store, batch_records=2)

    await asyncio.wait_for(anchorer.run(stop), timeout=10)

    assert store.order == [(0, 1), (2, 3), (4, 5)]
    assert ranges(ledger) == [(0, 1), (2, 3), (4, 5)] and consumer.committed == {TP: 6}


async def test_records_fetched_before_a_revocation_are_not_batched_after_it_nor_committed_past() -> None:
    class Rebalancing(Producer):
        """The group revokes the partition while the dead letter of offset 1 is being sent."""

        revoked = False

        async def send(self, topic: str, key: bytes | None = None, value: bytes = b"") -> None:
            await super().send(topic, key, value)
            if not self.revoked:
                self.revoked = True
                await anchorer.on_partitions_revoked([TP])
                await anchorer.on_partitions_assigned([TP])  # back again, read from the commit
                consumer.seek(TP, consumer.committed.get(TP, 0))

    values = [clean_event(0), None, clean_event(2), clean_event(3)]
    anchorer, stop, consumer, ledger = anchorer_of(values, Plans(), batch_records=2, producer=Rebalancing())

    await asyncio.wait_for(anchorer.run(stop), timeout=10)

    # Before the fix 2-3 was batched from the stale fetch and offset 4 committed: record 0 skipped.
    assert ranges(ledger) == [(0, 2), (3, 3)]
    assert consumer.committed == {TP: 4}


async def test_usage_read_while_its_partition_is_revoked_is_not_tallied_nor_settled() -> None:
    class Rebalancing(settling.Ledger):
        """The group revokes the partition while the loop reads the hold of its first record."""

        async def get_hold(self, hold_id: str) -> dict[str, Any] | None:
            if not settler.generation:
                await settler.on_partitions_revoked([settling.TP])
            return await super().get_hold(hold_id)

    ledger, store = Rebalancing({"h": settling.hold("h")}), settling.Store()
    settler, stop, _, consumer = settling.settler_of(
        ledger, store, [{settling.TP: [settling.usage(0, "h"), settling.usage(1, "h")]}])

    await asyncio.wait_for(settler.run(stop), timeout=10)

    assert settler.book.tallies == {} and ledger.settled == [] and store.plans == {}
    assert consumer.committed == {}  # the partition's next owner reads both records


async def test_usage_counted_by_another_replicas_plan_is_not_dead_lettered_as_late() -> None:
    """Another replica planned and settled the hold; its outcome is not stored yet."""
    class PlannedElsewhere(settling.Store):
        async def pending_settlements(self) -> list[dict]:
            return []  # planned after this loop started

    on_ledger = {**settling.hold("h"), "status": "SETTLED", "charged": 6, "refunded": 94, "close_tx_id": "t0"}
    store = PlannedElsewhere()
    store.plans["h"] = {"_id": "h", "partition": 0, "through_offset": 1}
    settler, stop, producer, consumer = settling.settler_of(
        settling.Ledger({"h": on_ledger}), store,
        [{settling.TP: [settling.usage(0, "h"), settling.usage(1, "h"), settling.usage(2, "h")]}])

    await asyncio.wait_for(settler.run(stop), timeout=10)

    assert {o: d["reason"] for o, d in settling.letters_of(producer).items()} == {2: "hold_closed"}
    assert consumer.committed == {settling.TP: 3}
