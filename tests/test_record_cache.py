"""The record cache: hits never await, misses coalesce, changes evict (SPEC section 2)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.app import follow_changes
from proxy.errors import KeyDisabled, KeyExpired, KeyRevoked, Unavailable
from proxy.record_cache import RecordCache, status_refusal
from proxy.records import Customer, KeyRecord
from proxy.store import Change, store_from_url
from proxy.store.sqlite import SqliteStore

from conftest import free_port


class CountingStore(SqliteStore):
    """The real SQLite store, counting the request path's reads."""

    reads = 0

    async def get_key_and_customer(self, key_id: str) -> tuple[KeyRecord, Customer | None] | None:
        self.reads += 1
        await asyncio.sleep(0.01)  # let concurrent callers pile up behind one read
        return await super().get_key_and_customer(key_id)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    store = CountingStore(f"sqlite://{tmp_path}/kf.db")
    await store.open()
    await store.create_customer(Customer("acme"))
    await store.create_key(KeyRecord("k" * 22, "acme", referrers=("example.com",)))
    yield store
    await store.close()


async def test_hit_after_one_read(store: CountingStore) -> None:
    cache = RecordCache(store, ttl=60, max_entries=10)
    assert cache.lookup("k" * 22) is None
    entry = await cache.load("k" * 22)
    assert entry.record is not None and entry.customer is not None
    assert entry.policy is not None
    assert cache.lookup("k" * 22) is entry
    assert store.reads == 1


async def test_concurrent_misses_share_one_read(store: CountingStore) -> None:
    cache = RecordCache(store, ttl=60, max_entries=10)
    entries = await asyncio.gather(*(cache.load("k" * 22) for _ in range(50)))
    assert store.reads == 1
    assert all(e is entries[0] for e in entries)


async def test_unknown_keys_are_cached_briefly(store: CountingStore) -> None:
    cache = RecordCache(store, ttl=60, max_entries=10, negative_ttl=0.05)
    assert (await cache.load("u" * 22)).record is None
    assert cache.lookup("u" * 22) is not None
    await asyncio.sleep(0.06)
    assert cache.lookup("u" * 22) is None


async def test_ttl_expires_entries(store: CountingStore) -> None:
    cache = RecordCache(store, ttl=0.05, max_entries=10)
    await cache.load("k" * 22)
    await asyncio.sleep(0.06)
    assert cache.lookup("k" * 22) is None


async def test_changes_evict_the_key_or_the_customers_keys(store: CountingStore) -> None:
    cache = RecordCache(store, ttl=60, max_entries=10)
    await cache.load("k" * 22)
    cache.apply(Change("customer", "other"))
    assert cache.lookup("k" * 22) is not None
    cache.apply(Change("customer", "acme"))
    assert cache.lookup("k" * 22) is None
    await cache.load("k" * 22)
    cache.apply(Change("key", "k" * 22))
    assert cache.lookup("k" * 22) is None
    await cache.load("k" * 22)
    cache.apply(Change("all"))
    assert len(cache) == 0


async def test_a_write_reaches_a_following_cache_within_a_second(store: CountingStore) -> None:
    cache = RecordCache(store, ttl=60, max_entries=10)
    follower = asyncio.create_task(follow_changes(store, cache, None))
    await asyncio.sleep(0.05)
    await cache.load("k" * 22)
    started = time.monotonic()
    await store.put_key(KeyRecord("k" * 22, "acme", status="revoked"))
    while cache.lookup("k" * 22) is not None:
        assert time.monotonic() - started < 1.0
        await asyncio.sleep(0.01)
    follower.cancel()


async def test_size_is_bounded_least_recently_used_first(store: CountingStore) -> None:
    for i in range(5):
        await store.create_key(KeyRecord(f"{i}" * 22, "acme"))
    cache = RecordCache(store, ttl=60, max_entries=3)
    for i in range(4):
        await cache.load(f"{i}" * 22)
    assert len(cache) == 3
    assert cache.lookup("0" * 22) is None
    assert cache.lookup("3" * 22) is not None


async def test_store_down_uses_a_stale_entry_or_refuses_with_unavailable(
    store: CountingStore,
) -> None:
    cache = RecordCache(store, ttl=0.01, max_entries=10)
    await cache.load("k" * 22)
    await asyncio.sleep(0.02)
    cache._store = store_from_url(f"redis://127.0.0.1:{free_port()}/0")
    await cache._store.open()
    stale = await cache.load("k" * 22)
    assert stale.record is not None
    with pytest.raises(Unavailable):
        await cache.load("z" * 22)


@pytest.mark.parametrize(
    ("record", "customer", "refusal"),
    [
        (KeyRecord("k", "c"), Customer("c"), None),
        (KeyRecord("k", "c", status="revoked"), Customer("c"), KeyRevoked),
        (KeyRecord("k", "c", status="disabled"), Customer("c"), KeyDisabled),
        (KeyRecord("k", "c"), Customer("c", status="disabled"), KeyDisabled),
        (KeyRecord("k", "c"), None, KeyDisabled),
        (KeyRecord("k", "c", expires_at=100), Customer("c"), KeyExpired),
        (KeyRecord("k", "c", expires_at=10**10), Customer("c"), None),
    ],
)
def test_status_refusal(
    record: KeyRecord, customer: Customer | None, refusal: type[Exception] | None
) -> None:
    found = status_refusal(record, customer, now=1000.0)
    assert type(found) is refusal if refusal else found is None
