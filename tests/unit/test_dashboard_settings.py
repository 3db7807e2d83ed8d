"""The dashboard's settings: its own `STREAMLEDGER_DASHBOARD_*` names, never another service's."""

from __future__ import annotations

import pytest

from services.dashboard.settings import DashboardSettings
from streamledger.retry import RetryPolicy


def test_topics_are_read_under_the_dashboards_own_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMLEDGER_RAW_TOPIC", "cleaning-reads-this")  # another service's setting
    monkeypatch.setenv("STREAMLEDGER_DASHBOARD_RAW_TOPIC", "raw-x")
    monkeypatch.setenv("STREAMLEDGER_DASHBOARD_ANCHORS_TOPIC", "anchors-x")
    settings = DashboardSettings()
    assert settings.throughput_topics() == {"raw": "raw-x", "clean": "events.clean", "dead letters": "events.deadletter",
                                            "predictions": "predictions"}
    assert settings.feed_topics() == ["events.deadletter", "models.snapshots", "models.metrics", "usage", "anchors-x"]


def test_retry_policies_are_bounded_by_the_settings() -> None:
    settings = DashboardSettings(dashboard_kafka_retry_attempts=7, dashboard_kafka_retry_max_seconds=3,
                                 dashboard_ledger_retry_attempts=9, dashboard_ledger_retry_max_seconds=0.2)
    assert settings.kafka_retry() == RetryPolicy(attempts=7, initial_seconds=0.5, max_seconds=3, jitter=0.2)
    assert settings.ledger_retry() == RetryPolicy(attempts=9, initial_seconds=0.2, max_seconds=0.2, jitter=0.2)
    with pytest.raises(ValueError, match="dashboard_kafka_retry_attempts"):
        DashboardSettings(dashboard_kafka_retry_attempts=0)
