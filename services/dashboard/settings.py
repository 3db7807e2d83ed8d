"""Settings of the dashboard: `STREAMLEDGER_DASHBOARD_*` on top of the common `STREAMLEDGER_*`.

The ledger watcher reaches Fabric through `LedgerSettings` (`STREAMLEDGER_FABRIC_*`), as the
local identity `dashboard` unless they name another; it must hold the auditor role.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator

from streamledger.access import exposure_problem
from streamledger.kafka import topics
from streamledger.retry import RetryPolicy
from streamledger.settings import CommonSettings


class DashboardSettings(CommonSettings):
    dashboard_host: str = "127.0.0.1"
    """Where the page is served. Beyond loopback (0.0.0.0, a LAN address) a token is required."""
    dashboard_port: int = 8088
    dashboard_token: SecretStr | None = None
    """STREAMLEDGER_DASHBOARD_TOKEN: when set, every request must carry it: `Authorization: Bearer
    <token>`, or (for a browser) open the page once as `/?token=<token>`, which sets a cookie the
    page's own requests then carry. Required when `dashboard_host` is not loopback."""
    dashboard_raw_topic: str = topics.RAW
    dashboard_clean_topic: str = topics.CLEAN
    dashboard_deadletter_topic: str = topics.DEADLETTER
    dashboard_predictions_topic: str = topics.PREDICTIONS
    dashboard_snapshots_topic: str = topics.SNAPSHOTS
    dashboard_model_metrics_topic: str = topics.MODEL_METRICS
    dashboard_usage_topic: str = topics.USAGE
    dashboard_anchors_topic: str = topics.ANCHORS
    dashboard_service_groups: dict[str, str] = Field(default_factory=lambda: {
        "streamledger-cleaning": "cleaning",
        "streamledger-storage": "storage",
        "streamledger-learning": "learning",
        "streamledger-ledger": "ledger",
    })
    """Consumer group -> the service it belongs to, for labels; other groups reading the
    watched topics are shown under their group id."""
    dashboard_stale_after_seconds: float = 10.0
    """A topic with no new record, or a group with lag that has not committed, for this long is stale."""
    dashboard_window_seconds: float = 120.0
    """How much history the charts keep (memory stays bounded by it)."""
    dashboard_tick_seconds: float = 1.0
    """How often end offsets are read and a frame is pushed to the browsers."""
    dashboard_lag_seconds: float = 2.0
    """How often consumer-group offsets are read."""
    dashboard_group_recheck_seconds: float = 5.0
    """How often a group that has not (yet) committed on a watched topic is looked at again."""
    dashboard_feed_tail: int = 200
    """On start, how many of the latest records per partition of the feed topics to read back."""
    dashboard_batch_max: int = 500
    """Most records decoded per poll of the feed topics (bounded, so the reader never hogs the broker)."""
    dashboard_kafka_retry_attempts: int = Field(default=40, ge=1)
    """Tries to reach Kafka in a row before the dashboard gives up and exits 1 (8 to 9 minutes
    with the default waits); every failed try is shown on the page and counted."""
    dashboard_kafka_retry_max_seconds: float = Field(default=15.0, ge=0.5)
    """Longest wait between two tries to reach Kafka (backoff from 0.5 s)."""
    dashboard_ledger: bool = True
    """Watch the Fabric ledger (where: the `STREAMLEDGER_FABRIC_*` settings); false: the ledger
    panels say the watcher is off and nothing connects to a peer."""
    dashboard_ledger_history_blocks: int = 1000
    """On start, how many of the ledger's latest blocks to read events back from."""
    dashboard_ledger_poll_seconds: float = 2.0
    """How often the ledger is asked about what the page shows but no event told (and pinged)."""
    dashboard_ledger_recheck_seconds: float = 10.0
    """How soon a model, hold or anchor the ledger did not have is asked about again."""
    dashboard_ledger_lookups_max: int = 16
    """Most point reads per poll, so the watcher never loads the peer."""
    dashboard_ledger_retry_attempts: int = Field(default=40, ge=1)
    """Tries to reach the ledger in a row before the dashboard gives up and exits 1."""
    dashboard_ledger_retry_max_seconds: float = Field(default=15.0, gt=0)
    """Longest wait between reconnection attempts to an unreachable ledger (backoff from 0.5 s)."""
    dashboard_audit_url: str = "http://127.0.0.1:8090"
    """The audit API (`streamledger serve audit`) the lineage panel asks for an event's trace and
    the bills panel for a hold's bill; the page reaches it only through the dashboard, under the
    dashboard's own token."""
    dashboard_audit_token: SecretStr | None = None
    """The auditor token of that API (STREAMLEDGER_AUDIT_TOKEN there), when it needs one."""
    dashboard_audit_timeout_seconds: float = Field(default=60.0, gt=0)
    """How long one trace or bill may take before the panel says the audit did not answer."""

    @model_validator(mode="after")
    def _exposed_needs_a_token(self) -> DashboardSettings:
        problem = exposure_problem(self.dashboard_host, self.token(), "STREAMLEDGER_DASHBOARD_TOKEN", "the dashboard")
        if problem:
            raise ValueError(problem)
        return self

    def token(self) -> str | None:
        return self.dashboard_token.get_secret_value() if self.dashboard_token is not None else None

    def kafka_retry(self) -> RetryPolicy:
        return RetryPolicy(attempts=self.dashboard_kafka_retry_attempts, initial_seconds=0.5,
                           max_seconds=self.dashboard_kafka_retry_max_seconds, jitter=0.2)

    def ledger_retry(self) -> RetryPolicy:
        return RetryPolicy(attempts=self.dashboard_ledger_retry_attempts,
                           initial_seconds=min(0.5, self.dashboard_ledger_retry_max_seconds),
                           max_seconds=self.dashboard_ledger_retry_max_seconds, jitter=0.2)

    def throughput_topics(self) -> dict[str, str]:
        """Label -> topic of the charts of events/s."""
        return {"raw": self.dashboard_raw_topic, "clean": self.dashboard_clean_topic,
                "dead letters": self.dashboard_deadletter_topic, "predictions": self.dashboard_predictions_topic}

    def feed_topics(self) -> list[str]:
        """Topics whose records the dashboard decodes (the rest it only counts by offsets)."""
        return [self.dashboard_deadletter_topic, self.dashboard_snapshots_topic, self.dashboard_model_metrics_topic,
                self.dashboard_usage_topic, self.dashboard_anchors_topic]

    def watched_topics(self) -> list[str]:
        return list(dict.fromkeys([*self.throughput_topics().values(), *self.feed_topics()]))
