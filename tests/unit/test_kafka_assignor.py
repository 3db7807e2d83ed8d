"""The project's partition assignor (streamledger/kafka/assignor.py), without a broker: balance,
stickiness through members joining and leaving, claims that cannot be kept, and one class of
state per consumer."""

from __future__ import annotations

import json
import random

import pytest
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata

from streamledger import kafka
from streamledger.kafka.assignor import StickyAssignor, claimed, plan, sticky_assignor

T = "events.clean"


def partitions(n: int, topic: str = T) -> list[tuple[str, int]]:
    return [(topic, p) for p in range(n)]


def rebalance(every: list, members: dict[str, set]) -> dict[str, list]:
    """`plan` for members subscribed to every topic of `every`, `members` naming each one's claims."""
    topics = {t for t, _ in every}
    return plan(every, {m: set(topics) for m in members}, members)


def counts(assignment: dict[str, list]) -> list[int]:
    return sorted(len(v) for v in assignment.values())


@pytest.mark.parametrize("n_partitions", [1, 4, 12, 13])
@pytest.mark.parametrize("n_members", [1, 2, 3, 5])
def test_every_partition_once_and_counts_within_one(n_partitions: int, n_members: int) -> None:
    rng = random.Random(n_partitions * 31 + n_members)
    every = partitions(n_partitions)
    claims = {f"m{i}": set(rng.sample(every, rng.randint(0, n_partitions))) for i in range(n_members)}
    chosen = rebalance(every, claims)
    assert sorted(tp for mine in chosen.values() for tp in mine) == every
    assert max(counts(chosen)) - min(counts(chosen)) <= 1


def test_a_member_joining_takes_only_what_balance_needs() -> None:
    every = partitions(12)
    first = rebalance(every, {"a": set(), "b": set()})
    second = rebalance(every, {"a": set(first["a"]), "b": set(first["b"]), "c": set()})
    moved = sum(1 for m in ("a", "b") for tp in first[m] if tp not in second[m])
    assert counts(second) == [4, 4, 4] and moved == 4  # the least any balanced plan can move
    assert set(second["a"]) <= set(first["a"]) and set(second["b"]) <= set(first["b"])


def test_a_member_leaving_moves_only_its_partitions() -> None:
    every = partitions(12)
    before = rebalance(every, {"a": set(), "b": set(), "c": set()})
    after = rebalance(every, {"a": set(before["a"]), "c": set(before["c"])})
    assert set(before["a"]) <= set(after["a"]) and set(before["c"]) <= set(after["c"])
    assert set(after["a"]) | set(after["c"]) == set(every) and counts(after) == [6, 6]


def test_claims_that_cannot_be_kept_are_dropped() -> None:
    every = partitions(4)
    chosen = rebalance(every, {
        "a": {(T, 0), (T, 1), (T, 9)},  # partition 9 is gone
        "b": {(T, 1), ("other", 0)},    # 1 claimed by a first; not subscribed to `other`
    })
    assert chosen["a"] == [(T, 0), (T, 1)] and chosen["b"] == [(T, 2), (T, 3)]


def test_a_member_over_its_share_gives_the_surplus_up() -> None:
    chosen = rebalance(partitions(4), {"a": set(partitions(4)), "b": set()})
    assert chosen == {"a": [(T, 0), (T, 1)], "b": [(T, 2), (T, 3)]}


def test_members_of_other_subscriptions_get_only_their_topics() -> None:
    every = partitions(2) + partitions(2, "other")
    chosen = plan(every, {"a": {T}, "b": {T, "other"}}, {})
    assert set(chosen["a"]) <= set(partitions(2)) and sorted(chosen["a"] + chosen["b"]) == sorted(every)


@pytest.mark.parametrize("user_data", [b"", b"not json", b"[1, 2]", json.dumps({T: ["x"]}).encode(), b"{\"t\": 5}"])
def test_unreadable_metadata_claims_nothing(user_data: bytes) -> None:
    assert claimed(user_data) == set()


def test_the_class_round_trip_through_the_group_protocol() -> None:
    """What a member joins with carries what it was assigned; the leader's answer decodes as aiokafka's."""
    mine = sticky_assignor()
    mine.on_assignment(ConsumerProtocolMemberAssignment(0, [(T, [3, 1])], b""))
    joined = ConsumerProtocolMemberMetadata.decode(mine.metadata({T}).encode())
    assert joined.subscription == [T] and claimed(joined.user_data) == {(T, 1), (T, 3)}

    cluster = ClusterMetadata()
    cluster._partitions = {T: {p: None for p in range(4)}}
    other = ConsumerProtocolMemberMetadata(0, [T], b"")
    answer = mine.assign(cluster, {"m-1": joined, "m-2": other})
    assert ConsumerProtocolMemberAssignment.decode(answer["m-1"].encode()).assignment == [(T, [1, 3])]
    assert answer["m-2"].assignment == [(T, [0, 2])]


async def test_each_consumer_keeps_its_own_assignment() -> None:
    """aiokafka calls assignors as classes: two consumers of one process (the ledger's anchoring and
    settlement loops, two groups) each get a class of their own, so neither offers the other's
    partitions as its own. Each offers that one assignor and no other (aiokafka joins once per
    assignor offered, and each join after the first rebalances the group again)."""
    first, second = (kafka.consumer("127.0.0.1:1", T, group_id=g, security=kafka.KafkaSecurity(protocol="PLAINTEXT"))
                     for g in ("anchoring", "settlement"))
    (mine,), (theirs,) = (c._partition_assignment_strategy for c in (first, second))
    assert issubclass(mine, StickyAssignor) and issubclass(theirs, StickyAssignor) and mine is not theirs
    mine.on_assignment(ConsumerProtocolMemberAssignment(0, [(T, [0, 1])], b""))
    assert mine.held == {T: [0, 1]} and theirs.held == {} and StickyAssignor.held == {}
