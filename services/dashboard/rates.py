"""Events per second of a topic, from how fast its end offsets grow.

Reading end offsets costs one small request per tick whatever the traffic, so the
dashboard measures throughput without fetching a single record of the busy topics.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class OffsetRate:
    """Rolling samples of (time, total end offset) of one topic, bounded to `window_s`."""

    window_s: float = 120.0
    samples: deque[tuple[float, int]] = field(default_factory=deque)
    last_growth: float | None = None
    """When the end offset last grew while we watched; None if it never did."""

    def observe(self, now: float, end_total: int) -> None:
        if self.samples:
            last_t, last_end = self.samples[-1]
            if now <= last_t:
                return  # the clock stepped back: a rate over no time means nothing
            if end_total > last_end:
                self.last_growth = now
        self.samples.append((now, end_total))
        while self.samples and self.samples[0][0] < now - self.window_s:
            self.samples.popleft()

    @property
    def total(self) -> int:
        """Records ever written to the topic (its end offsets summed over partitions)."""
        return self.samples[-1][1] if self.samples else 0

    def rate(self, span_s: float = 5.0) -> float:
        """Events/s over the last `span_s` seconds of samples (0 with fewer than two samples)."""
        if len(self.samples) < 2:
            return 0.0
        now, end = self.samples[-1]
        start_t, start_end = self.samples[0]
        for t, e in reversed(self.samples):
            if t < now - span_s:
                break
            start_t, start_end = t, e
        if now == start_t:
            start_t, start_end = self.samples[-2]
        # A topic deleted and re-created shrinks: count no negative traffic.
        return max(0, end - start_end) / (now - start_t)

    def series(self) -> list[tuple[float, float]]:
        """(time, events/s) between each pair of consecutive samples, oldest first."""
        points = []
        for (t0, e0), (t1, e1) in zip(self.samples, list(self.samples)[1:]):
            points.append((t1, max(0, e1 - e0) / (t1 - t0)))
        return points

    def quiet_for(self, now: float) -> float | None:
        """Seconds since the topic last grew; None if it never grew while watched."""
        return None if self.last_growth is None else now - self.last_growth
