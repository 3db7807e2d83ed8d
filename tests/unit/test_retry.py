"""The one retry loop: bounded backoff, transient errors only, a bound on attempts, and stop."""

from __future__ import annotations

import asyncio
import random

import pytest

from streamledger.retry import RetryPolicy, Stopped, retry


class Unavailable(Exception):
    pass


def test_delays_grow_and_are_capped() -> None:
    backoff = RetryPolicy(initial_seconds=0.2, max_seconds=5.0)
    assert [backoff.delay(n) for n in range(7)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert backoff.delay(10_000) == 5.0  # no overflow however long the outage


def test_jitter_only_shortens_within_its_fraction() -> None:
    backoff = RetryPolicy(initial_seconds=1.0, max_seconds=1.0, jitter=0.5)
    rng = random.Random(7)
    delays = [backoff.delay(3, rng) for _ in range(200)]
    assert all(0.5 <= d <= 1.0 for d in delays) and len(set(delays)) > 100


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"initial_seconds": 0}, "0 < initial_seconds"), ({"initial_seconds": 2, "max_seconds": 1}, "<= max_seconds"),
     ({"factor": 0.5}, "factor"), ({"jitter": 2}, "jitter"), ({"attempts": 0}, "attempts")],
)
def test_bad_settings_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)


async def test_retries_transient_failures_until_success() -> None:
    calls, retries = [], []

    async def operation() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise Unavailable("down")
        return "acknowledged"

    result = await retry(
        operation, RetryPolicy(attempts=4, initial_seconds=0.001, max_seconds=0.004),
        is_transient=lambda exc: isinstance(exc, Unavailable), stop=asyncio.Event(), on_retry=lambda attempt, exc, delay: retries.append((attempt, delay)),
    )
    assert result == "acknowledged" and len(calls) == 4
    assert retries == [(0, 0.001), (1, 0.002), (2, 0.004)]


async def test_other_errors_are_not_retried() -> None:
    async def operation() -> None:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await retry(operation, RetryPolicy(), is_transient=lambda exc: isinstance(exc, Unavailable))


async def test_stop_ends_the_wait() -> None:
    stop = asyncio.Event()

    async def operation() -> None:
        stop.set()  # e.g. SIGTERM arrives during the outage
        raise Unavailable("down")

    with pytest.raises(Stopped, match="down"):
        await asyncio.wait_for(
            retry(operation, RetryPolicy(initial_seconds=60, max_seconds=60), is_transient=lambda exc: isinstance(exc, Unavailable),
                  stop=stop), timeout=5
        )


async def test_the_last_failure_propagates_once_the_attempts_are_spent() -> None:
    calls, retries = [], []

    async def operation() -> None:
        calls.append(1)
        raise Unavailable(f"down {len(calls)}")

    with pytest.raises(Unavailable, match="down 3"):
        await retry(operation, RetryPolicy(attempts=3, initial_seconds=0.001, max_seconds=0.001),
                    is_transient=lambda exc: isinstance(exc, Unavailable),
                    on_retry=lambda attempt, exc, delay: retries.append(attempt))
    assert len(calls) == 3 and retries == [0, 1]
