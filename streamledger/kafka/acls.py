"""Who may do what on the Kafka cluster, derived from the topic table (`topics.TABLE`).

    for rule in acl_rules():      # Rule(principal="User:ingestion", resource="topic", name="events.raw", ...)
        ...

Each service is a principal of its own (`User:<service>`). On a topic of the table its writers
may write, create and describe it, its readers read, create and describe it (whichever service
starts first creates a missing topic as the table says; creating writes no record). Every rule names the
topic itself (LITERAL) and the names under it (PREFIXED `<topic>.`), so a run with its own
topics (`events.raw.<run>`, as tests and benches make) is governed by the same rules. A
service owns the consumer groups and topics named `streamledger-<service>...` (the cleaning
service keeps its dedup changelog there). The dashboard may also describe
every topic and group (end offsets and lag, never records of topics it does not read).
The admin is the broker's super user; no other principal gets anything the table does not say.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamledger.kafka import topics

LITERAL, PREFIXED = "LITERAL", "PREFIXED"
WRITE_OPS = ("WRITE", "CREATE", "DESCRIBE")
READ_OPS = ("READ", "DESCRIBE", "CREATE")


@dataclass(frozen=True, order=True)
class Rule:
    """One ALLOW binding: `principal` may do `operation` on the `resource` (topic, group) named
    `name` (or every name starting with it, when `pattern` is PREFIXED)."""

    principal: str
    resource: str
    name: str
    pattern: str
    operation: str


def principal(service: str) -> str:
    return f"User:{service}"


def own_namespace(service: str) -> str:
    """The group and state-topic prefix a service owns: `streamledger-<service>`."""
    return f"streamledger-{service}"


def acl_rules(table: dict[str, topics.TopicSpec] | None = None) -> list[Rule]:
    """Every ALLOW rule the cluster needs, sorted; nothing is allowed that is not listed."""
    rules: set[Rule] = set()
    for spec in (table or topics.TABLE).values():
        for service, operations in [*((w, WRITE_OPS) for w in spec.writers), *((r, READ_OPS) for r in spec.readers)]:
            for name, pattern in ((spec.name, LITERAL), (f"{spec.name}.", PREFIXED)):
                rules.update(Rule(principal(service), "topic", name, pattern, op) for op in operations)
    for service in topics.SERVICES:
        for resource in ("topic", "group"):
            rules.add(Rule(principal(service), resource, own_namespace(service), PREFIXED, "ALL"))
    rules.update(Rule(principal(topics.DASHBOARD), resource, "*", LITERAL, "DESCRIBE") for resource in ("topic", "group"))
    return sorted(rules)


def may(rules: list[Rule], service: str, operation: str, resource: str, name: str) -> bool:
    """Whether `rules` let `service` do `operation` on `resource` `name` (as the broker decides:
    a literal match, a prefix, the `*` wildcard, or ALL)."""
    for rule in rules:
        if rule.principal != principal(service) or rule.resource != resource:
            continue
        if rule.operation not in (operation, "ALL"):
            continue
        if (rule.pattern == LITERAL and rule.name in (name, "*")) or (
                rule.pattern == PREFIXED and name.startswith(rule.name)):
            return True
    return False
