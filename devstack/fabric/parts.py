"""The network's servers as stack parts, started in this order because each step needs the
previous servers up:

  fabric-orderer1..3      cryptogen material and the genesis block (first), then each
                          orderer joins the channel (`osnadmin channel join`)
  fabric-peer-org1, -org2 wait for the Raft leader, then each org's peer
  fabric-chaincode-org1   both peers join the channel; each org installs its own package and
                          approves; the two-org definition is committed; Org1's server
  fabric-chaincode-org2   Org2's server; then each org's admin grants the roles of
                          deploy/fabric/identities.yaml
"""

from __future__ import annotations

import os
import socket
import urllib.request

from devstack.fabric.network import MINT_MSPID, FabricError, FabricNetwork, Orderer, Org
from devstack.part import Part
from devstack.settings import StackSettings


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def go_memory(limit_mib: int) -> dict[str, str]:
    """The Go runtime's memory settings of one server, so the whole network (7 processes)
    stays under 600 MB resident under load (bench/fabric_memory.py measures it): collect when
    the heap has grown by half (GOGC=50; Go's default 100 lets it double before collecting),
    and a soft limit (GOMEMLIMIT) near which the collector runs sooner and returns idle memory
    to the OS. Soft: a server that needs more still gets it. Set in the environment to override."""
    return {"GOGC": os.environ.get("GOGC", "50"), "GOMEMLIMIT": os.environ.get("GOMEMLIMIT", f"{limit_mib}MiB")}


class _FabricPart(Part):
    def __init__(self, settings: StackSettings, network: FabricNetwork) -> None:
        self.network = network
        super().__init__(settings)

    @property
    def version(self) -> str:
        return self.network.binaries.version

    def is_installed(self) -> bool:
        return self.network.binaries.is_installed()

    def install(self) -> None:
        self.network.binaries.install()


class FabricOrdererPart(_FabricPart):
    def __init__(self, settings: StackSettings, network: FabricNetwork, orderer: Orderer) -> None:
        self.orderer = orderer
        self.name = f"fabric-{orderer.host}"
        self.marker = "bin/orderer"
        super().__init__(settings, network)

    @property
    def port(self) -> int:
        return self.orderer.port

    def prepare(self) -> None:
        self.network.make_crypto()
        self.network.make_genesis_block()

    def command(self) -> tuple[list[str], dict[str, str]]:
        net, o = self.network, self.orderer
        node = net.orderer_node(o)
        tls = node / "tls"
        data = net.root / o.host
        data.mkdir(parents=True, exist_ok=True)
        env = {
            "FABRIC_CFG_PATH": str(net.binaries.sampleconfig),
            "FABRIC_LOGGING_SPEC": "info",
            "ORDERER_GENERAL_LISTENADDRESS": "127.0.0.1",
            "ORDERER_GENERAL_LISTENPORT": str(o.port),
            "ORDERER_GENERAL_LOCALMSPID": "OrdererMSP",
            "ORDERER_GENERAL_LOCALMSPDIR": str(node / "msp"),
            "ORDERER_GENERAL_TLS_ENABLED": "true",
            "ORDERER_GENERAL_TLS_PRIVATEKEY": str(tls / "server.key"),
            "ORDERER_GENERAL_TLS_CERTIFICATE": str(tls / "server.crt"),
            "ORDERER_GENERAL_TLS_ROOTCAS": f"[{tls / 'ca.crt'}]",
            # Raft traffic shares the main listener, so it reuses the node's TLS pair.
            "ORDERER_GENERAL_CLUSTER_CLIENTCERTIFICATE": str(tls / "server.crt"),
            "ORDERER_GENERAL_CLUSTER_CLIENTPRIVATEKEY": str(tls / "server.key"),
            "ORDERER_GENERAL_CLUSTER_ROOTCAS": f"[{tls / 'ca.crt'}]",
            "ORDERER_GENERAL_BOOTSTRAPMETHOD": "none",  # no system channel
            "ORDERER_CHANNELPARTICIPATION_ENABLED": "true",
            "ORDERER_ADMIN_LISTENADDRESS": f"127.0.0.1:{o.admin_port}",
            "ORDERER_ADMIN_TLS_ENABLED": "true",
            "ORDERER_ADMIN_TLS_PRIVATEKEY": str(tls / "server.key"),
            "ORDERER_ADMIN_TLS_CERTIFICATE": str(tls / "server.crt"),
            "ORDERER_ADMIN_TLS_ROOTCAS": f"[{tls / 'ca.crt'}]",
            "ORDERER_ADMIN_TLS_CLIENTAUTHREQUIRED": "true",
            "ORDERER_ADMIN_TLS_CLIENTROOTCAS": f"[{tls / 'ca.crt'}]",
            "ORDERER_OPERATIONS_LISTENADDRESS": f"127.0.0.1:{o.operations_port}",
            "ORDERER_METRICS_PROVIDER": "prometheus",  # raft_leader reads it
            "ORDERER_FILELEDGER_LOCATION": str(data / "ledger"),
            "ORDERER_CONSENSUS_WALDIR": str(data / "etcdraft" / "wal"),
            "ORDERER_CONSENSUS_SNAPDIR": str(data / "etcdraft" / "snapshot"),
            **go_memory(64),
        }
        return [net.binaries.tool("orderer")], env

    def healthy(self) -> bool:
        return _http_ok(f"http://127.0.0.1:{self.orderer.operations_port}/healthz")

    def settle(self) -> None:
        self.network.join_orderer(self.orderer)  # once; a restarted orderer catches up by itself


