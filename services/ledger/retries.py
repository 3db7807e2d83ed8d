"""The ledger service's one retry loop: which failures are waited out, for how long, and a count.

    retries = Retries.from_settings(settings, stop)
    committed = await retries.run("anchor", lambda: ledger.anchor_batch(...))

Every ledger, MongoDB and Kafka call of the service goes through `Retries.run`, and nothing
under it retries (the service connects its `LedgerClient` with `NO_RETRY`), so retries never
nest. Each retry is counted in `streamledger_ledger_retries_total{operation}` and logged.
A refusal (not transient) propagates unchanged, so callers catch the contract's typed errors;
a transient failure that outlasts `ledger_retry_attempts` becomes `RetriesSpent`, which no
caller catches: the service stops with that error (exit 1) instead of waiting forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiokafka.errors import KafkaError

from services.ledger import store
from services.ledger.settings import LedgerServiceSettings
from streamledger import metrics
from streamledger.fabric import (
    CommitError,
    CommitStatusError,
    GatewayError,
    SubmitError,
)
from streamledger.logging import get_logger
from streamledger.retry import RetryPolicy, retry

log = get_logger("ledger")
T = TypeVar("T")

RETRIES = metrics.counter("ledger", "retries", "Calls retried after a transient failure, by operation",
                          ("operation",))


def is_transient(exc: BaseException) -> bool:
    """Worth retrying as is: the ledger, MongoDB or Kafka was unreachable or busy."""
    if isinstance(exc, CommitError):
        return exc.conflict
    if isinstance(exc, GatewayError):
        return exc.transient or isinstance(exc, (SubmitError, CommitStatusError))
    if isinstance(exc, KafkaError):
        return exc.retriable
    return store.is_transient(exc)


class RetriesSpent(Exception):
    """A call kept failing transiently for every attempt the policy allows."""

    def __init__(self, operation: str, attempts: int, error: BaseException) -> None:
        self.operation = operation
        self.attempts = attempts
        super().__init__(f"{operation} still failed after {attempts} attempts: {type(error).__name__}: {error}")


class Retries:
    def __init__(self, policy: RetryPolicy, stop: asyncio.Event) -> None:
        self.policy = policy
        self.stop = stop

    @classmethod
    def from_settings(cls, settings: LedgerServiceSettings, stop: asyncio.Event) -> Retries:
        return cls(RetryPolicy(settings.ledger_retry_attempts, settings.ledger_backoff_initial_seconds,
                               settings.ledger_backoff_max_seconds, jitter=0.2), stop)

    async def run(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`, retried while it fails transiently; `Stopped` once the service is asked to stop."""
        def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
            RETRIES.labels(operation).inc()
            log.warning("retrying", extra={"operation": operation, "attempt": attempt + 1,
                                           "retry_in_s": round(delay, 2), "error": str(exc)[:500]})
        try:
            return await retry(call, self.policy, is_transient=is_transient, stop=self.stop, on_retry=on_retry)
        except Exception as exc:
            if is_transient(exc):  # it propagated although transient: the attempts are spent
                raise RetriesSpent(operation, self.policy.attempts, exc) from exc
            raise
