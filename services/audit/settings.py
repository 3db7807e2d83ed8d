"""Settings of the audit API: `STREAMLEDGER_AUDIT_*` on top of the common `STREAMLEDGER_*`.

The ledger is reached through `LedgerSettings` (`STREAMLEDGER_FABRIC_*`); the audit only
evaluates, so any enrolled identity of the channel will do.
"""

from __future__ import annotations

import ipaddress

from pydantic import Field, SecretStr, model_validator

from streamledger.settings import CommonSettings

MIN_TOKEN_LENGTH = 16


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach; a host name counts as exposed (it may resolve anywhere)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class AuditSettings(CommonSettings):
    audit_host: str = "127.0.0.1"
    """Where both servers listen. Beyond loopback (0.0.0.0, a LAN address) an auditor token is required."""
    audit_http_port: int = 8090
    audit_grpc_port: int = 8091
    audit_token: SecretStr | None = None
    """STREAMLEDGER_AUDIT_TOKEN: when set, every call must send `Authorization: Bearer <token>`
    (HTTP header or gRPC metadata). Required when `audit_host` is not loopback."""
    audit_ledger_timeout_seconds: float = 10.0
    """How long one ledger query may take before the answer is LEDGER_UNREACHABLE."""
    audit_ledger_attempts: int = 3
    """Tries of a ledger query whose peer is unavailable, before LEDGER_UNREACHABLE (each retry is
    counted in `streamledger_audit_ledger_retries_total`)."""
    audit_mongo_timeout_seconds: float = Field(default=5.0, gt=0)
    """How long to wait for MongoDB before the answer is STORE_UNREACHABLE."""

    @model_validator(mode="after")
    def _exposed_needs_a_token(self) -> AuditSettings:
        token = self.audit_token.get_secret_value() if self.audit_token is not None else ""
        if self.audit_token is not None and len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"STREAMLEDGER_AUDIT_TOKEN must be at least {MIN_TOKEN_LENGTH} characters "
                             f"(got {len(token)}); make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")
        if not is_loopback(self.audit_host) and not token:
            raise ValueError(f"the audit API refuses to listen on {self.audit_host!r}, beyond loopback, without an "
                             "auditor token: set STREAMLEDGER_AUDIT_TOKEN (or listen on 127.0.0.1)")
        if self.audit_ledger_attempts < 1:
            raise ValueError("audit_ledger_attempts must be at least 1")
        return self

    def token(self) -> str | None:
        return self.audit_token.get_secret_value() if self.audit_token is not None else None
