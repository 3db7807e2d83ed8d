"""Settings of the audit API: `STREAMLEDGER_AUDIT_*` on top of the common `STREAMLEDGER_*`.

The ledger is reached through `LedgerSettings` (`STREAMLEDGER_FABRIC_*`), as the local identity
`audit` unless they name another. The audit only evaluates, but reading every account, hold and
key history needs the auditor role: an identity without it cannot start the service.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from streamledger.access import exposure_problem
from streamledger.kafka import topics
from streamledger.settings import DEFAULT_MODELS_FILE, CommonSettings
from streamledger.tls import pair_problem


class AuditSettings(CommonSettings):
    audit_host: str = "127.0.0.1"
    """Where both servers listen. Beyond loopback (0.0.0.0, a LAN address) an auditor token is required."""
    audit_http_port: int = 8090
    audit_grpc_port: int = 8091
    audit_token: SecretStr | None = None
    """STREAMLEDGER_AUDIT_TOKEN: when set, every call must send `Authorization: Bearer <token>`
    (HTTP header or gRPC metadata). Required when `audit_host` is not loopback."""
    audit_tls_cert: Path | None = None
    """PEM certificate (chain) of both servers; with `audit_tls_key` they serve TLS only (https and
    gRPC over TLS). Both or neither."""
    audit_tls_key: Path | None = None
    """PEM private key (unencrypted) of `audit_tls_cert`."""
    audit_ledger_timeout_seconds: float = 10.0
    """How long one ledger query may take before the answer is LEDGER_UNREACHABLE."""
    audit_ledger_attempts: int = 3
    """Tries of a ledger query whose peer is unavailable, before LEDGER_UNREACHABLE (each retry is
    counted in `streamledger_audit_ledger_retries_total`)."""
    audit_mongo_timeout_seconds: float = Field(default=5.0, gt=0)
    """How long to wait for MongoDB before the answer is STORE_UNREACHABLE."""
    audit_usage_topic: str = topics.USAGE
    """Where `bill` reads a hold's usage records (and the receipts they carry)."""
    audit_usage_timeout_seconds: float = Field(default=30.0, gt=0)
    """How long reading a hold's usage may take before the answer is STORE_UNREACHABLE."""
    audit_raw_topic: str = topics.RAW
    """Where `trace` reads the record ingested (the clean record's raw_partition and raw_offset)."""
    learning_models_file: Path = DEFAULT_MODELS_FILE
    """STREAMLEDGER_LEARNING_MODELS_FILE, the learning service's own setting: `trace` reads which
    models take an event from the same declarations."""

    @model_validator(mode="after")
    def _exposed_needs_a_token(self) -> AuditSettings:
        problem = (exposure_problem(self.audit_host, self.token(), "STREAMLEDGER_AUDIT_TOKEN", "the audit API")
                   or pair_problem(self.audit_tls_cert, self.audit_tls_key, "STREAMLEDGER_AUDIT_TLS"))
        if problem:
            raise ValueError(problem)
        if self.audit_ledger_attempts < 1:
            raise ValueError("audit_ledger_attempts must be at least 1")
        return self

    def token(self) -> str | None:
        return self.audit_token.get_secret_value() if self.audit_token is not None else None
