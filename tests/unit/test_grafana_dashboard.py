"""deploy/grafana/streamledger.json queries only metrics the services export, with their labels.

The services' metric modules are imported and their metrics read from prometheus_client's
registry, as `/metrics` would show them (a counter `x` as `x_total`, a histogram as `x_bucket`,
`x_sum`, `x_count`), so renaming a metric or a label without changing the dashboard fails here.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "streamledger.json"
SERVICES = ("ingestion", "cleaning", "storage", "learning", "inference", "ledger", "audit", "dashboard")
DECLARES_METRICS = re.compile(r"^\w+ = (metrics\.)?(counter|seconds|gauge)\(|MetricFamily\(", re.MULTILINE)
TARGET_LABELS = {"namespace", "pod", "container", "service", "job", "instance", "endpoint"}
"""Labels Prometheus adds from the scrape target (the chart's ServiceMonitors)."""
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def metric_modules() -> list[str]:
    """Every module of the services and the library that declares a metric."""
    paths = sorted([*(REPO / "services").rglob("*.py"), *(REPO / "streamledger").rglob("*.py")])
    return [".".join(path.relative_to(REPO).with_suffix("").parts) for path in paths
            if DECLARES_METRICS.search(path.read_text())]


def exported() -> dict[str, set[str]]:
    """Sample name -> label names, for every metric registered once the services' modules are imported."""
    for module in metric_modules():
        importlib.import_module(module)
    samples: dict[str, set[str]] = {}
    for collector in list(REGISTRY._collector_to_names):
        if isinstance(collector, MetricWrapperBase):
            families = [(collector._name, collector._type, set(collector._labelnames))]
        else:  # a custom collector (the process metrics, inference's ServingMetrics)
            families = [(f.name, f.type, set(getattr(f, "_labelnames", ())) | {k for s in f.samples for k in s.labels})
                        for f in collector.collect()]
        for name, kind, labels in families:
            for suffix in SUFFIXES.get(kind, ("",)):
                samples[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return samples


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target and query variable."""
    found = [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", [])]
    found += [(f"variable {v['name']}", v["definition"]) for v in dashboard["templating"]["list"] if "definition" in v]
    return found


def labels_used(expr: str) -> set[str]:
    by = {label.strip() for clause in re.findall(r"\bby \(([^)]*)\)", expr) for label in clause.split(",")}
    matchers = {name for selector in re.findall(r"\{([^}]*)\}", expr) for name in re.findall(r"(\w+)\s*=~?", selector)}
    return (by | matchers) - {""}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def samples() -> dict[str, set[str]]:
    return exported()


def test_every_metric_queried_is_exported(dashboard: dict, samples: dict[str, set[str]]) -> None:
    missing = [(title, name) for title, expr in queries(dashboard)
               for name in re.findall(r"\b((?:streamledger|process)_\w+)", expr) if name not in samples]
    assert not missing, f"queried but no service exports them: {missing}"


def test_every_label_queried_is_the_metrics_own_or_the_targets(dashboard: dict, samples: dict[str, set[str]]) -> None:
    wrong = []
    for title, expr in queries(dashboard):
        known = TARGET_LABELS.union(*(samples.get(name, set()) for name in re.findall(r"\b(?:streamledger|process)_\w+", expr)))
        wrong += [(title, label) for label in labels_used(expr) - known]
    assert not wrong, f"labels the queried metrics do not have: {wrong}"


def test_every_service_has_a_row_of_its_own_metrics(dashboard: dict) -> None:
    rows: dict[str, list[str]] = {}
    current = None
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            current = panel["title"]
            rows[current] = []
        elif current is not None:
            rows[current] += [target["expr"] for target in panel.get("targets", [])]
    for service in SERVICES:
        titled = [title for title in rows if title.lower().startswith(service)]
        assert titled, f"no row for {service}: {list(rows)}"
        assert any(f"streamledger_{service}_" in expr for expr in rows[titled[0]]), f"row {titled[0]} shows no {service} metric"


def test_the_checker_sees_a_missing_metric_and_a_wrong_label(samples: dict[str, set[str]]) -> None:
    assert "streamledger_ingestion_requests_total" in samples
    assert samples["streamledger_ingestion_requests_total"] >= {"interface", "status"}
    assert "streamledger_ingestion_request_seconds_bucket" in samples
    assert "streamledger_ingestion_requests" not in samples  # a counter is exported with `_total`
    assert labels_used('sum by (model_id, le) (rate(x_bucket{namespace="$namespace", status=~"OK"}[5m]))') == {
        "model_id", "le", "namespace", "status"}
