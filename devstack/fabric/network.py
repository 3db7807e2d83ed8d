"""The local two-organisation network: who is in it, where their material lives, and the
one-off admin steps (crypto, channel, chaincode lifecycle, role grants), each skipped when
already done so `up` twice changes nothing; and certificate revocation, a change to the
channel configuration."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml
from fabric_protos.discovery import protocol_pb2_grpc

from devstack.fabric.binaries import MODULE_DIR, FabricBinaries
from devstack.fabric.identities import issue_client
from devstack.fabric.revocation import revoke_in, revoked_serials, signing_certificate
from devstack.part import InstallError, run_tool
from devstack.settings import StackSettings
from streamledger.fabric.discovery import discovery_request, orgs_without_peers
from streamledger.fabric.identity import load_msp

CHANNEL = "streamledger"
CHAINCODE_NAME = "streamledger"
CHAINCODE_LABEL = "streamledger_1.0"
CHAINCODE_VERSION = "1.0"
CHAINCODE_SEQUENCE = 1
ENDORSEMENT_POLICY = "AND('Org1MSP.peer','Org2MSP.peer')"
"""Both organisations endorse every transaction: neither can commit one alone."""
MINT_MSPID = "Org1MSP"
"""Whose admin may mint credit (the chaincode servers' STREAMLEDGER_MINT_MSPID)."""

ORDERER_DOMAIN = "streamledger.local"
ORDERERS = 3


class FabricError(RuntimeError):
    """A Fabric CLI step (osnadmin, peer) failed; the message names the step and its output."""


class NoRaftLeader(FabricError):
    """The orderers run but their Raft cluster for the channel has no leader."""


@dataclass(frozen=True)
class Org:
    """One peer organisation: its peer and its own chaincode server."""

    name: str  # "Org1"
    peer_port: int
    peer_chaincode_port: int
    peer_operations_port: int
    chaincode_port: int

    @property
    def msp_id(self) -> str:
        return f"{self.name}MSP"

    @property
    def key(self) -> str:  # "org1": part names and folders
        return self.name.lower()

    @property
    def domain(self) -> str:
        return f"{self.key}.streamledger.local"

    @property
    def peer_address(self) -> str:
        return f"127.0.0.1:{self.peer_port}"

    @property
    def chaincode_address(self) -> str:
        return f"127.0.0.1:{self.chaincode_port}"


@dataclass(frozen=True)
class Orderer:
    number: int  # 1, 2, 3
    port: int
    admin_port: int
    operations_port: int

    @property
    def host(self) -> str:
        return f"orderer{self.number}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _orgs(s: StackSettings) -> tuple[Org, Org]:
    return (Org("Org1", s.fabric_peer_port, s.fabric_peer_chaincode_port, s.fabric_peer_operations_port,
                s.fabric_chaincode_port),
            Org("Org2", s.fabric_org2_peer_port, s.fabric_org2_peer_chaincode_port,
                s.fabric_org2_peer_operations_port, s.fabric_org2_chaincode_port))


def _orderers(s: StackSettings) -> tuple[Orderer, ...]:
    return tuple(Orderer(n, s.fabric_orderer_port + 100 * (n - 1), s.fabric_orderer_admin_port + 100 * (n - 1),
                         s.fabric_orderer_operations_port + 100 * (n - 1)) for n in range(1, ORDERERS + 1))


def load_grants() -> dict[str, dict[str, dict[str, str]]]:
    """deploy/fabric/identities.yaml: org name -> identity name -> {role, acts_for}."""
    return yaml.safe_load((MODULE_DIR / "identities.yaml").read_text())


class FabricNetwork:
    """Paths, identities and the one-off admin steps of the local network."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.binaries = FabricBinaries(settings)
        self.orgs = _orgs(settings)
        self.orderers = _orderers(settings)
        self.root = settings.data_dir / "fabric"
        self.crypto = self.root / "crypto"
        self.config = self.root / "config"
        self.genesis_block = self.config / f"{CHANNEL}.block"

    def org(self, name: str) -> Org:
        """An org by name, key or MSP id: "Org2", "org2" or "Org2MSP"."""
        for org in self.orgs:
            if name in (org.name, org.key, org.msp_id):
                return org
        raise FabricError(f"no organisation {name!r} in the local network (it has Org1 and Org2)")

    # -- identities and TLS material (cryptogen's layout) --
    def orderer_node(self, orderer: Orderer) -> Path:
        return self.crypto / "ordererOrganizations" / ORDERER_DOMAIN / "orderers" / f"{orderer.host}.{ORDERER_DOMAIN}"

    @property
    def orderer_tls_ca(self) -> Path:
        """One TLS CA signs all three orderers' certificates."""
        return self.orderer_node(self.orderers[0]) / "tls" / "ca.crt"

    @property
    def orderer_admin_tls(self) -> Path:
        return self.crypto / "ordererOrganizations" / ORDERER_DOMAIN / "users" / f"Admin@{ORDERER_DOMAIN}" / "tls"

    def org_dir(self, org: Org) -> Path:
        return self.crypto / "peerOrganizations" / org.domain

    def node(self, org: Org, host: str) -> Path:
        return self.org_dir(org) / "peers" / f"{host}.{org.domain}"

    def peer_tls_ca(self, org: Org) -> Path:
        return self.node(org, "peer0") / "tls" / "ca.crt"

    def user_msp(self, user: str | Path, org: str = "Org1") -> Path:
        """The MSP folder of a local identity: "Admin", "User1".."User8", or a named one
        from identities.yaml ("anchoring", "settlement", ...); a Path is taken as the folder."""
        if isinstance(user, Path):
            return user
        o = self.org(org)
        msp = self.org_dir(o) / "users" / f"{user}@{o.domain}" / "msp"
        if not msp.is_dir():
            raise FabricError(f"no {o.name} identity {user!r} (looked for {msp})")
        return msp

    # -- one-off material --
    def make_crypto(self) -> None:
        if self.genesis_block.exists() and not self.org_dir(self.orgs[1]).is_dir():
            raise InstallError(f"{self.root} holds a one-organisation network from an older stack; remove that "
                               "folder (after `streamledger stack down`) to build the two-organisation one")
        if (self.crypto / ".complete").exists():
            # Never regenerate (new keys would orphan the ledgers signed with the old ones);
            # `extend` only adds identities the config names and the folder lacks.
            run_tool([self.binaries.tool("cryptogen"), "extend", f"--config={MODULE_DIR / 'crypto-config.yaml'}",
                      f"--input={self.crypto}"], "extending crypto material with cryptogen")
        else:
            partial = self.crypto.with_suffix(".partial")
            run_tool([self.binaries.tool("cryptogen"), "generate", f"--config={MODULE_DIR / 'crypto-config.yaml'}",
                      f"--output={partial}"], "generating crypto material with cryptogen")
            (partial / ".complete").write_text("")
            partial.rename(self.crypto)
        self.issue_identities()

    def issue_identities(self) -> None:
        """The named identities of identities.yaml, each issued once by its org's CA."""
        for org_name, identities in load_grants().items():
            org = self.org(org_name)
            for name in identities:
                issue_client(self.org_dir(org), org.domain, name)

    def channel_config(self) -> dict[str, Any]:
        """configtx.yaml read as YAML, the local paths and addresses set in its profile."""
        config = yaml.safe_load((MODULE_DIR / "configtx.yaml").read_text())
        profile = config["Profiles"]["StreamLedgerChannel"]
        orderer_org = self.crypto / "ordererOrganizations" / ORDERER_DOMAIN
        for org in profile["Orderer"]["Organizations"]:
            org["MSPDir"] = str(orderer_org / "msp")
            org["OrdererEndpoints"] = [o.address for o in self.orderers]
        for entry in profile["Application"]["Organizations"]:
            org = self.org(entry["ID"])
            entry["MSPDir"] = str(self.org_dir(org) / "msp")
            entry["AnchorPeers"] = [{"Host": "127.0.0.1", "Port": org.peer_port}]
        profile["Orderer"]["EtcdRaft"]["Consenters"] = [
            {"Host": "127.0.0.1", "Port": o.port, "ClientTLSCert": str(self.orderer_node(o) / "tls" / "server.crt"),
             "ServerTLSCert": str(self.orderer_node(o) / "tls" / "server.crt")} for o in self.orderers]
        return config

    def make_genesis_block(self) -> None:
        if self.genesis_block.exists():
            return
        self.config.mkdir(parents=True, exist_ok=True)
        (self.config / "configtx.yaml").write_text(yaml.safe_dump(self.channel_config(), sort_keys=False))
        partial = self.genesis_block.with_suffix(".partial")
        run_tool([self.binaries.tool("configtxgen"), "-profile", "StreamLedgerChannel", "-channelID", CHANNEL,
                  "-outputBlock", str(partial), "-configPath", str(self.config)],
                 "creating the channel genesis block with configtxgen")
        partial.rename(self.genesis_block)

    @property
    def peer_config(self) -> Path:
        return self.config / "peer"

    def write_peer_config(self) -> None:
        """sampleconfig/core.yaml read as YAML: our external builder in place of the sample's,
        and no Docker endpoint (an empty CORE_VM_ENDPOINT counts as unset, so it is set here).
        Every other key keeps the release's value, the proposal filters included."""
        sample = self.binaries.sampleconfig / "core.yaml"
        core = yaml.safe_load(sample.read_text())
        try:
            core["vm"]["endpoint"] = ""
            core["chaincode"]["externalBuilders"] = [
                {"name": "streamledger-ccaas", "path": str(MODULE_DIR / "builders" / "ccaas")}]
            filters = [f["name"] for f in core["peer"]["handlers"]["authFilters"]]
        except (KeyError, TypeError) as exc:
            raise InstallError(f"{sample}: no key {exc} where Fabric's core.yaml has it") from exc
        if "TimeWindowCheck" not in filters:  # rejects proposals stamped too far from the peer's clock
            raise InstallError(f"{sample}: peer.handlers.authFilters lacks TimeWindowCheck ({filters})")
        self.peer_config.mkdir(parents=True, exist_ok=True)
        (self.peer_config / "core.yaml").write_text(yaml.safe_dump(core, sort_keys=False))

    # -- CLI --
    def peer_env(self, user: str = "Admin", org: str = "Org1") -> dict[str, str]:
        """The environment for Fabric's `peer` CLI acting as a user on its own org's peer."""
        o = self.org(org)
        return {
            "FABRIC_CFG_PATH": str(self.peer_config),
            "CORE_PEER_LOCALMSPID": o.msp_id,
            "CORE_PEER_MSPCONFIGPATH": str(self.user_msp(user, o.name)),
            "CORE_PEER_ADDRESS": o.peer_address,
            "CORE_PEER_TLS_ENABLED": "true",
            "CORE_PEER_TLS_ROOTCERT_FILE": str(self.peer_tls_ca(o)),
            "FABRIC_LOGGING_SPEC": "warning",
        }

    def orderer_flags(self, orderer: Orderer | None = None) -> list[str]:
        return ["-o", (orderer or self.orderers[0]).address, "--tls", "--cafile", str(self.orderer_tls_ca)]

    def endorser_flags(self, orgs: tuple[Org, ...] | None = None) -> list[str]:
        flags = []
        for org in orgs or self.orgs:
            flags += ["--peerAddresses", org.peer_address, "--tlsRootCertFiles", str(self.peer_tls_ca(org))]
        return flags

    def peer_cli(self, *args: str, user: str = "Admin", org: str = "Org1", what: str = "",
                 timeout: float = 120.0) -> str:
        """Run `peer ARGS` as `user` of `org`; its output, or FabricError naming the step."""
        argv = [self.binaries.tool("peer"), *args]
        try:
            result = subprocess.run(argv, env={**os.environ, **self.peer_env(user, org)},
                                    capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise FabricError(f"{what or 'peer ' + args[0]} timed out after {timeout:.0f}s") from exc
        if result.returncode != 0:
            raise FabricError(f"{what or 'peer ' + ' '.join(args[:3])} failed (exit {result.returncode}): "
                              f"{(result.stderr + result.stdout).strip()}")
        return result.stdout + result.stderr

    def query(self, function: str, *args: str, user: str = "Admin", org: str = "Org1") -> str:
        """`peer chaincode query` on `org`'s peer: the contract's JSON answer as text."""
        call = json.dumps({"function": function, "Args": list(args)})
        return self.peer_cli("chaincode", "query", "-C", CHANNEL, "-n", CHAINCODE_NAME, "-c", call,
                             user=user, org=org, what=f"query {function}").strip()

    def invoke(self, function: str, *args: str, user: str = "Admin", org: str = "Org1",
               endorsers: tuple[Org, ...] | None = None) -> str:
        """`peer chaincode invoke` endorsed by both orgs' peers (or `endorsers`), waiting until
        the transaction is committed."""
        call = json.dumps({"function": function, "Args": list(args)})
        return self.peer_cli("chaincode", "invoke", "-C", CHANNEL, "-n", CHAINCODE_NAME, "-c", call,
                             *self.orderer_flags(), *self.endorser_flags(endorsers), "--waitForEvent",
                             user=user, org=org, what=f"invoke {function}")

    # -- the orderers: joining the channel --
    def join_orderer(self, orderer: Orderer) -> None:
        admin = self.orderer_admin_tls
        osnadmin = [self.binaries.tool("osnadmin"), "channel"]
        flags = ["-o", f"127.0.0.1:{orderer.admin_port}", "--ca-file", str(self.orderer_tls_ca),
                 "--client-cert", str(admin / "client.crt"), "--client-key", str(admin / "client.key")]
        listed = subprocess.run([*osnadmin, "list", "--channelID", CHANNEL, *flags], capture_output=True, text=True)
        if "Status: 200" in listed.stdout:
            return
        joined = subprocess.run([*osnadmin, "join", "--channelID", CHANNEL, "--config-block",
                                 str(self.genesis_block), *flags], capture_output=True, text=True)
        if "Status: 201" not in joined.stdout:
            raise FabricError(f"osnadmin channel join {CHANNEL} on {orderer.host} failed (exit {joined.returncode}): "
                              f"{(joined.stdout + joined.stderr).strip()}")

    def raft_leader(self) -> Orderer | None:
        """The orderer leading the channel's Raft cluster, read from the orderers' metrics."""
        leader = f'consensus_etcdraft_is_leader{{channel="{CHANNEL}"}} 1'
        for orderer in self.orderers:
            try:
                url = f"http://127.0.0.1:{orderer.operations_port}/metrics"
                with urllib.request.urlopen(url, timeout=2) as response:
                    if leader in response.read().decode():
                        return orderer
            except OSError:
                continue
        return None

    def wait_for_raft_leader(self, timeout: float = 60.0) -> Orderer:
        """Orderers answer /healthz before Raft has elected a leader, and until then they
        refuse transactions (SERVICE_UNAVAILABLE)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (leader := self.raft_leader()) is not None:
                return leader
            time.sleep(0.3)
        raise NoRaftLeader(f"the orderers elected no Raft leader for channel {CHANNEL} within {timeout:.0f}s")

    # -- the peers: joining the channel and the chaincode lifecycle --
    def join_peer(self, org: Org) -> None:
        if CHANNEL in self.peer_cli("channel", "list", org=org.name, what="peer channel list").split():
            return
        self.peer_cli("channel", "join", "-b", str(self.genesis_block), org=org.name,
                      what=f"peer channel join {CHANNEL} ({org.name})")

    def package_file(self, org: Org) -> Path:
        return self.root / "chaincode" / org.key / f"{CHAINCODE_LABEL}.tar.gz"

    def package_id_file(self, org: Org) -> Path:
        return self.root / "chaincode" / org.key / "package-id"

    def package_chaincode(self, org: Org) -> str:
        """Package the contract as a chaincode service at `org`'s own chaincode server; its
        package id (label:sha256). Each org's package names its own server, so the ids differ."""
        package = self.package_file(org)
        package.parent.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["sh", str(MODULE_DIR / "package-ccaas.sh"), str(package), "--label", CHAINCODE_LABEL,
             "--address", org.chaincode_address, "--root-cert", str(self.node(org, "chaincode") / "tls" / "ca.crt")],
            capture_output=True, text=True)
        if result.returncode != 0:
            raise FabricError(f"package-ccaas.sh failed: {result.stderr.strip()}")
        return result.stdout.strip().splitlines()[-1]

    def install_chaincode(self, org: Org, package_id: str) -> None:
        installed = json.loads(self.peer_cli("lifecycle", "chaincode", "queryinstalled", "--output", "json",
                                             org=org.name, what="peer lifecycle chaincode queryinstalled") or "{}")
        if any(p.get("package_id") == package_id for p in installed.get("installed_chaincodes", [])):
            return
        self.peer_cli("lifecycle", "chaincode", "install", str(self.package_file(org)), org=org.name,
                      what=f"peer lifecycle chaincode install ({org.name})")

    def committed_definition(self) -> dict[str, Any]:
        """The committed definition of our chaincode ({} when none is): sequence, policy, approvals."""
        try:
            out = self.peer_cli("lifecycle", "chaincode", "querycommitted", "-C", CHANNEL, "-n", CHAINCODE_NAME,
                                "--output", "json", what="peer lifecycle chaincode querycommitted")
        except FabricError as exc:
            if "not defined" in str(exc) or "not found" in str(exc):
                return {}
            raise
        return json.loads(out)

    def _definition(self) -> list[str]:
        return ["-C", CHANNEL, "-n", CHAINCODE_NAME, "-v", CHAINCODE_VERSION,
                "--sequence", str(CHAINCODE_SEQUENCE), "--signature-policy", ENDORSEMENT_POLICY]

    def approve(self, org: Org, package_id: str) -> None:
        try:
            self.peer_cli("lifecycle", "chaincode", "queryapproved", "-C", CHANNEL, "-n", CHAINCODE_NAME,
                          "--sequence", str(CHAINCODE_SEQUENCE), org=org.name, what="queryapproved")
        except FabricError:
            self.peer_cli("lifecycle", "chaincode", "approveformyorg", *self._definition(), "--package-id",
                          package_id, *self.orderer_flags(), org=org.name,
                          what=f"peer lifecycle chaincode approveformyorg ({org.name})")

    def deploy_chaincode(self) -> None:
        """Each org joins its peer, installs its own package and approves; then the definition
        (both orgs must endorse) is committed once."""
        if self.committed_definition().get("sequence", 0) >= CHAINCODE_SEQUENCE:
            for org in self.orgs:  # the package ids the chaincode servers run under
                if not self.package_id_file(org).exists():
                    self.package_id_file(org).write_text(self.package_chaincode(org))
            return
        for org in self.orgs:
            self.join_peer(org)
            package_id = self.package_chaincode(org)
            self.install_chaincode(org, package_id)
            self.approve(org, package_id)
            self.package_id_file(org).write_text(package_id)
        deadline = time.monotonic() + 30
        while True:  # an approval is a transaction: wait until the other peer has it too
            try:
                self.peer_cli("lifecycle", "chaincode", "commit", *self._definition(), *self.orderer_flags(),
                              *self.endorser_flags(), what="peer lifecycle chaincode commit")
                return
            except FabricError as exc:
                if "approved" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
            time.sleep(0.5)

    def wait_for_gossip(self, timeout: float = 120.0) -> None:
        """Until each peer's discovery service sees a live peer of every org running the contract,
        its gateway cannot collect the other org's endorsement ("no combination of peers can be
        derived"): gossip takes some seconds after a peer starts."""
        deadline = time.monotonic() + timeout
        for org in self.orgs:
            identity, signer = load_msp(self.user_msp("Admin", org.name), org.msp_id)
            request = discovery_request(identity, signer, CHANNEL, CHAINCODE_NAME)
            credentials = grpc.ssl_channel_credentials(self.peer_tls_ca(org).read_bytes())
            with grpc.secure_channel(org.peer_address, credentials) as channel:
                stub = protocol_pb2_grpc.DiscoveryStub(channel)
                while True:
                    try:
                        response = stub.Discover(request, timeout=5)
                        answered = len(response.results) == 2 and not any(r.HasField("error")
                                                                           for r in response.results)
                        missing = orgs_without_peers(response) if answered else ("(discovery refused)",)
                        if not missing:
                            break
                    except grpc.RpcError as exc:
                        missing = (f"(discovery unanswered: {exc.code().name})",)
                    if time.monotonic() > deadline:
                        raise FabricError(f"{org.name}'s peer does not see a peer of {', '.join(missing)} running "
                                          f"the contract after {timeout:.0f}s (gossip)")
                    time.sleep(0.5)

    # -- roles on the ledger --
    def grant_roles(self) -> None:
        """Each org's admin grants the roles identities.yaml names, once (a marker keyed by the
        table's content remembers it)."""
        table = load_grants()
        marker = self.root / f"grants-{hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()[:12]}"
        if marker.exists():
            return
        self.issue_identities()
        for org_name, identities in table.items():
            org = self.org(org_name)
            accounts = {name: self.account_of(name, org.name) for name in identities}
            for name, grant in identities.items():
                held = json.loads(self.query("GetRoles", accounts[name], org=org.name))
                if grant["role"] in (held.get("roles") or []):
                    continue
                acts_for = accounts[grant["acts_for"]] if grant.get("acts_for") else ""
                self.invoke("GrantRole", accounts[name], grant["role"], acts_for, org=org.name)
        marker.write_text(json.dumps(table))

    def account_of(self, user: str, org: str = "Org1") -> str:
        """The ledger account of a local identity: `<MSP id>::<subject DN>` as the contract names it."""
        return str(json.loads(self.query("WhoAmI", user=user, org=org))["Account"])

    # -- the channel configuration: revoking a certificate --
    def revoke(self, user: str | Path, org: str = "Org1") -> bool:
        """Revoke an identity of `org` (a local identity's name, or its MSP folder): `org`'s CA
        issues a CRL listing its certificate and `org`'s admin puts it in `org`'s MSP in the
        channel configuration. Returns when both peers enforce it: each refuses the certificate
        from then on. True if this call revoked it; False if it already was (nothing submitted)."""
        o = self.org(org)
        cert = signing_certificate(self.user_msp(user, o.name))
        original = self.fetch_config(o)
        updated = copy.deepcopy(original)
        changed = revoke_in(updated, o.msp_id, cert, self.org_dir(o))
        if changed:
            self.update_config(o, original, updated)
        self.wait_for_config(lambda config: cert.serial_number in revoked_serials(config, o.msp_id))
        return changed

    def fetch_config(self, org: Org, from_peer: bool = False) -> dict[str, Any]:
        """The channel configuration (configtxlator's JSON of a common.Config) as `org`'s admin
        reads it from the orderers' Raft leader, or from `org`'s peer (what that peer enforces)."""
        source = [] if from_peer else self.orderer_flags(self.wait_for_raft_leader())
        with tempfile.TemporaryDirectory(prefix="fabric-config-") as work:
            block = Path(work) / "config.block"
            self.peer_cli("channel", "fetch", "config", str(block), "-c", CHANNEL, *source, org=org.name,
                          what=f"peer channel fetch config ({org.name}{' peer' if from_peer else ''})")
            decoded = json.loads(self.configtxlator("proto_decode", "--type", "common.Block", stdin=block.read_bytes()))
        return decoded["data"]["data"][0]["payload"]["data"]["config"]

    def update_config(self, org: Org, original: dict[str, Any], updated: dict[str, Any]) -> None:
        """Submit the change from `original` to `updated` (both as fetch_config reads them),
        signed by `org`'s admin alone: enough for a change to `org`'s own group, whose
        mod_policy is its Admins."""
        with tempfile.TemporaryDirectory(prefix="fabric-config-") as tmp:
            work = Path(tmp)
            for name, config in (("original", original), ("updated", updated)):
                (work / name).write_bytes(self.configtxlator("proto_encode", "--type", "common.Config",
                                                             stdin=json.dumps(config).encode()))
            update = self.configtxlator("compute_update", "--channel_id", CHANNEL,
                                        "--original", str(work / "original"), "--updated", str(work / "updated"))
            config_update = json.loads(self.configtxlator("proto_decode", "--type", "common.ConfigUpdate",
                                                          stdin=update))
            envelope = {"payload": {"header": {"channel_header": {"channel_id": CHANNEL, "type": 2}},  # CONFIG_UPDATE
                                    "data": {"config_update": config_update}}}
            (work / "update").write_bytes(self.configtxlator("proto_encode", "--type", "common.Envelope",
                                                             stdin=json.dumps(envelope).encode()))
            self.peer_cli("channel", "update", "-f", str(work / "update"), "-c", CHANNEL,
                          *self.orderer_flags(self.wait_for_raft_leader()), org=org.name,
                          what=f"peer channel update ({org.name})")

    def wait_for_config(self, holds: Callable[[dict[str, Any]], bool], timeout: float = 60.0) -> None:
        """Wait until each org's peer enforces a channel configuration that `holds` accepts
        (a peer applies a configuration block as it commits it)."""
        deadline = time.monotonic() + timeout
        for org in self.orgs:
            while not holds(self.fetch_config(org, from_peer=True)):
                if time.monotonic() > deadline:
                    raise FabricError(f"{org.name}'s peer did not apply the new channel configuration within "
                                      f"{timeout:.0f}s")
                time.sleep(0.5)

    def configtxlator(self, *args: str, stdin: bytes = b"") -> bytes:
        """Run Fabric's `configtxlator ARGS` on `stdin`: its output, or FabricError."""
        result = subprocess.run([self.binaries.tool("configtxlator"), *args], input=stdin, capture_output=True,
                                check=False)
        if result.returncode != 0:
            raise FabricError(f"configtxlator {args[0]} failed (exit {result.returncode}): "
                              f"{result.stderr.decode(errors='replace').strip()}")
        return result.stdout
