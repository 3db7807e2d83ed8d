"""Kafka producers and consumers with the delivery guarantees ARCHITECTURE.md asks for.

    async with producer(bootstrap) as out:            # idempotent, acks=all
        await out.send_and_wait(topic, value)
    async with consumer(bootstrap, topic, group_id="storage") as inbox:
        batches = await inbox.getmany(timeout_ms=500)
        ...                                            # handle, and have the outputs acknowledged
        await commit(inbox, offsets)                   # only then move the group's offsets
    async with consumer(bootstrap) as reader:          # no group: read a compacted topic whole
        async for records in read_to_end(reader, bootstrap, topics.SNAPSHOTS):
            ...
    async with admin(bootstrap) as cluster:            # topics, groups and their offsets
        groups = await cluster.list_consumer_groups()

Consumers never commit on their own (`enable_auto_commit=False`): a service commits with
`commit` once what it made of the records is durable (at-least-once).

Every client connects as `KafkaSecurity` says: by default what the `STREAMLEDGER_KAFKA_*`
settings say (SASL_SSL as the process's principal, see CommonSettings); pass `security=` to
act as another principal.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    TopicAuthorizationFailedError,
)

from streamledger.kafka.assignor import sticky_assignor
from streamledger.logging import get_logger
from streamledger.retry import RetryPolicy, retry
from streamledger.settings import CommonSettings, local_kafka_auth_dir

log = get_logger("kafka")
T = TypeVar("T")

ADMIN = "admin"
"""The local stack's super user (it creates topics, users and ACLs)."""


class KafkaCredentialsError(RuntimeError):
    """The Kafka password or CA file a secured connection needs is missing or unreadable."""


@dataclass(frozen=True)
class KafkaSecurity:
    """How to connect: TLS + SCRAM as `username` (SASL_SSL), or PLAINTEXT."""

    protocol: str = "SASL_SSL"
    username: str = ""
    password: str = field(default="", repr=False)
    mechanism: str = "SCRAM-SHA-512"
    cafile: Path | None = None

    @classmethod
    def from_settings(cls, settings: CommonSettings | None = None, username: str = "") -> KafkaSecurity:
        """The settings' connection (default: the environment's); `username` acts as that
        principal instead, its password read from the local stack's credentials."""
        s = settings or CommonSettings()
        if s.kafka_security_protocol == "PLAINTEXT":
            return cls(protocol="PLAINTEXT")
        user = username or s.kafka_sasl_username or ADMIN
        password = "" if username else s.kafka_sasl_password.get_secret_value()
        if not password:
            path = (None if username else s.kafka_sasl_password_file) or local_password_file(user)
            password = _read_secret(path, f"Kafka password of {user!r}")
        cafile = s.kafka_ssl_cafile or local_kafka_auth_dir() / "ca.crt"
        if not cafile.is_file():
            raise KafkaCredentialsError(f"Kafka CA file {cafile} does not exist (set STREAMLEDGER_KAFKA_SSL_CAFILE; "
                                        "the local stack makes it at `streamledger stack up`)")
        return cls(protocol="SASL_SSL", username=user, password=password, mechanism=s.kafka_sasl_mechanism,
                   cafile=cafile)

    @property
    def secured(self) -> bool:
        return self.protocol != "PLAINTEXT"

    def ssl_context(self) -> ssl.SSLContext:
        """Verifies the broker's certificate and name against `cafile`."""
        return ssl.create_default_context(cafile=str(self.cafile) if self.cafile else None)

    def options(self) -> dict[str, Any]:
        """aiokafka's keyword arguments for this connection (any client: producer, consumer, admin)."""
        if not self.secured:
            return {"security_protocol": "PLAINTEXT"}
        return {"security_protocol": "SASL_SSL", "ssl_context": self.ssl_context(), "sasl_mechanism": self.mechanism,
                "sasl_plain_username": self.username, "sasl_plain_password": self.password}


def local_password_file(username: str, auth_dir: Path | None = None) -> Path:
    return (auth_dir or local_kafka_auth_dir()) / "users" / f"{username}.password"


