"""Settings of the cleaning service (`STREAMLEDGER_CLEANING_*` environment variables)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from services.cleaning.rules import RuleBook
from streamledger.kafka import topics
from streamledger.settings import CommonSettings


class CleaningSettings(CommonSettings):
    cleaning_raw_topic: str = topics.RAW
    cleaning_clean_topic: str = topics.CLEAN
    cleaning_deadletter_topic: str = topics.DEADLETTER
    cleaning_group: str = "streamledger-cleaning"
    """Consumer group id; also the faust app id, which prefixes the dedup table's changelog topic."""
    cleaning_partitions: int = 1
    """Partitions for topics the service creates (the dedup changelog must match the raw topic)."""
    cleaning_data_dir: Path = Path.home() / ".cache" / "streamledger" / "cleaning"
    """faust's local state directory (outside the repo); one subfolder per group."""
    cleaning_rules_file: Path | None = None
    """JSON file with a RuleBook: {"default": {...}, "tenants": {"acme": {...}}}; none = defaults."""
    cleaning_dedup_window_seconds: float = 3600.0
    cleaning_max_message_bytes: int = 256 * 1024
    """Raw messages larger than this are dead-lettered unread (reason too_large)."""
    cleaning_commit_interval_seconds: float = 1.0
    """How often faust commits the offsets of handled messages (those whose outputs Kafka acknowledged)."""
    cleaning_session_timeout_seconds: float = 60.0
    """The consumer group's session timeout (faust's default): after a crash the group waits this
    long for the lost member before a restarted one is given its partitions."""

    def rule_book(self) -> RuleBook:
        if self.cleaning_rules_file is None:
            return RuleBook()
        try:
            return RuleBook.model_validate(json.loads(self.cleaning_rules_file.read_text()))
        except (OSError, json.JSONDecodeError, ValidationError) as exc:
            raise ValueError(f"STREAMLEDGER_CLEANING_RULES_FILE={self.cleaning_rules_file}: {exc}") from exc
