"""Everything the page shows, kept in bounded rolling windows and rendered as one JSON frame.

The Kafka reader feeds it (`observe_offsets`, `observe_group`, `on_record`), the ledger
watcher its `ledger` view (events and point lookups, asked for by `ledger_lookups`); the
SSE endpoint sends `frame(now)`. No I/O here, so every rule is unit-tested without servers.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.dashboard.health import GroupProgress, topic_status
from services.dashboard.lag import Partition, anchor_lag, group_lag
from services.dashboard.ledger_view import LedgerView, Lookup
from services.dashboard.rates import OffsetRate

MAX_MODELS = 12
MAX_POINTS = 300
FEED_LENGTH = 20
ERROR_CHARS = 300


class UnknownFeedTopicError(KeyError):
    """A record came from a topic the board does not decode."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class FeedTopics:
    """The topics whose records the board reads, by what they carry."""

    deadletter: str
    snapshots: str
    model_metrics: str
    usage: str
    anchors: str
    clean: str
    """The topic anchors cover, for the anchor lag."""


@dataclass
class ModelView:
    model_id: str
    points: deque[tuple[int, float, dict[str, float]]] = field(default_factory=lambda: deque(maxlen=MAX_POINTS))
    """(position, ts in seconds, metrics) per ModelMetrics record."""
    drifts: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=50))
    version: int | None = None
    sha256: str | None = None
    snapshot_version: int | None = None
    """The version `sha256` belongs to (metrics may already count a newer one)."""
    events_seen: int | None = None
    snapshot_ts: float | None = None
    seen: deque[tuple[int, str]] = field(default_factory=lambda: deque(maxlen=16))
    """(version, sha256) of the recent snapshots on the topic, each checked against the ledger."""


@dataclass
class GroupView:
    progress: GroupProgress
    committed: dict[Partition, int] = field(default_factory=dict)
    members: int = 0
    state: str = ""
    first_seen: float | None = None


def _seconds(ts: Any) -> float | None:
    """A decoded timestamp-millis (datetime) or epoch ms as epoch seconds."""
    if isinstance(ts, datetime):
        return ts.timestamp()
    if isinstance(ts, (int, float)):
        return ts / 1000.0
    return None


