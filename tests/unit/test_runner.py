"""The multi-service runner (`devstack.runner.ServiceGroup`) with a trivial child instead of
`streamledger serve NAME`: replica keys and logs, the environment each child gets (shared ports
for replicas, its Kafka principal, another stack's Kafka credentials), kill and restart; the
ports replicas share (`streamledger.listen`) and the bootstrap the local stack records."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import grpc
import pytest

from devstack.kafka import record_bootstrap
from devstack.runner import SINGLETONS, ServiceGroup, replica_keys
from devstack.settings import StackSettings
from streamledger.http_server import EmbeddedHttpServer
from streamledger.listen import grpc_listen_options, listening_socket
from streamledger.settings import (
    LOCAL_KAFKA_BOOTSTRAP,
    CommonSettings,
    local_kafka_bootstrap,
)

CHILD = ("import json, os, sys, time\n"
         "print(json.dumps({'name': sys.argv[1], 'pid': os.getpid(), 'env': {k: v for k, v in os.environ.items()"
         " if k.startswith('STREAMLEDGER_')}}), flush=True)\n"
         "time.sleep(60)\n")


def trivial(name: str) -> list[str]:
    """A child that prints its name, pid and STREAMLEDGER_ environment as one JSON line, then sleeps."""
    return [sys.executable, "-c", CHILD, name]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STREAMLEDGER_STACK_HOME", str(tmp_path))
    for name in [n for n in os.environ if n.startswith("STREAMLEDGER_KAFKA_")]:
        monkeypatch.delenv(name)
    return tmp_path


@pytest.fixture
def group(home: Path) -> Iterator[ServiceGroup]:
    group = ServiceGroup(env={"STREAMLEDGER_MONGO_DB": "runner_test"}, log_dir=home / "logs", command=trivial)
    yield group
    group.stop(grace=5)


def said(group: ServiceGroup, key: str, count: int = 1, timeout: float = 15.0) -> list[dict]:
    """The JSON lines `key`'s log holds once it holds `count` of them."""
    deadline = time.monotonic() + timeout
    while len(lines := group.log_file(key).read_text().splitlines()) < count:
        assert time.monotonic() < deadline, f"{key} wrote {lines}"
        assert group.processes[key].poll() is None, f"{key} exited: {lines}"
        time.sleep(0.02)
    return [json.loads(line) for line in lines]


def test_replica_keys_are_the_name_alone_or_numbered_from_one() -> None:
    assert replica_keys("storage", 1) == ["storage"]
    assert replica_keys("storage", 3) == ["storage-1", "storage-2", "storage-3"]
    with pytest.raises(ValueError, match="at least 1"):
        replica_keys("storage", 0)
    assert SINGLETONS == {"dashboard"}


def test_replicas_share_ports_a_singleton_and_a_lone_service_do_not(group: ServiceGroup) -> None:
    keys = group.start(["ingestion", "dashboard"], replicas=2)
    keys += group.start(["audit"])
    assert keys == ["ingestion-1", "ingestion-2", "dashboard", "audit"]
    assert group.keys("ingestion") == ["ingestion-1", "ingestion-2"] and group.keys("dashboard") == ["dashboard"]
    assert sorted(group.pids()) == sorted(keys)
    lines = {key: said(group, key)[0] for key in keys}
    assert {key: line["name"] for key, line in lines.items()} == {
        "ingestion-1": "ingestion", "ingestion-2": "ingestion", "dashboard": "dashboard", "audit": "audit"}
    assert {key: line["env"].get("STREAMLEDGER_SHARE_PORT") for key, line in lines.items()} == {
        "ingestion-1": "true", "ingestion-2": "true", "dashboard": None, "audit": None}
    for key, line in lines.items():  # each its own Kafka principal, the group's extra environment on top
        assert line["env"]["STREAMLEDGER_KAFKA_SASL_USERNAME"] == line["name"]
        assert line["env"]["STREAMLEDGER_MONGO_DB"] == "runner_test"
        assert line["pid"] == group.pids()[key]
    with pytest.raises(ValueError, match="ingestion-1, ingestion-2 already started"):
        group.start(["ingestion"], replicas=2)


def test_kill_waits_for_death_and_restart_runs_the_same_command_into_the_same_log(group: ServiceGroup) -> None:
    group.start(["storage"], replicas=2)
    first = said(group, "storage-2")[0]
    with pytest.raises(RuntimeError, match="still running"):
        group.restart("storage-2")

    assert group.kill("storage-2") == -signal.SIGKILL
    assert group.exited() == {"storage-2": -signal.SIGKILL}
    assert "storage-2" not in group.pids() and "storage-1" in group.pids()

    pid = group.restart("storage-2")
    assert pid != first["pid"] and group.pids()["storage-2"] == pid
    again = said(group, "storage-2", count=2)
    assert [line["pid"] for line in again] == [first["pid"], pid], "appended to the same log"
    assert again[1]["env"] == first["env"] and again[1]["name"] == "storage"
    assert group.exited() == {}
    group.stop(grace=5)
    assert set(group.exited()) == {"storage-1", "storage-2"}


