"""The audit API's Prometheus metrics."""

from __future__ import annotations

import time

from streamledger import metrics

REQUESTS = metrics.counter("audit", "requests", "Audit questions answered", ("api", "query", "status"))
SECONDS = metrics.seconds("audit", "request", "Time to answer an audit question", ("query",))
LEDGER_RETRIES = metrics.counter("audit", "ledger_retries", "Ledger reads tried again after a transient failure",
                                 ("read",))


def observe(api: str, query: str, status: str, started: float) -> None:
    REQUESTS.labels(api, query, status).inc()
    SECONDS.labels(query).observe(time.perf_counter() - started)
