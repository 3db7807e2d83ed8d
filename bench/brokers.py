"""The Kafka a bench runs on: the shared stack's broker, or a three-node cluster of the bench's own.

    brokers = shared_broker()                 # the local stack's Kafka, as the environment says
    with three_brokers() as brokers:          # a cluster in a scratch home, stopped at the end
        await kafka.provision(brokers.bootstrap, specs, security=brokers.security)
        ServiceGroup(..., kafka_auth_dir=brokers.auth_dir)

The cluster is what `stack up --kafka-brokers 3` starts (three KRaft nodes, replication 3,
`min.insync.replicas=2`), on ports 29092/29192/29292 (controllers +1, internal listeners +2) so the
shared stack's Kafka on 9092 is never touched, as tests/integration/test_stack_kafka_cluster.py
runs it. Only one such cluster may run on a machine at a time: run the bench under
`flock /tmp/cluster.lock`. The nodes use the shared stack's Kafka jars (a symlink), so nothing is
downloaded.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from devstack import Stack
from devstack.kafka import kafka_nodes
from devstack.settings import StackSettings
from streamledger.kafka.clients import KafkaSecurity
from streamledger.settings import CommonSettings

PORT, CONTROLLER_PORT, INTERNAL_PORT = 29092, 29093, 29094
"""Below Linux's ephemeral ports (see test_stack_kafka_cluster.py for why)."""


@dataclass(frozen=True)
class Brokers:
    count: int
    bootstrap: str
    security: KafkaSecurity | None
    """The bench's own connections (admin); None: as the environment says (the shared stack's)."""
    auth_dir: Path | None
    """The services' Kafka credentials folder (`ServiceGroup(kafka_auth_dir=...)`); None: the shared stack's."""


def shared_broker() -> Brokers:
    """The shared local stack's Kafka (one broker), as this process's settings connect to it."""
    return Brokers(1, CommonSettings().kafka_bootstrap, None, None)


@contextmanager
def three_brokers(say=print) -> Iterator[Brokers]:
    """A three-node Kafka cluster in a scratch home, up for the `with` block, stopped whatever happens."""
    with tempfile.TemporaryDirectory(prefix="bench-kafka-cluster-") as home:
        settings = StackSettings(home=Path(home), kafka_brokers=3, kafka_port=PORT,
                                 kafka_controller_port=CONTROLLER_PORT, kafka_internal_port=INTERNAL_PORT,
                                 start_timeout=120)
        nodes = kafka_nodes(settings)
        shared_libs = kafka_nodes(StackSettings())[0].libs  # the jars the shared stack fetched, if it did
        if shared_libs.is_dir():
            nodes[0].libs.parent.mkdir(parents=True)
            nodes[0].libs.symlink_to(shared_libs, target_is_directory=True)
        stack = Stack(settings, say=lambda _msg: None, parts=[n.name for n in nodes])
        try:
            started = time.monotonic()
            stack.up()
            say(f"three-node Kafka cluster up on {settings.kafka_bootstrap} in {time.monotonic() - started:.0f} s")
            yield Brokers(3, settings.kafka_bootstrap, nodes[0].admin_security(), nodes[0].auth.folder)
        finally:
            stack.down()
            say("three-node Kafka cluster stopped")
