"""The in-process record cache (SPEC section 2): what a request knows of a key id.

A hit never awaits; a miss is one store read shared by concurrent requests; the
store's change feed evicts entries within a second of a change on any instance.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

from .cached_key import CachedKey, compile_key
from .config import KeyDefaults
from .errors import KeyDisabled, KeyExpired, KeyRevoked, Refusal, StoreError, Unavailable
from .records import Customer, KeyRecord
from .store import Change, Store


def status_refusal(record: KeyRecord, customer: Customer | None, now: float) -> Refusal | None:
    """SPEC check 4: the key and its customer active, the key not expired."""
    if record.status == "revoked":
        return KeyRevoked()
    if record.status != "active" or customer is None or customer.status != "active":
        return KeyDisabled()
    if record.expires_at is not None and record.expires_at <= now:
        return KeyExpired()
    return None


class RecordCache:
    """Bounded LRU of key records with a TTL (SPEC section 2).

    `lookup()` never awaits, so a request whose key is cached does no I/O. Concurrent
    misses for one key id share one store read. Changes announced by the store (any
    instance's writes) drop entries at once, and supersede loads in flight (`apply`),
    so the TTL only bounds staleness when the change feed itself is lost. When the
    store fails, a stale entry is used rather than refusing a key we know.
    """

    def __init__(
        self,
        store: Store,
        ttl: float,
        max_entries: int,
        defaults: KeyDefaults | None = None,
        negative_ttl: float = 5.0,
    ) -> None:
        self._store = store
        self._defaults = defaults or KeyDefaults()
        self._ttl = ttl
        self._negative_ttl = min(ttl, negative_ttl)
        self._max_entries = max_entries
        self._entries: OrderedDict[str, CachedKey] = OrderedDict()
        self._loading: dict[str, asyncio.Future[CachedKey]] = {}
        self.hits = self.misses = 0

    def lookup(self, key_id: str) -> CachedKey | None:
        entry = self._entries.get(key_id)
        if entry is None or entry.fresh_until < time.monotonic():
            return None
        self._entries.move_to_end(key_id)
        self.hits += 1
        return entry

    async def load(self, key_id: str) -> CachedKey:
        """The entry for `key_id` from the store (one read, shared by concurrent
        callers). Raises Unavailable when the store fails and nothing stale is held."""
        pending = self._loading.get(key_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[CachedKey] = asyncio.get_running_loop().create_future()
        self._loading[key_id] = future
        try:
            entry = await self._read(key_id, future)
            future.set_result(entry)
            return entry
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        finally:
            if self._loading.get(key_id) is future:
                del self._loading[key_id]

    async def _read(self, key_id: str, load: asyncio.Future[CachedKey]) -> CachedKey:
        self.misses += 1
        try:
            found = await self._store.get_key_and_customer(key_id)
        except StoreError as exc:
            stale = self._entries.get(key_id)
            if stale is not None:
                return stale
            raise Unavailable("the key store is unreachable") from exc
        fresh_until = time.monotonic() + (self._ttl if found else self._negative_ttl)
        entry = compile_key(found, fresh_until, self._defaults)
        if self._loading.get(key_id) is load:  # else a change came during the read
            self._remember(key_id, entry)
        return entry

    def _remember(self, key_id: str, entry: CachedKey) -> None:
        self._entries[key_id] = entry
        self._entries.move_to_end(key_id)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def apply(self, change: Change) -> None:
        """Drop what a change makes stale (app.follow_changes feeds it the store's
        change feed; purges are the disk cache's business, not this one's).

        Loads in flight that the change may concern are superseded too (issue 12): a
        load is the generation of its key, and one that read the store before the
        change must not install what it read as fresh. It still answers the requests
        that were waiting on it (they came before the change); a request after the
        change starts a new load. A customer change supersedes every load in flight,
        whose customers are unknown until they return: changes are rare, loads short.
        """
        if change.kind == "key":
            self._entries.pop(change.id, None)
            self._loading.pop(change.id, None)
        elif change.kind == "customer":
            stale = [k for k, e in self._entries.items() if _customer_of(e) == change.id]
            for key_id in stale:
                del self._entries[key_id]
            self._loading.clear()
        elif change.kind == "all":
            self._entries.clear()
            self._loading.clear()

    def __len__(self) -> int:
        return len(self._entries)


def _customer_of(entry: CachedKey) -> str | None:
    return entry.record.customer_id if entry.record else None
