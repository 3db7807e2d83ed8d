"""The ingestion service: HTTP and gRPC in, RawEvents out to Kafka.

    request --auth--> tenant --validate--> RawEvent records --Avro--> Kafka (acks=all) --> ack

`streamledger serve ingestion` runs `main()`: HTTP on 127.0.0.1:8080 (`/v1/events`,
`/healthz`, `/metrics`) and gRPC on 127.0.0.1:8081, until SIGINT/SIGTERM.
"""

from __future__ import annotations


from aiokafka import AIOKafkaProducer

from streamledger.kafka import topics
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger import kafka
from streamledger.lifecycle import Loop, serve
from streamledger.http_server import EmbeddedHttpServer
from streamledger.logging import get_logger
from services.ingestion.auth import ApiKeys
from services.ingestion.grpc_api import build_grpc_server
from services.ingestion.http_api import build_http_app
from services.ingestion.intake import Intake
from services.ingestion.settings import IngestionSettings
from services.ingestion.sink import PendingBudget, RawEventWriter

log = get_logger("ingestion")


class IngestionService(Loop):
    """Both servers and the producer, with an explicit `start()` / `stop()` lifecycle."""

    def __init__(self, settings: IngestionSettings) -> None:
        super().__init__()
        self.settings = settings
        self.http_port = settings.http_port
        self.grpc_port = settings.grpc_port

    async def start(self) -> None:
        s = self.settings
        registry = SchemaRegistry.from_dir()
        await kafka.provision(s.kafka_bootstrap, [kafka.spec(topics.RAW, s.raw_topic, partitions=s.raw_partitions),
                                                  kafka.spec(topics.SCHEMAS)])
        producer = await self._new_producer()
        await registry.publish(producer, ["RawEvent"])  # readers can always resolve our writer schema

        self.writer = RawEventWriter(producer, s.raw_topic, PendingBudget(s.max_pending_events), s.ack_timeout_s,
                                     renew=self._new_producer)
        intake = Intake(ApiKeys(s.api_keys), AvroCodec(registry), self.writer, s.max_event_bytes)
        self.grpc_server, self.grpc_port = build_grpc_server(intake, s)
        await self.grpc_server.start()
        self.http_server = EmbeddedHttpServer(build_http_app(intake, s), s.http_host, s.http_port)
        self.http_port = await self.http_server.start()
        log.info("started", extra={"http": f"{s.http_host}:{self.http_port}", "grpc": f"{s.http_host}:{self.grpc_port}",
                                   "topic": s.raw_topic, "tenants": len(s.api_keys)})

    async def _new_producer(self) -> AIOKafkaProducer:
        producer = kafka.producer(self.settings.kafka_bootstrap)
        await producer.start()
        return producer

    async def stop(self) -> None:
        await self.http_server.stop()
        await self.grpc_server.stop(grace=5)
        await self.writer.producer.stop()  # flushes what is still in flight (the writer may have renewed it)
        log.info("stopped")


def main() -> None:
    serve("ingestion", IngestionSettings, IngestionService)
