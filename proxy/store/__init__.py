"""The store: customers, key records, customer tokens and usage, chosen by URL.

    store_from_url("sqlite:///var/lib/keyfront/keyfront.db")   embedded, one host
    store_from_url("redis://127.0.0.1:6379/0")                  shared by many instances

Every implementation passes the one contract suite in tests/test_store.py. Drivers'
exceptions are translated at this edge into `StoreError` (and `Conflict` for a create
whose id exists); callers never see sqlite3 or redis exceptions.
"""

from __future__ import annotations

from .base import (
    CHANGE_KINDS,
    Change,
    ChangeKind,
    CustomerToken,
    Grain,
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
    "Scope",
    "Store",
    "UsageRow",
    "store_from_url",
]


def store_from_url(url: str) -> Store:
    """The Store for a URL: sqlite:///path, redis://, rediss://, redis+cluster://."""
    scheme = url.partition("://")[0].lower()
    if scheme == "sqlite":
        from .sqlite import SqliteStore

        return SqliteStore(url)
    if scheme in ("redis", "rediss", "redis+cluster"):
        from .redis import RedisStore

        return RedisStore(url)
    raise ValueError(f"unknown store scheme {scheme!r} (use sqlite://, redis://, rediss://)")
