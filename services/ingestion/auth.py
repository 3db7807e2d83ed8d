"""Per-tenant API keys, configured as SHA-256 digests so the configuration holds no secret.

Keys are long random tokens, so a plain SHA-256 (not a slow password hash) is enough: a
digest cannot be turned back into a key, and lookups stay cheap on every request.

Make a key and the digest to configure:

    python -m services.ingestion.auth            # prints a new key and its digest
    python -m services.ingestion.auth MYKEY      # prints the digest of MYKEY
"""

from __future__ import annotations

import hashlib
import secrets
import sys
from collections.abc import Mapping


class AuthenticationError(PermissionError):
    """The caller gave no API key, or one that belongs to no tenant."""


def hash_key(key: str) -> str:
    """The hex SHA-256 digest to put in configuration for `key`."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKeys:
    """Maps an API key to its tenant by digest: `ApiKeys({"acme": [digest, ...]}).tenant(key)`."""

    def __init__(self, digests_by_tenant: Mapping[str, list[str]]) -> None:
        self._tenant_by_digest: dict[str, str] = {}
        for tenant, digests in digests_by_tenant.items():
            for digest in digests:
                digest = digest.strip().lower().removeprefix("sha256:")
                if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                    raise ValueError(f"API key digest for tenant {tenant!r} is not a hex SHA-256: {digest[:12]!r}...")
                self._tenant_by_digest[digest] = tenant

    def tenant(self, key: str | None) -> str:
        """The tenant that owns `key`, or `AuthenticationError`."""
        if not key:
            raise AuthenticationError("missing API key: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
        tenant = self._tenant_by_digest.get(hash_key(key))
        if tenant is None:
            raise AuthenticationError("unknown API key")
        return tenant

    def __len__(self) -> int:
        return len(self._tenant_by_digest)


def key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The key of `Authorization: Bearer <key>` or `X-API-Key: <key>` (lower-case header names)."""
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key") or None


if __name__ == "__main__":
    key = sys.argv[1] if len(sys.argv) > 1 else secrets.token_urlsafe(32)
    if len(sys.argv) <= 1:
        print(f"key:    {key}")
    print(f"sha256: {hash_key(key)}")
