"""Bounded backoff and the retry loop the sink uses while MongoDB is down."""

from __future__ import annotations

import asyncio
import random

import pytest

from streamledger.retry import Backoff, Stopped, retry_transient


class Unavailable(Exception):
    pass


def test_delays_grow_and_are_capped() -> None:
    backoff = Backoff(initial=0.2, maximum=5.0)
    assert [backoff.delay(n) for n in range(7)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert backoff.delay(10_000) == 5.0  # no overflow however long the outage


def test_jitter_only_shortens_within_its_fraction() -> None:
    backoff = Backoff(initial=1.0, maximum=1.0, jitter=0.5)
    rng = random.Random(7)
    delays = [backoff.delay(3, rng) for _ in range(200)]
    assert all(0.5 <= d <= 1.0 for d in delays) and len(set(delays)) > 100


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"initial": 0}, "0 < initial"), ({"initial": 2, "maximum": 1}, "<= maximum"), ({"factor": 0.5}, "factor"),
     ({"jitter": 2}, "jitter")],
)
def test_bad_settings_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(**kwargs)


async def test_retries_transient_failures_until_success() -> None:
    calls, retries = [], []

    async def operation() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise Unavailable("down")
        return "acknowledged"

    result = await retry_transient(
        operation, lambda exc: isinstance(exc, Unavailable), Backoff(0.001, 0.004), asyncio.Event(),
        on_retry=lambda attempt, exc, delay: retries.append((attempt, delay)),
    )
    assert result == "acknowledged" and len(calls) == 4
    assert retries == [(0, 0.001), (1, 0.002), (2, 0.004)]


async def test_other_errors_are_not_retried() -> None:
    async def operation() -> None:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await retry_transient(operation, lambda exc: isinstance(exc, Unavailable), Backoff(), asyncio.Event())


async def test_stop_ends_the_wait() -> None:
    stop = asyncio.Event()

    async def operation() -> None:
        stop.set()  # e.g. SIGTERM arrives during the outage
        raise Unavailable("down")

    with pytest.raises(Stopped, match="down"):
        await asyncio.wait_for(
            retry_transient(operation, lambda exc: isinstance(exc, Unavailable), Backoff(60, 60), stop), timeout=5
        )
