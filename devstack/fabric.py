"""A local Hyperledger Fabric network as stack parts: one Raft orderer, one Org1 peer and
the StreamLedger contract as a chaincode service, TLS everywhere, all on 127.0.0.1.

Opt-in (`STREAMLEDGER_STACK_FABRIC=1` or `streamledger stack up --fabric`).

STOPGAP: the binaries come from the Fabric main-branch snapshot pinned in
deploy/fabric/go.mod (April 2023, between v2.5.0 and v3.0.0, not a release), the only
Fabric version the Go module proxy serves here; every release commit answers 403.
Move the pin there (and nowhere else) once a release is served.

Order of work, split over the parts because each step needs the previous server up:
  orderer.prepare   cryptogen material, configtxgen genesis block of channel `streamledger`
  peer.prepare      `osnadmin channel join` (the orderer is up by then)
  chaincode.prepare `peer channel join`, package, install, approve, commit (the peer is up)
Every step first asks whether it is already done, so `up` twice changes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import string
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from devstack.part import InstallError, Part, content_key, run_tool
from devstack.settings import DEPLOY_DIR, REPO_ROOT, StackSettings

MODULE_DIR = DEPLOY_DIR / "fabric"
FABRIC_MODULE = "github.com/hyperledger/fabric"
COMMANDS = ("configtxgen", "cryptogen", "orderer", "osnadmin", "peer")
CHAINCODE_DIR = REPO_ROOT / "chaincode"

CHANNEL = "streamledger"
CHAINCODE_NAME = "streamledger"
CHAINCODE_LABEL = "streamledger_1.0"
CHAINCODE_VERSION = "1.0"
CHAINCODE_SEQUENCE = 1
ENDORSEMENT_POLICY = "OR('Org1MSP.peer')"

ORDERER_DOMAIN = "streamledger.local"
ORG1_DOMAIN = "org1.streamledger.local"


class FabricError(RuntimeError):
    """A Fabric CLI step (osnadmin, peer) failed; the message names the step and its output."""


class NoRaftLeader(FabricError):
    """The orderer runs but its Raft node for the channel has no leader."""


class FabricBinaries:
    """The five Fabric commands, their sampleconfig, and the contract's chaincode server,
    built with `go` into the cache; one lock so parallel part installs build once."""

    _lock = threading.Lock()

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings

    @property
    def version(self) -> str:
        for line in (MODULE_DIR / "go.mod").read_text().splitlines():
            words = line.split()
            if words[:1] == [FABRIC_MODULE]:
                return words[1]
        raise InstallError(f"{MODULE_DIR / 'go.mod'} does not require {FABRIC_MODULE}")

    @property
    def build_dir(self) -> Path:
        return self.settings.home / "fabric" / content_key(MODULE_DIR / "go.mod", MODULE_DIR / "go.sum")

    @property
    def bin(self) -> Path:
        return self.build_dir / "bin"

    @property
    def sampleconfig(self) -> Path:
        return self.build_dir / "sampleconfig"

    @property
    def chaincode(self) -> Path:
        # Keyed by the contract's sources too: an edited contract gets a fresh build.
        sources = sorted(p for p in CHAINCODE_DIR.rglob("*.go") if not p.name.endswith("_test.go"))
        key = content_key(CHAINCODE_DIR / "go.mod", CHAINCODE_DIR / "go.sum", *sources)
        return self.settings.home / "fabric" / "chaincode" / key / "streamledger-chaincode"

    def tool(self, name: str) -> str:
        return str(self.bin / name)

    def is_installed(self) -> bool:
        return (self.bin / ".complete").exists() and self.chaincode.exists()

    def install(self) -> None:
        with self._lock:
            if self.is_installed():
                return
            if shutil.which("go") is None:
                raise InstallError("Go (`go`) is needed to build Fabric and the chaincode")
            if not (self.bin / ".complete").exists():
                self._build_fabric()
            if not self.chaincode.exists():
                partial = self.chaincode.with_suffix(".partial")
                partial.parent.mkdir(parents=True, exist_ok=True)
                run_tool(["go", "build", "-o", str(partial), "."], "building the StreamLedger chaincode",
                         cwd=CHAINCODE_DIR)
                partial.rename(self.chaincode)

    def _build_fabric(self) -> None:
        src = self.build_dir / "src"
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir(parents=True)
        for name in ("go.mod", "go.sum"):
            shutil.copy(MODULE_DIR / name, src / name)
        partial = self.build_dir / "bin.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        run_tool(["go", "build", "-o", str(partial) + "/", *(f"{FABRIC_MODULE}/cmd/{c}" for c in COMMANDS)],
                 f"building Fabric {self.version} ({', '.join(COMMANDS)})", cwd=src)
        # core.yaml and orderer.yaml come from the same module; env overrides go on top.
        found = subprocess.run(["go", "list", "-m", "-f", "{{.Dir}}", FABRIC_MODULE],
                               cwd=src, capture_output=True, text=True)
        module_dir = Path(found.stdout.strip())
        if found.returncode != 0 or not (module_dir / "sampleconfig").is_dir():
            raise InstallError(f"cannot find {FABRIC_MODULE}'s sampleconfig/: {found.stderr.strip()}")
        self.sampleconfig.mkdir(parents=True, exist_ok=True)
        for name in ("core.yaml", "orderer.yaml"):
            shutil.copyfile(module_dir / "sampleconfig" / name, self.sampleconfig / name)
        shutil.rmtree(self.bin, ignore_errors=True)
        partial.rename(self.bin)
        (self.bin / ".complete").write_text(self.version)
        shutil.rmtree(src, ignore_errors=True)


class FabricNetwork:
    """Paths, identities and the one-off admin steps of the local network."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.binaries = FabricBinaries(settings)
        self.root = settings.data_dir / "fabric"
        self.crypto = self.root / "crypto"
        self.config = self.root / "config"
        self.genesis_block = self.config / f"{CHANNEL}.block"
        self.package = self.root / "chaincode" / f"{CHAINCODE_LABEL}.tar.gz"

    # -- identities and TLS material (cryptogen's layout) --
    @property
    def orderer_node(self) -> Path:
        return self.crypto / "ordererOrganizations" / ORDERER_DOMAIN / "orderers" / f"orderer.{ORDERER_DOMAIN}"

    @property
    def orderer_tls_ca(self) -> Path:
        return self.orderer_node / "tls" / "ca.crt"

    @property
    def orderer_admin_tls(self) -> Path:
        return self.crypto / "ordererOrganizations" / ORDERER_DOMAIN / "users" / f"Admin@{ORDERER_DOMAIN}" / "tls"

    def org1_node(self, host: str) -> Path:
        return self.crypto / "peerOrganizations" / ORG1_DOMAIN / "peers" / f"{host}.{ORG1_DOMAIN}"

    @property
    def peer_tls_ca(self) -> Path:
        return self.org1_node("peer0") / "tls" / "ca.crt"

    def user_msp(self, user: str) -> Path:
        """The MSP folder of an Org1 user: "Admin" (may mint) or "User1" (a plain client)."""
        msp = self.crypto / "peerOrganizations" / ORG1_DOMAIN / "users" / f"{user}@{ORG1_DOMAIN}" / "msp"
        if not msp.is_dir():
            raise FabricError(f"no Org1 identity {user!r} (looked for {msp})")
        return msp

    @property
    def peer_address(self) -> str:
        return f"127.0.0.1:{self.settings.fabric_peer_port}"

    @property
    def orderer_address(self) -> str:
        return f"127.0.0.1:{self.settings.fabric_orderer_port}"

    @property
    def chaincode_address(self) -> str:
        return f"127.0.0.1:{self.settings.fabric_chaincode_port}"

    # -- one-off material --
    def make_crypto(self) -> None:
        if (self.crypto / ".complete").exists():
            # Never regenerate (new keys would orphan the ledgers signed with the old ones);
            # `extend` only adds identities the config names and the folder lacks.
            run_tool([self.binaries.tool("cryptogen"), "extend", f"--config={MODULE_DIR / 'crypto-config.yaml'}",
                      f"--input={self.crypto}"], "extending crypto material with cryptogen")
            return
        shutil.rmtree(self.crypto, ignore_errors=True)
        run_tool([self.binaries.tool("cryptogen"), "generate", f"--config={MODULE_DIR / 'crypto-config.yaml'}",
                  f"--output={self.crypto}"], "generating crypto material with cryptogen")
        (self.crypto / ".complete").write_text("")

    def make_genesis_block(self) -> None:
        if self.genesis_block.exists():
            return
        self.config.mkdir(parents=True, exist_ok=True)
        template = string.Template((MODULE_DIR / "configtx.yaml").read_text())
        (self.config / "configtx.yaml").write_text(template.substitute(
            crypto=self.crypto, orderer_port=self.settings.fabric_orderer_port,
            orderer_tls=self.orderer_node / "tls"))
        partial = self.genesis_block.with_suffix(".partial")
        run_tool([self.binaries.tool("configtxgen"), "-profile", "StreamLedgerChannel", "-channelID", CHANNEL,
                  "-outputBlock", str(partial), "-configPath", str(self.config)],
                 "creating the channel genesis block with configtxgen")
        partial.rename(self.genesis_block)

    def write_peer_config(self) -> Path:
        """sampleconfig/core.yaml with our external builder in place of the sample one and
        no Docker endpoint (an empty CORE_VM_ENDPOINT counts as unset, so it is done here)."""
        sample = (self.binaries.sampleconfig / "core.yaml").read_text()
        docker = "    endpoint: unix:///var/run/docker.sock\n"
        if docker not in sample:
            raise InstallError(f"{self.binaries.sampleconfig / 'core.yaml'}: no vm.endpoint line to clear")
        sample = sample.replace(docker, '    endpoint: ""\n', 1)
        sample_builder = (
            "    externalBuilders:\n"
            "       - name: ccaas_builder\n"
            "         path: /opt/hyperledger/ccaas_builder\n"
            "         propagateEnvironment:\n"
            "           - CHAINCODE_AS_A_SERVICE_BUILDER_CONFIG\n"
        )
        if sample_builder not in sample:
            raise InstallError(f"{self.binaries.sampleconfig / 'core.yaml'}: chaincode.externalBuilders "
                               "is not the sample block this code replaces; update write_peer_config")
        ours = ("    externalBuilders:\n"
                "       - name: streamledger-ccaas\n"
                f"         path: {MODULE_DIR / 'builders' / 'ccaas'}\n")
        peer_config = self.config / "peer"
        peer_config.mkdir(parents=True, exist_ok=True)
        (peer_config / "core.yaml").write_text(sample.replace(sample_builder, ours))
        return peer_config

    # -- CLI --
    def peer_env(self, user: str = "Admin") -> dict[str, str]:
        """The environment for Fabric's `peer` CLI acting as an Org1 user on our peer."""
        return {
            "FABRIC_CFG_PATH": str(self.config / "peer"),
            "CORE_PEER_LOCALMSPID": "Org1MSP",
            "CORE_PEER_MSPCONFIGPATH": str(self.user_msp(user)),
            "CORE_PEER_ADDRESS": self.peer_address,
            "CORE_PEER_TLS_ENABLED": "true",
            "CORE_PEER_TLS_ROOTCERT_FILE": str(self.peer_tls_ca),
            "FABRIC_LOGGING_SPEC": "warning",
        }

    def orderer_flags(self) -> list[str]:
        return ["-o", self.orderer_address, "--tls", "--cafile", str(self.orderer_tls_ca)]

    def peer_cli(self, *args: str, user: str = "Admin", what: str = "", timeout: float = 120.0) -> str:
        """Run `peer ARGS` as `user`; its output, or FabricError naming the step."""
        argv = [self.binaries.tool("peer"), *args]
        try:
            result = subprocess.run(argv, env={**os.environ, **self.peer_env(user)},
                                    capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise FabricError(f"{what or 'peer ' + args[0]} timed out after {timeout:.0f}s") from exc
        if result.returncode != 0:
            raise FabricError(f"{what or 'peer ' + ' '.join(args[:3])} failed (exit {result.returncode}): "
                              f"{(result.stderr + result.stdout).strip()}")
        return result.stdout + result.stderr

    def query(self, function: str, *args: str, user: str = "Admin") -> str:
        """`peer chaincode query`: the contract's JSON answer as text."""
        call = json.dumps({"function": function, "Args": list(args)})
        return self.peer_cli("chaincode", "query", "-C", CHANNEL, "-n", CHAINCODE_NAME, "-c", call,
                             user=user, what=f"query {function}").strip()

    def invoke(self, function: str, *args: str, user: str = "Admin") -> str:
        """`peer chaincode invoke`, waiting until the transaction is committed."""
        call = json.dumps({"function": function, "Args": list(args)})
        return self.peer_cli("chaincode", "invoke", "-C", CHANNEL, "-n", CHAINCODE_NAME, "-c", call,
                             *self.orderer_flags(), "--peerAddresses", self.peer_address,
                             "--tlsRootCertFiles", str(self.peer_tls_ca), "--waitForEvent",
                             user=user, what=f"invoke {function}")

    # -- joining and the chaincode lifecycle, each skipped when already done --
    def join_orderer(self) -> None:
        admin = self.orderer_admin_tls
        osnadmin = [self.binaries.tool("osnadmin"), "channel"]
        flags = ["-o", f"127.0.0.1:{self.settings.fabric_orderer_admin_port}", "--ca-file", str(self.orderer_tls_ca),
                 "--client-cert", str(admin / "client.crt"), "--client-key", str(admin / "client.key")]
        listed = subprocess.run([*osnadmin, "list", "--channelID", CHANNEL, *flags], capture_output=True, text=True)
        if "Status: 200" not in listed.stdout:
            joined = subprocess.run([*osnadmin, "join", "--channelID", CHANNEL, "--config-block",
                                     str(self.genesis_block), *flags], capture_output=True, text=True)
            if "Status: 201" not in joined.stdout:
                raise FabricError(f"osnadmin channel join {CHANNEL} failed (exit {joined.returncode}): "
                                  f"{(joined.stdout + joined.stderr).strip()}")
        self.wait_for_raft_leader()

    def wait_for_raft_leader(self, timeout: float = 30.0) -> None:
        """The orderer answers /healthz before Raft has elected a leader for the channel, and
        until then it refuses transactions (SERVICE_UNAVAILABLE); its metrics tell."""
        url = f"http://127.0.0.1:{self.settings.fabric_orderer_operations_port}/metrics"
        leader = f'consensus_etcdraft_is_leader{{channel="{CHANNEL}"}} 1'
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if leader in response.read().decode():
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise NoRaftLeader(f"the orderer elected no Raft leader for channel {CHANNEL} within {timeout:.0f}s "
                           f"(watched {url})")

    def join_peer(self) -> None:
        if CHANNEL in self.peer_cli("channel", "list", what="peer channel list").split():
            return
        self.peer_cli("channel", "join", "-b", str(self.genesis_block), what=f"peer channel join {CHANNEL}")

    def package_chaincode(self) -> str:
        """Package the contract as a chaincode service; its package id (label:sha256)."""
        self.package.parent.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["sh", str(MODULE_DIR / "package-ccaas.sh"), str(self.package), "--label", CHAINCODE_LABEL,
             "--address", self.chaincode_address, "--root-cert", str(self.org1_node("chaincode") / "tls" / "ca.crt")],
            capture_output=True, text=True)
        if result.returncode != 0:
            raise FabricError(f"package-ccaas.sh failed: {result.stderr.strip()}")
        return result.stdout.strip().splitlines()[-1]

    def install_chaincode(self, package_id: str) -> None:
        installed = json.loads(self.peer_cli("lifecycle", "chaincode", "queryinstalled", "--output", "json",
                                             what="peer lifecycle chaincode queryinstalled") or "{}")
        if any(p.get("package_id") == package_id for p in installed.get("installed_chaincodes", [])):
            return
        self.peer_cli("lifecycle", "chaincode", "install", str(self.package), what="peer lifecycle chaincode install")

    def committed_sequence(self) -> int:
        """The committed sequence of our chaincode definition, 0 when none is committed."""
        try:
            out = self.peer_cli("lifecycle", "chaincode", "querycommitted", "-C", CHANNEL, "-n", CHAINCODE_NAME,
                                "--output", "json", what="peer lifecycle chaincode querycommitted")
        except FabricError as exc:
            if "not defined" in str(exc) or "not found" in str(exc):
                return 0
            raise
        return int(json.loads(out).get("sequence", 0))

    def approve_and_commit(self, package_id: str) -> None:
        if self.committed_sequence() >= CHAINCODE_SEQUENCE:
            return
        definition = ["-C", CHANNEL, "-n", CHAINCODE_NAME, "-v", CHAINCODE_VERSION,
                      "--sequence", str(CHAINCODE_SEQUENCE), "--signature-policy", ENDORSEMENT_POLICY]
        try:
            self.peer_cli("lifecycle", "chaincode", "queryapproved", "-C", CHANNEL, "-n", CHAINCODE_NAME,
                          "--sequence", str(CHAINCODE_SEQUENCE), what="queryapproved")
        except FabricError:
            self.peer_cli("lifecycle", "chaincode", "approveformyorg", *definition, "--package-id", package_id,
                          *self.orderer_flags(), what="peer lifecycle chaincode approveformyorg")
        self.peer_cli("lifecycle", "chaincode", "commit", *definition, *self.orderer_flags(),
                      "--peerAddresses", self.peer_address, "--tlsRootCertFiles", str(self.peer_tls_ca),
                      what="peer lifecycle chaincode commit")


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


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class FabricOrdererPart(_FabricPart):
    name = "fabric-orderer"
    marker = "bin/orderer"

    @property
    def port(self) -> int:
        return self.settings.fabric_orderer_port

    def prepare(self) -> None:
        self.network.make_crypto()
        self.network.make_genesis_block()

    def command(self) -> tuple[list[str], dict[str, str]]:
        net, s = self.network, self.settings
        tls = net.orderer_node / "tls"
        data = net.root / "orderer"
        data.mkdir(parents=True, exist_ok=True)
        env = {
            "FABRIC_CFG_PATH": str(net.binaries.sampleconfig),
            "FABRIC_LOGGING_SPEC": "info",
            "ORDERER_GENERAL_LISTENADDRESS": "127.0.0.1",
            "ORDERER_GENERAL_LISTENPORT": str(s.fabric_orderer_port),
            "ORDERER_GENERAL_LOCALMSPID": "OrdererMSP",
            "ORDERER_GENERAL_LOCALMSPDIR": str(net.orderer_node / "msp"),
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
            "ORDERER_ADMIN_LISTENADDRESS": f"127.0.0.1:{s.fabric_orderer_admin_port}",
            "ORDERER_ADMIN_TLS_ENABLED": "true",
            "ORDERER_ADMIN_TLS_PRIVATEKEY": str(tls / "server.key"),
            "ORDERER_ADMIN_TLS_CERTIFICATE": str(tls / "server.crt"),
            "ORDERER_ADMIN_TLS_ROOTCAS": f"[{tls / 'ca.crt'}]",
            "ORDERER_ADMIN_TLS_CLIENTAUTHREQUIRED": "true",
            "ORDERER_ADMIN_TLS_CLIENTROOTCAS": f"[{tls / 'ca.crt'}]",
            "ORDERER_OPERATIONS_LISTENADDRESS": f"127.0.0.1:{s.fabric_orderer_operations_port}",
            "ORDERER_METRICS_PROVIDER": "prometheus",  # wait_for_raft_leader reads it
            "ORDERER_FILELEDGER_LOCATION": str(data / "ledger"),
            "ORDERER_CONSENSUS_WALDIR": str(data / "etcdraft" / "wal"),
            "ORDERER_CONSENSUS_SNAPDIR": str(data / "etcdraft" / "snapshot"),
        }
        return [net.binaries.tool("orderer")], env

    def healthy(self) -> bool:
        return _http_ok(f"http://127.0.0.1:{self.settings.fabric_orderer_operations_port}/healthz")

    def settle(self, attempts: int = 3) -> None:
        """Join the channel (once) and wait for its Raft leader, restarting the orderer when none
        comes: this Fabric build now and then restarts its Raft node without re-applying its own
        membership (the log says `voters=()` and nothing after) and then never elects."""
        for attempt in range(1, attempts + 1):
            try:
                self.network.join_orderer()
                return
            except NoRaftLeader:
                if attempt == attempts:
                    raise
            self.process.stop()
            argv, env = self.command()
            self.process.start(argv, env=env, cwd=self.settings.home)
            deadline = time.monotonic() + self.settings.start_timeout
            while not self.healthy():
                if self.process.pid() is None or time.monotonic() > deadline:
                    raise FabricError(f"the orderer did not come back after a restart:\n{self.process.tail()}")
                time.sleep(0.5)


