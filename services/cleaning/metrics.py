"""The cleaning service's Prometheus metrics, and the handler that counts them."""

from __future__ import annotations

from collections import Counter
from time import perf_counter

from services.cleaning.cleaner import Cleaner, Outcome
from streamledger.core.records import Consumed
from streamledger.logging import get_logger
from streamledger.metrics import counter, gauge, seconds

SERVICE = "cleaning"
log = get_logger(SERVICE)

MESSAGES = counter(SERVICE, "messages", "Raw messages handled, by outcome", ("outcome",))
DEAD_LETTERS = counter(SERVICE, "deadletters", "Messages dead-lettered, by reason", ("reason",))
HANDLE_SECONDS = seconds(SERVICE, "handle", "Time to decode, clean, hash and encode a message (mean of each batch)")
LAG = gauge(SERVICE, "consumer_lag", "Messages in events.raw not yet handled", ("partition",))
BATCH_SECONDS = seconds(SERVICE, "batch", "Time to handle one batch, have its outputs acknowledged and commit it")
EXPIRED = counter(SERVICE, "dedup_expired", "Dedup entries forgotten after their window")
_BY_OUTCOME = {kind: MESSAGES.labels(kind) for kind in ("clean", "deadletter", "duplicate")}


def handle_batch(cleaner: Cleaner, messages: list[Consumed]) -> list[Outcome]:
    """`cleaner.handle` for each message, counted by outcome, the batch's mean time per message
    observed once; a bug becomes a dead letter instead of stopping the stream."""
    started = perf_counter()
    outcomes = [_handle(cleaner, message) for message in messages]
    if messages:
        HANDLE_SECONDS.observe((perf_counter() - started) / len(messages))
    for kind, count in Counter(outcome.kind for outcome in outcomes).items():
        _BY_OUTCOME[kind].inc(count)
    return outcomes


def _handle(cleaner: Cleaner, message: Consumed) -> Outcome:
    try:
        outcome = cleaner.handle(message)
    except Exception as exc:
        log.exception("handle_failed", extra={"partition": message.partition, "offset": message.offset})
        outcome = cleaner.dead_letter(message, None, "internal_error", f"{type(exc).__name__}: {exc}")
    if outcome.kind == "deadletter":
        DEAD_LETTERS.labels(outcome.reason).inc()
        log.warning("dead_letter", extra={"reason": outcome.reason, "key": outcome.key.decode(errors="replace"),
                                          "partition": message.partition, "offset": message.offset})
    return outcome
