"""Settings of the cleaning service (`STREAMLEDGER_*` environment variables)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from services.cleaning.rules import RuleBook
from streamledger.kafka import topics
from streamledger.settings import CommonSettings


class CleaningSettings(CommonSettings):
    raw_topic: str = topics.RAW
    clean_topic: str = topics.CLEAN
    deadletter_topic: str = topics.DEADLETTER
    cleaning_group: str = "streamledger-cleaning"
    """Consumer group id; also the faust app id, which prefixes the dedup table's changelog topic."""
    cleaning_partitions: int = 1
    """Partitions for topics the service creates (the dedup changelog must match events.raw)."""
    cleaning_data_dir: Path = Path.home() / ".cache" / "streamledger" / "cleaning"
    """faust's local state directory (outside the repo); one subfolder per group."""
    cleaning_rules_file: Path | None = None
    """JSON file with a RuleBook: {"default": {...}, "tenants": {"acme": {...}}}; none = defaults."""
    dedup_window_seconds: float = 3600.0
    max_message_bytes: int = 256 * 1024
    """Raw messages larger than this are dead-lettered unread (reason too_large)."""
    commit_interval_seconds: float = 1.0

    def rule_book(self) -> RuleBook:
        if self.cleaning_rules_file is None:
            return RuleBook()
        try:
            return RuleBook.model_validate(json.loads(self.cleaning_rules_file.read_text()))
        except (OSError, json.JSONDecodeError, ValidationError) as exc:
            raise ValueError(f"STREAMLEDGER_CLEANING_RULES_FILE={self.cleaning_rules_file}: {exc}") from exc
