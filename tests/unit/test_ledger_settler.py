"""The settlement loop without servers: it settles only the holds that pay the account its
identity acts for (`WhoAmI.ActsFor`); usage of any other hold is a dead letter, whether the
ledger shows that hold to it (another provider named) or refuses to (FORBIDDEN: no party).

Kafka, MongoDB and the ledger are small in-memory stand-ins (tests/unit/test_ledger_anchorer.py);
the real service is driven in tests/integration/pipeline/test_ledger_service.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from services.ledger.dead_letters import DeadLetters
from services.ledger.ports import Ports
from services.ledger.retries import Retries
from services.ledger.settings import LedgerServiceSettings
from services.ledger.settler import Settler
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.fabric import EvaluateError
from streamledger.retry import RetryPolicy
from tests.unit.test_ledger_anchorer import Producer

CODEC = AvroCodec(SchemaRegistry.from_dir())
TOPIC = "usage-unit"
TP = TopicPartition(TOPIC, 0)
OURS = "Org1MSP::CN=provider@org1"
OTHER = "Org1MSP::CN=User7@org1"


class Consumer:
    """Hands out one scripted fetch, then sets `stop`."""

    def __init__(self, fetches: list[dict], stop: asyncio.Event) -> None:
        self.fetches = fetches
        self.stop_event = stop

    def subscribe(self, topics: list[str], listener: object) -> None:
        assert topics == [TOPIC]

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def getmany(self, timeout_ms: int, max_records: int) -> dict:
        if self.fetches:
            return self.fetches.pop(0)
        self.stop_event.set()
        return {}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        pass


class Store:
    async def pending_settlements(self) -> list[dict]:
        return []


class Ledger:
    """Holds by id; `hidden` ones are refused as the contract refuses a hold to a non-party."""

    def __init__(self, holds: dict[str, dict[str, Any]], hidden: set[str]) -> None:
        self.holds = holds
        self.hidden = hidden

    async def get_hold(self, hold_id: str) -> dict[str, Any] | None:
        if hold_id in self.hidden:
            raise EvaluateError(f'FORBIDDEN: "hold_id": only the client, the provider or an auditor may read hold '
                                f'"{hold_id}"', code=grpc.StatusCode.UNKNOWN)
        return self.holds.get(hold_id)


def hold(hold_id: str, provider: str) -> dict[str, Any]:
    return {"hold_id": hold_id, "client": "Org2MSP::CN=User5@org2", "provider": provider, "amount": 100,
            "status": "OPEN", "expires_at": int(time.time()) + 3600}


def usage(offset: int, hold_id: str) -> ConsumerRecord:
    value = CODEC.encode("UsageRecord", {"hold_id": hold_id, "request_id": f"r{offset}", "client": "c",
                                         "model_id": "m", "model_version": 1, "units": 2, "price": 3,
                                         "ts": 1_767_225_600_000})
    return ConsumerRecord(TOPIC, 0, offset, 0, 0, hold_id.encode(), value, None, 0, 0, ())


async def test_only_holds_paying_the_account_it_acts_for_are_tallied_the_rest_dead_lettered() -> None:
    stop = asyncio.Event()
    consumer = Consumer([{TP: [usage(0, "ours"), usage(1, "theirs"), usage(2, "hidden"), usage(3, "ours")]}], stop)
    producer = Producer()
    settings = LedgerServiceSettings(ledger_usage_topic=TOPIC, ledger_deadletter_topic="dead-unit")
    retries = Retries(RetryPolicy(attempts=2, initial_seconds=0.001, max_seconds=0.001), stop)
    ledger = Ledger({"ours": hold("ours", OURS), "theirs": hold("theirs", OTHER)}, hidden={"hidden"})
    settler = Settler(settings, consumer, Ports(ledger, Store(), producer, CODEC, retries,  # type: ignore[arg-type]
                                                DeadLetters(producer, CODEC, "dead-unit")), provider=OURS)

    await asyncio.wait_for(settler.run(stop), timeout=10)

    assert list(settler.book.tallies) == ["ours"]  # to be settled once due
    assert settler.book.tallies["ours"].units == 4
    letters = {d["source_offset"]: d for d in (CODEC.decode(v, reader="DeadLetter")
                                               for t, _, v in producer.sent if t == "dead-unit")}
    assert {offset: d["reason"] for offset, d in letters.items()} == {1: "other_provider", 2: "other_provider"}
    assert f"hold 'theirs' pays '{OTHER}'; this service settles for '{OURS}'" in letters[1]["error"]
    assert "FORBIDDEN" in letters[2]["error"]
