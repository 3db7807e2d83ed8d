"""Apache Kafka 4.x as KRaft nodes (each broker+controller), from Maven Central jars: one node,
or with `StackSettings.kafka_brokers` a cluster whose nodes are all voters of the controller
quorum (`kafka_nodes`), each on its own ports and data dir.

Secured by default (`StackSettings.kafka_secure`): clients connect with SASL_SSL (TLS with a
CA the stack makes, SCRAM-SHA-512 as their principal), KRaft's StandardAuthorizer allows only
what `streamledger.kafka.acls` derives from the topic table, and the controller and internal
(broker-to-broker) listeners take only the broker certificate (mutual TLS; every node has the
same one, valid for 127.0.0.1). Once the brokers answer, `settle` creates the SCRAM users and
ACLs through the internal listeners (devstack/kafka_auth.py keeps the secrets); they live in the
cluster's metadata, so once for the whole cluster.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import string
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiokafka import AIOKafkaClient

from devstack.kafka_auth import BROKER_NAME, PRINCIPALS, KafkaAuth
from devstack.part import InstallError, Part, content_key, run_tool
from devstack.settings import DEPLOY_DIR, StackSettings
from streamledger.kafka.acls import acl_rules
from streamledger.kafka.clients import ADMIN, KafkaSecurity
from streamledger.kafka.topics import replication

POM = DEPLOY_DIR / "kafka" / "pom.xml"
PROVISION_JAVA = DEPLOY_DIR / "kafka" / "Provision.java"


_PREPARING = threading.Lock()
"""A cluster's nodes are prepared at once (`Stack.up`): their secrets and cluster id are made once."""

TOOL_JVM = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
"""For the one-off tools (formatting, Provision.java): a quick start matters, not peak speed (about
half the time of the default JIT on two cores)."""

NODE_PORT_STEP = 100
"""Node N of a cluster listens on each Kafka port + NODE_PORT_STEP * (N - 1)."""


def kafka_nodes(settings: StackSettings) -> list[KafkaPart]:
    """The stack's Kafka: `kafka` alone, or `kafka-1` .. `kafka-N`."""
    return [KafkaPart(settings, node_id) for node_id in range(1, settings.kafka_brokers + 1)]


def kafka_nodes_started(settings: StackSettings) -> list[KafkaPart]:
    """The Kafka nodes that left a pid file, as started (alone, or a cluster of however many
    nodes): what `down` and `status` must see even when asked with another broker count."""
    run = settings.run_dir
    numbered = [int(f.stem.removeprefix("kafka-")) for f in run.glob("kafka-*.pid")
                if f.stem.removeprefix("kafka-").isdigit()]
    if numbered:
        return kafka_nodes(settings.model_copy(update={"kafka_brokers": max(numbered)}))
    if (run / "kafka.pid").exists():
        return kafka_nodes(settings.model_copy(update={"kafka_brokers": 1}))
    return []


def stop_nodes(nodes: list[KafkaPart], timeout: float = 30.0, grace: float = 5.0) -> list[str]:
    """Stop a cluster's nodes together (SIGTERM to each at once); the names of those that ran.

    Each broker's controlled shutdown needs the controller quorum: a node whose quorum has
    already gone (a majority of the voters exited) would wait minutes, so after `grace` seconds
    it is killed, its data kept (nothing more can be acknowledged without a quorum).
    """
    ran = [n for n in nodes if n.process.pid() is not None]
    for pid in [n.process.pid() for n in ran]:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):  # exited just now
                os.killpg(pid, signal.SIGTERM)  # its group, as LocalProcess.stop signals it
    majority = len(nodes) // 2 + 1
    deadline = time.monotonic() + timeout
    while (alive := [n for n in ran if n.process.pid() is not None]) and time.monotonic() < deadline:
        if len(alive) < majority:
            deadline = min(deadline, time.monotonic() + grace)
        time.sleep(0.2)
    for node in ran:
        node.process.stop(timeout=0)  # SIGKILL if still running; removes the pid file
    return [n.name for n in ran]


def record_bootstrap(settings: StackSettings) -> Path:
    """Write every node's client address (`StackSettings.kafka_bootstrap`) to `bootstrap` in the
    stack's Kafka credentials folder, where its clients' settings find their default bootstrap
    (`streamledger.settings.local_kafka_bootstrap`): a service started with `serve` on a
    three-node stack names all three, so one node down at its start does not stop it."""
    path = settings.kafka_auth_dir / "bootstrap"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists() or path.read_text().strip() != settings.kafka_bootstrap:
        partial = path.with_name(f"bootstrap.{os.getpid()}")
        partial.write_text(settings.kafka_bootstrap + "\n")
        partial.replace(path)  # whole or not at all, for a client reading it meanwhile
    return path


