"""The Store contract (proxy/store/__init__.py), run against every implementation:
SQLite in a temporary directory, a real redis-server, and a real 3-node Redis Cluster."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from proxy.errors import Conflict, StoreError
from proxy.records import Customer, KeyRecord
from proxy.store import Change, ChangeKind, Store, store_from_url
from proxy.units import Rate

from conftest import RedisServer, free_port, redis_cli

# --- fixtures -----------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/state/keyfront.db"  # the parent dir is created on open
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    ports: list[int] = request.getfixturevalue("redis_cluster")
    for port in ports:
        redis_cli(port, "FLUSHALL")
    return f"redis+cluster://127.0.0.1:{ports[0]}"


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[Store]:
    store = store_from_url(url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    async with opened(store_url) as store:
        yield store


class Feed:
    """A store's changes(), drained by a task into a queue the test reads from."""

    def __init__(self, store: Store) -> None:
        self.queue: asyncio.Queue[tuple[float, Change]] = asyncio.Queue()
        self.task = asyncio.create_task(self._drain(store))

    async def _drain(self, store: Store) -> None:
        async for change in store.changes():
            self.queue.put_nowait((time.monotonic(), change))

    async def expect(self, wanted: Change, within: float) -> float:
        """When (time.monotonic()) `wanted` arrived, skipping other changes; fails
        when it has not arrived `within` seconds from now."""
        async with asyncio.timeout(within):
            while True:
                arrived, change = await self.queue.get()
                if change == wanted:
                    return arrived

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@contextlib.asynccontextmanager
async def live_feed(reader: Store, writer: Store) -> AsyncIterator[Feed]:
    """A Feed on `reader` that is known to be subscribed: `writer` touches a warm-up
    customer until the feed reports it, since changes() starts "from now on"."""
    feed = Feed(reader)
    try:
        for _ in range(30):
            await writer.put_customer(Customer("warm-up"))
            with contextlib.suppress(TimeoutError):
                await feed.expect(Change("customer", "warm-up"), within=0.3)
                break
        else:
            pytest.fail("the change feed never started")
        yield feed
    finally:
        await feed.close()


async def arrives_within_a_second(
    feed: Feed, write: Awaitable[None], id_: str, kind: ChangeKind = "key"
) -> None:
    """Await `write`; the feed must report the change within 1 s (SPEC section 2)."""
    written = time.monotonic()
    await write
    assert await feed.expect(Change(kind, id_), within=1.0) - written < 1.0


def full_key(
    key_id: str = "K1", customer_id: str = "acme", created_at: int = 1_700_000_000
) -> KeyRecord:
    """A record with every field set to something other than its default."""
    return KeyRecord(
        key_id=key_id,
        customer_id=customer_id,
        name="web app",
        status="disabled",
        created_at=created_at,
        expires_at=1_800_000_000,
        referrers=("example.com", "*.example.org", "https://app.example.net/maps/*"),
        allow_no_referrer=False,
        ips=("192.0.2.0/24", "2001:db8::/32"),
        paths=("/request/icons/", "/files/"),
        rate=Rate(600, 60.0),
        burst=75,
        quota_requests=1_000_000,
        quota_bytes=10 * 1024**3,
        link_secret="s3cret",
        require_signed_links=True,
        version=3,
    )


FULL_CUSTOMER = Customer(
    customer_id="acme",
    name="Acme Corp",
    status="disabled",
    created_at=1_690_000_000,
    max_rate=Rate(100, 1.0),
    max_burst=200,
    quota_requests=5_000_000,
    quota_bytes=1024**4,
)


# --- records ------------------------------------------------------------------------


async def test_ping_answers(store: Store) -> None:
    await store.ping()


async def test_customers_are_created_read_replaced_and_listed_by_id(store: Store) -> None:
    for customer_id in ("zeta", "acme", "mid"):
        await store.create_customer(Customer(customer_id, name=customer_id.upper()))
    await store.put_customer(Customer("mid", name="Middle", status="disabled"))
    await store.put_customer(Customer("new"))  # put writes a missing record too

    assert await store.get_customer("mid") == Customer("mid", name="Middle", status="disabled")
    assert [c.customer_id for c in await store.list_customers()] == ["acme", "mid", "new", "zeta"]


