"""The secured local Kafka (SASL_SSL + SCRAM, StandardAuthorizer): who gets in, and what each
service's principal may do, on the real broker.

Each test makes its own topics under the table's names (`usage.<unique>`: the ACL rules cover
a table topic and the names under it), created by the admin, so nothing touches the shared
topics. Skipped when the stack under test is not secured (`STREAMLEDGER_STACK_KAFKA_SECURE=false`).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)

from devstack.settings import StackSettings
from services.ingestion.validation import validate_event
from streamledger import kafka
from streamledger.avro import AvroCodec, SchemaRegistry
from streamledger.kafka import KafkaSecurity, topics
from streamledger.kafka.acls import own_namespace

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not StackSettings().kafka_secure, reason="the stack's Kafka is not secured")]


def as_(service: str) -> KafkaSecurity:
    """The connection of a service's own principal (the stack's credentials)."""
    return KafkaSecurity.from_settings(username=service)


@pytest.fixture
async def own_topics(bootstrap: str, unique: str) -> dict[str, str]:
    """Table topic -> a fresh topic under it (`events.raw.<unique>`), made by the admin."""
    names = {role: f"{role}.{unique}" for role in topics.TABLE}
    await kafka.provision(bootstrap, [kafka.spec(role, name) for role, name in names.items()], security=as_("admin"))
    return names


async def test_a_client_without_credentials_cannot_list_topics(bootstrap: str, stack) -> None:
    admin_cafile = as_("admin").cafile
    refused = [
        KafkaSecurity(protocol="PLAINTEXT"),                                        # no TLS, no SASL
        KafkaSecurity(username="admin", password="not-the-password", cafile=admin_cafile),  # a wrong password
        KafkaSecurity(username="nobody", password="anything", cafile=admin_cafile),         # an unknown user
    ]
    for security in refused:
        with pytest.raises(KafkaConnectionError):
            async with kafka.admin(bootstrap, security=security, request_timeout_ms=5000) as cluster:
                await cluster.list_topics()
    async with kafka.admin(bootstrap, security=as_("admin")) as cluster:  # and the admin does get in
        assert isinstance(await cluster.list_topics(), list)


@pytest.mark.parametrize(("service", "role"), [
    (topics.INGESTION, topics.USAGE),
    (topics.INFERENCE, topics.SNAPSHOTS),
    (topics.CLEANING, topics.SNAPSHOTS),
    (topics.DASHBOARD, topics.CLEAN),
    (topics.LEARNING, topics.RAW),
])
async def test_a_service_may_not_write_a_topic_it_does_not_own(bootstrap: str, own_topics, service: str,
                                                                role: str) -> None:
    async with kafka.producer(bootstrap, security=as_(service), request_timeout_ms=10_000) as out:
        with pytest.raises(TopicAuthorizationFailedError):
            await out.send_and_wait(own_topics[role], b"not yours")
    assert await count(bootstrap, own_topics[role]) == 0


@pytest.mark.parametrize(("service", "role"), [
    (topics.DASHBOARD, topics.RAW),
    (topics.INGESTION, topics.CLEAN),
    (topics.INFERENCE, topics.CLEAN),
    (topics.AUDIT, topics.PREDICTIONS),
])
async def test_a_service_may_not_read_a_topic_it_does_not_read(bootstrap: str, own_topics, service: str,
                                                                role: str) -> None:
    async with kafka.producer(bootstrap, security=as_("admin")) as out:
        await out.send_and_wait(own_topics[role], b"secret")
    async with kafka.consumer(bootstrap, security=as_(service)) as reader:
        with pytest.raises(TopicAuthorizationFailedError):
            async for _ in kafka.read_to_end(reader, bootstrap, own_topics[role], 15, security=as_(service)):
                pass


async def test_a_service_may_not_use_another_services_group(bootstrap: str, own_topics, unique: str) -> None:
    group = f"{own_namespace(topics.STORAGE)}-{unique}"
    with pytest.raises(GroupAuthorizationFailedError):  # at the join, or at the first fetch
        async with kafka.consumer(bootstrap, own_topics[topics.CLEAN], group_id=group, security=as_(topics.LEARNING),
                                  request_timeout_ms=10_000) as inbox:
            await asyncio.wait_for(inbox.getmany(timeout_ms=5000), 20)


async def test_every_service_writes_and_reads_its_own_topics(bootstrap: str, own_topics, unique: str) -> None:
    """Each writer of a table topic writes one record; each reader reads them all in a group of
    its own namespace and commits (the group ACL), as its own principal."""
    for role, spec in topics.TABLE.items():
        topic = own_topics[role]
        for writer in sorted(spec.writers):
            async with kafka.producer(bootstrap, security=as_(writer)) as out:
                await out.send_and_wait(topic, key=writer.encode(), value=b"hello")
        await asyncio.gather(*(read_in_group(bootstrap, topic, reader, unique, spec.writers)
                               for reader in sorted(spec.readers)))


async def read_in_group(bootstrap: str, topic: str, reader: str, unique: str, writers: frozenset[str]) -> None:
    group = f"{own_namespace(reader)}-{unique}"
    keys: set[str] = set()
    async with kafka.consumer(bootstrap, topic, group_id=group, security=as_(reader)) as inbox:
        async with asyncio.timeout(30):
            while keys != set(writers):
                for tp, records in (await inbox.getmany(timeout_ms=500)).items():
                    keys.update(r.key.decode() for r in records)
                    assert await kafka.commit(inbox, {tp: records[-1].offset + 1}), f"{reader} could not commit"
    assert keys == set(writers), f"{reader} read {keys} from {topic}"


def serve(name: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen([str(Path(sys.executable).with_name("streamledger")), "serve", name],
                                env=env, stdout=out, stderr=subprocess.STDOUT)


async def count(bootstrap: str, topic: str) -> int:
    n = 0
    async with kafka.consumer(bootstrap, security=as_("admin")) as reader:
        async for records in kafka.read_to_end(reader, bootstrap, topic, 15, security=as_("admin")):
            n += len(records)
    return n


async def test_the_cleaning_service_runs_as_its_own_principal(bootstrap: str, own_topics, unique: str,
                                                               tmp_path: Path) -> None:
    """`streamledger serve cleaning` (its group and dedup changelog topic in its own namespace)
    as `cleaning`, fed by `ingestion`, its output read by `storage`."""
    codec = AvroCodec(SchemaRegistry.from_dir())
    events = [validate_event({"event_id": f"sec-{unique}-{i}", "source": "test", "ts": 1_700_000_000_000 + i,
                              "features": {"x": float(i)}, "label": None}, "acme") for i in range(5)]
    async with kafka.producer(bootstrap, security=as_(topics.INGESTION)) as out:
        for event in events:
            await out.send_and_wait(own_topics[topics.RAW], key=event["event_id"].encode(),
                                    value=codec.encode("RawEvent", event))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLEDGER_")}
    env.update(kafka.child_environment(username=topics.CLEANING))
    env.update({"STREAMLEDGER_CLEANING_RAW_TOPIC": own_topics[topics.RAW],
                "STREAMLEDGER_CLEANING_CLEAN_TOPIC": own_topics[topics.CLEAN],
                "STREAMLEDGER_CLEANING_DEADLETTER_TOPIC": own_topics[topics.DEADLETTER],
                "STREAMLEDGER_CLEANING_GROUP": f"{own_namespace(topics.CLEANING)}-{unique}"})
    log = tmp_path / "cleaning.log"
    cleaning = serve("cleaning", env, log)
    try:
        ids: set[str] = set()
        async with kafka.consumer(bootstrap, own_topics[topics.CLEAN], group_id=f"streamledger-storage-{unique}",
                                  security=as_(topics.STORAGE)) as inbox, asyncio.timeout(50):
            while len(ids) < len(events):
                assert cleaning.poll() is None, log.read_text(errors="replace")[-3000:]
                for records in (await inbox.getmany(timeout_ms=500)).values():
                    ids.update(codec.decode(r.value)["event_id"] for r in records)
        assert ids == {e["event_id"] for e in events}
        assert "uthoriz" not in log.read_text(errors="replace")
    finally:
        cleaning.terminate()
        cleaning.wait(timeout=30)
