"""Settings shared by every service, read from `STREAMLEDGER_*` environment variables.

Each service subclasses `CommonSettings` with its own fields, so one object holds all
the configuration a service needs and the defaults point at the local stack.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODELS_FILE = Path(str(resources.files("streamledger") / "models.toml"))
"""The model declarations the learning and inference services share (deploy/models.toml links here)."""

LOCAL_ORG1 = Path("fabric") / "crypto" / "peerOrganizations" / "org1.streamledger.local"


def local_stack_home() -> Path:
    """Where the local stack keeps its builds and data: `STREAMLEDGER_STACK_HOME`, by default
    `~/.cache/streamledger` (outside the repo). Services only read the local Fabric network's
    crypto material from it, as their default identity; they never import the stack itself."""
    return Path(os.environ.get("STREAMLEDGER_STACK_HOME") or Path.home() / ".cache" / "streamledger")


def _local(*parts: str) -> Path:
    return local_stack_home() / "data" / LOCAL_ORG1 / Path(*parts)


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


class LedgerSettings(CommonSettings):
    """Where the ledger is: the gateway peer, its TLS root, and the identity to act as.

    The defaults are the local stack's Fabric network acting as Org1's Admin; point them at
    a real network's gateway peer and an enrolled identity's MSP folder.
    """

    fabric_peer_endpoint: str = "127.0.0.1:7051"
    """host:port of a peer running the Fabric Gateway service."""
    fabric_peer_tls_root: Path | None = None
    """PEM of the CA that issued the peer's TLS certificate (default: the local Org1 TLS CA)."""
    fabric_peer_server_name: str = ""
    """Name to check in the peer's TLS certificate, when it differs from the endpoint's host."""
    fabric_msp_id: str = "Org1MSP"
    fabric_msp_dir: Path | None = None
    """MSP folder of the identity to act as (signcerts/, keystore/); default: local Org1 Admin."""
    fabric_user: str = "Admin"
    """Which local Org1 user to act as when `fabric_msp_dir` is unset: Admin, User1, User2, ..."""
    fabric_channel: str = "streamledger"
    fabric_chaincode: str = "streamledger"

    def tls_root(self) -> Path:
        return self.fabric_peer_tls_root or _local("peers", "peer0.org1.streamledger.local", "tls", "ca.crt")

    def msp_dir(self) -> Path:
        return self.fabric_msp_dir or _local("users", f"{self.fabric_user}@org1.streamledger.local", "msp")