class FabricPeerPart(_FabricPart):
    def __init__(self, settings: StackSettings, network: FabricNetwork, org: Org) -> None:
        self.org = org
        self.name = f"fabric-peer-{org.key}"
        self.marker = "peer node start"
        super().__init__(settings, network)

    @property
    def port(self) -> int:
        return self.org.peer_port

    def prepare(self) -> None:
        self.network.wait_for_raft_leader()  # every orderer has joined by now (their settle)
        self.network.write_peer_config()

    def command(self) -> tuple[list[str], dict[str, str]]:
        net, org, s = self.network, self.org, self.settings
        node = net.node(org, "peer0")
        data = net.root / f"peer-{org.key}"
        data.mkdir(parents=True, exist_ok=True)
        env = {
            "FABRIC_CFG_PATH": str(net.peer_config),
            "FABRIC_LOGGING_SPEC": "info",
            "CORE_PEER_ID": f"peer0.{org.domain}",
            "CORE_PEER_ADDRESS": org.peer_address,
            "CORE_PEER_LISTENADDRESS": org.peer_address,
            "CORE_PEER_CHAINCODEADDRESS": f"127.0.0.1:{org.peer_chaincode_port}",
            "CORE_PEER_CHAINCODELISTENADDRESS": f"127.0.0.1:{org.peer_chaincode_port}",
            "CORE_PEER_GOSSIP_BOOTSTRAP": org.peer_address,
            "CORE_PEER_GOSSIP_EXTERNALENDPOINT": org.peer_address,  # what the other org dials
            "CORE_PEER_LOCALMSPID": org.msp_id,
            "CORE_PEER_MSPCONFIGPATH": str(node / "msp"),
            "CORE_PEER_TLS_ENABLED": "true",
            "CORE_PEER_TLS_CERT_FILE": str(node / "tls" / "server.crt"),
            "CORE_PEER_TLS_KEY_FILE": str(node / "tls" / "server.key"),
            "CORE_PEER_TLS_ROOTCERT_FILE": str(node / "tls" / "ca.crt"),
            "CORE_PEER_FILESYSTEMPATH": str(data),
            "CORE_LEDGER_SNAPSHOTS_ROOTDIR": str(data / "snapshots"),
            "CORE_OPERATIONS_LISTENADDRESS": f"127.0.0.1:{org.peer_operations_port}",
            "CORE_PEER_AUTHENTICATION_TIMEWINDOW": f"{s.fabric_timewindow_seconds}s",
            "CORE_METRICS_PROVIDER": "prometheus",  # the Go heap figures, as the orderers give them
            **go_memory(112),
        }
        return [net.binaries.tool("peer"), "node", "start"], env

    def healthy(self) -> bool:
        return _http_ok(f"http://127.0.0.1:{self.org.peer_operations_port}/healthz")


class FabricChaincodePart(_FabricPart):
    """An org's own chaincode server: the peer of that org calls it to endorse."""

    def __init__(self, settings: StackSettings, network: FabricNetwork, org: Org) -> None:
        self.org = org
        self.name = f"fabric-chaincode-{org.key}"
        self.marker = "streamledger-chaincode"
        super().__init__(settings, network)

    @property
    def port(self) -> int:
        return self.org.chaincode_port

    def prepare(self) -> None:
        self.network.deploy_chaincode()  # both peers are healthy by now; skipped when done

    def command(self) -> tuple[list[str], dict[str, str]]:
        tls = self.network.node(self.org, "chaincode") / "tls"
        env = {
            "CHAINCODE_SERVER_ADDRESS": self.org.chaincode_address,
            "CORE_CHAINCODE_ID_NAME": self.network.package_id_file(self.org).read_text().strip(),
            "CHAINCODE_TLS_CERT_FILE": str(tls / "server.crt"),
            "CHAINCODE_TLS_KEY_FILE": str(tls / "server.key"),
            # Both orgs' servers must apply the same rules, or their endorsements differ.
            "STREAMLEDGER_MINT_MSPID": MINT_MSPID,
            "STREAMLEDGER_MIN_SETTLEMENT_WINDOW_SECONDS": str(self.settings.fabric_min_settlement_window_seconds),
            **go_memory(24),
        }
        return [str(self.network.binaries.chaincode)], env

    def healthy(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(1)
            if sock.connect_ex(("127.0.0.1", self.port)) != 0:
                return False
        try:  # a real round trip: client -> this org's peer -> this org's chaincode server
            return '"Account"' in self.network.query("WhoAmI", org=self.org.name)
        except FabricError:
            return False

    def settle(self) -> None:
        if self.org is self.network.orgs[-1]:  # both servers answer now
            self.network.grant_roles()
            self.network.wait_for_gossip()


def fabric_parts(settings: StackSettings) -> list[Part]:
    network = FabricNetwork(settings)
    return [*(FabricOrdererPart(settings, network, o) for o in network.orderers),
            *(FabricPeerPart(settings, network, org) for org in network.orgs),
            *(FabricChaincodePart(settings, network, org) for org in network.orgs)]


PART_NAMES = tuple(p.name for p in fabric_parts(StackSettings()))


def fabric_was_started(settings: StackSettings) -> bool:
    """True when a Fabric part left a pid file: `down` and `status` then include Fabric."""
    return any((settings.run_dir / f"{name}.pid").exists() for name in PART_NAMES)
