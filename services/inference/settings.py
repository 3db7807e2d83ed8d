"""Settings of the inference service: `STREAMLEDGER_INFERENCE_*` on top of the common `STREAMLEDGER_*`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import model_validator

from streamledger import kafka
from streamledger.kafka import topics
from streamledger.settings import DEFAULT_MODELS_FILE, CommonSettings
from streamledger.tls import pair_problem


class InferenceSettings(CommonSettings):
    # Field names carry the service name so the common prefix gives STREAMLEDGER_INFERENCE_*.
    inference_host: str = "127.0.0.1"
    inference_port: int = 8001
    inference_models_file: Path = DEFAULT_MODELS_FILE
    """The learning service's `[[model]]` declarations: the models served and their tasks."""
    inference_snapshot_topic: str = topics.SNAPSHOTS
    inference_snapshot_ledger: bool | None = None
    """Load a snapshot only if the ledger vouches for it (`GetModel` holds exactly its sha256, registered
    by `inference_snapshot_registrant`), read as this service's identity `inference`. Default (None):
    on in paid mode, which has the ledger anyway; off in free mode, which then warns at start that
    snapshots are unverified. true in free mode where a ledger runs (the demo); false in paid mode
    only for a test without Fabric."""
    inference_snapshot_registrant: str = ""
    """The ledger account (`<MSP id>::<certificate subject>`) whose registrations vouch for snapshots:
    the learning service's identity; default: the local identity `registry` of `STREAMLEDGER_FABRIC_MSP_ID`."""
    inference_snapshot_registration_wait_seconds: float = 10.0
    """How long a snapshot not (yet) registered is looked up again before it is refused: the learning
    service registers before it publishes, so this only covers a peer that has not committed it yet."""
    inference_versions_kept: int = 3
    """Recent snapshot versions kept per model, so a request may pin `model_version`."""
    inference_max_request_bytes: int = 16 * 1024 * 1024
    """gRPC max receive size; a larger request is refused with RESOURCE_EXHAUSTED."""
    inference_predictions_topic: str = topics.PREDICTIONS
    inference_predictions_sample: float = 1.0
    """Share of requests written to the predictions topic (0 = none, 1 = all)."""
    inference_queue_size: int = 10_000
    """Prediction/usage records offered and not yet delivered to Kafka; beyond it predictions are
    dropped (and counted), usage records make the request fail with UNAVAILABLE (a paid request is
    never served unmetered)."""
    inference_records_linger_seconds: float = 0.25
    """How long records gather in the record writer before they leave for Kafka as one batch per
    partition (no request waits for it): fewer, larger produce requests cost the broker and the
    writer less CPU, which on a shared machine is CPU the requests get (1-row p99 at concurrency 1
    measured 1.2-1.3 ms with 0.25 against 1.4-2.0 ms with 0.05)."""

    inference_mode: Literal["free", "paid"] = "paid"
    """paid (the default): mutual TLS + a live ledger hold per request, metered to the usage
    topic. free: anyone on the network is served unmetered, for local development."""
    inference_usage_topic: str = topics.USAGE
    inference_credit_window_units: int = 100
    """W: units (rows) served on a hold beyond the client's latest signed receipt, per server; the
    provider's risk per server and hold. An honest client signs after each response, so W must
    cover its largest request times the requests it has in flight at once."""
    inference_reserve_units: int = 1000
    """Units (x the hold's price) a server reserves on the ledger (`Authorize`) at a time; the
    chunk doubles while each lasts less than 10 s."""
    inference_receipt_check_seconds: float = 0.02
    """How long a new receipt may wait before its signature is checked, so that one check covers
    the receipts that came meanwhile (only the newest is checked); a request that needs the receipt
    has it checked at once. 0: every new receipt is checked on its request's path."""
    inference_hold_cache_seconds: float = 5.0
    """How long a hold read from the ledger is trusted before it is read again (in the background)."""
    inference_records_stop_seconds: float = 10.0
    """At shutdown, how long the record writer keeps retrying usage records Kafka has not taken;
    then it logs each in full (`usage_not_recorded`) and exits."""
    inference_tls_cert: Path | None = None
    """The server's certificate (PEM): paid mode needs it and its key; free mode serves TLS when both are set."""
    inference_tls_key: Path | None = None
    inference_client_cas: dict[str, Path] = {}
    """Paid mode: MSP id -> that organisation's client CA certificate (PEM), as JSON in the
    environment. A client certificate is accepted only if one of these issued it. Free mode over TLS:
    with client CAs it requires a client certificate too (mutual TLS), unmetered."""
    inference_client_crls: dict[str, Path] = {}
    """Paid mode: MSP id -> the certificate revocation list (PEM or DER) its client CA signed, as JSON
    in the environment; a listed certificate is refused (UNAUTHENTICATED). Re-read when the file changes."""

    @model_validator(mode="after")
    def _paid_needs_tls(self) -> InferenceSettings:
        if not 0.0 <= self.inference_predictions_sample <= 1.0:
            raise ValueError(f"inference_predictions_sample must be within 0..1; got {self.inference_predictions_sample}")
        if self.inference_mode == "paid":
            missing = [name for name in ("inference_tls_cert", "inference_tls_key") if getattr(self, name) is None]
            if missing or not self.inference_client_cas:
                raise ValueError(
                    "paid mode authenticates clients by mutual TLS: set STREAMLEDGER_INFERENCE_TLS_CERT, "
                    "STREAMLEDGER_INFERENCE_TLS_KEY and STREAMLEDGER_INFERENCE_CLIENT_CAS "
                    f"(missing: {', '.join(missing + ([] if self.inference_client_cas else ['inference_client_cas']))})"
                )
        elif problem := pair_problem(self.inference_tls_cert, self.inference_tls_key, "STREAMLEDGER_INFERENCE_TLS"):
            raise ValueError(problem)
        elif self.inference_client_cas and self.inference_tls_cert is None:
            raise ValueError("STREAMLEDGER_INFERENCE_CLIENT_CAS in free mode asks for mutual TLS: set "
                             "STREAMLEDGER_INFERENCE_TLS_CERT and STREAMLEDGER_INFERENCE_TLS_KEY too")
        if self.inference_records_linger_seconds < 0:
            raise ValueError("inference_records_linger_seconds must not be negative")
        for name in ("inference_credit_window_units", "inference_reserve_units"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1; got {getattr(self, name)}")
        for name in ("inference_records_stop_seconds", "inference_receipt_check_seconds",
                     "inference_snapshot_registration_wait_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative; got {getattr(self, name)}")
        return self

    @property
    def snapshots_vouched(self) -> bool:
        """Whether snapshots must be vouched for by the ledger (`inference_snapshot_ledger`, else paid mode)."""
        return self.inference_mode == "paid" if self.inference_snapshot_ledger is None else self.inference_snapshot_ledger

    def topic_specs(self) -> list[kafka.TopicSpec]:
        """The topics this service reads and writes, as the topic table describes them."""
        return [kafka.spec(topics.PREDICTIONS, self.inference_predictions_topic),
                kafka.spec(topics.USAGE, self.inference_usage_topic),
                kafka.spec(topics.SNAPSHOTS, self.inference_snapshot_topic)]