class KafkaPart(Part):
    """One KRaft node: `kafka` when it is the only one, else `kafka-<node id>` of a cluster."""

    def __init__(self, settings: StackSettings, node_id: int = 1) -> None:
        if not 1 <= node_id <= settings.kafka_brokers:
            raise ValueError(f"node_id must be 1..{settings.kafka_brokers}, got {node_id}")
        self.node_id = node_id
        self.clustered = settings.kafka_brokers > 1
        self.name = f"kafka-{node_id}" if self.clustered else "kafka"
        self.settings = settings
        self.marker = f"kafka.Kafka {self.config}"  # the node's own config: never another node's pid
        super().__init__(settings)

    def _port(self, base: int) -> int:
        return base + NODE_PORT_STEP * (self.node_id - 1)

    @property
    def port(self) -> int:
        return self._port(self.settings.kafka_port)

    @property
    def controller_port(self) -> int:
        return self._port(self.settings.kafka_controller_port)

    @property
    def internal_port(self) -> int:
        return self._port(self.settings.kafka_internal_port)

    @property
    def plaintext_port(self) -> int:
        return self._port(self.settings.kafka_plaintext_port) if self.settings.kafka_plaintext_port else 0

    def siblings(self) -> list[KafkaPart]:
        """Every node of this node's cluster (itself included), in node id order."""
        return [self if n == self.node_id else KafkaPart(self.settings, n)
                for n in range(1, self.settings.kafka_brokers + 1)]

    @property
    def version(self) -> str:
        text = POM.read_text()
        return text.split("<kafka.version>", 1)[1].split("</kafka.version>", 1)[0]

    @property
    def libs(self) -> Path:
        return self.settings.home / "kafka" / content_key(POM) / "libs"

    @property
    def cluster_data(self) -> Path:
        """One node: its log dir. A cluster: the folder of its nodes' log dirs and its id; one per
        size, since the controller quorum's voters are fixed when the storage is formatted."""
        if not self.clustered:
            return self.settings.data_dir / "kafka"
        return self.settings.data_dir / f"kafka-{self.settings.kafka_brokers}-nodes"

    @property
    def data(self) -> Path:
        return self.cluster_data / self.name if self.clustered else self.cluster_data

    @property
    def config(self) -> Path:
        return self.settings.home / "kafka" / (f"{self.name}.properties" if self.clustered else "server.properties")

    def is_installed(self) -> bool:
        return (self.libs / ".complete").exists()

    def install(self) -> None:
        if self.is_installed():
            return
        if shutil.which("mvn") is None:
            raise InstallError("Maven (`mvn`) is needed to fetch the Kafka jars; install it (Debian: maven)")
        partial = self.libs.with_name("libs.partial")
        shutil.rmtree(partial, ignore_errors=True)
        run_tool(
            ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
             "-DincludeScope=runtime", f"-DoutputDirectory={partial}"],
            "fetching the Kafka jars with Maven",
        )
        shutil.rmtree(self.libs, ignore_errors=True)
        partial.rename(self.libs)
        (self.libs / ".complete").write_text(self.version)

    @property
    def auth(self) -> KafkaAuth:
        return KafkaAuth(self.settings.kafka_auth_dir)

    def admin_security(self) -> KafkaSecurity:
        """How the stack itself connects: as the admin, or PLAINTEXT when the stack is not secured."""
        if not self.settings.kafka_secure:
            return KafkaSecurity(protocol="PLAINTEXT")
        return KafkaSecurity(username=ADMIN, password=self.auth.password(ADMIN), cafile=self.auth.ca_cert)

    def quorum_voters(self) -> str:
        """`controller.quorum.voters`: every node, by id, at its controller port."""
        return ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.siblings())

    def replication_config(self) -> str:
        """server.properties' replication lines: internal and auto-created topics get as many
        replicas (and min.insync.replicas) as the topic table gives its own on this cluster."""
        factor, min_insync = replication(self.settings.kafka_brokers)
        return "\n".join([
            f"default.replication.factor={factor}",
            f"min.insync.replicas={min_insync}",
            f"offsets.topic.replication.factor={factor}",
            f"transaction.state.log.replication.factor={factor}",
            f"transaction.state.log.min.isr={min_insync}",
            f"share.coordinator.state.topic.replication.factor={factor}",
            f"share.coordinator.state.topic.min.isr={min_insync}",
        ])

    def listener_config(self) -> str:
        """server.properties' listener, TLS, SASL and authorizer lines."""
        s = self.settings
        plain = [f"PLAINTEXT://127.0.0.1:{self.plaintext_port}"] if self.plaintext_port else []
        if not s.kafka_secure:
            return "\n".join([
                f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            ])
        super_users = [f"User:{ADMIN}", f"User:CN={BROKER_NAME}"] + (["User:ANONYMOUS"] if plain else [])
        return "\n".join([
            "listeners=" + ",".join([f"SASL_SSL://127.0.0.1:{self.port}", f"INTERNAL://127.0.0.1:{self.internal_port}",
                                     f"CONTROLLER://127.0.0.1:{self.controller_port}", *plain]),
            "advertised.listeners=" + ",".join([f"SASL_SSL://127.0.0.1:{self.port}",
                                                f"INTERNAL://127.0.0.1:{self.internal_port}", *plain]),
            "inter.broker.listener.name=INTERNAL",
            "listener.security.protocol.map=CONTROLLER:SSL,INTERNAL:SSL,SASL_SSL:SASL_SSL,PLAINTEXT:PLAINTEXT",
            "sasl.enabled.mechanisms=SCRAM-SHA-512",
            # The broker only verifies SCRAM (the users live in the cluster metadata): no password here.
            ("listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
             "org.apache.kafka.common.security.scram.ScramLoginModule required;"),
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={self.auth.broker_pem}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={self.auth.ca_cert}",
            # Only a certificate of the stack's CA (the brokers') gets in on these two.
            "listener.name.controller.ssl.client.auth=required",
            "listener.name.internal.ssl.client.auth=required",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found=false",
            # The brokers (their certificate) and the admin; with the bench's PLAINTEXT listener on,
            # its anonymous clients too (see StackSettings.kafka_plaintext_port).
            "super.users=" + ";".join(super_users),
        ])

    def server_properties(self) -> str:
        """This node's server.properties: deploy/kafka/server.properties filled in."""
        template = string.Template((DEPLOY_DIR / "kafka" / "server.properties").read_text())
        return template.substitute(
            node_id=self.node_id,
            quorum_voters=self.quorum_voters(),
            data_dir=self.data,
            listener_config=self.listener_config(),
            replication_config=self.replication_config(),
        )

    def prepare(self) -> None:
        with _PREPARING:
            if self.settings.kafka_secure:
                self.auth.ensure()
            cluster_id = self._cluster_id()
        self.config.parent.mkdir(parents=True, exist_ok=True)
        self.config.write_text(self.server_properties())
        if (self.data / "meta.properties").exists():
            return  # formatted once; reformatting would throw the data away
        self.data.mkdir(parents=True, exist_ok=True)
        # `--cluster-id=`: a random id begins with "-" one time in 64, which the tool would take for an option.
        result = subprocess.run(
            [*self._java(*TOOL_JVM), "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c",
             str(self.config)],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise InstallError(f"formatting Kafka storage in {self.data} failed:\n{result.stdout}{result.stderr}")

    def _cluster_id(self) -> str:
        """A new id for one node; a cluster's, made by its first node to be formatted and kept
        beside the nodes' log dirs, since every node must be formatted with the same."""
        new = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not self.clustered:
            return new
        kept = self.cluster_data / "cluster.id"
        if not kept.exists():
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_text(new + "\n")
        return kept.read_text().strip()

    def command(self) -> tuple[list[str], dict[str, str]]:
        heap = self.settings.kafka_node_heap
        argv = [*self._java(f"-Xms{min(256, _mb(heap))}m", f"-Xmx{heap}", "-XX:+UseG1GC",
                            "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true"),
                "kafka.Kafka", str(self.config)]
        return argv, {}

    def _java(self, *jvm_opts: str) -> list[str]:
        log_config = DEPLOY_DIR / "kafka" / "log4j2.properties"
        return ["java", *jvm_opts, f"-Dlog4j2.configurationFile={log_config}",
                "-cp", f"{self.libs}/*"]

    def healthy(self) -> bool:
        """The broker answers the admin's metadata request; before its users exist (a first
        start), that it accepts connections on its port (`settle` then makes them)."""
        if self.settings.kafka_secure and not self._provisioned():
            return self.port_in_use()
        return self._answers()

    def _answers(self) -> bool:
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # refusals are expected while starting
        try:
            # A thread of its own, so the check also works when called from async code.
            with ThreadPoolExecutor(max_workers=1) as pool:
                bootstrap = f"127.0.0.1:{self.port}"  # this node itself, not the cluster
                return pool.submit(asyncio.run, broker_count(bootstrap, self.admin_security())).result() > 0
        except Exception:
            return False

    def settle(self) -> None:
        """Record the cluster's bootstrap for its clients (`record_bootstrap`). Secured: create every
        SCRAM user and exactly the ACL table's rules (when they changed or the storage was formatted
        anew; once per cluster), then wait until the admin is answered."""
        running_secured = "SASL_SSL" in (self.config.read_text() if self.config.exists() else "")
        if running_secured != self.settings.kafka_secure:
            raise InstallError(
                f"Kafka on 127.0.0.1:{self.port} runs {'with' if running_secured else 'without'} authentication, "
                f"but STREAMLEDGER_STACK_KAFKA_SECURE is {self.settings.kafka_secure}: restart it to switch "
                "(`streamledger stack down`, then `streamledger stack up`; the data stays)")
        record_bootstrap(self.settings)
        if not self.settings.kafka_secure:
            return
        if not self._provisioned():
            self._provision()
        deadline = time.monotonic() + self.settings.start_timeout
        while not self._answers():
            if time.monotonic() > deadline:
                raise InstallError(f"Kafka does not answer the admin on 127.0.0.1:{self.port} after its users "
                                   f"were made; see {self.process.logfile}")
            time.sleep(0.5)

    def provisioning_input(self) -> str:
        """Provision.java's stdin: the connection to the brokers' internal listeners (as a broker,
        by its certificate), then every user with its password and every ACL rule."""
        auth = self.auth
        lines = [
            "bootstrap.servers=" + ",".join(f"127.0.0.1:{n.internal_port}" for n in self.siblings()),
            "security.protocol=SSL",
            "ssl.keystore.type=PEM", f"ssl.keystore.location={auth.broker_pem}",
            "ssl.truststore.type=PEM", f"ssl.truststore.location={auth.ca_cert}",
            "",
            *(f"user {p} {auth.password(p)}" for p in PRINCIPALS),
            *(f"acl {r.principal} {r.resource} {r.name} {r.pattern} {r.operation}" for r in acl_rules()),
        ]
        return "\n".join(lines) + "\n"

    @property
    def _provisioned_marker(self) -> Path:
        name = f"provisioned-{self.settings.kafka_brokers}-nodes" if self.clustered else "provisioned"
        return self.settings.kafka_auth_dir / name

    def _provision_key(self) -> str:
        meta = self.siblings()[0].data / "meta.properties"  # the first node's stands for its cluster
        digest = hashlib.sha256(self.provisioning_input().encode() + PROVISION_JAVA.read_bytes())
        digest.update(meta.read_bytes() if meta.exists() else b"")
        return digest.hexdigest()

    def _provisioned(self) -> bool:
        try:
            return self._provisioned_marker.read_text().strip() == self._provision_key()
        except FileNotFoundError:  # no marker, or no secrets yet
            return False

    def _provision(self) -> None:
        java = [*self._java(*TOOL_JVM), str(PROVISION_JAVA)]
        deadline = time.monotonic() + self.settings.start_timeout
        while True:  # the controller may still be electing itself a moment after the port opens
            result = subprocess.run(java, input=self.provisioning_input(), capture_output=True, text=True, check=False,
                                    timeout=self.settings.start_timeout)
            if result.returncode == 0:
                break
            if time.monotonic() > deadline:
                tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
                raise InstallError(f"creating Kafka's users and ACLs failed:\n{tail}")
            time.sleep(1.0)
        self._provisioned_marker.write_text(self._provision_key() + "\n")


async def broker_count(bootstrap: str, security: KafkaSecurity | None = None) -> int:
    """Ask Kafka for its cluster metadata; the number of brokers it lists."""
    options = (security or KafkaSecurity(protocol="PLAINTEXT")).options()
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=3000, **options)
    try:
        await client.bootstrap()
        metadata = await client.fetch_all_metadata()
        return len(metadata.brokers())
    finally:
        await client.close()


def _mb(size: str) -> int:
    units = {"k": 1 / 1024, "m": 1, "g": 1024}
    return int(float(size[:-1]) * units[size[-1].lower()]) if size[-1].isalpha() else int(size) // 2**20
