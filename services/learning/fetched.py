"""`Fetched`: a run of records the learner received from one partition, as the reader sends it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streamledger.core.records import Consumed


@dataclass(frozen=True, slots=True)
class Fetched:
    """A fetched run of records of one partition, in offset order: each one's position and original
    bytes, and its decoded event (or the exception saying why it did not decode). Lists, not a
    `Consumed` per record: the learner needs one only for a dead letter."""

    topic: str
    partition: int
    offsets: list[int]
    keys: list[bytes | None]
    values: list[bytes | None]
    events: list[dict[str, Any] | Exception]

    @classmethod
    def of(cls, records: list[tuple[Consumed, dict[str, Any] | Exception]]) -> Fetched:
        """The run of `records`, all of one partition."""
        first = records[0][0]
        return cls(first.topic, first.partition, [c.offset for c, _ in records], [c.key for c, _ in records],
                   [c.value for c, _ in records], [e for _, e in records])

    def __len__(self) -> int:
        return len(self.offsets)

    def consumed(self, index: int) -> Consumed:
        return Consumed((self.topic, self.partition), self.topic, self.partition, self.offsets[index],
                        self.keys[index], self.values[index])
