"""The start-time admin helpers ask again while a node is down (a service starting while one of
three brokers is down must start), and only then."""

from __future__ import annotations

import pytest
from aiokafka.errors import NodeNotReadyError, TopicAuthorizationFailedError

from streamledger.kafka import clients
from streamledger.retry import RetryPolicy


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clients, "ADMIN_RETRY", RetryPolicy(attempts=3, initial_seconds=0.01, max_seconds=0.01))


def failing(errors: list[Exception]):
    calls = []

    async def call() -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return "done"
    return call, calls


async def test_a_node_that_is_down_is_asked_around() -> None:
    call, calls = failing([NodeNotReadyError("node 2"), NodeNotReadyError("node 2")])
    assert await clients.admin_retried(call) == "done"
    assert len(calls) == 3


async def test_it_gives_up_after_its_attempts_with_the_last_error() -> None:
    call, calls = failing([NodeNotReadyError(f"try {i}") for i in range(5)])
    with pytest.raises(NodeNotReadyError, match="try 2"):
        await clients.admin_retried(call)
    assert len(calls) == 3


async def test_a_refusal_is_not_asked_again() -> None:
    call, calls = failing([TopicAuthorizationFailedError("events.raw")])
    with pytest.raises(TopicAuthorizationFailedError):
        await clients.admin_retried(call)
    assert len(calls) == 1
    assert not clients.is_transient(ValueError("not Kafka's"))
