"""`streamledger serve ledger`: Merkle anchoring of events.clean and settlement of usage, on Fabric.

    events.clean --> Batcher (per partition: 1,000 records or 1 s) --> plan + proofs (MongoDB)
                 --> AnchorBatch (one Fabric transaction per batch) --> Anchor on ledger.anchors
                 --> commit offsets, only past batches that are anchored          (anchorer.py)

    usage --> UsageBook (per hold) --> hold expired + grace --> plan (MongoDB) --> Settle
          --> outcome (MongoDB settlements) --> commit offsets, only past settled holds (settler.py)

Both loops write their intent to MongoDB before the Fabric transaction and commit Kafka offsets
after it, so after a kill -9 at any point a restart forms the same batches and settlements again:
the contract takes a replayed AnchorBatch as a no-op and refuses a second Settle, so nothing is
anchored or charged twice and nothing read is skipped. Calls to the ledger, MongoDB and Kafka
are retried in one place, bounded (retries.py): once spent, the service logs `failed`, exits 1.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer

from services.ledger.anchorer import Anchorer
from services.ledger.dead_letters import DeadLetters
from services.ledger.ports import Ports
from services.ledger.retries import Retries
from services.ledger.settings import LedgerServiceSettings
from services.ledger.settler import Settler
from services.ledger.store import LedgerStore
from streamledger import kafka
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.kafka import topics
from streamledger.ledger import LedgerClient
from streamledger.lifecycle import Loop, serve
from streamledger.logging import get_logger
from streamledger.mongo import mongo_client
from streamledger.retry import NO_RETRY, Stopped

log = get_logger("ledger")


def consumer(settings: LedgerServiceSettings, group: str) -> AIOKafkaConsumer:
    # Committed by hand, once the ledger holds what was read; the ledger may be down a while
    # (reading waits meanwhile), hence the long poll interval.
    return kafka.consumer(settings.kafka_bootstrap, group_id=group, max_poll_records=2000,
                          max_poll_interval_ms=600_000)


class LedgerService(Loop):
    def __init__(self, settings: LedgerServiceSettings) -> None:
        super().__init__()
        self.settings = settings

    async def run(self, stopping: asyncio.Event) -> None:
        """Anchor and settle until `stopping` is set; raises when a call's retries are spent."""
        s = self.settings
        registry = SchemaRegistry.from_dir()
        codec = AvroCodec(registry)
        await kafka.provision(s.kafka_bootstrap, [
            kafka.spec(topics.CLEAN, s.ledger_clean_topic), kafka.spec(topics.ANCHORS, s.ledger_anchors_topic),
            kafka.spec(topics.USAGE, s.ledger_usage_topic), kafka.spec(topics.DEADLETTER, s.ledger_deadletter_topic)])
        retries = Retries.from_settings(s, stopping)
        ledger = LedgerClient.connect(s, retry=NO_RETRY)  # `retries` is the one retry loop: none nested in the gateway
        mongo = mongo_client(s.mongo_url, tz_aware=True)
        try:
            async with ledger, kafka.producer(s.kafka_bootstrap) as producer:
                await registry.publish(producer, ["Anchor", "DeadLetter"])
                store = LedgerStore(mongo[s.mongo_db])
                letters = DeadLetters(producer, codec, s.ledger_deadletter_topic)
                await retries.run("indexes", store.ensure_indexes)
                caller = await retries.run("who_am_i", ledger.who_am_i)
                log.info("ledger_connected", extra={"peer": s.fabric_peer_endpoint, "account": caller["Account"]})
                ports = Ports(ledger, store, producer, codec, retries, letters)
                async with asyncio.TaskGroup() as loops:
                    if s.ledger_anchoring:
                        loops.create_task(Anchorer(s, consumer(s, s.ledger_anchor_group), ports).run(stopping))
                    if s.ledger_settlement:
                        loops.create_task(Settler(s, consumer(s, s.ledger_settlement_group), ports).run(stopping))
        except Stopped:
            log.info("stopped_while_waiting")
        finally:
            await mongo.close()


def main() -> None:
    # Retries spent, or a failure no retry mends: `serve` logs `failed` and exits 1.
    serve("ledger", LedgerServiceSettings, LedgerService)
