"""Settings shared by every service, read from `STREAMLEDGER_*` environment variables.

Each service subclasses `CommonSettings` with its own fields, so one object holds all
the configuration a service needs and the defaults point at the local stack.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODELS_FILE = Path(str(resources.files("streamledger") / "models.toml"))
"""The model declarations the learning and inference services share (deploy/models.toml links here)."""

def local_stack_home() -> Path:
    """Where the local stack keeps its builds and data: `STREAMLEDGER_STACK_HOME`, by default
    `~/.cache/streamledger` (outside the repo). Services only read the local Fabric network's
    crypto material from it, as their default identity; they never import the stack itself."""
    return Path(os.environ.get("STREAMLEDGER_STACK_HOME") or Path.home() / ".cache" / "streamledger")


def local_kafka_auth_dir() -> Path:
    """The local stack's Kafka credentials: `ca.crt` (the broker's TLS CA), `users/NAME.password`
    (one SCRAM password per principal, mode 0600) and `bootstrap` (every node's client address),
    made by `streamledger stack up`: `STREAMLEDGER_KAFKA_AUTH_DIR`, by default the stack home's
    `data/kafka-auth` (a test or drill running a Kafka cluster in a home of its own points its
    services there while their Fabric identities stay the shared stack's)."""
    return Path(os.environ.get("STREAMLEDGER_KAFKA_AUTH_DIR") or local_stack_home() / "data" / "kafka-auth")


LOCAL_KAFKA_BOOTSTRAP = "127.0.0.1:9092"


def local_kafka_bootstrap() -> str:
    """The local stack's Kafka as `stack up` recorded it (`bootstrap` in `local_kafka_auth_dir`: all
    nodes of a cluster, so a client starting while one is down still finds the others); without
    that record, one broker on 127.0.0.1:9092."""
    try:
        return (local_kafka_auth_dir() / "bootstrap").read_text().strip() or LOCAL_KAFKA_BOOTSTRAP
    except OSError:  # no local stack here (or not started yet)
        return LOCAL_KAFKA_BOOTSTRAP


LOCAL_PEERS = {"Org1MSP": "127.0.0.1:7051", "Org2MSP": "127.0.0.1:9051"}
"""The local network's gateway peers: each organisation's own."""


def local_org_dir(msp_id: str) -> Path:
    """The local network's crypto folder of an organisation ("Org2MSP" -> .../org2.streamledger.local)."""
    domain = f"{msp_id.removesuffix('MSP').lower()}.streamledger.local"
    return local_stack_home() / "data" / "fabric" / "crypto" / "peerOrganizations" / domain


class CommonSettings(BaseSettings):
    """Addresses of the shared servers; the defaults are the local stack's."""

    model_config = SettingsConfigDict(env_prefix="STREAMLEDGER_", extra="ignore")

    kafka_bootstrap: str = Field(default_factory=local_kafka_bootstrap)
    """Kafka bootstrap servers, comma-separated (`host:port,host:port`); default: every node of the
    local stack's Kafka (`local_kafka_bootstrap`)."""
    kafka_security_protocol: Literal["SASL_SSL", "PLAINTEXT"] = "SASL_SSL"
    """SASL_SSL: TLS to the broker and SCRAM authentication (the local stack's default);
    PLAINTEXT only for a cluster without authentication."""
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    kafka_sasl_username: str = ""
    """The Kafka principal to act as; empty: the service's own (`streamledger serve NAME` sets it),
    else the local stack's `admin`."""
    kafka_sasl_password: SecretStr = SecretStr("")
    """The principal's password; empty: read from `kafka_sasl_password_file`."""
    kafka_sasl_password_file: Path | None = None
    """A file holding the password (default: the local stack's `users/<username>.password`)."""
    kafka_ssl_cafile: Path | None = None
    """PEM of the CA that signed the broker's certificate (default: the local stack's `ca.crt`);
    the broker's name is checked against its certificate."""
    mongo_url: str = "mongodb://127.0.0.1:27017"
    """MongoDB connection string (a replica set URI works unchanged)."""
    mongo_db: str = "streamledger"
    log_level: str = "INFO"
    kafka_compression: Literal["snappy", "lz4", "zstd", "gzip", "none"] = "snappy"
    """How producers compress their batches. snappy sends some 5x fewer bytes for about 0.1 µs of
    CPU per small record; aiokafka compresses lz4 at level 9 (LZ4HC, not adjustable): a little
    smaller, ten times the CPU (about 1 µs per record). `none` saves the rest where brokers are on
    the same machine or the network is cheap."""
    kafka_log_level: str = "WARNING"
    """The level of the Kafka client's own logs (aiokafka: joins, assignments, heartbeats), as JSON
    lines beside the service's; `INFO` shows each consumer group join and assignment."""
    metrics_port: int = 0
    """Port for the Prometheus `/metrics` endpoint; 0 leaves it off."""
    metrics_host: str = "127.0.0.1"
    """Address the `/metrics` endpoint listens on: loopback unless a scraper elsewhere must reach it
    (in a Kubernetes pod, `0.0.0.0`; the chart sets it)."""
    share_port: bool = False
    """Let replicas of this service on one machine listen on the same HTTP and gRPC ports (SO_REUSEPORT:
    the kernel spreads new connections over them); off, a second process binding a port this one
    holds fails. `streamledger serve all --replicas N` turns it on for the services it replicates."""


class LedgerSettings(CommonSettings):
    """Where the ledger is: the gateway peer, its TLS root, and the identity to act as.

    The defaults are the local stack's Fabric network, each service acting as its own
    identity (deploy/fabric/identities.yaml: `anchoring`, `settlement`, `inference`, ...);
    point them at a real network's gateway peer and an enrolled identity's MSP folder.
    """

    fabric_peer_endpoint: str = ""
    """host:port of a peer running the Fabric Gateway service (default: the local peer of
    the identity's organisation)."""
    fabric_peer_tls_root: Path | None = None
    """PEM of the CA that issued the peer's TLS certificate (default: the local org's TLS CA)."""
    fabric_peer_server_name: str = ""
    """Name to check in the peer's TLS certificate, when it differs from the endpoint's host."""
    fabric_msp_id: str = "Org1MSP"
    fabric_msp_dir: Path | None = None
    """MSP folder of the identity to act as (signcerts/, keystore/); default: a local identity."""
    fabric_user: str = ""
    """Which local identity of `fabric_msp_id`'s org to act as when `fabric_msp_dir` is unset
    (`User1`, `settlement`, ...); empty: the service's own (identities.yaml)."""
    fabric_channel: str = "streamledger"
    fabric_chaincode: str = "streamledger"

    def peer_endpoint(self) -> str:
        return self.fabric_peer_endpoint or LOCAL_PEERS.get(self.fabric_msp_id, LOCAL_PEERS["Org1MSP"])

    def tls_root(self) -> Path:
        if self.fabric_peer_tls_root:
            return self.fabric_peer_tls_root
        org = local_org_dir(self.fabric_msp_id)
        return org / "peers" / f"peer0.{org.name}" / "tls" / "ca.crt"

    def msp_dir(self, service_identity: str = "") -> Path:
        """The MSP folder to act with: `fabric_msp_dir`, else the local identity `fabric_user`,
        else the local identity the service names (its own, least-privileged one)."""
        if self.fabric_msp_dir:
            return self.fabric_msp_dir
        user = self.fabric_user or service_identity
        if not user:
            raise ValueError("no Fabric identity: set STREAMLEDGER_FABRIC_MSP_DIR (or STREAMLEDGER_FABRIC_USER "
                             "for a local one)")
        org = local_org_dir(self.fabric_msp_id)
        return org / "users" / f"{user}@{org.name}" / "msp"