async def test_keys_are_created_read_replaced_and_listed_per_customer(store: Store) -> None:
    await store.create_customer(Customer("acme"))
    await store.create_customer(Customer("other"))
    # Listed by created_at, then key_id: neither the insertion order nor the id order.
    for key_id, customer_id, created_at in [
        ("Kc", "acme", 20),
        ("Kb", "acme", 10),
        ("Ka", "acme", 20),
        ("Kz", "other", 5),
    ]:
        await store.create_key(KeyRecord(key_id, customer_id, created_at=created_at))
    await store.put_key(KeyRecord("Kb", "acme", name="renamed", created_at=10))
    await store.put_key(KeyRecord("Kd", "other", created_at=30))  # a missing one too

    assert await store.get_key("Kb") == KeyRecord("Kb", "acme", name="renamed", created_at=10)
    assert [r.key_id for r in await store.list_keys("acme")] == ["Kb", "Ka", "Kc"]
    assert [r.key_id for r in await store.list_keys("other")] == ["Kz", "Kd"]
    assert [r.key_id for r in await store.list_keys()] == ["Kz", "Kb", "Ka", "Kc", "Kd"]
    assert await store.list_keys("nobody") == []


async def test_a_key_moved_to_another_customer_is_listed_only_there(store: Store) -> None:
    await store.create_key(KeyRecord("K1", "acme"))
    await store.put_key(KeyRecord("K1", "other"))

    assert await store.list_keys("acme") == []
    assert await store.list_keys("other") == [KeyRecord("K1", "other")]


async def test_concurrent_writers_from_two_instances_all_land(store: Store, store_url: str) -> None:
    # More calls at once than MAX_CONNECTIONS (docs/dependencies.md: redis-py's default pool raises
    # at 100), from two instances contending for SQLite's write lock.
    async with opened(store_url) as other:
        writes = [
            s.create_key(KeyRecord(f"K{i:03}", "acme")) for i, s in enumerate([store, other] * 100)
        ]
        await asyncio.gather(*writes)
    assert [r.key_id for r in await store.list_keys("acme")] == [f"K{i:03}" for i in range(200)]


async def test_creating_an_existing_id_raises_conflict_and_keeps_the_record(store: Store) -> None:
    await store.create_customer(Customer("acme", name="first"))
    await store.create_key(KeyRecord("K1", "acme", name="first"))

    with pytest.raises(Conflict):
        await store.create_customer(Customer("acme", name="second"))
    with pytest.raises(Conflict):
        await store.create_key(KeyRecord("K1", "acme", name="second"))
    assert (await store.get_customer("acme")) == Customer("acme", name="first")
    assert (await store.get_key("K1")) == KeyRecord("K1", "acme", name="first")


async def test_unknown_ids_read_as_none(store: Store) -> None:
    assert await store.get_customer("nobody") is None
    assert await store.get_key("nokey") is None
    assert await store.get_key_and_customer("nokey") is None


async def test_get_key_and_customer_joins_the_records(store: Store) -> None:
    await store.create_customer(FULL_CUSTOMER)
    await store.create_key(full_key("K1", "acme"))
    await store.create_key(full_key("K2", "ghost"))  # its customer was never created

    assert await store.get_key_and_customer("K1") == (full_key("K1", "acme"), FULL_CUSTOMER)
    assert await store.get_key_and_customer("K2") == (full_key("K2", "ghost"), None)


async def test_every_field_survives_the_round_trip(store: Store) -> None:
    await store.create_customer(FULL_CUSTOMER)
    await store.create_key(full_key())
    await store.create_customer(Customer("bare"))  # None caps and defaults too
    await store.create_key(KeyRecord("K2", "bare"))

    assert await store.get_customer("acme") == FULL_CUSTOMER
    assert await store.get_key("K1") == full_key()
    assert await store.list_customers() == [FULL_CUSTOMER, Customer("bare")]
    assert await store.get_key("K2") == KeyRecord("K2", "bare")


# --- change notification --------------------------------------------------------------


async def test_a_change_reaches_another_instance_within_a_second(
    store: Store, store_url: str
) -> None:
    # A second Store on the same URL stands in for another process (the CLI, or
    # another keyfront instance): SPEC section 2 gives the change 1 second to arrive.
    async with opened(store_url) as reader, live_feed(reader, store) as feed:
        await arrives_within_a_second(feed, store.create_key(KeyRecord("K1", "acme")), "K1")
        revoke = store.put_key(KeyRecord("K1", "acme", status="revoked"))
        await arrives_within_a_second(feed, revoke, "K1")
        disable = store.put_customer(Customer("acme", status="disabled"))
        await arrives_within_a_second(feed, disable, "acme", kind="customer")


async def test_an_announced_purge_reaches_another_instance_within_a_second(
    store: Store, store_url: str
) -> None:
    # Paths are public URL paths, decoded: spaces, colons and non-ASCII travel intact.
    async with opened(store_url) as reader, live_feed(reader, store) as feed:
        path = "/request/a b:c/é.svg"
        await arrives_within_a_second(feed, store.announce(Change("purge", path)), path, "purge")
        prefix = Change("purge_prefix", "/request/")
        await arrives_within_a_second(feed, store.announce(prefix), "/request/", "purge_prefix")


