"""Structured logs: one JSON object per line on stderr.

    log = get_logger("ingestion")
    log.info("batch_accepted", extra={"count": 12})

gives `{"ts": ..., "level": "info", "service": "ingestion", "event": "batch_accepted", "count": 12}`.
"""

from __future__ import annotations

import json
import logging
import sys
import time

# Attributes every LogRecord has; anything else came from `extra=` and is logged as a field.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": record.name.removeprefix("streamledger."),
            "event": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS:
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO", kafka_level: str = "WARNING") -> None:
    """Route all `streamledger.*` loggers, and the Kafka client's (`aiokafka.*`, at `kafka_level`),
    to stderr as JSON lines (idempotent)."""
    for name, at in (("streamledger", level), ("aiokafka", kafka_level)):
        root = logging.getLogger(name)
        root.setLevel(at.upper())
        if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(JsonFormatter())
            root.addHandler(handler)
        root.propagate = False


def get_logger(service: str) -> logging.Logger:
    return logging.getLogger(f"streamledger.{service}")
