"""The cleaning handler in a plain Quix Streams app: bench/pipeline.py's peer for the cleaning service.

    .venv/bin/python bench/quix_cleaner.py RAW_TOPIC CLEAN_TOPIC DEADLETTER_TOPIC GROUP

Reads RAW_TOPIC as GROUP (at least once: Quix commits its checkpoint every 5 s, after its
producer flushed), runs `Cleaner.handle` on each message with an in-memory dedup window (no
changelog, so it does less than the service, which keeps its window durable), and writes the
outcome to CLEAN_TOPIC or DEADLETTER_TOPIC, keyed as the service does. It connects as the
`STREAMLEDGER_KAFKA_*` settings say. Quix Streams is not a dependency of the project:
`make bench-deps` installs it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from quixstreams import Application, message_context
from quixstreams.kafka.configuration import ConnectionConfig
from quixstreams.models.serializers import Serializer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.cleaning.cleaner import Cleaner, Outcome  # noqa: E402
from services.cleaning.dedup import DedupWindow  # noqa: E402
from services.cleaning.rules import RuleBook  # noqa: E402
from streamledger.avro import AvroCodec, SchemaRegistry  # noqa: E402
from streamledger.core.records import Consumed  # noqa: E402
from streamledger.kafka import KafkaSecurity  # noqa: E402
from streamledger.settings import CommonSettings  # noqa: E402


class OutcomeValue(Serializer):
    """The outcome's encoded record, as the service writes it."""

    def __call__(self, value: Outcome, ctx) -> bytes:
        return value.value


def connection(settings: CommonSettings) -> ConnectionConfig:
    security = KafkaSecurity.from_settings(settings)
    if not security.secured:
        return ConnectionConfig(bootstrap_servers=settings.kafka_bootstrap)
    return ConnectionConfig(bootstrap_servers=settings.kafka_bootstrap, security_protocol="sasl_ssl",
                            sasl_mechanism=security.mechanism, sasl_username=security.username,
                            sasl_password=security.password, ssl_ca_location=str(security.cafile))


def main(raw: str, clean: str, deadletter: str, group: str) -> None:
    cleaner = Cleaner(AvroCodec(SchemaRegistry.from_dir()), RuleBook(), DedupWindow({}, 3_600_000))
    app = Application(broker_address=connection(CommonSettings()), consumer_group=group, auto_offset_reset="earliest",
                      auto_create_topics=False, use_changelog_topics=False, loglevel="WARNING")
    raw_topic = app.topic(raw, key_deserializer="bytes", value_deserializer="bytes")
    outputs = {"clean": app.topic(clean, key_serializer="bytes", value_serializer=OutcomeValue()),
               "deadletter": app.topic(deadletter, key_serializer="bytes", value_serializer=OutcomeValue())}

    def handle(value: bytes, key: bytes, timestamp: int, headers) -> Outcome:
        context = message_context()
        return cleaner.handle(Consumed(None, context.topic, context.partition, context.offset, key, value, timestamp))

    frame = app.dataframe(raw_topic).apply(handle, metadata=True).filter(lambda outcome: outcome.value is not None)
    frame.to_topic(lambda outcome, key, timestamp, headers: outputs[outcome.kind], key=lambda outcome: outcome.key)
    print("started", flush=True)
    app.run()


if __name__ == "__main__":
    main(*sys.argv[1:5])