async def test_changes_end_when_the_store_closes(store_url: str) -> None:
    async with opened(store_url) as writer:
        reader = store_from_url(store_url)
        await reader.open()
        async with live_feed(reader, writer) as feed:
            await reader.close()
            async with asyncio.timeout(2.0):
                await feed.task


async def test_redis_feed_says_all_after_a_restart_then_delivers_again(
    redis_server: RedisServer, redis_url: str
) -> None:
    async with (
        opened(redis_url) as writer,
        opened(redis_url) as reader,
        live_feed(reader, writer) as feed,
    ):
        try:
            await asyncio.to_thread(redis_server.stop)
            await asyncio.sleep(0.3)  # the feed notices and starts retrying
            await asyncio.to_thread(redis_server.start)
            await feed.expect(Change("all"), within=5.0)
        finally:
            if redis_server.process.poll() is not None:
                redis_server.start()
        # The writer's pooled connections died with the server: it recovers too.
        await arrives_within_a_second(feed, writer.create_key(KeyRecord("K1", "acme")), "K1")


# --- failure ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "cause"),
    [
        ("file/keyfront.db", OSError),  # a file where the directory should be
        ("file", sqlite3.DatabaseError),  # a file that is no database
    ],
)
async def test_an_unusable_sqlite_store_raises_store_error(
    tmp_path: Path, path: str, cause: type[Exception]
) -> None:
    (tmp_path / "file").write_text("not a directory, not a database")
    store = store_from_url(f"sqlite://{tmp_path / path}")
    with pytest.raises(StoreError) as raised:
        await store.open()
    assert isinstance(raised.value.__cause__, cause)  # translated at the edge, cause kept
    await _assert_every_call_fails(store)
    await store.close()


@pytest.mark.parametrize("scheme", ["redis", "redis+cluster"])
async def test_an_unreachable_redis_store_raises_store_error_quickly(scheme: str) -> None:
    store = store_from_url(f"{scheme}://127.0.0.1:{free_port()}")  # nothing listens there
    await store.open()  # connects lazily: keyfront may start while Redis is down
    start = time.monotonic()
    await _assert_every_call_fails(store)
    assert time.monotonic() - start < 2.0  # readiness checks and the CLI must not hang
    await store.close()


async def _assert_every_call_fails(store: Store) -> None:
    calls: list[Callable[[], Coroutine[Any, Any, object]]] = [
        store.ping,
        lambda: store.get_key("K1"),
        lambda: store.get_key_and_customer("K1"),
        store.list_customers,
        lambda: store.list_keys("acme"),
        lambda: store.create_customer(Customer("acme")),
        lambda: store.put_key(KeyRecord("K1", "acme")),
    ]
    for call in calls:
        with pytest.raises(StoreError):
            await call()


# --- imported keys (SPEC section 13) ------------------------------------------------------


async def test_imported_keys_are_written_in_bulk_listed_and_read_back(store: Store) -> None:
    records = [full_key(f"{i:032x}") for i in range(2500)]  # more than a pipeline's worth
    await store.import_keys(records)
    await store.import_keys([*records[:10], full_key("f" * 32)])  # upserts count once
    listed = [key_id async for batch in store.scan_imported() for key_id in batch]
    # In ascending order, each once: the in-memory set is built without a sort.
    assert listed == sorted([r.key_id for r in records] + ["f" * 32])
    wanted = [records[0].key_id, "0" * 31 + "x", records[-1].key_id]
    found = await store.get_keys(wanted)
    assert found == {records[0].key_id: records[0], records[-1].key_id: records[-1]}
    assert await store.get_key(records[5].key_id) == records[5]
    assert len(await store.list_keys("acme")) == 2501


async def test_the_imported_key_secret_is_made_once(store: Store, store_url: str) -> None:
    assert await store.imported_secret(create=False) is None
    async with opened(store_url) as other:
        made = await asyncio.gather(store.imported_secret(True), other.imported_secret(True))
    assert made[0] == made[1] and len(made[0] or "") == 64
    assert await store.imported_secret(create=False) == made[0]


async def test_announced_imports_reach_another_instance_within_a_second(
    store: Store, store_url: str
) -> None:
    async with opened(store_url) as reader, live_feed(reader, store) as feed:
        many = store.announce_all([Change("key", "K1"), Change("imported", "a" * 32)])
        await arrives_within_a_second(feed, many, "a" * 32, "imported")
        await arrives_within_a_second(
            feed, store.announce_all([Change("imported")]), "", "imported"
        )
