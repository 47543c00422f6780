"""The usage spool (issue 19): unflushed counts in a MAP_SHARED file per process, which
a dead process's successor flushes exactly once; torn and corrupt files are refused."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from proxy.store import Store, store_from_url
from proxy.usage import UsageMeter
from proxy.usage_spool import (
    H_BOOT,
    H_CHECK,
    R_SERVED,
    REFUSED_SUFFIX,
    Spool,
    SpoolRefused,
    _checksum,
    store_identity,
)
from proxy.xcache import XCache

HOUR = int(time.time()) // 3600 * 3600
STORE = store_identity("sqlite:///x.db")


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    url = f"sqlite://{tmp_path}/kf.db" if request.param == "sqlite" else None
    store = store_from_url(url or request.getfixturevalue("redis_url"))
    await store.open()
    yield store
    await store.close()


def exchange(key: str = "k1", sent: int = 100, cache: str = XCache.HIT, **headers: str) -> Any:
    """What UsageMeter.record reads of a request."""
    record = SimpleNamespace(key_id=key, customer_id="acme")
    return SimpleNamespace(
        entry=SimpleNamespace(record=record),
        sent=sent,
        cache=cache,
        request=SimpleNamespace(headers=headers),
        page=headers.get("Referer") or headers.get("Origin"),
        client_ip="192.0.2.1",
        decoded_path="/f/a.png",
    )


def meter(store: Store, folder: Path) -> UsageMeter:
    return UsageMeter(store, 1.0, 1000, spool_dir=str(folder), store_id=STORE)


def count_traffic(m: UsageMeter) -> None:
    """12 requests of two keys: hits, a miss, a 304, refusals, with and without a referrer."""
    page = {"Referer": "https://shop.example.com/p"}
    for _ in range(5):
        m.record(exchange(**page), 200, None)
    m.record(exchange(cache=XCache.MISS, **page), 200, None)
    m.record(exchange(sent=0, **page), 304, None)
    m.record(exchange(sent=7), 200, None)  # no referrer
    m.record(exchange(**page), 403, "referrer_not_allowed")
    m.record(exchange(), 429, "rate_limited")
    m.record(exchange(key="k2", sent=1000, cache=XCache.BYPASS), 200, None)
    m.record(exchange(), 502, None)  # an origin failure: neither billed nor denied


K1 = {
    "requests": 8, "bytes": 607, "hits": 7, "misses": 1, "not_modified": 1, "no_referrer": 1,
    "denied_referrer_not_allowed": 1, "denied_rate_limited": 1, "refused_no_referrer": 1,
}  # fmt: skip
K2 = {"requests": 1, "bytes": 1000, "no_referrer": 1}


async def usage(store: Store, scope: str = "key", id_: str = "k1") -> dict[str, int]:
    """The id's counts summed over the hours around now: a run that crosses an hour
    counts in both (HOUR, taken when the module was collected, may be past already)."""
    now = int(time.time()) // 3600 * 3600
    rows = await store.read_usage(scope, [id_], now - 7200, now + 3600, "hour")  # type: ignore[arg-type]
    total: dict[str, int] = {}
    for row in rows:
        for name, value in row.counts.items():
            total[name] = total.get(name, 0) + value
    return total


def die(m: UsageMeter) -> None:
    """What SIGKILL leaves: the file as it is in the page cache, unlocked."""
    m._spool.close(unlink=False)


async def test_counts_of_a_dead_process_are_flushed_once(store: Store, tmp_path: Path) -> None:
    dead = meter(store, tmp_path)
    count_traffic(dead)
    die(dead)
    successor = meter(store, tmp_path)
    await successor.flush_dead()
    await successor.flush_dead()  # the file is gone: nothing twice
    assert await usage(store) == K1
    assert await usage(store, "key", "k2") == K2
    customer = await usage(store, "customer", "acme")
    assert customer["requests"] == 9 and customer["bytes"] == 1607
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".spool"] == [
        os.path.basename(successor._spool.path or "")
    ]


async def test_flushed_counts_are_not_in_the_file(store: Store, tmp_path: Path) -> None:
    m = meter(store, tmp_path)
    count_traffic(m)
    await m.flush()
    m.record(exchange(sent=5), 200, None)  # after the flush: only this one is unflushed
    die(m)
    await meter(store, tmp_path).flush_dead()
    assert await usage(store) == {**K1, "requests": 9, "bytes": 612, "hits": 8, "no_referrer": 2}


@pytest.mark.parametrize("applied", [True, False])
async def test_a_batch_in_flight_at_death_is_sent_again_under_its_id(
    store: Store, tmp_path: Path, applied: bool
) -> None:
    # Death after the seal: the store may or may not have applied the batch. Its id
    # comes back with it, so the store applies it exactly once either way.
    m = meter(store, tmp_path)
    count_traffic(m)
    batch_id, rows = m._seal()
    if applied:
        await store.add_usage(batch_id, rows)
    m.record(exchange(sent=5), 200, None)  # counted in the other area meanwhile
    die(m)
    await meter(store, tmp_path).flush_dead()
    assert await usage(store) == {**K1, "requests": 9, "bytes": 612, "hits": 8, "no_referrer": 2}


async def test_a_claimer_that_dies_half_way_leaves_nothing_to_count_twice(
    store: Store, tmp_path: Path
) -> None:
    m = meter(store, tmp_path)
    count_traffic(m)
    die(m)
    claimer = meter(store, tmp_path)
    path = str(next(p for p in tmp_path.glob("*.spool") if str(p) != claimer._spool.path))
    spool = Spool.claim(path, STORE)
    assert spool is not None
    batch = spool.seal()  # the claimer seals the live rows and sends them...
    from proxy.usage import _batch_rows

    await store.add_usage(batch.batch_id, _batch_rows(dict(batch.rows), {}))
    spool.close(unlink=False)  # ...and dies before its release
    await meter(store, tmp_path).flush_dead()
    assert await usage(store) == K1


async def test_two_claimers_at_once_flush_a_file_once(store: Store, tmp_path: Path) -> None:
    dead = meter(store, tmp_path)
    count_traffic(dead)
    die(dead)
    await asyncio.gather(*(meter(store, tmp_path).flush_dead() for _ in range(4)))
    assert await usage(store) == K1


async def test_a_live_process_file_and_another_store_file_are_left_alone(
    store: Store, tmp_path: Path
) -> None:
    live = meter(store, tmp_path)
    count_traffic(live)
    other = UsageMeter(store, 1.0, 1000, spool_dir=str(tmp_path), store_id=STORE + 1)
    count_traffic(other)
    die(other)
    await meter(store, tmp_path).flush_dead()
    assert await usage(store) == {}
    await live.flush()
    assert await usage(store) == K1


def test_a_torn_cell_write_counts_the_committed_copy(tmp_path: Path) -> None:
    spool = Spool.create(str(tmp_path), STORE, "1-ab", 4)
    base = spool.allocate(("k1", "acme", HOUR))
    words, cell = spool.words, base + R_SERVED
    words[cell + 2], words[cell + 3] = 1, 100  # first request: copy B
    words[cell + 1] = 100 + 50  # second: copy A's bytes written, its count not yet
    (_, counts), = spool.seal().rows  # fmt: skip
    assert counts == {"requests": 1, "bytes": 100, "hits": 1}
    spool.close(unlink=True)


def _dead_file(tmp_path: Path, store: Store) -> str:
    m = meter(store, tmp_path)
    count_traffic(m)
    die(m)
    return str(m._spool.path)


def _corrupt(path: str, offset: int, raw: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(raw)


@pytest.mark.parametrize(
    "damage",
    ["garbage", "truncated", "header", "counter", "cell copies", "row id", "earlier boot"],
)
async def test_a_corrupt_file_is_refused_counted_and_nothing_of_it_sent(
    store: Store, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = _dead_file(tmp_path, store)
    row = 512 * 8  # the first row of area 0
    if damage == "garbage":
        _corrupt(path, 0, os.urandom(8192))
    elif damage == "truncated":
        os.truncate(path, os.path.getsize(path) // 2)
    elif damage == "header":
        _corrupt(path, 2 * 8, (7).to_bytes(8, "little"))  # capacity
    elif damage == "counter":
        _corrupt(path, row + (R_SERVED + 2) * 8, (-5).to_bytes(8, "little", signed=True))
    elif damage == "cell copies":
        _corrupt(path, row + R_SERVED * 8, (40).to_bytes(8, "little"))
    elif damage == "row id":
        _corrupt(path, row + 2 * 8, b"k/\n")
    else:
        spool = Spool(__import__("mmap").mmap(os.open(path, os.O_RDWR), 0), None, None)
        spool.words[H_BOOT] += 1
        spool.words[H_CHECK] = _checksum(spool.words)
        spool.close(unlink=False)
    claimer = meter(store, tmp_path)
    await claimer.flush_dead()
    await claimer.flush_dead()  # refused once, not again
    assert claimer.spool_refused == 1
    assert await usage(store) == {}
    assert os.path.exists(path + REFUSED_SUFFIX) and not os.path.exists(path)
    assert "refused" in caplog.text


def test_a_spool_refused_by_claim_raises(tmp_path: Path) -> None:
    path = tmp_path / "usage-1-ab.spool"
    path.write_bytes(b"not a spool")
    with pytest.raises(SpoolRefused):
        Spool.claim(str(path), STORE)


async def test_a_full_disk_keeps_counting_in_memory(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A write to a mapped page the file system cannot back is SIGBUS: a slot gets its
    # blocks first (posix_fallocate), and when they cannot be had the counts move to
    # memory, the file is removed (a claimer must not count them too).
    m = meter(store, tmp_path)

    def no_space(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    count_traffic(m)
    assert m._spool.path is None and not list(tmp_path.glob("*.spool"))
    await m.flush()
    assert await usage(store) == K1


async def test_a_graceful_stop_leaves_a_file_only_with_unsent_counts(
    tmp_path: Path,
) -> None:
    good = store_from_url(f"sqlite://{tmp_path}/kf.db")
    await good.open()
    m = meter(good, tmp_path)
    count_traffic(m)
    await m.close()
    assert not list(tmp_path.glob("*.spool"))
    dead = store_from_url("redis://127.0.0.1:1/0")
    await dead.open()
    m = UsageMeter(dead, 1.0, 1000, spool_dir=str(tmp_path), store_id=STORE)
    count_traffic(m)
    await m.close()  # the store is down: the counts stay in the file for the next start
    assert len(list(tmp_path.glob("*.spool"))) == 1
    await meter(good, tmp_path).flush_dead()
    assert await usage(good) == {field: 2 * n for field, n in K1.items()}  # both meters'
    await dead.close()
    await good.close()
