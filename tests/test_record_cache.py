"""The record cache: hits never await, misses coalesce, changes evict (SPEC section 2)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from proxy.app import follow_changes
from proxy.errors import KeyDisabled, KeyExpired, KeyRevoked, Unavailable
from proxy.record_cache import RecordCache, status_refusal
from proxy.records import Customer, KeyRecord
from proxy.store import Change, Store, store_from_url
from proxy.store.sqlite import SqliteStore

from conftest import RedisServer, empty_store_url, free_port


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


# --- a change published while a load is in flight (issue 12) ---------------------------


def gated(store_class: type[Store]) -> type[Store]:
    """`store_class` whose next key read, once `gate` is set, reads the store and then
    waits for the test to open the gate before returning: an ordering hook that lets a
    change land between a load's store read and its return, as on a busy loop."""

    class Gated(store_class):  # type: ignore[misc,valid-type]
        gate: asyncio.Event | None = None
        read_done = asyncio.Event()

        async def get_key_and_customer(
            self, key_id: str
        ) -> tuple[KeyRecord, Customer | None] | None:
            found = await super().get_key_and_customer(key_id)
            gate, self.gate = self.gate, None  # later reads pass straight through
            if gate is not None:
                self.read_done.set()
                await gate.wait()
            return found

    return Gated


@pytest.fixture(params=["sqlite", "redis"])
async def gated_store(
    request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer
) -> AsyncIterator[Store]:
    url = empty_store_url(request.param, redis_server, str(tmp_path))
    store = gated(type(store_from_url(url)))(url)
    await store.open()
    await store.create_customer(Customer("acme"))
    await store.create_key(KeyRecord("k" * 22, "acme"))
    yield store
    await store.close()


@pytest.mark.parametrize("change", ["key", "customer"])
async def test_a_revocation_during_a_load_is_not_lost(gated_store: Any, change: str) -> None:
    """The load read the key while it was active; the revocation and its invalidation
    land before the load returns. The stale answer must not be installed as fresh: the
    next request sees the revocation, not the TTL's worth of the old record."""
    cache = RecordCache(gated_store, ttl=60, max_entries=10)
    gate = gated_store.gate = asyncio.Event()
    load = asyncio.create_task(cache.load("k" * 22))
    await asyncio.wait_for(gated_store.read_done.wait(), 5)
    if change == "key":
        await gated_store.put_key(KeyRecord("k" * 22, "acme", status="revoked"))
        cache.apply(Change("key", "k" * 22))
    else:
        await gated_store.put_customer(Customer("acme", status="disabled"))
        cache.apply(Change("customer", "acme"))
    late = asyncio.create_task(cache.load("k" * 22))  # a request after the invalidation
    await asyncio.wait_for(asyncio.shield(late), 5)
    gate.set()
    await load  # what it read before the change may answer its own request
    entry = await asyncio.wait_for(late, 5)
    assert entry.record is not None and entry.customer is not None
    refusal = KeyRevoked if change == "key" else KeyDisabled
    assert type(status_refusal(entry.record, entry.customer, time.time())) is refusal
    cached = cache.lookup("k" * 22) or await cache.load("k" * 22)
    assert cached.record is not None
    assert type(status_refusal(cached.record, cached.customer, time.time())) is refusal
