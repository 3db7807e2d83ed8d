"""Where the local stack keeps its downloads, builds, data and logs, and its ports."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamledger.settings import local_stack_home

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY_DIR = REPO_ROOT / "deploy"


class StackSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMLEDGER_STACK_", extra="ignore")

    home: Path = Field(default_factory=local_stack_home)
    """Cache for jars and builds, plus data/, logs/ and run/ (pid files). Outside the repo."""
    kafka_brokers: int = Field(default=1, ge=1, le=9)
    """How many KRaft nodes (each broker+controller, all of them voters of the controller quorum).
    Node N (1, 2, 3, ...) listens on each Kafka port below + 100*(N-1) and keeps its own data
    dir; with 3 nodes every topic the project creates gets 3 replicas and `min.insync.replicas=2`
    (streamledger/kafka/topics.py `replication`)."""
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    kafka_internal_port: int = 9094
    """Secured only: the brokers' own listener (mutual TLS, the broker certificate alone), used
    between brokers and by the stack to create users and ACLs."""
    kafka_secure: bool = True
    """SASL_SSL (TLS + SCRAM-SHA-512) on the client listener and ACLs (KRaft's StandardAuthorizer),
    one principal per service; off: one PLAINTEXT listener without authentication."""
    kafka_plaintext_port: int = 0
    """Bench only: also a PLAINTEXT listener on 127.0.0.1 at this port, whose anonymous clients are
    super users (to measure what authentication costs); 0 (the default) leaves it off."""
    kafka_heap: str | None = None
    """Each Kafka node's maximum JVM heap (-Xmx); unset: 768m for one node, 512m each for a
    cluster, so three fit a small machine."""
    mongo_port: int = 27017
    fabric: bool = False
    """Also run the local Fabric network (three orderers, two orgs' peers and chaincode servers)."""
    fabric_bin: Path | None = None
    """A folder of official Fabric release binaries (peer, orderer, osnadmin, configtxgen,
    cryptogen; their core.yaml/orderer.yaml in ../config) to use instead of building them."""
    fabric_orderer_port: int = 7050
    """Orderer N (0, 1, 2) listens on this port + 100*N; its admin and operations ports likewise."""
    fabric_orderer_admin_port: int = 7053
    fabric_orderer_operations_port: int = 9443
    fabric_peer_port: int = 7051
    """Org1's (the provider's) peer; Org2's peer listens on fabric_org2_peer_port."""
    fabric_peer_chaincode_port: int = 7052
    fabric_peer_operations_port: int = 9444
    fabric_chaincode_port: int = 9999
    fabric_org2_peer_port: int = 9051
    fabric_org2_peer_chaincode_port: int = 9052
    fabric_org2_peer_operations_port: int = 9446
    fabric_org2_chaincode_port: int = 9998
    fabric_timewindow_seconds: int = Field(default=15, gt=0)
    """The peers' tolerance for a proposal's timestamp (`peer.authentication.timewindow`; 900
    in Fabric's sample). Short here: everything runs on one clock."""
    fabric_min_settlement_window_seconds: int = Field(default=30, gt=0)
    """The shortest settlement window a hold may have (the contract's
    STREAMLEDGER_MIN_SETTLEMENT_WINDOW_SECONDS): it must exceed the peers' timewindow, so a
    transaction stamped at the edge of what a peer accepts gains nothing."""

    @model_validator(mode="after")
    def _window_exceeds_timewindow(self) -> StackSettings:
        if self.fabric_min_settlement_window_seconds <= self.fabric_timewindow_seconds:
            raise ValueError(f"fabric_min_settlement_window_seconds ({self.fabric_min_settlement_window_seconds}) "
                             f"must exceed fabric_timewindow_seconds ({self.fabric_timewindow_seconds})")
        return self
    start_timeout: float = 120.0
    """Seconds a server has to answer its health check after it starts."""

    @property
    def kafka_node_heap(self) -> str:
        return self.kafka_heap or ("768m" if self.kafka_brokers == 1 else "512m")

    @property
    def kafka_bootstrap(self) -> str:
        """Every node's client address: what `STREAMLEDGER_KAFKA_BOOTSTRAP` should say, so a client
        starting while one node is down still finds the cluster."""
        return ",".join(f"127.0.0.1:{self.kafka_port + 100 * n}" for n in range(self.kafka_brokers))

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def kafka_auth_dir(self) -> Path:
        """The Kafka CA, the broker's key and every principal's password (devstack/kafka_auth.py)."""
        return self.data_dir / "kafka-auth"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"