class FabricPeerPart(_FabricPart):
    name = "fabric-peer"
    marker = "peer node start"

    @property
    def port(self) -> int:
        return self.settings.fabric_peer_port

    def prepare(self) -> None:
        self.network.write_peer_config()  # the orderer has joined the channel by now (its settle)

    def command(self) -> tuple[list[str], dict[str, str]]:
        net, s = self.network, self.settings
        node = net.org1_node("peer0")
        data = net.root / "peer"
        data.mkdir(parents=True, exist_ok=True)
        env = {
            "FABRIC_CFG_PATH": str(net.config / "peer"),
            "FABRIC_LOGGING_SPEC": "info",
            "CORE_PEER_ID": f"peer0.{ORG1_DOMAIN}",
            "CORE_PEER_ADDRESS": net.peer_address,
            "CORE_PEER_LISTENADDRESS": net.peer_address,
            "CORE_PEER_CHAINCODEADDRESS": f"127.0.0.1:{s.fabric_peer_chaincode_port}",
            "CORE_PEER_CHAINCODELISTENADDRESS": f"127.0.0.1:{s.fabric_peer_chaincode_port}",
            "CORE_PEER_GOSSIP_BOOTSTRAP": net.peer_address,
            "CORE_PEER_GOSSIP_EXTERNALENDPOINT": net.peer_address,
            "CORE_PEER_LOCALMSPID": "Org1MSP",
            "CORE_PEER_MSPCONFIGPATH": str(node / "msp"),
            "CORE_PEER_TLS_ENABLED": "true",
            "CORE_PEER_TLS_CERT_FILE": str(node / "tls" / "server.crt"),
            "CORE_PEER_TLS_KEY_FILE": str(node / "tls" / "server.key"),
            "CORE_PEER_TLS_ROOTCERT_FILE": str(node / "tls" / "ca.crt"),
            "CORE_PEER_FILESYSTEMPATH": str(data),
            "CORE_LEDGER_SNAPSHOTS_ROOTDIR": str(data / "snapshots"),
            "CORE_OPERATIONS_LISTENADDRESS": f"127.0.0.1:{s.fabric_peer_operations_port}",
        }
        return [net.binaries.tool("peer"), "node", "start"], env

    def healthy(self) -> bool:
        return _http_ok(f"http://127.0.0.1:{self.settings.fabric_peer_operations_port}/healthz")


