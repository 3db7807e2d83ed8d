"""The settlement loop without servers: it settles only the holds that pay the account its
identity acts for (`WhoAmI.ActsFor`), on the latest receipt the client signed (not on usage
totals), counts a duplicate request once also across a restart, dead-letters a receipt its
client did not sign, and settles a hold when it is due, not before.

Kafka, MongoDB and the ledger are small in-memory stand-ins (tests/unit/test_ledger_anchorer.py);
the real service is driven in tests/integration/pipeline/test_ledger_service.py.
"""

from __future__ import annotations

import asyncio
import json
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
from streamledger.core.receipts import Receipt
from streamledger.fabric import Committed, EndorseError, EvaluateError
from streamledger.retry import RetryPolicy
from tests.unit.test_ledger_anchorer import Producer
from tests.unit.test_ledger_settlement import Client

CODEC = AvroCodec(SchemaRegistry.from_dir())
TOPIC = "usage-unit"
TP = TopicPartition(TOPIC, 0)
OURS = "Org1MSP::CN=provider@org1"
OTHER = "Org1MSP::CN=User7@org1"
CLIENT = Client()


class Consumer:
    """Hands out scripted fetches, then sets `stop`; records what is committed."""

    def __init__(self, fetches: list[dict], stop: asyncio.Event) -> None:
        self.fetches = fetches
        self.stop_event = stop
        self.committed: dict[TopicPartition, int] = {}

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
        self.committed.update(offsets)


class Store:
    """MongoDB's settlement_plans and settlements, kept across a restart of the loop."""

    def __init__(self) -> None:
        self.plans: dict[str, dict] = {}
        self.outcomes: dict[str, dict] = {}

    async def pending_settlements(self) -> list[dict]:
        return list(self.plans.values())

    async def settlement(self, hold_id: str) -> dict | None:
        return self.outcomes.get(hold_id)

    async def settled_through(self, hold_id: str) -> dict | None:
        return self.outcomes.get(hold_id) or self.plans.get(hold_id)

    async def plan_settlement(self, plan: dict[str, Any]) -> dict[str, Any]:
        return self.plans.setdefault(plan["_id"], plan)

    async def record_settlement(self, plan: dict[str, Any], outcome: dict[str, Any]) -> None:
        self.outcomes.setdefault(plan["_id"], {**plan, **outcome})
        self.plans.pop(plan["_id"], None)


class Ledger:
    """Holds by id, settled as the contract does; `hidden` ones are refused as the contract
    refuses a hold to a non-party."""

    def __init__(self, holds: dict[str, dict[str, Any]], hidden: set[str] = frozenset()) -> None:
        self.holds = holds
        self.hidden = hidden
        self.settled: list[tuple[str, Receipt | None]] = []
        self.recorded: list[Receipt] = []

    async def get_hold(self, hold_id: str) -> dict[str, Any] | None:
        if hold_id in self.hidden:
            raise EvaluateError(f'FORBIDDEN: "hold_id": only the client, the provider or an auditor may read hold '
                                f'"{hold_id}"', code=grpc.StatusCode.UNKNOWN)
        return self.holds.get(hold_id)

    async def record_receipt(self, receipt: Receipt) -> dict[str, Any]:
        self.recorded.append(receipt)
        self.holds[receipt.hold_id]["receipt"] = {"hold_id": receipt.hold_id, "units": receipt.units,
                                                  "sequence": receipt.sequence, "signature": receipt.signature}
        return self.holds[receipt.hold_id]

    async def settle(self, hold_id: str, receipt: Receipt | None) -> Committed:
        hold = self.holds[hold_id]
        if hold["status"] != "OPEN":
            raise EndorseError(f'ALREADY_SETTLED: "hold_id": hold "{hold_id}" was already settled in tx t1',
                               code=grpc.StatusCode.UNKNOWN)
        recorded = hold.get("receipt")
        if receipt is not None and recorded and receipt.sequence <= recorded["sequence"]:
            raise EndorseError(f'STALE_RECEIPT: "sequence": hold "{hold_id}" already has receipt sequence '
                               f'{recorded["sequence"]}', code=grpc.StatusCode.UNKNOWN)
        self.settled.append((hold_id, receipt))
        units = receipt.units if receipt else (recorded["units"] if recorded else 0)
        charged = min(units * hold["price_per_unit"], hold["authorized"])
        hold.update(status="SETTLED", charged=charged, refunded=hold["amount"] - charged, close_tx_id="t1")
        result = {"tx_id": "t1", "charged": charged, "refunded": hold["amount"] - charged, "units": units}
        return Committed(json.dumps(result).encode(), "t1", 7)


def hold(hold_id: str, provider: str = OURS, *, expires_in: float = -10, window: int = 110, amount: int = 100,
         price: int = 3) -> dict[str, Any]:
    expires_at = int(time.time() + expires_in)
    return {"hold_id": hold_id, "client": "Org2MSP::CN=User5@org2", "client_cert": CLIENT.cert,
            "provider": provider, "amount": amount, "price_per_unit": price, "authorized": amount, "receipt": None,
            "status": "OPEN", "expires_at": expires_at, "settlement_window_seconds": window,
            "settle_by": expires_at + window, "charged": 0, "refunded": 0, "close_tx_id": ""}


