"""The Kafka ACL table, derived from the topic table: each service may do exactly what its
topics say (streamledger/kafka/acls.py)."""

from __future__ import annotations

import pytest

from streamledger.kafka import topics
from streamledger.kafka.acls import acl_rules, may, own_namespace

RULES = acl_rules()
OTHERS = {"WRITE", "READ"}


@pytest.mark.parametrize("role", sorted(topics.TABLE))
def test_only_a_topics_writers_may_write_it_and_the_names_under_it(role: str) -> None:
    spec = topics.TABLE[role]
    for service in topics.SERVICES:
        for name in (role, f"{role}.run42"):
            assert may(RULES, service, "WRITE", "topic", name) == (service in spec.writers), (service, name)
            assert may(RULES, service, "READ", "topic", name) == (service in spec.readers), (service, name)


def test_the_issues_ownership() -> None:
    writers = {role: spec.writers for role, spec in topics.TABLE.items()}
    assert writers[topics.RAW] == {topics.INGESTION}
    assert writers[topics.CLEAN] == {topics.CLEANING}
    assert writers[topics.SNAPSHOTS] == {topics.LEARNING}
    assert writers[topics.USAGE] == {topics.INFERENCE}
    assert writers[topics.PREDICTIONS] == {topics.INFERENCE}
    assert topics.TABLE[topics.RAW].readers == {topics.CLEANING, topics.AUDIT}  # audit trace: the ingested record
    assert {topics.CLEAN, topics.USAGE} <= {r for r, s in topics.TABLE.items() if topics.LEDGER in s.readers}
    assert topics.LEDGER in topics.TABLE[topics.DEADLETTER].writers


@pytest.mark.parametrize("service", [topics.DASHBOARD, topics.AUDIT])
def test_the_dashboard_and_audit_write_nothing(service: str) -> None:
    for role in topics.TABLE:
        assert not may(RULES, service, "WRITE", "topic", role)
    assert not may(RULES, topics.DASHBOARD, "READ", "topic", topics.RAW)


def test_the_dashboard_describes_every_topic_and_group_but_reads_only_its_own() -> None:
    assert may(RULES, topics.DASHBOARD, "DESCRIBE", "topic", topics.RAW)
    assert may(RULES, topics.DASHBOARD, "DESCRIBE", "group", "streamledger-cleaning")
    assert not may(RULES, topics.DASHBOARD, "READ", "group", "streamledger-cleaning")
    assert not may(RULES, topics.INGESTION, "DESCRIBE", "topic", topics.USAGE)


def test_a_service_owns_its_groups_and_state_topics_only() -> None:
    ns = own_namespace(topics.CLEANING)
    assert ns == "streamledger-cleaning"
    assert may(RULES, topics.CLEANING, "READ", "group", ns)
    assert may(RULES, topics.CLEANING, "WRITE", "topic", f"{ns}-dedup-changelog")  # its dedup window
    assert may(RULES, topics.CLEANING, "CREATE", "topic", f"{ns}-dedup-changelog")
    assert not may(RULES, topics.LEARNING, "READ", "group", ns)
    assert not may(RULES, topics.LEARNING, "WRITE", "topic", f"{ns}-dedup-changelog")


def test_a_prefix_rule_covers_only_the_names_under_the_topic() -> None:
    assert may(RULES, topics.INGESTION, "WRITE", "topic", "events.raw.bench")
    assert not may(RULES, topics.INGESTION, "WRITE", "topic", "events.rawish")


def test_every_rule_is_an_allow_of_a_known_service_and_derives_from_the_table() -> None:
    principals = {f"User:{s}" for s in topics.SERVICES}
    assert {r.principal for r in RULES} == principals
    named = {r.name for r in RULES if r.resource == "topic" and r.pattern == "LITERAL"} - {"*"}
    assert named == set(topics.TABLE)
    table = {topics.CLEAN: topics.TopicSpec(topics.CLEAN, writers=frozenset({topics.STORAGE}))}
    assert may(acl_rules(table), topics.STORAGE, "WRITE", "topic", topics.CLEAN)
    assert not may(acl_rules(table), topics.CLEANING, "WRITE", "topic", topics.CLEAN)
