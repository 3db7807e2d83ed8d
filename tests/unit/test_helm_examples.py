"""deploy/helm/examples stay in step with the code.

- kafka-topics.yaml: every topic of the topic table (`streamledger.kafka.topics.TABLE`) as a
  KafkaTopic with the table's partitions, compaction, max.message.bytes and retention (replicated
  3 times, min.insync.replicas 2), plus the cleaning service's dedup changelog and the learning service's shards topic, and nothing else;
- kafka-users.yaml: one KafkaUser per service with exactly the ACLs of `ACCESS` below (who writes
  and reads each topic; the consumer groups of services/*/settings.py fall under the service's
  own `streamledger-<service>` prefix), and, once the topic table names its writers and readers
  (the Kafka security work), exactly what that table says;
- the chart's Kafka credentials name these users.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.cleaning.settings import CleaningSettings
from services.ledger.settings import LedgerServiceSettings
from services.learning.settings import LearningSettings
from services.storage.settings import StorageSettings
from streamledger.kafka import topics

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "deploy" / "helm" / "examples"
VALUES = REPO / "deploy" / "helm" / "streamledger" / "values.yaml"
SERVICES = ("ingestion", "cleaning", "storage", "learning", "inference", "ledger", "audit", "dashboard")

WRITE_OPS = {"Write", "Create", "Describe"}
READ_OPS = {"Read", "Describe", "Create"}
ACCESS: dict[str, tuple[set[str], set[str]]] = {
    # topic: (writers, readers)
    topics.RAW: ({"ingestion"}, {"cleaning", "audit"}),
    topics.CLEAN: ({"cleaning"}, {"storage", "learning", "ledger", "audit"}),
    topics.DEADLETTER: ({"cleaning", "storage", "learning", "ledger"}, {"storage", "dashboard"}),
    topics.SNAPSHOTS: ({"learning"}, {"learning", "inference", "storage", "dashboard"}),
    topics.MODEL_METRICS: ({"learning"}, {"dashboard"}),
    topics.PREDICTIONS: ({"inference"}, {"storage"}),
    topics.USAGE: ({"inference"}, {"ledger", "audit", "dashboard"}),
    topics.ANCHORS: ({"ledger"}, {"storage", "audit", "dashboard"}),
    topics.SCHEMAS: ({"ingestion", "cleaning", "storage", "learning", "inference", "ledger"}, set(SERVICES)),
}


def documents(name: str, kind: str) -> list[dict]:
    docs = [doc for doc in yaml.safe_load_all((EXAMPLES / name).read_text()) if doc]
    assert all(doc["kind"] == kind for doc in docs), f"{name} holds only {kind}s"
    return docs


def kafka_topics() -> dict[str, dict]:
    found: dict[str, dict] = {}
    for doc in documents("kafka-topics.yaml", "KafkaTopic"):
        name = doc["spec"].get("topicName", doc["metadata"]["name"])
        assert name not in found, f"two KafkaTopics for {name}"
        found[name] = doc
    return found


def service_topics() -> dict[str, topics.TopicSpec]:
    """The services' own topics: the cleaning service's dedup window (a compacted changelog with the
    raw topic's partitions) and the learning service's shards topic, as each would create it."""
    name = CleaningSettings().changelog_topic
    shards = next(spec for spec in LearningSettings().topic_specs() if spec.name == LearningSettings().shards_group)
    return {name: topics.TopicSpec(name, partitions=topics.TABLE[topics.RAW].partitions, compacted=True),
            shards.name: shards}


def acls(user: dict) -> set[tuple[str, str, str, str]]:
    """{(resource type, name, pattern, operation)} of a KafkaUser."""
    return {(rule["resource"]["type"], rule["resource"]["name"], rule["resource"].get("patternType", "literal"), op)
            for rule in user["spec"]["authorization"]["acls"] for op in rule["operations"]}


def expected_acls(service: str) -> set[tuple[str, str, str, str]]:
    expected = set()
    for topic, (writers, readers) in ACCESS.items():
        ops = (WRITE_OPS if service in writers else set()) | (READ_OPS if service in readers else set())
        expected |= {("topic", topic, "literal", op) for op in ops}
    expected |= {(kind, f"streamledger-{service}", "prefix", "All") for kind in ("topic", "group")}
    if service == "dashboard":  # end offsets and group lag of every topic
        expected |= {("topic", "*", "literal", "Describe"), ("group", "*", "literal", "Describe")}
    return expected


@pytest.mark.parametrize("name", sorted(topics.TABLE))
def test_every_topic_of_the_table_has_a_matching_kafka_topic(name: str) -> None:
    spec = topics.TABLE[name]
    found = kafka_topics().get(name)
    assert found is not None, f"deploy/helm/examples/kafka-topics.yaml has no KafkaTopic for {name}"
    assert found["spec"]["partitions"] == spec.partitions
    assert found["spec"]["replicas"] == 3
    config = {key: str(value) for key, value in found["spec"].get("config", {}).items()}
    assert config == {**spec.configs(), "min.insync.replicas": "2"}


def test_the_services_own_topics_match_the_services_and_nothing_else_is_there() -> None:
    found = kafka_topics()
    assert set(found) == set(topics.TABLE) | set(service_topics())
    for name, spec in service_topics().items():
        assert found[name]["spec"]["partitions"] == spec.partitions, name
        assert {k: str(v) for k, v in found[name]["spec"]["config"].items()} == {**spec.configs(), "min.insync.replicas": "2"}


def test_every_topic_of_the_table_has_its_writers_and_readers() -> None:
    assert set(ACCESS) == set(topics.TABLE), "a topic was added to or removed from the table: update ACCESS and kafka-users.yaml"
    for name, spec in topics.TABLE.items():
        if hasattr(spec, "writers"):  # the table names who may write and read each topic
            assert (set(spec.writers), set(spec.readers)) == ACCESS[name], name


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_has_exactly_its_acls(service: str) -> None:
    users = {doc["metadata"]["name"]: doc for doc in documents("kafka-users.yaml", "KafkaUser")}
    assert set(users) == set(SERVICES)
    user = users[service]
    assert user["spec"]["authentication"]["type"] == "scram-sha-512"
    assert acls(user) == expected_acls(service)


def test_the_brief_s_rules_hold() -> None:
    """Who may write what, said plainly (so a change to ACCESS that breaks them fails too)."""
    writers = {topic: {s for s in SERVICES if ("topic", topic, "literal", "Write") in expected_acls(s)} for topic in ACCESS}
    assert writers[topics.RAW] == {"ingestion"}
    assert writers[topics.CLEAN] == {"cleaning"}
    assert writers[topics.SNAPSHOTS] == {"learning"}
    assert writers[topics.PREDICTIONS] == writers[topics.USAGE] == {"inference"}
    for reader in ("dashboard", "audit"):
        assert not any(op in ("Write", "All") and name in ACCESS for _, name, _, op in expected_acls(reader)), reader


def test_every_consumer_group_falls_under_its_service_s_prefix() -> None:
    groups = {"cleaning": [CleaningSettings().cleaning_group], "storage": [StorageSettings().storage_group],
              "learning": [LearningSettings().learning_group_id],
              "ledger": [LedgerServiceSettings().ledger_anchor_group, LedgerServiceSettings().ledger_settlement_group]}
    users = {doc["metadata"]["name"]: doc for doc in documents("kafka-users.yaml", "KafkaUser")}
    for service, names in groups.items():
        prefixes = [name for kind, name, pattern, op in acls(users[service])
                    if kind == "group" and pattern == "prefix" and op in ("Read", "All")]
        for group in names:
            assert any(group.startswith(prefix) for prefix in prefixes), f"{service} may not use its group {group}"


def test_the_users_match_the_acl_table() -> None:
    acl_table = pytest.importorskip("streamledger.kafka.acls", reason="the ACL table comes with the Kafka security work")
    spelled = {"ALL": "All", "READ": "Read", "WRITE": "Write", "CREATE": "Create", "DESCRIBE": "Describe"}
    table_prefixes = {f"{name}." for name in topics.TABLE}  # runs' own topics (events.raw.<run>): tests only
    expected: dict[str, set] = {}
    for rule in acl_table.acl_rules():
        if rule.pattern == acl_table.PREFIXED and rule.name in table_prefixes:
            continue
        pattern = "prefix" if rule.pattern == acl_table.PREFIXED else "literal"
        expected.setdefault(rule.principal.removeprefix("User:"), set()).add(
            (rule.resource, rule.name, pattern, spelled[rule.operation]))
    users = {doc["metadata"]["name"]: acls(doc) for doc in documents("kafka-users.yaml", "KafkaUser")}
    assert users == expected


def test_the_chart_s_kafka_credentials_name_these_users() -> None:
    credentials = yaml.safe_load(VALUES.read_text())["kafka"]["credentials"]
    users = {doc["metadata"]["name"] for doc in documents("kafka-users.yaml", "KafkaUser")}
    assert {c["username"] for c in credentials.values()} <= users
    # audit reads no Kafka; every other service connects as its own user
    assert set(credentials) == set(SERVICES) - {"audit"}
    assert all(c["username"] == service for service, c in credentials.items())