def usage(offset: int, hold_id: str, *, request: str | None = None, units: int = 2,
          receipt: Receipt | None = None, client: str = "c") -> ConsumerRecord:
    value = CODEC.encode("UsageRecord", {
        "hold_id": hold_id, "request_id": request or f"r{offset}", "client": client, "model_id": "m",
        "model_version": 1, "units": units, "price": 3, "ts": 1_767_225_600_000,
        "receipt_units": receipt.units if receipt else 0, "receipt_sequence": receipt.sequence if receipt else 0,
        "receipt_signature": receipt.signature if receipt else ""})
    return ConsumerRecord(TOPIC, 0, offset, 0, 0, hold_id.encode(), value, None, 0, 0, ())


def settler_of(ledger: Ledger, store: Store, fetches: list[dict], producer: Producer | None = None,
               **settings: Any) -> tuple[Settler, asyncio.Event, Producer, Consumer]:
    stop = asyncio.Event()
    consumer = Consumer(fetches, stop)
    producer = producer or Producer()
    settings = LedgerServiceSettings(ledger_usage_topic=TOPIC, ledger_deadletter_topic="dead-unit",
                                     ledger_settle_margin_seconds=15, **settings)
    retries = Retries(RetryPolicy(attempts=2, initial_seconds=0.001, max_seconds=0.001), stop)
    ports = Ports(ledger, store, producer, CODEC, retries, DeadLetters(producer, CODEC, "dead-unit"))  # type: ignore[arg-type]
    return Settler(settings, consumer, ports, provider=OURS), stop, producer, consumer  # type: ignore[arg-type]


def letters_of(producer: Producer) -> dict[int, dict]:
    return {d["source_offset"]: d for d in (CODEC.decode(v, reader="DeadLetter")
                                            for t, _, v in producer.sent if t == "dead-unit")}


async def test_only_holds_paying_the_account_it_acts_for_are_tallied_the_rest_dead_lettered() -> None:
    ledger = Ledger({"ours": hold("ours", expires_in=3600), "theirs": hold("theirs", OTHER, expires_in=3600)},
                    hidden={"hidden"})
    settler, stop, producer, _ = settler_of(
        ledger, Store(), [{TP: [usage(0, "ours"), usage(1, "theirs"), usage(2, "hidden"), usage(3, "ours")]}])

    await asyncio.wait_for(settler.run(stop), timeout=10)

    assert list(settler.book.tallies) == ["ours"]  # to be settled once due
    assert settler.book.tallies["ours"].units == 4
    letters = letters_of(producer)
    assert {offset: d["reason"] for offset, d in letters.items()} == {1: "other_provider", 2: "other_provider"}
    assert f"hold 'theirs' pays '{OTHER}'; this service settles for '{OURS}'" in letters[1]["error"]
    assert "FORBIDDEN" in letters[2]["error"]
    assert ledger.settled == []  # an hour before expiry: not due


async def test_a_due_hold_is_settled_once_on_the_latest_valid_receipt_not_on_the_usage_total() -> None:
    r1, r2 = CLIENT.receipt("h", 2, 1), CLIENT.receipt("h", 6, 2)
    forged = Client("User6").receipt("h", 30, 3)  # more units, signed by someone else
    records = [usage(0, "h"), usage(1, "h", receipt=r1), usage(2, "h", receipt=r2),
               usage(3, "h", units=20, receipt=forged), usage(4, "h", receipt=r1),  # a slower replica's record
               usage(5, "h", request="r2", receipt=r2)]  # r2 delivered twice
    ledger, store = Ledger({"h": hold("h", price=3)}), Store()
    settler, stop, producer, consumer = settler_of(ledger, store, [{TP: records}])

    await asyncio.wait_for(settler.run(stop), timeout=10)

    assert ledger.settled == [("h", r2)]
    outcome = store.outcomes["h"]
    assert (outcome["status"], outcome["charged"], outcome["refunded"], outcome["units"], outcome["price"]) == \
        ("SETTLED", 18, 82, 6, 3)
    assert (outcome["usage_units"], outcome["usage_records"], outcome["duplicates"]) == (8, 4, 1)
    assert outcome["receipt"] == {"units": 6, "sequence": 2, "signature": r2.signature}
    letters = letters_of(producer)
    assert {offset: d["reason"] for offset, d in letters.items()} == {3: "invalid_receipt"}
    assert "is not signed by its client" in letters[3]["error"] and "not counted" in letters[3]["error"]
    assert consumer.committed == {TP: len(records)}  # settled: every record is accounted for
    assert store.plans == {}


