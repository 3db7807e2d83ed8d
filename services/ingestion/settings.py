"""Ingestion settings: `STREAMLEDGER_INGESTION_*` environment variables, local-stack defaults."""

from __future__ import annotations

from pathlib import Path

from pydantic import model_validator

from streamledger.kafka import topics
from streamledger.settings import CommonSettings
from streamledger.tls import pair_problem


class IngestionSettings(CommonSettings):
    ingestion_http_host: str = "127.0.0.1"
    ingestion_http_port: int = 8080
    ingestion_grpc_port: int = 8081
    """gRPC `streamledger.ingest.v1.Ingestion/Ingest` listens here, on `ingestion_http_host`."""
    ingestion_tls_cert: Path | None = None
    """PEM certificate (chain) of both servers; with `ingestion_tls_key` they serve TLS only (https
    and gRPC over TLS). Both or neither."""
    ingestion_tls_key: Path | None = None
    """PEM private key (unencrypted) of `ingestion_tls_cert`."""
    ingestion_raw_topic: str = topics.RAW
    """Topic the accepted RawEvents go to (tests point it at a unique topic)."""
    ingestion_raw_partitions: int = 3
    """Partitions to create `ingestion_raw_topic` with when it does not exist yet."""
    ingestion_api_keys: dict[str, list[str]] = {}
    """Tenant -> hex SHA-256 digests of its API keys, as JSON:
    STREAMLEDGER_INGESTION_API_KEYS='{"acme": ["<sha256 of key>"]}'. Empty = every request gets 401."""
    ingestion_max_body_bytes: int = 10 * 1024 * 1024
    """Largest accepted HTTP body, before and after gzip decompression (413 beyond)."""
    ingestion_max_event_bytes: int = 900_000
    """Largest encoded event; Kafka's default message.max.bytes is about 1 MB."""
    ingestion_max_events_per_request: int = 10_000
    """Most events one HTTP request or gRPC stream may carry."""
    ingestion_max_pending_events: int = 50_000
    """Events written to the producer but not yet acknowledged by Kafka; a request that would
    exceed this gets 503 / UNAVAILABLE at once, so memory stays bounded when Kafka is slow."""
    ingestion_ack_timeout_seconds: float = 10.0
    """How long a request waits for Kafka's acknowledgements before answering 503 / UNAVAILABLE."""
    ingestion_retry_after_seconds: int = 5
    """Retry-After sent with 503 answers."""
    ingestion_linger_seconds: float = 0.005
    """How long the producer waits for more records to fill a batch before sending it."""

    @model_validator(mode="after")
    def _a_full_request_fits_the_pending_budget(self) -> IngestionSettings:
        if self.ingestion_max_events_per_request > self.ingestion_max_pending_events:
            raise ValueError(f"ingestion_max_events_per_request ({self.ingestion_max_events_per_request}) must not "
                             f"exceed ingestion_max_pending_events ({self.ingestion_max_pending_events}): such a "
                             "request could never be accepted")
        problem = pair_problem(self.ingestion_tls_cert, self.ingestion_tls_key, "STREAMLEDGER_INGESTION_TLS")
        if problem:
            raise ValueError(problem)
        return self
