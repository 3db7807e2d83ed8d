"""Apache Kafka 4.x as one KRaft node (broker+controller), from Maven Central jars.

Secured by default (`StackSettings.kafka_secure`): clients connect with SASL_SSL (TLS with a
CA the stack makes, SCRAM-SHA-512 as their principal), KRaft's StandardAuthorizer allows only
what `streamledger.kafka.acls` derives from the topic table, and the controller and internal
(broker-to-broker) listeners take only the broker's own certificate (mutual TLS). Once the
broker answers, `settle` creates the SCRAM users and ACLs through that internal listener
(devstack/kafka_auth.py keeps the secrets).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import shutil
import string
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiokafka import AIOKafkaClient

from devstack.kafka_auth import BROKER_NAME, PRINCIPALS, KafkaAuth
from devstack.part import InstallError, Part, content_key, run_tool
from devstack.settings import DEPLOY_DIR
from streamledger.kafka.acls import acl_rules
from streamledger.kafka.clients import ADMIN, KafkaSecurity

POM = DEPLOY_DIR / "kafka" / "pom.xml"
PROVISION_JAVA = DEPLOY_DIR / "kafka" / "Provision.java"


class KafkaPart(Part):
    name = "kafka"
    marker = "kafka.Kafka"

    @property
    def port(self) -> int:
        return self.settings.kafka_port

    @property
    def version(self) -> str:
        text = POM.read_text()
        return text.split("<kafka.version>", 1)[1].split("</kafka.version>", 1)[0]

    @property
    def libs(self) -> Path:
        return self.settings.home / "kafka" / content_key(POM) / "libs"

    @property
    def data(self) -> Path:
        return self.settings.data_dir / "kafka"

    @property
    def config(self) -> Path:
        return self.settings.home / "kafka" / "server.properties"

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

    def listener_config(self) -> str:
        """server.properties' listener, TLS, SASL and authorizer lines."""
        s = self.settings
        plain = [f"PLAINTEXT://127.0.0.1:{s.kafka_plaintext_port}"] if s.kafka_plaintext_port else []
        if not s.kafka_secure:
            return "\n".join([
                f"listeners=PLAINTEXT://127.0.0.1:{s.kafka_port},CONTROLLER://127.0.0.1:{s.kafka_controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{s.kafka_port}",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            ])
        super_users = [f"User:{ADMIN}", f"User:CN={BROKER_NAME}"] + (["User:ANONYMOUS"] if plain else [])
        return "\n".join([
            "listeners=" + ",".join([f"SASL_SSL://127.0.0.1:{s.kafka_port}", f"INTERNAL://127.0.0.1:{s.kafka_internal_port}",
                                     f"CONTROLLER://127.0.0.1:{s.kafka_controller_port}", *plain]),
            "advertised.listeners=" + ",".join([f"SASL_SSL://127.0.0.1:{s.kafka_port}",
                                                f"INTERNAL://127.0.0.1:{s.kafka_internal_port}", *plain]),
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
            # Only a certificate of the stack's CA (the broker's) gets in on these two.
            "listener.name.controller.ssl.client.auth=required",
            "listener.name.internal.ssl.client.auth=required",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found=false",
            # The broker (its certificate) and the admin; with the bench's PLAINTEXT listener on,
            # its anonymous clients too (see StackSettings.kafka_plaintext_port).
            "super.users=" + ";".join(super_users),
        ])

    def prepare(self) -> None:
        if self.settings.kafka_secure:
            self.auth.ensure()
        template = string.Template((DEPLOY_DIR / "kafka" / "server.properties").read_text())
        text = template.substitute(
            port=self.settings.kafka_port,
            controller_port=self.settings.kafka_controller_port,
            data_dir=self.data,
            listener_config=self.listener_config(),
        )
        self.config.parent.mkdir(parents=True, exist_ok=True)
        self.config.write_text(text)
        if (self.data / "meta.properties").exists():
            return  # formatted once; reformatting would throw the data away
        self.data.mkdir(parents=True, exist_ok=True)
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        result = subprocess.run(
            [*self._java(), "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.config)],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise InstallError(f"formatting Kafka storage in {self.data} failed:\n{result.stdout}{result.stderr}")

    def command(self) -> tuple[list[str], dict[str, str]]:
        heap = self.settings.kafka_heap
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
                bootstrap = f"127.0.0.1:{self.port}"
                return pool.submit(asyncio.run, broker_count(bootstrap, self.admin_security())).result() > 0
        except Exception:
            return False

    def settle(self) -> None:
        """Secured: create every SCRAM user and exactly the ACL table's rules (when they changed
        or the storage was formatted anew), then wait until the admin is answered."""
        running_secured = "SASL_SSL" in (self.config.read_text() if self.config.exists() else "")
        if running_secured != self.settings.kafka_secure:
            raise InstallError(
                f"Kafka on 127.0.0.1:{self.port} runs {'with' if running_secured else 'without'} authentication, "
                f"but STREAMLEDGER_STACK_KAFKA_SECURE is {self.settings.kafka_secure}: restart it to switch "
                "(`streamledger stack down`, then `streamledger stack up`; the data stays)")
        if not self.settings.kafka_secure:
            return
        if not self._provisioned():
            self._provision()
        deadline = time.monotonic() + self.settings.start_timeout
        while not self._answers():
            if time.monotonic() > deadline:
                raise InstallError(f"Kafka does not answer the admin on 127.0.0.1:{self.port} after its users "
                                   f"were made; see {self.settings.log_dir / 'kafka.log'}")
            time.sleep(0.5)

    def provisioning_input(self) -> str:
        """Provision.java's stdin: the connection to the broker's internal listener (as the broker,
        by its certificate), then every user with its password and every ACL rule."""
        auth = self.auth
        lines = [
            f"bootstrap.servers=127.0.0.1:{self.settings.kafka_internal_port}",
            "security.protocol=SSL",
            "ssl.keystore.type=PEM", f"ssl.keystore.location={auth.broker_pem}",
            "ssl.truststore.type=PEM", f"ssl.truststore.location={auth.ca_cert}",
            "",
            *(f"user {p} {auth.password(p)}" for p in PRINCIPALS),
            *(f"acl {r.principal} {r.resource} {r.name} {r.pattern} {r.operation}" for r in acl_rules()),
        ]
        return "\n".join(lines) + "\n"

    def _provision_key(self) -> str:
        meta = self.data / "meta.properties"
        digest = hashlib.sha256(self.provisioning_input().encode() + PROVISION_JAVA.read_bytes())
        digest.update(meta.read_bytes() if meta.exists() else b"")
        return digest.hexdigest()

    def _provisioned(self) -> bool:
        marker = self.settings.kafka_auth_dir / "provisioned"
        try:
            return marker.read_text().strip() == self._provision_key()
        except FileNotFoundError:  # no marker, or no secrets yet
            return False

    def _provision(self) -> None:
        java = ["java", f"-Dlog4j2.configurationFile={DEPLOY_DIR / 'kafka' / 'log4j2.properties'}",
                "-cp", f"{self.libs}/*", str(PROVISION_JAVA)]
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
        (self.settings.kafka_auth_dir / "provisioned").write_text(self._provision_key() + "\n")


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