async def test_the_same_request_id_of_two_clients_is_counted_for_each() -> None:
    ledger = Ledger({"h": hold("h", expires_in=3600)})
    records = [usage(0, "h", request="r1"), usage(1, "h", request="r1", client="other"),
               usage(2, "h", request="r1")]
    settler, stop, _, _ = settler_of(ledger, Store(), [{TP: records}])

    await asyncio.wait_for(settler.run(stop), timeout=10)

    tally = settler.book.tallies["h"]
    assert (tally.units, tally.records, tally.duplicates) == (4, 2, 1)


async def test_a_restart_rebuilds_the_same_tally_from_the_replayed_records_and_settles_once() -> None:
    r1 = CLIENT.receipt("h", 4, 1)
    first = [usage(0, "h"), usage(1, "h", receipt=r1)]
    later = [usage(2, "h", request="r1", receipt=r1), usage(3, "h", receipt=CLIENT.receipt("h", 6, 2))]
    ledger, store = Ledger({"h": hold("h", expires_in=3600)}), Store()
    settler, stop, _, consumer = settler_of(ledger, store, [{TP: first}])
    await asyncio.wait_for(settler.run(stop), timeout=10)
    assert ledger.settled == [] and consumer.committed == {TP: 0}  # not due: nothing passed

    # The hold expires while the loop is down; it restarts from the committed offset.
    ledger.holds["h"] = {**hold("h"), "status": "OPEN"}
    settler, stop, _, _ = settler_of(ledger, store, [{TP: first + later}])
    await asyncio.wait_for(settler.run(stop), timeout=10)

    assert [(h, r.units) for h, r in ledger.settled] == [("h", 6)]
    outcome = store.outcomes["h"]
    assert (outcome["usage_units"], outcome["usage_records"], outcome["duplicates"]) == (6, 3, 1)

    # A third start sees the hold settled: the replay is no usage to charge, nor a dead letter.
    settler, stop, producer, _ = settler_of(ledger, store, [{TP: first + later}])
    await asyncio.wait_for(settler.run(stop), timeout=10)
    assert len(ledger.settled) == 1 and letters_of(producer) == {}


async def test_a_plan_left_pending_by_a_crash_is_settled_first_on_its_receipt() -> None:
    receipt = CLIENT.receipt("h", 5, 1)
    ledger, store = Ledger({"h": hold("h")}), Store()
    store.plans["h"] = {"_id": "h", "units": 5, "price": 3, "amount": 15, "partition": 0, "through_offset": 4,
                        "receipt": {"units": 5, "sequence": 1, "signature": receipt.signature}}
    settler, stop, _, _ = settler_of(ledger, store, [])

    await asyncio.wait_for(settler.run(stop), timeout=10)

    assert ledger.settled == [("h", receipt)]
    assert store.outcomes["h"]["charged"] == 15 and store.plans == {}


async def test_a_later_receipt_recorded_on_the_ledger_is_settled_on_not_refused() -> None:
    seen, recorded = CLIENT.receipt("h", 4, 1), CLIENT.receipt("h", 9, 5)
    on_ledger = hold("h")
    on_ledger["receipt"] = {"hold_id": "h", "units": 9, "sequence": 5, "signature": recorded.signature}
    ledger, store = Ledger({"h": on_ledger}), Store()
    settler, stop, _, _ = settler_of(ledger, store, [{TP: [usage(0, "h", receipt=seen)]}])

    await asyncio.wait_for(settler.run(stop), timeout=10)

    assert ledger.settled == [("h", None)]  # on the recorded receipt
    assert (store.outcomes["h"]["charged"], store.outcomes["h"]["units"]) == (27, 9)


async def test_a_hold_is_not_settled_before_expiry_plus_grace_but_before_its_deadline() -> None:
    # Expired 3 s ago: with 5 s of grace it is not due yet; with a deadline (settle_by - margin
    # - lead) already here, it is.
    waiting, urgent = hold("a", expires_in=-3, window=110), hold("b", expires_in=-3, window=20)
    ledger, store = Ledger({"a": waiting, "b": urgent}), Store()
    settler, stop, _, _ = settler_of(ledger, store, [{TP: [usage(0, "a"), usage(1, "b")]}],
                                     ledger_settle_grace_seconds=5, ledger_settle_lead_seconds=5)

    await asyncio.wait_for(settler.run(stop), timeout=10)

    assert [h for h, _ in ledger.settled] == ["b"]  # settle_by - margin 15 - lead 5: its expiry
    assert store.outcomes["b"]["deadline"] == urgent["settle_by"] - 15


async def test_a_long_holds_latest_receipt_is_recorded_on_the_ledger_before_settlement() -> None:
    receipt = CLIENT.receipt("h", 4, 1)
    ledger, store = Ledger({"h": hold("h", expires_in=3600)}), Store()
    settler, stop, _, _ = settler_of(ledger, store, [{TP: [usage(0, "h", receipt=receipt)]}],
                                     ledger_record_receipt_every_seconds=1e-6)

    await asyncio.wait_for(settler.run(stop), timeout=10)

    assert ledger.recorded == [receipt] and ledger.settled == []
    assert settler.book.tallies["h"].recorded == receipt