class Board:
    def __init__(self, throughput: Mapping[str, str], feeds: FeedTopics, service_groups: Mapping[str, str],
                 stale_after_s: float = 10.0, window_s: float = 120.0, ledger: LedgerView | None = None) -> None:
        self.throughput = dict(throughput)
        self.feeds = feeds
        self.service_groups = dict(service_groups)
        self.stale_after_s = stale_after_s
        self.window_s = window_s
        self.rates: dict[str, OffsetRate] = {}
        self.ends: dict[Partition, int] = {}
        self.groups: dict[str, GroupView] = {}
        self.models: dict[str, ModelView] = {}
        self.dead_letters: deque[dict[str, Any]] = deque(maxlen=FEED_LENGTH)
        self.usage: deque[dict[str, Any]] = deque(maxlen=FEED_LENGTH)
        self.bills: OrderedDict[str, dict[str, Any]] = OrderedDict()
        """The latest FEED_LENGTH holds the usage topic names: their requests, units and latest receipt."""
        self.metrics_seen: float | None = None
        """When the learning service last published model metrics (the record's own time)."""
        self.anchors: deque[dict[str, Any]] = deque(maxlen=FEED_LENGTH)
        self.anchored: dict[Partition, int] = {}
        self.undecodable: dict[str, int] = {}
        self.kafka_error: str | None = None
        self.kafka_seen: float | None = None
        self.ledger = ledger if ledger is not None else LedgerView(enabled=False)

    # -- inputs ------------------------------------------------------------------------------

    def observe_offsets(self, now: float, ends: Mapping[Partition, int]) -> None:
        """End offsets of every watched partition, read at `now`."""
        self.ends.update(ends)
        totals: dict[str, int] = {}
        for (topic, _), end in self.ends.items():
            totals[topic] = totals.get(topic, 0) + end
        for topic, total in totals.items():
            self.rates.setdefault(topic, OffsetRate(self.window_s)).observe(now, total)
        self.kafka_seen = now
        self.kafka_error = None

    def observe_group(self, now: float, group: str, committed: Mapping[Partition, int], members: int,
                      state: str = "") -> None:
        """One consumer group's committed offsets (on watched topics) and its live member count."""
        view = self.groups.get(group)
        if view is None:
            view = self.groups[group] = GroupView(GroupProgress(self.window_s), first_seen=now)
        view.committed = dict(committed)
        view.members = members
        view.state = state
        lag = sum(group_lag(view.committed, self.ends).values())
        view.progress.observe(now, sum(view.committed.values()), lag)

    def forget_group(self, group: str) -> None:
        self.groups.pop(group, None)

    def kafka_unreachable(self, error: str) -> None:
        self.kafka_error = error

    def on_undecodable(self, topic: str) -> None:
        self.undecodable[topic] = self.undecodable.get(topic, 0) + 1

    def on_record(self, topic: str, record: Mapping[str, Any]) -> None:
        """A decoded record from one of the feed topics."""
        f = self.feeds
        if topic == f.deadletter:
            self.dead_letters.appendleft({
                "ts": _seconds(record.get("ts")), "service": record.get("service"), "reason": record.get("reason"),
                "error": str(record.get("error", ""))[:ERROR_CHARS], "source_topic": record.get("source_topic"),
                "key": record.get("key"),
            })
        elif topic == f.model_metrics:
            model = self._model(record["model_id"])
            if model is None:
                return
            model.points.append((int(record["position"]), _seconds(record.get("ts")) or 0.0,
                                 dict(record.get("metrics") or {})))
            self.metrics_seen = max(self.metrics_seen or 0.0, _seconds(record.get("ts")) or 0.0)
            model.version = max(model.version or 0, int(record["version"]))
            drift = record.get("drift")
            if drift:
                model.drifts.append({"position": drift["position"], "detector": drift["detector"],
                                     "before": drift["metric_before"], "after": drift["metric_after"]})
        elif topic == f.snapshots:
            model = self._model(record["model_id"])
            if model is None:
                return
            version = int(record["version"])
            if (version, record["sha256"]) not in model.seen:
                model.seen.append((version, record["sha256"]))
            if model.snapshot_version is None or version >= model.snapshot_version:
                # The newest snapshot's hash is what the ledger must hold; metrics may name a later version.
                model.version = max(model.version or 0, version)
                model.sha256 = record["sha256"]
                model.snapshot_version = version
                model.events_seen = int(record["events_seen"])
                model.snapshot_ts = _seconds(record.get("created"))
        elif topic == f.usage:
            self.usage.appendleft({
                "ts": _seconds(record.get("ts")), "hold_id": record["hold_id"], "client": record["client"],
                "model_id": record["model_id"], "units": record["units"], "price": record["price"],
            })
            self._bill(record)
        elif topic == f.anchors:
            tp = (record["topic"], int(record["partition"]))
            self.anchored[tp] = max(self.anchored.get(tp, -1), int(record["last_offset"]))
            self.anchors.appendleft({
                "ts": _seconds(record.get("ts")), "batch_id": record["batch_id"], "count": record["count"],
                "merkle_root": record["merkle_root"], "tx_id": record.get("tx_id"), "block": record.get("block"),
            })
        else:
            raise UnknownFeedTopicError(f"topic {topic!r} is not one of the dashboard's feed topics")

    def _bill(self, record: Mapping[str, Any]) -> None:
        """One usage record counted in its hold's bill: each request once, the latest receipt it carried."""
        hold_id = record["hold_id"]
        bill = self.bills.pop(hold_id, None) or {"hold_id": hold_id, "client": record.get("client"), "requests": 0,
                                                 "units": 0, "price": record.get("price"), "receipt_units": 0,
                                                 "receipt_sequence": 0, "models": [], "request_ids": set()}
        self.bills[hold_id] = bill  # the most recently used last
        if record.get("request_id") not in bill["request_ids"]:
            bill["request_ids"].add(record.get("request_id"))
            bill["requests"] += 1
            bill["units"] += int(record.get("units") or 0)
        if int(record.get("receipt_sequence") or 0) >= bill["receipt_sequence"]:
            bill["receipt_units"] = int(record.get("receipt_units") or 0)
            bill["receipt_sequence"] = int(record.get("receipt_sequence") or 0)
        model = f"{record.get('model_id')} v{record.get('model_version')}"
        if model not in bill["models"]:
            bill["models"].append(model)
        while len(self.bills) > FEED_LENGTH:
            self.bills.popitem(last=False)

    def _model(self, model_id: str) -> ModelView | None:
        if model_id not in self.models and len(self.models) >= MAX_MODELS:
            return None  # bounded memory: the first MAX_MODELS models are shown
        return self.models.setdefault(model_id, ModelView(model_id))

    def ledger_lookups(self, now: float, limit: int = 16) -> list[Lookup]:
        """Ledger reads that would complete what the page shows: each model's current
        snapshot (and the recent ones seen), the hold of each usage record shown, each anchor shown."""
        return self.ledger.due(
            now,
            models=[*((m.model_id, m.snapshot_version) for m in self.models.values()
                      if m.snapshot_version is not None and m.sha256),
                    *((m.model_id, version) for m in self.models.values() for version, _ in m.seen)],
            holds=[*(r["hold_id"] for r in self.usage), *self.bills],
            anchors=[a["batch_id"] for a in self.anchors],
            limit=limit)

    # -- output ------------------------------------------------------------------------------

    def frame(self, now: float) -> dict[str, Any]:
        """The JSON-ready picture the page draws."""
        return {
            "now": now,
            "stale_after_s": self.stale_after_s,
            "window_s": self.window_s,
            "kafka": {"connected": self.kafka_error is None and self.kafka_seen is not None,
                      "error": self.kafka_error,
                      "last_read_ago": None if self.kafka_seen is None else round(now - self.kafka_seen, 1)},
            "throughput": [self._topic_frame(label, topic, now) for label, topic in self.throughput.items()],
            "groups": [self._group_frame(group, view, now) for group, view in sorted(
                self.groups.items(), key=lambda item: (item[0] not in self.service_groups, item[0]))],
            "models": [self._model_frame(model) for model in self.models.values()],
            "anchors": self._anchors_frame(now),
            "ledger": self.ledger.summary(now),
            "usage": {"records": [{**r, "settlement": self.ledger.hold_status(r["hold_id"])} for r in self.usage],
                      "feed": list(self.ledger.feed), "ledger": self.ledger.status},
            "bills": [self._bill_frame(bill) for bill in reversed(self.bills.values())],
            "dead_letters": list(self.dead_letters),
            "undecodable": dict(self.undecodable),
        }

    def _topic_frame(self, label: str, topic: str, now: float) -> dict[str, Any]:
        rate = self.rates.get(topic)
        if rate is None:
            return {"label": label, "topic": topic, "rate": 0.0, "total": 0, "status": "unknown",
                    "quiet_for": None, "series": []}
        quiet = rate.quiet_for(now)
        return {"label": label, "topic": topic, "rate": round(rate.rate(), 2), "total": rate.total,
                "status": topic_status(quiet, rate.total, self.stale_after_s),
                "quiet_for": None if quiet is None else round(quiet, 1),
                "series": [[round(t, 2), round(r, 2)] for t, r in rate.series()]}

    def _group_frame(self, group: str, view: GroupView, now: float) -> dict[str, Any]:
        service = self.service_groups.get(group)
        connected = view.members > 0 or self._assigns_by_hand_and_alive(service, view, now)
        return {"group": group, "service": service, "lag": view.progress.lag,
                "by_topic": group_lag(view.committed, self.ends), "members": view.members, "state": view.state,
                "connected": connected,
                "status": view.progress.status(now, view.members or int(connected), self.stale_after_s),
                "stalled_for": round(view.progress.stalled_for(now), 1),
                "series": [[round(t, 2), lag] for t, lag in view.progress.lag_history]}

    def _assigns_by_hand_and_alive(self, service: str | None, view: GroupView, now: float) -> bool:
        """A group with no members whose consumer is alive all the same: the learning service assigns its
        partitions by hand (so Kafka lists no member) and commits only at snapshots; it is connected
        while it publishes model metrics. Any member-less group is connected while it commits progress
        (within `stale_after_s`: one that stopped committing with lag is down, as before)."""
        last = view.progress.last_progress  # the first sighting is no progress: a dead group has old offsets too
        committing = last is not None and view.first_seen is not None and last > view.first_seen \
            and now - last < self.stale_after_s
        publishing = service == "learning" and self.metrics_seen is not None \
            and now - self.metrics_seen < 3 * self.stale_after_s
        return committing or publishing

    def _bill_frame(self, bill: Mapping[str, Any]) -> dict[str, Any]:
        """A hold's usage against its state on the ledger: `verdict` is paid (settled on the receipt:
        charged = receipt units x price), charge_differs, open, released or unknown (ledger off or not read)."""
        hold = self.ledger.hold_status(bill["hold_id"])
        expected = bill["receipt_units"] * int(bill["price"] or 0)
        status = hold.get("status")
        verdict = ("paid" if hold.get("charged") == expected else "charge_differs") if status == "settled" else \
            status if status in ("open", "released") else "unknown"
        return {**{k: v for k, v in bill.items() if k != "request_ids"}, "expected_charge": expected,
                "settlement": hold, "verdict": verdict}

    def _model_frame(self, model: ModelView) -> dict[str, Any]:
        latest = model.points[-1][2] if model.points else {}
        metric = sorted(latest)[0] if latest else None
        learned = model.points[-1][0] if model.points else 0
        return {"model_id": model.model_id, "version": model.version, "sha256": model.sha256,
                # No event learned yet: the metric's initial value says nothing, so the page shows "–".
                "learned": learned, "value": latest.get(metric) if metric and learned > 0 else None,
                "versions": [{"version": version, "sha256": sha256,
                              "ledger": self.ledger.model_status(model.model_id, version, sha256)}
                             for version, sha256 in sorted(model.seen, reverse=True)],
                "snapshot_version": model.snapshot_version, "events_seen": model.events_seen,
                "snapshot_ts": model.snapshot_ts,
                "ledger": self.ledger.model_status(model.model_id, model.snapshot_version, model.sha256),
                # Snapshots seen that the ledger does not vouch for: inference and learning refuse them.
                "unvouched": sum(self.ledger.model_status(model.model_id, version, sha256)["status"]
                                 in ("mismatch", "not_registered") for version, sha256 in model.seen),
                "metric": metric, "latest": latest,
                "series": [[pos, m[metric]] for pos, _, m in model.points if metric in m],
                "drifts": list(model.drifts)}

    def _anchors_frame(self, now: float) -> dict[str, Any]:
        rate = self.rates.get(self.feeds.anchors)
        return {"rate": round(rate.rate(), 2) if rate else 0.0, "total": rate.total if rate else 0,
                "lag": anchor_lag(self.anchored, self.ends, self.feeds.clean),
                "latest": [{**a, "ledger": self.ledger.anchor_status(a["batch_id"], a["merkle_root"])}
                           for a in self.anchors],
                "confirmed": list(self.ledger.confirmed), "ledger": self.ledger.status}
