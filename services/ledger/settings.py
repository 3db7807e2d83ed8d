"""Where the ledger is: the gateway peer, its TLS root, and the identity to act as.

The defaults are the local stack's Fabric network (`stack up --fabric`) acting as Org1's
Admin; point them at a real network's gateway peer and an enrolled identity's MSP folder.
"""

from __future__ import annotations

from pathlib import Path

from services.common import topics
from services.common.settings import CommonSettings
from services.stack.settings import StackSettings

LOCAL_ORG1 = Path("fabric") / "crypto" / "peerOrganizations" / "org1.streamledger.local"


def _local(*parts: str) -> Path:
    return StackSettings().data_dir / LOCAL_ORG1 / Path(*parts)


class LedgerSettings(CommonSettings):
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


class LedgerServiceSettings(LedgerSettings):
    """`streamledger serve ledger`: anchoring of events.clean and settlement of usage."""

    clean_topic: str = topics.CLEAN
    anchors_topic: str = topics.ANCHORS
    usage_topic: str = topics.USAGE
    deadletter_topic: str = topics.DEADLETTER
    ledger_anchoring: bool = True
    """Anchor events.clean (off: this process only settles)."""
    ledger_settlement: bool = True
    """Settle usage (off: this process only anchors)."""
    ledger_anchor_group: str = "streamledger-ledger-anchoring"
    ledger_settlement_group: str = "streamledger-ledger-settlement"
    ledger_batch_records: int = 1000
    """A batch closes at this many records..."""
    ledger_batch_seconds: float = 1.0
    """...or when its oldest record has waited this long."""
    ledger_batches_in_flight: int = 8
    """Batches being anchored at once (each one Fabric transaction); more stops reading input."""
    ledger_settle_grace_seconds: float = 5.0
    """A hold settles this long after it expires, so usage still on its way is counted."""
    ledger_settle_every_seconds: float = 0.0
    """Settle a hold once it has been open this long, even before it expires (0: off)."""
    ledger_settle_tick_seconds: float = 1.0
    """How often holds are checked for settlement."""
    backoff_initial_seconds: float = 0.2
    backoff_max_seconds: float = 5.0
