"""Settings shared by every service, read from `STREAMLEDGER_*` environment variables.

Each service subclasses `CommonSettings` with its own fields, so one object holds all
the configuration a service needs and the defaults point at the local stack.
"""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    """Addresses of the shared servers; the defaults are the local stack's."""

    model_config = SettingsConfigDict(env_prefix="STREAMLEDGER_", extra="ignore")

    kafka_bootstrap: str = "127.0.0.1:9092"
    """Kafka bootstrap servers, comma-separated (`host:port,host:port`)."""
    mongo_url: str = "mongodb://127.0.0.1:27017"
    """MongoDB connection string (a replica set URI works unchanged)."""
    mongo_db: str = "streamledger"
    log_level: str = "INFO"
    metrics_port: int = 0
    """Port for the Prometheus `/metrics` endpoint; 0 leaves it off."""
