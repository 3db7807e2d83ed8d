"""Retrying a transient failure: one bounded policy, one loop, counted by the caller.

    policy = RetryPolicy(attempts=8, initial_seconds=0.2, max_seconds=5.0, jitter=0.2)
    [policy.delay(n) for n in range(6)]  # about [0.2, 0.4, 0.8, 1.6, 3.2, 5.0], less jitter
    result = await retry(write, policy, is_transient=is_transient, stop=stop,
                         on_retry=lambda attempt, exc, delay: RETRIES.labels("write").inc())

Every service retries in exactly one place per operation with this loop: the libraries under
it (the Fabric gateway client, the Kafka and MongoDB adapters) never retry on their own, so
retries never nest. One exception, in one place: the Kafka helpers called at start
(`kafka.provision`, `kafka.partitions_of`) ask again while a node is down
(`kafka.clients.admin_retried`), since nothing retries a service's start. Only what `is_transient` accepts is retried; anything else propagates at
once. After `attempts` tries the last exception propagates unchanged, so a caller catches the
same typed error whether or not it was retried. A set `stop` event ends a wait with `Stopped`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    """Tries in all, the first included; the last failure propagates."""
    initial_seconds: float = 0.2
    max_seconds: float = 5.0
    factor: float = 2.0
    jitter: float = 0.0
    """Fraction of each delay drawn at random, 0 (none) to 1 (full jitter)."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"retry attempts must be >= 1, got {self.attempts}")
        if not 0 < self.initial_seconds <= self.max_seconds:
            raise ValueError(f"retry needs 0 < initial_seconds ({self.initial_seconds}) "
                             f"<= max_seconds ({self.max_seconds})")
        if self.factor < 1:
            raise ValueError(f"retry factor must be >= 1, got {self.factor}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"retry jitter must be within [0, 1], got {self.jitter}")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (0 = the first failure)."""
        base = min(self.max_seconds, self.initial_seconds * self.factor ** min(attempt, 64))
        if not self.jitter:
            return base
        return base * (1 - self.jitter * (rng or random).random())


NO_RETRY = RetryPolicy(attempts=1)


class Stopped(Exception):
    """The service was asked to stop while waiting to retry."""


async def retry(
    operation: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    is_transient: Callable[[BaseException], bool],
    stop: asyncio.Event | None = None,
    on_retry: Callable[[int, BaseException, float], None] = lambda attempt, exc, delay: None,
) -> T:
    """Run `operation` until it succeeds, waiting `policy.delay` after each transient failure.

    `on_retry(attempt, exc, delay)` runs before each wait: count it in a metric and log it.
    """
    attempt = 0
    while True:
        try:
            return await operation()
        except Exception as exc:
            if not is_transient(exc) or attempt + 1 >= policy.attempts:
                raise
            delay = policy.delay(attempt)
            on_retry(attempt, exc, delay)
            attempt += 1
            if stop is None:
                await asyncio.sleep(delay)
                continue
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                continue
            raise Stopped(f"stopped while retrying after: {exc}") from exc