def _read_secret(path: Path, what: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise KafkaCredentialsError(f"{what}: cannot read {path} ({exc.strerror}); set STREAMLEDGER_KAFKA_SASL_PASSWORD"
                                    "_FILE, or run `streamledger stack up` for the local stack") from None


def child_environment(settings: CommonSettings | None = None, username: str = "",
                      auth_dir: Path | None = None) -> dict[str, str]:
    """The `STREAMLEDGER_KAFKA_*` variables that make a child process connect as this one does
    (or as `username`, with the local stack's password file): files by absolute path; a password
    only when the settings hold one and no other user is asked for.

    `auth_dir`: another local stack's Kafka credentials folder (a cluster run in a home of its own):
    its CA and `username`'s password file, and the child's `STREAMLEDGER_KAFKA_AUTH_DIR`, whatever
    files the settings name."""
    s = settings or CommonSettings()
    env = {"STREAMLEDGER_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
           "STREAMLEDGER_KAFKA_SECURITY_PROTOCOL": s.kafka_security_protocol}
    if auth_dir is not None:
        env["STREAMLEDGER_KAFKA_AUTH_DIR"] = str(auth_dir)
    if s.kafka_security_protocol == "PLAINTEXT":
        return env
    user = username or s.kafka_sasl_username or ADMIN
    cafile = auth_dir / "ca.crt" if auth_dir is not None else s.kafka_ssl_cafile or local_kafka_auth_dir() / "ca.crt"
    env.update({"STREAMLEDGER_KAFKA_SASL_MECHANISM": s.kafka_sasl_mechanism, "STREAMLEDGER_KAFKA_SASL_USERNAME": user,
                "STREAMLEDGER_KAFKA_SSL_CAFILE": str(cafile)})
    if not username and auth_dir is None and s.kafka_sasl_password.get_secret_value():
        env["STREAMLEDGER_KAFKA_SASL_PASSWORD"] = s.kafka_sasl_password.get_secret_value()
    else:
        own_file = None if username or auth_dir is not None else s.kafka_sasl_password_file
        env["STREAMLEDGER_KAFKA_SASL_PASSWORD_FILE"] = str(own_file or local_password_file(user, auth_dir))
    return env


def connection(security: KafkaSecurity | None = None) -> dict[str, Any]:
    """The connection options every client is built with: `security`'s, else the environment's."""
    return (security or KafkaSecurity.from_settings()).options()


def producer(bootstrap: str, *, security: KafkaSecurity | None = None, **overrides) -> AIOKafkaProducer:
    """An idempotent producer with acks=all, batching and compression (`STREAMLEDGER_KAFKA_COMPRESSION`;
    use it with `async with`)."""
    settings = CommonSettings()
    compression = settings.kafka_compression
    options = dict(
        bootstrap_servers=bootstrap,
        **(security or KafkaSecurity.from_settings(settings)).options(),
        acks="all",
        enable_idempotence=True,
        compression_type=None if compression == "none" else compression,
        linger_ms=5,
        max_batch_size=256 * 1024,
        request_timeout_ms=30_000,
    )
    options.update(overrides)
    return AIOKafkaProducer(**options)


def consumer(bootstrap: str, *topics: str, group_id: str | None = None, max_fetch_bytes: int | None = None,
             security: KafkaSecurity | None = None, **overrides) -> AIOKafkaConsumer:
    """A consumer that commits only when told (`commit`), from the earliest offset of a new group.

    `topics` subscribes (with `group_id`, the group balances partitions, sticky: see `assignor`);
    none: assign by hand (`read_to_end`). `max_fetch_bytes` raises the fetch limits for topics of
    large records.
    """
    options = dict(bootstrap_servers=bootstrap, **connection(security), group_id=group_id,
                   enable_auto_commit=False, auto_offset_reset="earliest",
                   # One assignor, never a list: aiokafka 0.14 sends a JoinGroup per assignor offered,
                   # each naming one more, and every later one changes the member's metadata, which
                   # makes the broker rebalance the group again; two members doing so can keep a
                   # group rebalancing for ever (one replica of two never got its partitions).
                   partition_assignment_strategy=(sticky_assignor(),))
    if max_fetch_bytes is not None:
        options.update(fetch_max_bytes=max_fetch_bytes, max_partition_fetch_bytes=max_fetch_bytes)
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


@contextlib.asynccontextmanager
async def admin(bootstrap: str, *, security: KafkaSecurity | None = None,
                **overrides) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client, closed on leaving the `async with`."""
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **{**connection(security), **overrides})
    await client.start()
    try:
        yield client
    finally:
        await client.close()


async def commit(consumer: AIOKafkaConsumer, offsets: Mapping[TopicPartition, int]) -> bool:
    """Commit `offsets` (partition -> next offset to read); False when the group took them away.

    After a rebalance the partitions belong to another member, which re-reads from the last
    commit; every StreamLedger consumer's outputs are idempotent, so that is harmless.
    """
    if not offsets:
        return True
    try:
        await consumer.commit(dict(offsets))
    except (CommitFailedError, IllegalStateError) as exc:
        log.warning("commit_skipped", extra={"error": str(exc)})
        return False
    return True


ADMIN_RETRY = RetryPolicy(attempts=10, initial_seconds=0.2, max_seconds=3.0)
"""How the start-time admin calls (`provision`, `partitions_of`) ask again when a node is down:
about 20 s in all, each try with a new admin client, so with fresh metadata."""


def is_transient(exc: BaseException) -> bool:
    """A Kafka error that asking again may cure (a node down or moving: aiokafka's `retriable`)."""
    return isinstance(exc, KafkaError) and exc.retriable


async def admin_retried(call: Callable[[], Awaitable[T]]) -> T:
    """`call` (an admin operation on a client of its own) asked again while a node it reached is
    down: a service starting while one of three brokers is down must not refuse to start. The
    one place the Kafka helpers retry: nothing calls these inside a retry of its own."""
    return await retry(call, ADMIN_RETRY, is_transient=is_transient,
                       on_retry=lambda attempt, exc, delay: log.warning(
                           "kafka_admin_retry", extra={"attempt": attempt + 1, "error": repr(exc), "delay": delay}))


async def partitions_of(bootstrap: str, topics: list[str], timeout_s: float = 30.0,
                        security: KafkaSecurity | None = None) -> list[tuple[str, int]]:
    """Every partition of `topics`, once the cluster describes each with at least one partition.

    A topic created a moment ago can be described before its partitions are ready, so this
    asks again until each has partitions or the timeout passes (then `TimeoutError`). A topic
    the principal may not describe is a `TopicAuthorizationFailedError` naming it. A node that
    is down is asked around (`admin_retried`).
    """
    return await admin_retried(lambda: _partitions_of(bootstrap, topics, timeout_s, security))


async def _partitions_of(bootstrap: str, topics: list[str], timeout_s: float,
                         security: KafkaSecurity | None) -> list[tuple[str, int]]:
    async with admin(bootstrap, security=security) as cluster, asyncio.timeout(timeout_s):
        while True:
            described = await cluster.describe_topics(list(topics))
            refused = [d["topic"] for d in described if d["error_code"] == TopicAuthorizationFailedError.errno]
            if refused:  # waiting would not help: this principal may not see them
                raise TopicAuthorizationFailedError(", ".join(refused))
            found = {d["topic"]: sorted(p["partition"] for p in d["partitions"]) for d in described
                     if d["error_code"] == 0}
            if all(found.get(t) for t in topics):
                return [(t, p) for t in topics for p in found[t]]
            await asyncio.sleep(0.2)


async def read_to_end(consumer: AIOKafkaConsumer, bootstrap: str, topic: str,
                      timeout_s: float | None = 30.0, security: KafkaSecurity | None = None,
                      partitions: Iterable[int] | None = None) -> AsyncIterator[list[ConsumerRecord]]:
    """Assign every partition of `topic` (or only `partitions`) to the started, group-less
    `consumer` from the beginning, and yield the records in fetched batches until each partition
    reaches the end offset it had when the call began (`TimeoutError` if that takes longer than
    `timeout_s`).

    The consumer stays assigned where the reading stopped, so a caller can go on following the
    topic live with `getmany`. Tombstones (records without a value) are yielded too.
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    if partitions is None:
        tps = [TopicPartition(t, p) for t, p in await partitions_of(bootstrap, [topic], timeout_s or 30.0, security)]
    else:
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    end = await consumer.end_offsets(tps)
    pending = {tp for tp in tps if end[tp] > 0}
    while pending:
        if deadline is not None and loop.time() > deadline:
            raise TimeoutError(f"{topic}: not read to its end within {timeout_s} s")
        batches = await consumer.getmany(*pending, timeout_ms=500)
        for records in batches.values():
            if records:
                yield records
        pending = {tp for tp in pending if await consumer.position(tp) < end[tp]}
