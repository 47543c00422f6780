"""Usage metering (SPEC section 4): counted in process, flushed at most once, read back
per hour, day and month, on both stores."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.analytics import merged_sketches
from proxy.errors import StoreError
from proxy.sketch import CAPACITY, Sketch
from proxy.store import Store, UsageRow, store_from_url
from proxy.store.redis_usage import DAILY_TTL, HOURLY_TTL
from proxy.store.sqlite import SqliteStore
from proxy.store.sqlite_usage import HOURLY_RETENTION
from proxy.usage import UsageMeter, summed

from conftest import free_port

HOUR = int(time.time()) // 3600 * 3600


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path}/kf.db"
    elif request.param == "redis":
        url = request.getfixturevalue("redis_url")
    else:
        ports = request.getfixturevalue("redis_cluster")
        from conftest import redis_cli

        for port in ports:
            redis_cli(port, "FLUSHALL")
        url = f"redis+cluster://127.0.0.1:{ports[0]}"
    store = store_from_url(url)
    await store.open()
    yield store
    await store.close()


async def test_a_batch_applies_once_and_rolls_up(store: Store) -> None:
    rows = [
        UsageRow("key", "k1", HOUR, {"requests": 3, "bytes": 300, "denied_rate_limited": 1}),
        UsageRow("key", "k1", HOUR - 3600, {"requests": 2, "bytes": 20}),
        UsageRow("customer", "acme", HOUR, {"requests": 3, "bytes": 300}),
    ]
    await store.add_usage("batch-1", rows)
    await store.add_usage("batch-1", rows)  # a retry after a lost reply: not counted again
    await store.add_usage("batch-2", rows[:1])
    hourly = await store.read_usage("key", ["k1"], HOUR - 7200, HOUR + 3600, "hour")
    assert [(r.start, r.counts) for r in hourly] == [
        (HOUR - 3600, {"requests": 2, "bytes": 20}),
        (HOUR, {"requests": 6, "bytes": 600, "denied_rate_limited": 2}),
    ]
    daily = summed(await store.read_usage("key", ["k1"], 0, HOUR + 86400, "day"), "month")
    total = {k: sum(r.counts.get(k, 0) for r in daily) for k in ("requests", "bytes")}
    assert total == {"requests": 8, "bytes": 620}
    customers = await store.read_usage("customer", ["acme"], HOUR, HOUR + 1, "hour")
    assert customers[0].counts == {"requests": 3, "bytes": 300}


async def test_counts_survive_an_unreachable_store_and_are_not_doubled(tmp_path: Path) -> None:
    good = store_from_url(f"sqlite://{tmp_path}/kf.db")
    await good.open()
    dead = store_from_url(f"redis://127.0.0.1:{free_port()}/0")
    await dead.open()
    meter = UsageMeter(dead, 1.0, max_pending=3)
    meter._pending[("k1", "acme", HOUR)] = {"requests": 5, "bytes": 50}
    meter._pending[("k2", "acme", HOUR)] = {"requests": 1, "bytes": 7}
    with pytest.raises(StoreError):
        await meter.flush()
    assert meter.pending == 3  # two key rows and their customer's, kept for the retry
    meter._ledger = good
    await meter.flush()
    await meter.flush()
    rows = await good.read_usage("key", ["k1"], HOUR, HOUR + 1, "hour")
    assert rows[0].counts == {"requests": 5, "bytes": 50}
    customer = await good.read_usage("customer", ["acme"], HOUR, HOUR + 1, "hour")
    assert customer[0].counts == {"requests": 6, "bytes": 57}  # summed over its keys
    await good.close()
    await dead.close()


# --- issue 12 item 7: reports are clamped to retention and bounded ---------------------


def test_a_report_range_is_clamped_to_what_the_store_keeps() -> None:
    from proxy.manage.usage import report_range

    now = 1_800_000_000
    start, end = report_range(0, 10**30, "hour", now)
    assert (start, end) == ((now - 35 * 86400) // 3600 * 3600, now + 1)
    start, _ = report_range(0, None, "day", now)
    assert start == (now - 400 * 86400) // 86400 * 86400
    assert report_range(now - 60, now - 30, "hour", now) == (now - 60, now - 30)


async def test_a_report_of_too_many_rows_is_refused(store: Store) -> None:
    from proxy.errors import Invalid
    from proxy.manage.usage import MAX_ROWS, usage_report
    from proxy.records import Customer

    customers = MAX_ROWS // (35 * 24) + 1  # every customer, by hour, over 35 days
    for i in range(customers):
        await store.create_customer(Customer(f"c{i}"))
    with pytest.raises(Invalid) as refused:
        await usage_report(store, customer_id=None, key_id=None, start=0, end=None, grain="hour")
    assert refused.value.field == "from" and str(MAX_ROWS) in refused.value.message
    one = await usage_report(store, customer_id="c0", key_id=None, start=0, end=None, grain="hour")
    assert one == []


async def test_a_month_report_is_bounded_by_the_days_it_reads(store: Store) -> None:
    """Month reports read daily rows: 400 days of every customer is 400 reads each, so
    250 customers pass a bound on the 14 rows returned but not one on reads (review
    finding 11: ~3 M HGETALLs for 7,700 customers)."""
    from proxy.errors import Invalid
    from proxy.manage.usage import MAX_ROWS, usage_report
    from proxy.records import Customer

    customers = MAX_ROWS // 401 + 1
    for i in range(customers):
        await store.create_customer(Customer(f"m{i}"))
    with pytest.raises(Invalid) as refused:
        await usage_report(store, customer_id=None, key_id=None, start=0, end=None, grain="month")
    assert refused.value.field == "from"


def _sketch(*items: str, sent: int = 10) -> Sketch:
    sketch = Sketch()
    for item in items:
        sketch.add(item, sent)
    return sketch


def _top(rows: list[UsageRow], dimension: str) -> list[tuple[str, int, int, int]]:
    return merged_sketches([row.sketches for row in rows])[dimension].top(20)


async def test_sketches_apply_once_merge_and_roll_up(store: Store) -> None:
    # SPEC section 15: the top lists ride in the usage batch, at most once, merged in
    # the store (SQLite's transaction, Redis's script) by Sketch.merge's rules.
    first = UsageRow("key", "k1", HOUR, {"requests": 3}, {"referrers": _sketch("a", "a", "b")})
    second = UsageRow("key", "k1", HOUR, {"requests": 2}, {"referrers": _sketch("b", "c")})
    big = 5 * 10**12  # 5 TB: past 32 bits and past cjson's 14 digits, exact in Lua's doubles
    earlier = UsageRow(
        "key", "k1", HOUR - 3600, {"requests": 1}, {"objects": _sketch("/x", sent=big)}
    )
    await store.add_usage("batch-1", [first, earlier])
    await store.add_usage("batch-1", [first, earlier])  # a retry: not merged again
    await store.add_usage("batch-2", [second])
    hourly = await store.read_sketches("key", ["k1"], HOUR - 3600, HOUR + 1, "hour")
    assert [(r.start, sorted(r.sketches)) for r in hourly] == [
        (HOUR - 3600, ["objects"]),
        (HOUR, ["referrers"]),
    ]
    assert hourly[1].sketches["referrers"].top(5) == [
        ("a", 2, 0, 20),
        ("b", 2, 0, 20),
        ("c", 1, 0, 10),
    ]
    daily = await store.read_sketches("key", ["k1"], 0, HOUR + 86400, "day")
    assert _top(daily, "referrers") == [("a", 2, 0, 20), ("b", 2, 0, 20), ("c", 1, 0, 10)]
    assert _top(daily, "objects") == [("/x", 1, 0, big)]
    assert await store.read_sketches("customer", ["k1"], 0, HOUR + 86400, "day") == []


async def test_a_store_merge_of_full_sketches_is_the_sketch_merge(store: Store) -> None:
    # Both stores merge as proxy/sketch.py does, floors and errors included (the Redis
    # script is a second spelling of Sketch.merge: this pins them together).
    one = _sketch(*[f"u{i}" for i in range(200)], *["hot"] * 50)
    two = _sketch(*[f"v{i}" for i in range(150)], *["hot"] * 30, *["warm"] * 20)
    await store.add_usage("b1", [UsageRow("key", "k2", HOUR, {"requests": 1}, {"ips": one})])
    await store.add_usage("b2", [UsageRow("key", "k2", HOUR, {"requests": 1}, {"ips": two})])
    stored = await store.read_sketches("key", ["k2"], HOUR, HOUR + 1, "hour")
    expected = merged_sketches([{"ips": one}, {"ips": two}])["ips"]
    assert len(stored[0].sketches["ips"]) == CAPACITY
    assert stored[0].sketches["ips"].top(3) == expected.top(3)
    assert stored[0].sketches["ips"].top(3)[0][0] == "hot"
    assert stored[0].sketches["ips"].floor == expected.floor


async def test_sketches_are_kept_as_long_as_the_counts(store: Store) -> None:
    await store.add_usage("b1", [UsageRow("key", "k3", HOUR, {"requests": 1},
                                          {"objects": _sketch("/a")})])  # fmt: skip
    if isinstance(store, SqliteStore):
        old = HOUR - HOURLY_RETENTION - 7200
        store._last_usage_prune = 0.0
        await store.add_usage("b2", [UsageRow("key", "k3", old, {"requests": 1},
                                              {"objects": _sketch("/old")})])  # fmt: skip
        store._last_usage_prune = 0.0
        await store.add_usage("b3", [UsageRow("key", "k4", HOUR, {"requests": 1})])
        assert await store.read_sketches("key", ["k3"], old, old + 1, "hour") == []
        assert len(await store.read_sketches("key", ["k3"], HOUR, HOUR + 1, "hour")) == 1
        return
    client = store._client  # type: ignore[attr-defined]
    for letter, start, lifetime in (("h", HOUR, HOURLY_TTL), ("d", HOUR // 86400 * 86400,
                                                             DAILY_TTL)):  # fmt: skip
        ttl = await client.ttl(f"kf:u:{{k:k3}}:s:{letter}:{start}")
        assert lifetime - 60 < ttl <= lifetime