class FabricChaincodePart(_FabricPart):
    name = "fabric-chaincode"
    marker = "streamledger-chaincode"

    @property
    def port(self) -> int:
        return self.settings.fabric_chaincode_port

    @property
    def package_id_file(self) -> Path:
        return self.network.root / "chaincode" / "package-id"

    def prepare(self) -> None:
        net = self.network
        net.join_peer()  # the peer part is healthy by now
        package_id = net.package_chaincode()
        net.install_chaincode(package_id)
        net.approve_and_commit(package_id)
        self.package_id_file.write_text(package_id)

    def command(self) -> tuple[list[str], dict[str, str]]:
        tls = self.network.org1_node("chaincode") / "tls"
        env = {
            "CHAINCODE_SERVER_ADDRESS": self.network.chaincode_address,
            "CORE_CHAINCODE_ID_NAME": self.package_id_file.read_text().strip(),
            "CHAINCODE_TLS_CERT_FILE": str(tls / "server.crt"),
            "CHAINCODE_TLS_KEY_FILE": str(tls / "server.key"),
        }
        return [str(self.network.binaries.chaincode)], env

    def healthy(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(1)
            if sock.connect_ex(("127.0.0.1", self.port)) != 0:
                return False
        try:  # a real round trip: client -> peer -> chaincode service -> peer -> client
            return '"Account"' in self.network.query("WhoAmI")
        except FabricError:
            return False


def fabric_parts(settings: StackSettings) -> list[Part]:
    network = FabricNetwork(settings)
    return [FabricOrdererPart(settings, network), FabricPeerPart(settings, network),
            FabricChaincodePart(settings, network)]


def fabric_was_started(settings: StackSettings) -> bool:
    """True when a Fabric part left a pid file: `down` and `status` then include Fabric."""
    return any((settings.run_dir / f"{name}.pid").exists()
               for name in ("fabric-orderer", "fabric-peer", "fabric-chaincode"))
