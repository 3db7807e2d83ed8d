"""`streamledger serve ledger`: Merkle anchoring of events.clean and settlement of usage, on Fabric.

    events.clean --> Batcher (per partition: 1,000 records or 1 s) --> plan + proofs (MongoDB)
                 --> AnchorBatch (one Fabric transaction per batch) --> Anchor on ledger.anchors
                 --> commit offsets, only past batches that are anchored          (anchorer.py)

    usage --> UsageBook (per hold: latest valid receipt, usage once per request id)
          --> hold expired + grace, or settle_by - peers' timewindow - lead if sooner
          --> plan (MongoDB) --> Settle(hold, receipt) --> outcome (MongoDB settlements)
          --> commit offsets, only past settled holds                               (settler.py)

Both loops write their intent to MongoDB before the Fabric transaction and commit Kafka offsets
after it, so after a kill -9 at any point a restart (or the replica that takes the partitions
over: replicas share them as one consumer group) forms the same batches and settlements again:
the contract takes a replayed AnchorBatch as a no-op and refuses a second Settle, so nothing is
anchored or charged twice and nothing read is skipped. Calls to the ledger, MongoDB and Kafka
are retried in one place, bounded (retries.py): once spent, the service logs `failed`, exits 1.

Each loop acts on the ledger as its own identity, holding only its role: anchoring as
`anchoring` (operator), settlement as `settlement` (provider; it settles the holds that pay the
account it acts for, `WhoAmI.ActsFor`). At start each identity is asked WhoAmI: a missing role
refuses the start, naming the identity and the role. A ledger that does not answer yet is
waited for in `run` (retried like any call), and the roles are checked when it answers.
"""

from __future__ import annotations

import asyncio
from functools import partial

from aiokafka import AIOKafkaConsumer

from services.ledger.anchorer import Anchorer
from services.ledger.anchoring import check_topic
from services.ledger.dead_letters import DeadLetters
from services.ledger.ports import Ports
from services.ledger.retries import Retries
from services.ledger.settings import LedgerServiceSettings
from services.ledger.settler import Settler
from services.ledger.store import LedgerStore
from streamledger import kafka
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.fabric import GatewayError
from streamledger.kafka import topics
from streamledger.ledger import LedgerClient
from streamledger.lifecycle import Loop, StartError, serve
from streamledger.logging import get_logger
from streamledger.mongo import mongo_client
from streamledger.retry import NO_RETRY, Stopped

log = get_logger("ledger")

ROLES = {"anchoring": "operator", "settlement": "provider"}
"""Each loop's ledger identity (its local name, deploy/fabric/identities.yaml) -> the role it needs."""


def consumer(settings: LedgerServiceSettings, group: str) -> AIOKafkaConsumer:
    # Committed by hand, once the ledger holds what was read; the ledger may be down a while
    # (reading waits meanwhile), hence the long poll interval. Replicas share the partitions
    # (`kafka.assignor`: each keeps what it held where balance allows).
    return kafka.consumer(settings.kafka_bootstrap, group_id=group, max_poll_records=2000,
                          max_poll_interval_ms=600_000)


class LedgerService(Loop):
    def __init__(self, settings: LedgerServiceSettings) -> None:
        super().__init__()
        self.settings = settings
        self.ledgers: dict[str, LedgerClient] = {}
        """Loop name -> the client acting as that loop's identity (only the loops switched on)."""
        self.callers: dict[str, dict] = {}
        """Loop name -> its WhoAmI, once the ledger answered with the loop's role granted."""

    async def start(self) -> None:
        """Connect each loop's identity and check its role, if the ledger answers now."""
        s = self.settings
        loops = [loop for loop, on in (("anchoring", s.ledger_anchoring), ("settlement", s.ledger_settlement)) if on]
        if "anchoring" in loops:
            try:
                check_topic(s.ledger_clean_topic)
            except ValueError as exc:
                raise StartError(f"{exc} (STREAMLEDGER_LEDGER_CLEAN_TOPIC)") from None
        try:
            for loop in loops:
                # `retries` (run) is the one retry loop: none nested in the gateway.
                self.ledgers[loop] = LedgerClient.connect(s, retry=NO_RETRY, service_identity=loop)
            for loop, ledger in self.ledgers.items():
                try:
                    self.callers[loop] = await ledger.require_role(ROLES[loop])  # MissingRole: cannot start
                except GatewayError as exc:
                    if not exc.transient:
                        raise
                    log.warning("ledger_unreachable_at_start", extra={"identity": ledger.identity, "error": str(exc)})
        except BaseException:
            await self.stop()
            raise

    async def run(self, stopping: asyncio.Event) -> None:
        """Anchor and settle until `stopping` is set; raises when a call's retries are spent."""
        s = self.settings
        registry = SchemaRegistry.from_dir()
        codec = AvroCodec(registry)
        await kafka.provision(s.kafka_bootstrap, [
            kafka.spec(topics.CLEAN, s.ledger_clean_topic), kafka.spec(topics.ANCHORS, s.ledger_anchors_topic),
            kafka.spec(topics.USAGE, s.ledger_usage_topic), kafka.spec(topics.DEADLETTER, s.ledger_deadletter_topic)])
        retries = Retries.from_settings(s, stopping)
        mongo = mongo_client(s.mongo_url, tz_aware=True)
        try:
            async with kafka.producer(s.kafka_bootstrap) as producer:
                await registry.publish(producer, ["Anchor", "DeadLetter"])
                store = LedgerStore(mongo[s.mongo_db])
                letters = DeadLetters(producer, codec, s.ledger_deadletter_topic)
                await retries.run("indexes", store.ensure_indexes)
                for loop, ledger in self.ledgers.items():
                    if loop not in self.callers:  # the ledger did not answer at start: wait for it now
                        self.callers[loop] = await retries.run("who_am_i", partial(ledger.require_role, ROLES[loop]))
                    caller = self.callers[loop]
                    log.info("ledger_connected", extra={"loop": loop, "identity": ledger.identity,
                                                        "account": caller["Account"], "roles": caller["Roles"],
                                                        "acts_for": caller.get("ActsFor", "")})

                def ports(loop: str) -> Ports:
                    return Ports(self.ledgers[loop], store, producer, codec, retries, letters)
                async with asyncio.TaskGroup() as loops:
                    if "anchoring" in self.ledgers:
                        operator = self.callers["anchoring"]["Account"]  # the account the topic is bound to
                        loops.create_task(Anchorer(s, consumer(s, s.ledger_anchor_group), ports("anchoring"),
                                                   operator).run(stopping))
                    if "settlement" in self.ledgers:
                        paid_to = self.callers["settlement"]["ActsFor"]  # the provider account it settles for
                        loops.create_task(Settler(s, consumer(s, s.ledger_settlement_group), ports("settlement"),
                                                  paid_to).run(stopping))
        except Stopped:
            log.info("stopped_while_waiting")
        finally:
            await mongo.close()

    async def stop(self) -> None:
        for ledger in self.ledgers.values():
            await ledger.gateway.close()


def main() -> None:
    # Retries spent, or a failure no retry mends: `serve` logs `failed` and exits 1.
    serve("ledger", LedgerServiceSettings, LedgerService)
