"""The ingestion service's Prometheus metrics (one registration per process)."""

from streamledger.metrics import counter, gauge, seconds

SERVICE = "ingestion"

EVENTS_ACCEPTED = counter(SERVICE, "events_accepted", "Events acknowledged by Kafka and reported accepted", ("interface",))
EVENTS_REJECTED = counter(SERVICE, "events_rejected", "Events rejected by validation", ("interface",))
REQUESTS = counter(SERVICE, "requests", "Requests answered, by interface and status", ("interface", "status"))
REQUEST_SECONDS = seconds(SERVICE, "request", "Time to answer a request, including Kafka acknowledgements", ("interface",))
PENDING_EVENTS = gauge(SERVICE, "pending_events", "Events handed to the producer and not yet acknowledged by Kafka")
