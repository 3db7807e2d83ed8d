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


TOKEN = "0123456789abcdef-dashboard"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "dashboard.example.com"])
def test_beyond_loopback_it_refuses_without_a_token(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    monkeypatch.delenv("STREAMLEDGER_DASHBOARD_TOKEN", raising=False)
    with pytest.raises(ValueError, match="STREAMLEDGER_DASHBOARD_TOKEN"):
        DashboardSettings(dashboard_host=host)
    assert DashboardSettings(dashboard_host=host, dashboard_token=TOKEN).token() == TOKEN


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_on_loopback_no_token_is_needed(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    monkeypatch.delenv("STREAMLEDGER_DASHBOARD_TOKEN", raising=False)
    assert DashboardSettings(dashboard_host=host).token() is None


def test_the_token_comes_from_the_environment_and_must_not_be_short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMLEDGER_DASHBOARD_HOST", "0.0.0.0")
    monkeypatch.setenv("STREAMLEDGER_DASHBOARD_TOKEN", TOKEN)
    assert DashboardSettings().token() == TOKEN
    assert TOKEN not in repr(DashboardSettings())  # a secret, not printed
    monkeypatch.setenv("STREAMLEDGER_DASHBOARD_TOKEN", "short")
    with pytest.raises(ValueError, match="at least 16"):
        DashboardSettings()
