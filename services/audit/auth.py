"""The auditor token: `Authorization: Bearer <token>`, over HTTP headers and gRPC metadata alike."""

from __future__ import annotations

import hmac
from collections.abc import Mapping


class AuditorToken:
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
