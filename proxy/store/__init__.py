"""The store: customers, key records, customer tokens and usage, chosen by URL.

    store_from_url("sqlite:///var/lib/keyfront/keyfront.db")   embedded, one host
    store_from_url("redis://127.0.0.1:6379/0")                  shared by many instances

    base.py                        the Store interface and its value types: Change,
                                   CustomerToken, UsageRow (Scope, Grain)
    sqlite.py, sqlite_usage.py,    SqliteStore
    sqlite_outbox.py
    redis.py, redis_usage.py,      RedisStore (redis-py), usage.lua, outbox.lua
    redis_outbox.py
    resp.py                        the request path's pipelined Redis client (the shared
                                   rate limiter's), bucket.lua

Every implementation passes the one contract suite in tests/test_store.py. Drivers'
exceptions are translated at this edge into `StoreError` (and `Conflict` for a create
whose id exists); callers never see sqlite3 or redis exceptions.

The package owns persistence and the change feed. It imports only the values it
stores (records.py) and errors.py: never the layers that use it (usage.py,
record_cache.py, ratelimit.py, the request path, the admin API), so that their value
types live here or below, and a backend is imported only when its URL is chosen.
"""

from __future__ import annotations

from .base import (
    CHANGE_KINDS,
    Change,
    ChangeKind,
    CustomerToken,
    Grain,
    OutboxEvent,
    Scope,
    Store,
    UsageRow,
)

__all__ = [
    "CHANGE_KINDS",
    "Change",
    "ChangeKind",
    "CustomerToken",
    "Grain",
    "OutboxEvent",
    "Scope",
    "Store",
    "UsageRow",
    "store_from_url",
]


def store_from_url(url: str) -> Store:
    """The Store for a URL: sqlite:///path, redis://, rediss://, redis+cluster://,
    rediss+cluster:// (a cluster over TLS)."""
    scheme = url.partition("://")[0].lower()
    if scheme == "sqlite":
        from .sqlite import SqliteStore

        return SqliteStore(url)
    if scheme in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
        from .redis import RedisStore

        return RedisStore(url)
    raise ValueError(f"unknown store scheme {scheme!r} (use sqlite://, redis://, rediss://)")
