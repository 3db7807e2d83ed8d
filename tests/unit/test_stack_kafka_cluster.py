"""The local Kafka as one node or a cluster (`StackSettings.kafka_brokers`): each node's ports, data
dir and server.properties, the stack's view of the nodes, and the replication the topic table
derives from the cluster's size (no server: `provision` talks to a fake admin client)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from devstack import Stack, StackError
from devstack.kafka import KafkaPart, kafka_nodes, kafka_nodes_started
from devstack.settings import StackSettings
from streamledger.kafka import TopicSpec, provision, topics
from streamledger.kafka.topics import replication


def properties(part: KafkaPart) -> dict[str, str]:
    lines = [line for line in part.server_properties().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_replication_follows_the_cluster_size() -> None:
    assert [replication(n) for n in (1, 2, 3, 5)] == [(1, 1), (2, 1), (3, 2), (3, 2)]
    with pytest.raises(ValueError, match="brokers"):
        replication(0)


def test_one_node_is_configured_as_before(tmp_path: Path) -> None:
    (node,) = kafka_nodes(StackSettings(home=tmp_path))
    assert (node.name, node.port, node.controller_port, node.internal_port) == ("kafka", 9092, 9093, 9094)
    assert node.data == tmp_path / "data" / "kafka"
    assert node.config == tmp_path / "kafka" / "server.properties"
    config = properties(node)
    assert config["node.id"] == "1" and config["controller.quorum.voters"] == "1@127.0.0.1:9093"
    for key in ("default.replication.factor", "min.insync.replicas", "offsets.topic.replication.factor",
                "transaction.state.log.replication.factor", "transaction.state.log.min.isr",
                "share.coordinator.state.topic.replication.factor", "share.coordinator.state.topic.min.isr"):
        assert config[key] == "1", key
    assert config["log.dirs"] == str(node.data)
    assert node.settings.kafka_node_heap == "768m" and node.settings.kafka_bootstrap == "127.0.0.1:9092"


def test_three_nodes_have_their_own_ports_data_and_one_quorum(tmp_path: Path) -> None:
    settings = StackSettings(home=tmp_path, kafka_brokers=3, kafka_port=39092, kafka_controller_port=39093,
                             kafka_internal_port=39094)
    nodes = kafka_nodes(settings)
    assert [n.name for n in nodes] == ["kafka-1", "kafka-2", "kafka-3"]
    assert [(n.port, n.controller_port, n.internal_port) for n in nodes] == [
        (39092, 39093, 39094), (39192, 39193, 39194), (39292, 39293, 39294)]
    assert len({n.data for n in nodes}) == 3 and len({n.config for n in nodes}) == 3
    assert all(n.data.parent == tmp_path / "data" / "kafka-3-nodes" for n in nodes)
    assert len({n.process.pidfile for n in nodes}) == 3 and len({n.marker for n in nodes}) == 3
    configs = [properties(n) for n in nodes]
    assert [c["node.id"] for c in configs] == ["1", "2", "3"]
    voters = "1@127.0.0.1:39093,2@127.0.0.1:39193,3@127.0.0.1:39293"
    assert all(c["controller.quorum.voters"] == voters for c in configs)
    for node, config in zip(nodes, configs, strict=True):
        assert config["listeners"] == (f"SASL_SSL://127.0.0.1:{node.port},INTERNAL://127.0.0.1:{node.internal_port},"
                                       f"CONTROLLER://127.0.0.1:{node.controller_port}")
        assert config["log.dirs"] == str(node.data)
        # Secured exactly like one node: the same users, super users and authorizer.
        assert config["super.users"] == "User:admin;User:CN=streamledger-kafka"
        assert config["allow.everyone.if.no.acl.found"] == "false"
        assert (config["default.replication.factor"], config["min.insync.replicas"]) == ("3", "2")
        assert (config["offsets.topic.replication.factor"], config["transaction.state.log.min.isr"]) == ("3", "2")
    assert settings.kafka_node_heap == "512m"
    assert settings.kafka_bootstrap == "127.0.0.1:39092,127.0.0.1:39192,127.0.0.1:39292"
    # Users and ACLs are made once for the cluster, through any node's internal listener.
    nodes[1].auth.ensure()
    first_line = nodes[1].provisioning_input().splitlines()[0]
    assert first_line == "bootstrap.servers=127.0.0.1:39094,127.0.0.1:39194,127.0.0.1:39294"


def test_the_nodes_of_a_cluster_share_one_cluster_id(tmp_path: Path) -> None:
    nodes = kafka_nodes(StackSettings(home=tmp_path, kafka_brokers=3))
    assert len({n._cluster_id() for n in nodes}) == 1
    (alone,) = kafka_nodes(StackSettings(home=tmp_path / "other"))
    assert alone._cluster_id() != nodes[0]._cluster_id()


def test_a_cluster_id_beginning_with_a_dash_reaches_the_format_tool_as_its_value(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A random id begins with "-" one time in 64: passed as `-t ID`, the tool took it for an option."""
    (node,) = kafka_nodes(StackSettings(home=tmp_path))
    monkeypatch.setattr(node, "_cluster_id", lambda: "-Zk3mPq0RrS9vX2yW1aB4c")
    ran: list[list[str]] = []
    monkeypatch.setattr("devstack.kafka.subprocess.run", lambda argv, **_: ran.append(argv) or
                        SimpleNamespace(returncode=0, stdout="", stderr=""))
    node.prepare()
    (argv,) = ran
    assert argv[argv.index("format") + 1] == "--cluster-id=-Zk3mPq0RrS9vX2yW1aB4c"


