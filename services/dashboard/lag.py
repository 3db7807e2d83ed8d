"""Consumer lag: how far each group's committed offsets are behind the topics' end offsets."""

from __future__ import annotations

from collections.abc import Mapping

Partition = tuple[str, int]
"""(topic, partition): kept as a plain tuple so this module needs no Kafka client."""


def group_lag(committed: Mapping[Partition, int], end: Mapping[Partition, int]) -> dict[str, int]:
    """Lag per topic of one group, over the partitions it has committed and whose end is known.

    A partition the group never committed has no position to measure from, so it is left
    out rather than guessed; a committed offset past the end (topic re-created) counts 0.
    """
    by_topic: dict[str, int] = {}
    for tp, offset in committed.items():
        if tp in end:
            by_topic[tp[0]] = by_topic.get(tp[0], 0) + max(0, end[tp] - offset)
    return by_topic


def anchor_lag(anchored: Mapping[Partition, int], end: Mapping[Partition, int], topic: str) -> int | None:
    """Records of `topic` written but not yet covered by an anchor; None when nothing was ever anchored.

    `anchored` holds, per partition, the last offset an anchor covers (inclusive).
    """
    if not any(tp[0] == topic for tp in anchored):
        return None
    return sum(max(0, end_offset - (anchored.get(tp, -1) + 1)) for tp, end_offset in end.items() if tp[0] == topic)
