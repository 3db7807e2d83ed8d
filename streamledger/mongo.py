"""MongoDB access shared by the services.

FerretDB 1.24 on SQLite can wedge a database on large `update` commands and on upserts
racing readers (see README, FerretDB caveat): writers here insert rather than update.
"""

from __future__ import annotations

from pymongo import AsyncMongoClient


def mongo_client(url: str, **overrides) -> AsyncMongoClient:
    """An async client that fails fast instead of hanging when the server is away."""
    options = dict(serverSelectionTimeoutMS=5000, connectTimeoutMS=5000, socketTimeoutMS=60_000,
                   maxPoolSize=16)
    options.update(overrides)
    return AsyncMongoClient(url, **options)
