"""The inference service's request metrics, counted without a lock per request.

    SERVING.served("phishing-logreg", rows=64, seconds=0.0021)
    SERVING.refused("phishing-logreg", "INVALID_ARGUMENT")

prometheus_client's Counter and Histogram take a lock on every `inc` and `observe`: four
per served request, a tenth of what a small request costs the server. The event loop is
the only writer of these counts, so they are plain numbers, and a collector registered
with prometheus_client turns them into the usual families when `/metrics` is scraped:
  streamledger_inference_requests_total{model_id,status}
  streamledger_inference_rows_total{model_id}
  streamledger_inference_request_seconds (histogram)
  streamledger_inference_predictions_dropped_total
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate

from prometheus_client.core import (
    REGISTRY,
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
"""Upper bounds (seconds) of the latency histogram's buckets; +Inf follows."""


class ServingMetrics(Collector):
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}
        """(model id, status) -> requests answered."""
        self.rows: dict[str, int] = {}
        self.dropped = 0
        """Prediction records dropped because the record buffer was full."""
        self._buckets = [0] * (len(BUCKETS) + 1)
        self._sum = 0.0

    def served(self, model_id: str, rows: int, seconds: float) -> None:
        key = (model_id, "OK")
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        self.rows[model_id] = self.rows.get(model_id, 0) + rows
        self._buckets[bisect_left(BUCKETS, seconds)] += 1
        self._sum += seconds

    def refused(self, model_id: str, status: str) -> None:
        key = (model_id, status)
        self.requests[key] = self.requests.get(key, 0) + 1

    def collect(self) -> Iterator[Metric]:
        # list(dict.items()) copies under the GIL: safe while the loop thread counts on.
        requests = CounterMetricFamily("streamledger_inference_requests", "ModelInfer requests",
                                       labels=("model_id", "status"))
        for (model_id, status), count in list(self.requests.items()):
            requests.add_metric((model_id, status), count)
        rows = CounterMetricFamily("streamledger_inference_rows", "Rows predicted", labels=("model_id",))
        for model_id, count in list(self.rows.items()):
            rows.add_metric((model_id,), count)
        cumulative = list(accumulate(self._buckets))
        bounds = [str(b) for b in BUCKETS] + ["+Inf"]
        latency = HistogramMetricFamily("streamledger_inference_request_seconds", "ModelInfer server-side latency",
                                        buckets=list(zip(bounds, cumulative)), sum_value=self._sum)
        dropped = CounterMetricFamily("streamledger_inference_predictions_dropped",
                                      "Prediction records dropped (queue full)", value=self.dropped)
        yield from (requests, rows, latency, dropped)


SERVING = ServingMetrics()
"""The process's one set (registered at import, like prometheus_client's own metrics)."""
REGISTRY.register(SERVING)