def test_the_broker_count_is_a_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STREAMLEDGER_STACK_KAFKA_BROKERS", "3")
    assert [p.name for p in Stack(StackSettings(home=tmp_path)).parts] == ["kafka-1", "kafka-2", "kafka-3", "ferretdb"]
    monkeypatch.setenv("STREAMLEDGER_STACK_KAFKA_BROKERS", "0")
    with pytest.raises(ValueError, match="kafka_brokers"):
        StackSettings(home=tmp_path)


def test_a_started_cluster_is_seen_when_asked_for_one_node(tmp_path: Path) -> None:
    settings = StackSettings(home=tmp_path)
    assert kafka_nodes_started(settings) == []
    settings.run_dir.mkdir(parents=True)
    for n in (1, 2, 3):  # pid files of a cluster, their processes gone
        (settings.run_dir / f"kafka-{n}.pid").write_text("999999999\nkafka.Kafka\n")
    assert [p.name for p in kafka_nodes_started(settings)] == ["kafka-1", "kafka-2", "kafka-3"]
    stack = Stack(settings, say=lambda _msg: None)
    statuses = {s.name: (s.port, s.state) for s in stack.status()}
    assert "kafka" not in statuses  # never started: the cluster stands in for it
    assert {name: statuses[name] for name in ("kafka-1", "kafka-2", "kafka-3")} == {
        "kafka-1": (9092, "died"), "kafka-2": (9192, "died"), "kafka-3": (9292, "died")}
    assert stack.part("kafka-2").port == 9192
    # A stack told which parts to manage sees only those.
    assert [s.name for s in Stack(settings, say=lambda _msg: None, parts=["ferretdb"]).status()] == ["ferretdb"]


class FakeCluster:
    def __init__(self, brokers: int, existing: tuple[str, ...] = ()) -> None:
        self.brokers = brokers
        self.existing = existing
        self.created: list = []

    async def list_topics(self) -> list[str]:
        return list(self.existing)

    async def describe_cluster(self) -> dict:
        return {"brokers": [{"node_id": n} for n in range(self.brokers)]}

    async def create_topics(self, new: list) -> SimpleNamespace:
        self.created += new
        return SimpleNamespace(topic_errors=[(t.name, 0, None) for t in new])


async def provisioned(monkeypatch: pytest.MonkeyPatch, cluster: FakeCluster, specs: list[TopicSpec], **kwargs) -> dict:
    @contextlib.asynccontextmanager
    async def admin(_bootstrap, security=None):
        yield cluster

    monkeypatch.setattr(topics, "admin", admin)
    await provision("127.0.0.1:1", specs, **kwargs)
    return {t.name: (t.replication_factor, t.topic_configs) for t in cluster.created}


async def test_provision_takes_replication_from_the_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    table = list(topics.TABLE.values())
    three = await provisioned(monkeypatch, FakeCluster(brokers=3), table)
    assert {name: (factor, configs["min.insync.replicas"]) for name, (factor, configs) in three.items()} == {
        s.name: (3, "2") for s in table}
    assert three[topics.SNAPSHOTS][1]["cleanup.policy"] == "compact"  # the table's own configs stay
    one = await provisioned(monkeypatch, FakeCluster(brokers=1), table)
    assert {name: value for name, value in one.items()} == {s.name: (1, s.configs()) for s in table}
    explicit = await provisioned(monkeypatch, FakeCluster(brokers=3), [TopicSpec("t")], replication_factor=2)
    assert explicit == {"t": (2, {"min.insync.replicas": "1"})}
    nothing = FakeCluster(brokers=3, existing=("t",))
    assert await provisioned(monkeypatch, nothing, [TopicSpec("t")]) == {}


def test_up_refuses_while_kafka_runs_with_another_size(tmp_path: Path) -> None:
    settings = StackSettings(home=tmp_path)
    settings.run_dir.mkdir(parents=True)
    own_command = Path("/proc/self/cmdline").read_bytes().split(b"\0")[0].decode()
    for n in (1, 2, 3):  # a running cluster's pid files (this process stands in for each node)
        (settings.run_dir / f"kafka-{n}.pid").write_text(f"{os.getpid()}\n{own_command}\n")
    with pytest.raises(StackError, match=r"Kafka runs as kafka-1, kafka-2, kafka-3, not as 1 node"):
        Stack(settings, say=lambda _msg: None).up()


def test_stack_up_takes_the_broker_count_as_a_flag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import devstack
    from services.cli import app

    asked: list[StackSettings] = []

    class RecordingStack:
        def __init__(self, settings: StackSettings, say) -> None:
            asked.append(settings)

        def up(self) -> list:
            return []

    monkeypatch.setattr(devstack, "Stack", RecordingStack)
    monkeypatch.setenv("STREAMLEDGER_STACK_HOME", str(tmp_path))
    monkeypatch.delenv("STREAMLEDGER_STACK_KAFKA_BROKERS", raising=False)
    result = CliRunner().invoke(app, ["stack", "up", "--kafka-brokers", "3"])
    assert result.exit_code == 0, result.output
    assert "STREAMLEDGER_KAFKA_BOOTSTRAP=127.0.0.1:9092,127.0.0.1:9192,127.0.0.1:9292" in result.output
    assert CliRunner().invoke(app, ["stack", "up"]).exit_code == 0
    assert [s.kafka_brokers for s in asked] == [3, 1]
