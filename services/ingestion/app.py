"""The ingestion service: HTTP and gRPC in, RawEvents out to Kafka.

    request --auth--> tenant --validate--> RawEvent records --Avro--> Kafka (acks=all) --> ack

`streamledger serve ingestion` runs `main()`: HTTP on 127.0.0.1:8080 (`/v1/events`,
`/healthz`, `/metrics`) and gRPC on 127.0.0.1:8081, until SIGINT/SIGTERM; with
STREAMLEDGER_INGESTION_TLS_CERT and _KEY both serve TLS only.
"""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

from services.ingestion.auth import ApiKeys
from services.ingestion.grpc_api import build_grpc_server
from services.ingestion.http_api import build_http_app
from services.ingestion.intake import Intake
from services.ingestion.settings import IngestionSettings
from services.ingestion.sink import PendingBudget, RawEventWriter
from streamledger import kafka
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.http_server import EmbeddedHttpServer
from streamledger.kafka import topics
from streamledger.lifecycle import Loop, serve
from streamledger.logging import get_logger
from streamledger.tls import ServerTls

log = get_logger("ingestion")


class IngestionService(Loop):
    """Both servers and the producer; the requests do the work, so `run` only waits."""

    def __init__(self, settings: IngestionSettings) -> None:
        super().__init__()
        self.settings = settings
        self.http_port = settings.ingestion_http_port
        self.grpc_port = settings.ingestion_grpc_port

    async def start(self) -> None:
        s = self.settings
        tls = ServerTls.optional(s.ingestion_tls_cert, s.ingestion_tls_key, "STREAMLEDGER_INGESTION_TLS")
        registry = SchemaRegistry.from_dir()
        await kafka.provision(s.kafka_bootstrap, [
            kafka.spec(topics.RAW, s.ingestion_raw_topic, partitions=s.ingestion_raw_partitions),
            kafka.spec(topics.SCHEMAS)])
        producer = await self._new_producer()
        await registry.publish(producer, ["RawEvent"])  # readers can always resolve our writer schema

        self.writer = RawEventWriter(producer, s.ingestion_raw_topic, PendingBudget(s.ingestion_max_pending_events),
                                     s.ingestion_ack_timeout_seconds, renew=self._new_producer)
        intake = Intake(ApiKeys(s.ingestion_api_keys), AvroCodec(registry), self.writer, s.ingestion_max_event_bytes)
        self.grpc_server, self.grpc_port = build_grpc_server(intake, s, tls)
        await self.grpc_server.start()
        self.http_server = EmbeddedHttpServer(build_http_app(intake, s), s.ingestion_http_host, s.ingestion_http_port,
                                              tls, share_port=s.share_port)
        self.http_port = await self.http_server.start()
        log.info("listening", extra={"http": f"{s.ingestion_http_host}:{self.http_port}",
                                     "grpc": f"{s.ingestion_http_host}:{self.grpc_port}",
                                     "topic": s.ingestion_raw_topic, "tenants": len(s.ingestion_api_keys),
                                     "tls": tls is not None})

    async def _new_producer(self) -> AIOKafkaProducer:
        producer = kafka.producer(self.settings.kafka_bootstrap,
                                  linger_ms=round(self.settings.ingestion_linger_seconds * 1000))
        await producer.start()
        return producer

    async def stop(self) -> None:
        await self.http_server.stop()
        await self.grpc_server.stop(grace=5)
        await self.writer.producer.stop()  # flushes what is still in flight (the writer may have renewed it)


def main() -> None:
    serve("ingestion", IngestionSettings, IngestionService)
