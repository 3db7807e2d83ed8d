"""Settings of the cleaning service (`STREAMLEDGER_CLEANING_*` environment variables)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field, ValidationError

from services.cleaning.rules import RuleBook
from streamledger.kafka import topics
from streamledger.settings import CommonSettings


class CleaningSettings(CommonSettings):
    cleaning_raw_topic: str = topics.RAW
    cleaning_clean_topic: str = topics.CLEAN
    cleaning_deadletter_topic: str = topics.DEADLETTER
    cleaning_group: str = "streamledger-cleaning"
    """Consumer group id; it also names the dedup window's changelog topic (`<group>-dedup-changelog`)."""
    cleaning_partitions: int = 1
    """Partitions for topics the service creates (the changelog takes the raw topic's count)."""
    cleaning_rules_file: Path | None = None
    """JSON file with a RuleBook: {"default": {...}, "tenants": {"acme": {...}}}; none = defaults."""
    cleaning_dedup_window_seconds: float = 3600.0
    cleaning_max_message_bytes: int = 256 * 1024
    """Raw messages larger than this are dead-lettered unread (reason too_large)."""
    cleaning_batch_size: int = Field(2000, ge=1)
    """Raw messages handled per batch: their outputs are acknowledged, then their offsets committed."""
    cleaning_batches_in_flight: int = Field(4, ge=1)
    """Batches sent and not yet acknowledged while the next is handled (their commits keep order)."""
    cleaning_batch_wait_seconds: float = Field(0.2, gt=0)
    """How long a poll waits for messages before a smaller batch is handled."""
    cleaning_expire_every_seconds: float = Field(30.0, gt=0)
    """How often entries older than the dedup window are forgotten."""
    cleaning_session_timeout_seconds: float = 60.0
    """The consumer group's session timeout: after a crash the group waits this long for the
    lost member before a restarted one is given its partitions."""

    @property
    def changelog_topic(self) -> str:
        return f"{self.cleaning_group}-dedup-changelog"

    def rule_book(self) -> RuleBook:
        if self.cleaning_rules_file is None:
            return RuleBook()
        try:
            return RuleBook.model_validate(json.loads(self.cleaning_rules_file.read_text()))
        except (OSError, json.JSONDecodeError, ValidationError) as exc:
            raise ValueError(f"STREAMLEDGER_CLEANING_RULES_FILE={self.cleaning_rules_file}: {exc}") from exc
