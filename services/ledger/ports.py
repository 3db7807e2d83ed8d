"""What the anchoring and settlement loops both talk to, built once by `app.py`."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import AIOKafkaProducer

from services.ledger.dead_letters import DeadLetters
from services.ledger.retries import Retries
from services.ledger.store import LedgerStore
from streamledger.avro import AvroCodec
from streamledger.ledger import LedgerClient


@dataclass(frozen=True)
class Ports:
    ledger: LedgerClient
    store: LedgerStore
    producer: AIOKafkaProducer
    codec: AvroCodec
    """Decodes the loops' input, encodes their output."""
    retries: Retries
    """The service's one retry loop: every ledger, MongoDB and Kafka call goes through it."""
    letters: DeadLetters
