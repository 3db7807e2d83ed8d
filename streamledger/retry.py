"""Bounded exponential backoff: how long to wait before the next retry of a transient failure.

    backoff = Backoff(initial=0.2, maximum=5.0)
    [backoff.delay(n) for n in range(6)]  # [0.2, 0.4, 0.8, 1.6, 3.2, 5.0]

Each delay is capped at `maximum`, so a sink waiting for MongoDB checks again at least that
often; `jitter` spreads out sinks that failed together.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.2
    maximum: float = 5.0
    factor: float = 2.0
    jitter: float = 0.0
    """Fraction of the delay drawn at random, 0 (none) to 1."""

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError(f"backoff needs 0 < initial ({self.initial}) <= maximum ({self.maximum})")
        if self.factor < 1:
            raise ValueError(f"backoff factor must be >= 1, got {self.factor}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"backoff jitter must be within [0, 1], got {self.jitter}")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (0 = the first failure)."""
        base = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        if not self.jitter:
            return base
        return base * (1 - self.jitter * (rng or random).random())


class Stopped(Exception):
    """The service was asked to stop while waiting to retry."""


async def retry_transient(
    operation: Callable[[], Awaitable[T]],
    is_transient: Callable[[BaseException], bool],
    backoff: Backoff,
    stop: asyncio.Event,
    on_retry: Callable[[int, BaseException, float], None] = lambda attempt, exc, delay: None,
) -> T:
    """Run `operation` until it succeeds, waiting `backoff` after each transient failure.

    Other exceptions propagate at once. Retries have no count limit on purpose: this is how
    a sink waits out a database outage without reading more input (back-pressure); a set
    `stop` event ends the wait with `Stopped`.
    """
    attempt = 0
    while True:
        try:
            return await operation()
        except Exception as exc:
            if not is_transient(exc):
                raise
            delay = backoff.delay(attempt, rng=None)
            on_retry(attempt, exc, delay)
            attempt += 1
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                continue
            raise Stopped(f"stopped while retrying after: {exc}") from exc
