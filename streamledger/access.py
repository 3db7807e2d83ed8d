"""Bearer tokens for a server that may listen beyond loopback (the audit API, the dashboard).

    problem = exposure_problem(host, token, "STREAMLEDGER_AUDIT_TOKEN", "the audit API")  # in a settings validator
    token = BearerToken(settings.token())
    token.allows(bearer(request.headers))   # constant-time; with no token configured every call passes

A server bound beyond loopback must have a token (its settings refuse to load otherwise);
on loopback one is optional.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping

MIN_TOKEN_LENGTH = 16


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach; a host name counts as exposed (it may resolve anywhere)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_problem(host: str, token: str | None, env: str, server: str) -> str | None:
    """Why `server` may not listen on `host` with `token` (a short token, or none beyond loopback), or None."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        return (f"{env} must be at least {MIN_TOKEN_LENGTH} characters (got {len(token)}); "
                "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    if not is_loopback(host) and not token:
        return (f"{server} refuses to listen on {host!r}, beyond loopback, without a token: "
                f"set {env} (or listen on 127.0.0.1)")
    return None


class BearerToken:
    """Checks presented tokens against the configured one; with none configured every call passes
    (the settings allow that only on loopback)."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    @property
    def required(self) -> bool:
        return self._token is not None

    def allows(self, presented: str | None) -> bool:
        if self._token is None:
            return True
        return presented is not None and hmac.compare_digest(presented.encode(), self._token)


def bearer(headers: Mapping[str, str]) -> str | None:
    """The token of `authorization: Bearer <token>` (lower-case header names), or None."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
