"""The partition assignor of every consumer group the project runs: balanced, and sticky.

    consumer = AIOKafkaConsumer(..., partition_assignment_strategy=(sticky_assignor(),))

(`kafka.consumer` does this for every consumer with a group.) Each member says, in the metadata
it joins with, the partitions it held last; the group's leader lets each member keep what it
held, up to its fair share, and hands what is left to the members holding least. When a replica
joins or leaves, only the partitions that must move do: a learning replica hands over only the
models whose shards moved, a cleaning replica keeps using the dedup entries of partitions that
came back to it.

Why not aiokafka's `StickyPartitionAssignor`: in aiokafka 0.14 it keeps its state on the class
(two consumers of one process overwrite each other's) and never learns its generation, so a
partition claimed by two members is settled by chance; groups using it have been reported never
to finish a rebalance. This one holds one member's last assignment on a class made for that
consumer alone, and needs no generation: aiokafka's protocol is eager (every member gives up
every partition before it rejoins), so a claim only says where a partition was, never who holds
it now, and two claims on one partition are settled by member id.

Consumers offer this assignor alone (see `kafka.consumer` for why never a list), so a group can
only form among members that all run it: a group of an older version (round robin) is stopped
before the new one starts (a member joining a group of the other kind is refused,
InconsistentGroupProtocol).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping

from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

Partition = tuple[str, int]


class StickyAssignor(AbstractPartitionAssignor):
    """Use `sticky_assignor()`: a class of its own per consumer, holding that consumer's last assignment."""

    name = "streamledger-sticky"
    version = 0
    held: dict[str, list[int]] = {}
    """This member's partitions after its last rebalance, per topic."""

    @classmethod
    def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        return ConsumerProtocolMemberMetadata(cls.version, sorted(topics), json.dumps(cls.held).encode())

    @classmethod
    def on_assignment(cls, assignment: ConsumerProtocolMemberAssignment) -> None:
        cls.held = {topic: sorted(partitions) for topic, partitions in assignment.assignment}

    @classmethod
    def assign(cls, cluster: ClusterMetadata,
               members: Mapping[str, ConsumerProtocolMemberMetadata]) -> dict[str, ConsumerProtocolMemberAssignment]:
        subscribed = {member: set(meta.subscription) for member, meta in members.items()}
        claims = {member: claimed(meta.user_data) for member, meta in members.items()}
        every = sorted((topic, p) for topic in set().union(*subscribed.values())
                       for p in cluster.partitions_for_topic(topic) or ())
        chosen = plan(every, subscribed, claims)
        return {member: ConsumerProtocolMemberAssignment(cls.version, grouped(chosen[member]), b"")
                for member in members}


def sticky_assignor() -> type[StickyAssignor]:
    """A `StickyAssignor` class for one consumer (aiokafka calls assignors as classes)."""
    return type("StickyAssignor", (StickyAssignor,), {"held": {}})


def plan(every: list[Partition], subscribed: Mapping[str, set[str]],
         claims: Mapping[str, set[Partition]]) -> dict[str, list[Partition]]:
    """Each member's partitions: balanced (counts differ by at most one among members subscribed
    alike), each member keeping as many of its claims as balance allows."""
    members = sorted(subscribed)
    if not members:
        return {}
    fair, extra = divmod(len(every), len(members))
    existing = set(every)
    kept: dict[str, list[Partition]] = {}
    owner: dict[Partition, str] = {}
    for member in members:  # a claim on a partition gone, not subscribed to, or claimed before: dropped
        mine = sorted(tp for tp in claims.get(member, ()) if tp in existing and tp[0] in subscribed[member]
                      and tp not in owner)
        owner.update((tp, member) for tp in mine)
        kept[member] = mine
    # The members holding most keep one over the fair share while such places remain.
    for member in sorted(members, key=lambda m: (-len(kept[m]), m)):
        share = fair
        if extra and len(kept[member]) > fair:
            share, extra = fair + 1, extra - 1
        kept[member] = kept[member][:share]
    taken = {tp for mine in kept.values() for tp in mine}
    for tp in every:
        if tp in taken:
            continue
        able = [m for m in members if tp[0] in subscribed[m]]
        if able:
            kept[min(able, key=lambda m: (len(kept[m]), m))].append(tp)
    return {member: sorted(mine) for member, mine in kept.items()}


def claimed(user_data: bytes) -> set[Partition]:
    """The partitions a member says it held (nothing, if its metadata says nothing readable)."""
    try:
        held = json.loads(user_data or b"{}")
        return {(str(topic), int(p)) for topic, partitions in held.items() for p in partitions}
    except (ValueError, TypeError, AttributeError):
        return set()


def grouped(partitions: list[Partition]) -> list[tuple[str, list[int]]]:
    by_topic: dict[str, list[int]] = defaultdict(list)
    for topic, p in partitions:
        by_topic[topic].append(p)
    return sorted((topic, sorted(ps)) for topic, ps in by_topic.items())
