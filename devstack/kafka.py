"""Apache Kafka 4.x as one KRaft node (broker+controller), from Maven Central jars."""

from __future__ import annotations

import asyncio
import base64
import logging
import shutil
import string
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiokafka import AIOKafkaClient

from devstack.part import InstallError, Part, content_key, run_tool
from devstack.settings import DEPLOY_DIR

POM = DEPLOY_DIR / "kafka" / "pom.xml"


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

    def prepare(self) -> None:
        template = string.Template((DEPLOY_DIR / "kafka" / "server.properties").read_text())
        self.config.write_text(template.substitute(
            port=self.settings.kafka_port,
            controller_port=self.settings.kafka_controller_port,
            data_dir=self.data,
        ))
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
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # refusals are expected while starting
        try:
            # A thread of its own, so the check also works when called from async code.
            with ThreadPoolExecutor(max_workers=1) as pool:
                return pool.submit(asyncio.run, broker_count(f"127.0.0.1:{self.port}")).result() > 0
        except Exception:
            return False


async def broker_count(bootstrap: str) -> int:
    """Ask Kafka for its cluster metadata; the number of brokers it lists."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await client.bootstrap()
        metadata = await client.fetch_all_metadata()
        return len(metadata.brokers())
    finally:
        await client.close()


def _mb(size: str) -> int:
    units = {"k": 1 / 1024, "m": 1, "g": 1024}
    return int(float(size[:-1]) * units[size[-1].lower()]) if size[-1].isalpha() else int(size) // 2**20