def test_the_children_can_use_another_stacks_kafka_credentials(group: ServiceGroup, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMLEDGER_KAFKA_BOOTSTRAP", "127.0.0.1:9092")  # the parent's: the shared stack
    cluster_auth = tmp_path / "cluster-home" / "data" / "kafka-auth"
    group.kafka_auth_dir = cluster_auth
    group.start(["cleaning"])
    env = said(group, "cleaning")[0]["env"]
    assert env["STREAMLEDGER_KAFKA_AUTH_DIR"] == str(cluster_auth)
    assert env["STREAMLEDGER_KAFKA_SSL_CAFILE"] == str(cluster_auth / "ca.crt")
    assert env["STREAMLEDGER_KAFKA_SASL_PASSWORD_FILE"] == str(cluster_auth / "users" / "cleaning.password")
    assert "STREAMLEDGER_KAFKA_BOOTSTRAP" not in env, "the children's own default: that stack's record"
    assert env["STREAMLEDGER_STACK_HOME"] == str(tmp_path), "Fabric's crypto stays the stack home's"


def test_clients_default_to_the_bootstrap_the_local_stack_recorded(home: Path, monkeypatch) -> None:
    assert local_kafka_bootstrap() == LOCAL_KAFKA_BOOTSTRAP == "127.0.0.1:9092"  # no stack here
    cluster = StackSettings(home=home, kafka_brokers=3)
    path = record_bootstrap(cluster)
    assert path == home / "data" / "kafka-auth" / "bootstrap"
    every_node = "127.0.0.1:9092,127.0.0.1:9192,127.0.0.1:9292"
    assert local_kafka_bootstrap() == CommonSettings().kafka_bootstrap == every_node
    monkeypatch.setenv("STREAMLEDGER_KAFKA_BOOTSTRAP", "kafka:9092")
    assert CommonSettings().kafka_bootstrap == "kafka:9092", "the environment wins"

    other = StackSettings(home=home / "other", kafka_port=39092)
    record_bootstrap(other)
    monkeypatch.delenv("STREAMLEDGER_KAFKA_BOOTSTRAP")
    monkeypatch.setenv("STREAMLEDGER_KAFKA_AUTH_DIR", str(other.kafka_auth_dir))
    assert CommonSettings().kafka_bootstrap == "127.0.0.1:39092"


def test_a_port_is_shared_only_when_both_ask() -> None:
    alone = listening_socket("127.0.0.1", 0)
    port = alone.getsockname()[1]
    with alone, pytest.raises(OSError):
        listening_socket("127.0.0.1", port, shared=True)  # SO_REUSEPORT does not get into a port held alone
    first = listening_socket("127.0.0.1", 0, shared=True)
    port = first.getsockname()[1]
    with first, listening_socket("127.0.0.1", port, shared=True) as second:
        assert second.getsockname()[1] == port
        with pytest.raises(OSError):
            listening_socket("127.0.0.1", port)  # a process not asking to share is refused
    assert grpc_listen_options() == [("grpc.so_reuseport", 0)]
    assert grpc_listen_options(shared=True) == [("grpc.so_reuseport", 1)]


async def test_grpc_and_http_servers_hold_their_ports_unless_shared() -> None:
    held = grpc.aio.server(options=grpc_listen_options())
    port = held.add_insecure_port("127.0.0.1:0")
    try:
        with pytest.raises(RuntimeError, match="Failed to bind"):  # gRPC's own default would share it
            grpc.aio.server().add_insecure_port(f"127.0.0.1:{port}")
        with socket.socket() as probe, pytest.raises(OSError):
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            probe.bind(("127.0.0.1", port))
    finally:
        await held.stop(None)

    async def app(scope, receive, send):  # a minimal ASGI app
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    one = EmbeddedHttpServer(app, "127.0.0.1", 0, share_port=True)
    port = await one.start()
    two = EmbeddedHttpServer(app, "127.0.0.1", port, share_port=True)
    try:
        assert await two.start() == port
        with pytest.raises(OSError):
            await EmbeddedHttpServer(app, "127.0.0.1", port).start()
    finally:
        await two.stop()
        await one.stop()


class RecordingGroup:
    """Stands for `ServiceGroup` in `serve`: records what it was asked to start; its first child
    has exited at once, so `serve` returns."""

    started: ClassVar[list[tuple[list[str], int]]] = []

    def __init__(self) -> None:
        self.log_dir = Path("/nonexistent")

    def start(self, names, replicas: int = 1) -> list[str]:
        RecordingGroup.started.append((list(names), replicas))
        return [f"{n}-1" for n in names]

    def exited(self) -> dict[str, int]:
        return {"x-1": 1}

    def log_tail(self, key: str, lines: int = 15) -> str:
        return ""

    def stop(self, grace: float = 15.0) -> None:
        pass


def test_serve_runs_replicas_through_the_group(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import devstack.runner
    from services.cli import SERVICES, app

    monkeypatch.setattr(devstack.runner, "ServiceGroup", RecordingGroup)
    RecordingGroup.started = []
    assert CliRunner().invoke(app, ["serve", "all", "--replicas", "2"]).exit_code == 1  # its child "exited"
    assert CliRunner().invoke(app, ["serve", "ingestion", "--replicas", "3"]).exit_code == 1
    assert CliRunner().invoke(app, ["serve", "all"]).exit_code == 1
    assert RecordingGroup.started == [(devstack.runner.built_services(SERVICES), 2), (["ingestion"], 3),
                                      (devstack.runner.built_services(SERVICES), 1)]
    assert CliRunner().invoke(app, ["serve", "nonsense", "--replicas", "2"]).exit_code == 2
    assert CliRunner().invoke(app, ["serve", "all", "--replicas", "0"]).exit_code == 2
    assert len(RecordingGroup.started) == 3
