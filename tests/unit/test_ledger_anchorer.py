"""The anchoring loop without servers: every record of a fetch is either in an anchored batch
or a dead letter, whatever sits between them (a tombstone, bytes that are no Avro, another
record type, a bad content hash), and the offsets committed cover exactly those records.

Kafka, MongoDB and the ledger are small in-memory stand-ins; the real services are driven in
tests/integration/pipeline/test_ledger_service.py.
"""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from services.ledger.anchorer import Anchorer, TopicOwned
from services.ledger.dead_letters import DeadLetters
from services.ledger.ports import Ports
from services.ledger.retries import Retries
from services.ledger.settings import LedgerServiceSettings
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.core.canonical import content_hash
from streamledger.fabric import Committed, EndorseError
from streamledger.retry import RetryPolicy

CODEC = AvroCodec(SchemaRegistry.from_dir())
TOPIC = "clean-unit"
TP = TopicPartition(TOPIC, 0)


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

    def seek(self, tp: TopicPartition, offset: int) -> None:
        raise AssertionError("nothing was recorded before: there is nothing to re-read")

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.update(offsets)


class Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    async def send(self, topic: str, key: bytes | None = None, value: bytes = b"") -> None:
        self.sent.append((topic, key, value))

    async def send_and_wait(self, topic: str, key: bytes | None = None, value: bytes = b"") -> None:
        self.sent.append((topic, key, value))

    async def flush(self) -> None:
        pass


class Store:
    def __init__(self) -> None:
        self.plans: dict[str, str] = {}
        self.proofs: dict[str, dict] = {}

    async def plans_from(self, topic: str, partition: int, offset: int) -> list[dict]:
        return []

    async def record_plan(self, batch, merkle_root: str) -> None:
        self.plans[batch.batch_id] = merkle_root

    async def write_proofs(self, tree: dict, documents: list[dict]) -> None:
        self.proofs.update({d["_id"]: d for d in documents})


OPERATOR = "Org1MSP::CN=anchoring@org1"


class Ledger:
    """Anchors as the contract does: a topic is bound to the first operator that anchored it."""

    def __init__(self, owner: str = "") -> None:
        self.anchors: dict[str, tuple] = {}
        self.owner = owner
        self.calls = 0

    async def get_topic(self, topic: str) -> dict | None:
        return {"topic": topic, "owner": self.owner, "tx_id": "tx-bound"} if self.owner else None

    async def anchor_batch(self, batch_id: str, merkle_root: str, count: int, first_offset: int,
                           last_offset: int) -> Committed:
        self.calls += 1
        if self.owner and self.owner != OPERATOR:
            raise EndorseError(f'FORBIDDEN: "batch_id": topic "{TOPIC}" of batch "{batch_id}" is anchored by '
                               f'"{self.owner}" only (since tx tx-bound); caller is "{OPERATOR}"',
                               code=grpc.StatusCode.UNKNOWN)
        self.owner = OPERATOR
        self.anchors[batch_id] = (merkle_root, count, first_offset, last_offset)
        return Committed(json.dumps({"tx_id": f"tx-{batch_id}"}).encode(), f"tx-{batch_id}", len(self.anchors))


def clean_event(i: int, **changes: object) -> bytes:
    record = {"event_id": f"e{i}", "tenant": "acme", "source": "unit", "ts": 1_767_225_600_000 + i,
              "features": {"x": float(i)}, "label": None, "raw_partition": 0, "raw_offset": i}
    record["content_hash"] = content_hash(record)
    return CODEC.encode("CleanEvent", {**record, **changes})


def raw_event(i: int) -> bytes:
    return CODEC.encode("RawEvent", {"event_id": f"raw{i}", "tenant": "acme", "source": "unit",
                                     "ts": 1_767_225_600_000 + i, "features": {"x": 1.0}, "label": None})


def message(offset: int, value: bytes | None) -> ConsumerRecord:
    return ConsumerRecord(TOPIC, 0, offset, 0, 0, f"k{offset}".encode(), value, None, 0, 0, ())


