"""Unit tests run without a server: the Kafka clients they build (to an address nobody answers)
connect in PLAINTEXT, so no local stack credentials are needed. A test of the secured settings
sets them itself."""

from __future__ import annotations

import os

os.environ.setdefault("STREAMLEDGER_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
