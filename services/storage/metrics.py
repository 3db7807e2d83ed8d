"""The storage service's Prometheus metrics (one registration per process)."""

from streamledger.metrics import counter, gauge, seconds

SERVICE = "storage"

WRITTEN = counter(SERVICE, "documents", "Documents upserted, by collection", ("collection",))
DEAD_LETTERS = counter(SERVICE, "deadletters", "Messages dead-lettered by the sink, by reason", ("reason",))
RETRIES = counter(SERVICE, "write_retries", "MongoDB operations retried because MongoDB was unavailable")
WRITE_SECONDS = seconds(SERVICE, "write", "Time to write one batch, retries included")
LAG = gauge(SERVICE, "consumer_lag", "Messages not yet stored", ("topic", "partition"))