async def test_records_after_a_tombstone_or_garbage_in_one_fetch_are_all_anchored_or_dead_lettered() -> None:
    values = [clean_event(0), clean_event(1), None, clean_event(3), b"no avro at all", clean_event(5),
              raw_event(6), clean_event(7), clean_event(8, content_hash="not a sha-256"), clean_event(9)]
    stop = asyncio.Event()
    consumer = Consumer([{TP: [message(offset, value) for offset, value in enumerate(values)]}], stop)
    producer, store, ledger = Producer(), Store(), Ledger()
    settings = LedgerServiceSettings(ledger_clean_topic=TOPIC, ledger_anchors_topic="anchors-unit",
                                     ledger_deadletter_topic="dead-unit", ledger_batch_records=3,
                                     ledger_batch_seconds=60)
    retries = Retries(RetryPolicy(attempts=2, initial_seconds=0.001, max_seconds=0.001), stop)
    anchorer = Anchorer(settings, consumer, Ports(ledger, store, producer, CODEC, retries,
                                                  DeadLetters(producer, CODEC, settings.ledger_deadletter_topic)),
                        OPERATOR)

    await asyncio.wait_for(anchorer.run(stop), timeout=10)

    assert ledger.anchors == {f"{TOPIC}:0:0-3": (store.plans[f"{TOPIC}:0:0-3"], 3, 0, 3),
                              f"{TOPIC}:0:5-9": (store.plans[f"{TOPIC}:0:5-9"], 3, 5, 9)}
    assert set(store.proofs) == {f"4:acme:e{i}" for i in (0, 1, 3, 5, 7, 9)}  # scoped_id("acme", event id)
    published = [CODEC.decode(v, reader="Anchor") for t, _, v in producer.sent if t == "anchors-unit"]
    assert sorted(a["batch_id"] for a in published) == sorted(ledger.anchors)
    letters = [CODEC.decode(v, reader="DeadLetter") for t, _, v in producer.sent if t == "dead-unit"]
    assert {d["source_offset"]: d["reason"] for d in letters} == {
        2: "empty_message", 4: "not_single_object", 6: "incompatible_schema", 8: "unanchorable"}
    assert all(d["service"] == "ledger" and d["error"].startswith("CleanEvent: ") for d in letters)
    assert consumer.committed == {TP: len(values)}  # every record is accounted for


def anchorer_of(ledger: Ledger, fetches: list[dict]) -> tuple[Anchorer, asyncio.Event, Consumer]:
    stop = asyncio.Event()
    consumer, producer = Consumer(fetches, stop), Producer()
    settings = LedgerServiceSettings(ledger_clean_topic=TOPIC, ledger_anchors_topic="anchors-unit",
                                     ledger_deadletter_topic="dead-unit", ledger_batch_records=2,
                                     ledger_batch_seconds=60)
    retries = Retries(RetryPolicy(attempts=5, initial_seconds=0.001, max_seconds=0.001), stop)
    ports = Ports(ledger, Store(), producer, CODEC, retries, DeadLetters(producer, CODEC, "dead-unit"))
    return Anchorer(settings, consumer, ports, OPERATOR), stop, consumer  # type: ignore[arg-type]


async def test_a_topic_bound_to_another_operator_stops_anchoring_before_anything_is_read() -> None:
    other = "Org1MSP::CN=User3@org1"
    anchorer, stop, consumer = anchorer_of(Ledger(owner=other), [{TP: [message(0, clean_event(0))]}])
    with pytest.raises(TopicOwned, match=f"topic '{TOPIC}' is anchored on the ledger by another operator only "
                                         f"\\(it was bound to '{other}' in tx tx-bound\\); this service anchors as "
                                         f"'{OPERATOR}'"):
        await asyncio.wait_for(anchorer.run(stop), timeout=10)
    assert len(consumer.fetches) == 1 and consumer.committed == {}


async def test_a_batch_refused_as_another_operators_stops_anchoring_at_once_without_retrying() -> None:
    class BoundMeanwhile(Ledger):
        """Another operator binds the topic between the loop's check and its first batch."""

        async def get_topic(self, topic: str) -> dict | None:
            return None

    ledger = BoundMeanwhile(owner="Org1MSP::CN=User3@org1")
    anchorer, stop, consumer = anchorer_of(ledger, [{TP: [message(0, clean_event(0)), message(1, clean_event(1))]}])
    with pytest.raises(TopicOwned, match=f"the contract refused batch {TOPIC}:0:0-1: .*anchored by"):
        await asyncio.wait_for(anchorer.run(stop), timeout=10)
    assert ledger.calls == 1 and ledger.anchors == {} and consumer.committed.get(TP, 0) == 0  # nothing passed
