"""Prometheus metrics named `streamledger_<service>_<what>_total|_seconds`."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server


def counter(service: str, what: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
    return Counter(f"streamledger_{service}_{what}", doc, labels)  # client adds `_total`


def seconds(service: str, what: str, doc: str, labels: tuple[str, ...] = ()) -> Histogram:
    return Histogram(f"streamledger_{service}_{what}_seconds", doc, labels)


def gauge(service: str, what: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
    return Gauge(f"streamledger_{service}_{what}", doc, labels)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Expose `/metrics` on host:port in a background thread; port 0 leaves it off."""
    if port:
        start_http_server(port, addr=host)
