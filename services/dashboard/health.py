"""Whether a topic still flows and whether a consumer group still keeps up.

    ok     caught up, or still committing progress
    stale  has lag and has committed nothing for `stale_after_s`, though it has members
    down   has lag, commits nothing, and no consumer is connected
    idle   (topics) nothing written for `stale_after_s`; `empty`: nothing written while watched
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


def topic_status(quiet_for: float | None, total: int, stale_after_s: float) -> str:
    """`flowing`, `quiet` (no new record for stale_after_s) or `empty` (never saw a record)."""
    if quiet_for is None:
        return "quiet" if total > 0 else "empty"
    return "flowing" if quiet_for < stale_after_s else "quiet"


@dataclass
class GroupProgress:
    """One consumer group's committed total and lag over time, bounded to `window_s`."""

    window_s: float = 120.0
    committed_total: int | None = None
    last_progress: float | None = None
    lag_history: deque[tuple[float, int]] = field(default_factory=deque)

    def observe(self, now: float, committed_total: int, lag: int) -> None:
        if self.committed_total is None or committed_total != self.committed_total:
            self.last_progress = now
        self.committed_total = committed_total
        self.lag_history.append((now, lag))
        while self.lag_history and self.lag_history[0][0] < now - self.window_s:
            self.lag_history.popleft()

    @property
    def lag(self) -> int:
        return self.lag_history[-1][1] if self.lag_history else 0

    def status(self, now: float, members: int, stale_after_s: float) -> str:
        if self.lag == 0 or self.last_progress is None or now - self.last_progress < stale_after_s:
            return "ok"
        # Services that assign partitions by hand (the learner) never have members, so a
        # member count alone cannot tell "down"; lag without progress is what says it.
        return "stale" if members > 0 else "down"

    def stalled_for(self, now: float) -> float:
        return 0.0 if self.lag == 0 or self.last_progress is None else now - self.last_progress
