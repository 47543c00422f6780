"""The disk cache (proxy/cache/) through `delivery.deliver`, in process: a real
aiohttp server runs the delivery step, in front of a real HTTP origin server whose
behaviour (slow, dying mid-body, failing, 304) the test controls. Asserts what a client
sees (status, X-Cache, bytes) and what the origin saw (requests per object)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import random
import resource
import shutil
import signal
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer
from multidict import CIMultiDict

from proxy.cache import Cache, space
from proxy.cache.entry import CacheEntry, encode_header
from proxy.cache.files import DiskStore
from proxy.cache.locks import KeyLock
from proxy.conditional import UNSATISFIABLE, http_date, parse_range
from proxy.config import CacheConfig, OriginTimeouts, Route
from proxy.delivery import deliver
from proxy.errors import Refusal
from proxy.exchange import Exchange, Target
from proxy.origin.http import HttpOrigin

KiB, MiB = 1024, 1024 * 1024
PREFIX = "/c/"


def blob(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


# --- a real HTTP origin with controllable behaviour -----------------------------------


@dataclass
class OriginBehaviour:
    """Objects by name, served with a strong ETag and Last-Modified; honours
    If-None-Match and single Ranges. `delay` trickles bodies in 64 KiB chunks, `die`
    cuts the connection after that many bytes, `mode` makes it fail or hang."""

    objects: dict[str, bytes] = field(default_factory=dict)
    modified: dict[str, float] = field(default_factory=dict)
    gets: Counter[str] = field(default_factory=Counter)
    seen: list[dict[str, str]] = field(default_factory=list)
    delay: float = 0.0
    die: dict[str, int] = field(default_factory=dict)
    mode: str = "up"  # up | error | hang

    def put(self, name: str, body: bytes) -> None:
        self.objects[name] = body
        self.modified[name] = time.time() - 60

    def etag(self, name: str) -> str:
        return '"' + hashlib.sha256(self.objects[name]).hexdigest()[:16] + '"'

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        name = request.path.removeprefix("/")
        if request.method == "GET":
            self.gets[name] += 1
            self.seen.append(dict(request.headers))
        if self.mode == "error":
            return web.Response(status=500)
        if self.mode == "hang":
            await asyncio.sleep(3)
        if name not in self.objects:
            return web.Response(status=404)
        body = self.objects[name]
        headers = {"ETag": self.etag(name), "Last-Modified": http_date(self.modified[name])}
        if request.headers.get("If-None-Match") == headers["ETag"]:
            return web.Response(status=304, headers=headers)
        headers["Content-Type"] = "application/octet-stream"
        status, part = 200, body
        selected = parse_range(request.headers.get("Range"), len(body))
        if selected is not None and selected is not UNSATISFIABLE:
            status, part = 206, body[selected.start : selected.end + 1]
            headers["Content-Range"] = selected.content_range(len(body))
        return await self._send(request, status, headers, part, self.die.get(name))

    async def _send(
        self,
        request: web.BaseRequest,
        status: int,
        headers: dict[str, str],
        body: bytes,
        die: int | None,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        for start in range(0, len(body), 64 * KiB):
            if die is not None and start >= die:
                assert request.transport is not None
                request.transport.abort()
                return response
            if self.delay:
                await asyncio.sleep(self.delay)
            await response.write(body[start : start + 64 * KiB])
        await response.write_eof()
        return response


# --- keyfront's delivery step behind a real server --------------------------------------


@dataclass
class Proxy:
    url: str
    cache: Cache
    session: aiohttp.ClientSession

    async def get(self, name: str, **headers: str) -> tuple[int, CIMultiDict[str], bytes]:
        async with self.session.get(self.url + PREFIX + name, headers=headers) as response:
            return response.status, response.headers.copy(), await response.read()

    async def head(self, name: str) -> tuple[int, CIMultiDict[str]]:
        async with self.session.head(self.url + PREFIX + name) as response:
            return response.status, response.headers.copy()


Start = Callable[..., Awaitable[Proxy]]


@pytest.fixture
async def origin() -> AsyncIterator[tuple[OriginBehaviour, str]]:
    behaviour = OriginBehaviour()
    server = RawTestServer(behaviour.handle, host="127.0.0.1")
    await server.start_server()
    yield behaviour, str(server.make_url("/"))
    await server.close()


@pytest.fixture
async def start(origin: tuple[OriginBehaviour, str], tmp_path: Path) -> AsyncIterator[Start]:
    """Start a proxy (a Cache and the delivery step) on the cache folder `name`;
    proxies started on one folder share it, as worker processes do."""
    opened: list[tuple[RawTestServer, Cache, HttpOrigin, aiohttp.ClientSession]] = []

    async def start_proxy(name: str = "cache", **settings: Any) -> Proxy:
        config = CacheConfig(dir=str(tmp_path / name), **settings)
        route = Route(PREFIX, origin[1])
        cache = Cache(config, [route])  # the routes resolve purge paths
        await cache.open()
        http_origin = HttpOrigin(route, OriginTimeouts(connect=1.0, first_byte=1.0, idle=1.0))
        await http_origin.open()
        target = Target(route, http_origin)

        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            exchange = Exchange(request, "test")
            try:
                return await deliver(cache, exchange, target, request.path[len(PREFIX) :])
            except Refusal as refusal:
                return web.Response(status=refusal.status, headers={"X-Cache": exchange.cache})

        server = RawTestServer(handle, host="127.0.0.1")
        await server.start_server()
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        opened.append((server, cache, http_origin, session))
        return Proxy(str(server.make_url("")).rstrip("/"), cache, session)

    yield start_proxy
    for server, cache, http_origin, session in opened:
        await session.close()
        await server.close()
        await cache.close()
        await http_origin.close()


def objects_on_disk(cache: Cache) -> list[str]:
    top = cache.store.objects
    return [name for fan in os.listdir(top) for name in os.listdir(os.path.join(top, fan))]


def disk_bytes(cache: Cache, everything: bool = False) -> int:
    """The bytes the filesystem allocated to the published objects (st_blocks), or to
    every file in the folder. A sweep may unlink a file between the listing and its
    stat (it runs in a worker thread): that file no longer counts."""
    total = 0
    for folder, _, files in os.walk(cache.store.root if everything else cache.store.objects):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
    return total


async def settle(cache: Cache) -> None:
    """Wait (bounded) until no fill is writing and no sweep is running."""
    for _ in range(250):
        await cache.space.settled()
        if not temp_files(cache) and cache.space.total <= cache.config.max_size:
            await cache.space.settled()
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"temp files left: {temp_files(cache)}")


def temp_files(cache: Cache) -> list[str]:
    return os.listdir(cache.store.tmp)


# --- hits and misses ---------------------------------------------------------------------


async def test_miss_then_hit_keeps_the_origins_validators(
    start: Start, origin: tuple[OriginBehaviour, str]
) -> None:
    behaviour, _ = origin
    for name, size in (("small", 10 * KiB), ("large", 3 * MiB)):
        body = blob(size)
        behaviour.put(name, body)
        proxy = await start()
        first = await proxy.get(name)
        second = await proxy.get(name)
        assert (first[0], first[1]["X-Cache"], first[2]) == (200, "MISS", body)
        assert (second[0], second[1]["X-Cache"], second[2]) == (200, "HIT", body)
        for headers in (first[1], second[1]):
            assert headers["ETag"] == behaviour.etag(name)
            assert headers["Last-Modified"] == http_date(behaviour.modified[name])
            assert headers["Content-Length"] == str(size)
            assert headers["Accept-Ranges"] == "bytes"
        assert behaviour.gets[name] == 1
        assert "Range" not in behaviour.seen[-1]


async def test_200_concurrent_cold_requests_make_one_origin_get(
    start: Start, origin: tuple[OriginBehaviour, str]
) -> None:
    behaviour, _ = origin
    body = blob(1 * MiB, seed=2)
    behaviour.put("cold", body)
    behaviour.delay = 0.01  # 16 chunks: the fill is still under way as requests arrive
    proxy = await start()
    replies = await asyncio.gather(*(proxy.get("cold") for _ in range(200)))
    assert behaviour.gets["cold"] == 1
    assert all(status == 200 and got == body for status, _, got in replies)
    assert {headers["X-Cache"] for _, headers, _ in replies} <= {"MISS", "HIT"}
    assert proxy.cache.coalesced >= 1


async def test_range_head_and_conditionals_are_answered_from_the_cache(
    start: Start, origin: tuple[OriginBehaviour, str]
) -> None:
    behaviour, _ = origin
    for name, size in (("r-small", 20 * KiB), ("r-large", 3 * MiB)):
        body = blob(size, seed=3)
        behaviour.put(name, body)
        proxy = await start()
        assert (await proxy.get(name))[2] == body
        status, headers, got = await proxy.get(name, Range="bytes=10-19")
        assert (status, got, headers["Content-Range"]) == (206, body[10:20], f"bytes 10-19/{size}")
        assert headers["X-Cache"] == "HIT"
        assert (await proxy.get(name, Range="bytes=-5"))[::2] == (206, body[-5:])
        assert (await proxy.get(name, Range=f"bytes={size - 100}-"))[2] == body[-100:]
        assert (await proxy.get(name, Range=f"bytes={size}-"))[0] == 416
        assert (await proxy.get(name, Range="bytes=oops"))[::2] == (200, body)
        resumed = {"Range": "bytes=10-19", "If-Range": behaviour.etag(name)}
        assert (await proxy.get(name, **resumed))[::2] == (206, body[10:20])
        changed = {"Range": "bytes=10-19", "If-Range": '"another version"'}
        assert (await proxy.get(name, **changed))[::2] == (200, body)  # never spliced
        status, headers = await proxy.head(name)
        assert (status, headers["Content-Length"]) == (200, str(size))
        etag, modified = headers["ETag"], headers["Last-Modified"]
        status, headers, got = await proxy.get(name, **{"If-None-Match": etag})
        assert (status, got, headers["ETag"]) == (304, b"", etag)
        assert (await proxy.get(name, **{"If-Modified-Since": modified}))[0] == 304
        assert (await proxy.get(name, **{"If-None-Match": '"other"'}))[0] == 200
        assert behaviour.gets[name] == 1


async def test_ranges_on_a_miss_fetch_the_whole_object_once(
    start: Start, origin: tuple[OriginBehaviour, str]
) -> None:
    behaviour, _ = origin
    body = blob(2 * MiB, seed=4)
    behaviour.put("ranged", body)
    behaviour.delay = 0.005
    proxy = await start()
    ranges = [(0, 9), (MiB, MiB + 99), (2 * MiB - 10, 2 * MiB - 1), (5, 2 * MiB - 1)]
    replies = await asyncio.gather(
        *(proxy.get("ranged", Range=f"bytes={a}-{b}") for a, b in ranges), proxy.head("ranged")
    )
    for (a, b), (status, headers, got) in zip(ranges, replies, strict=False):
        assert (status, got) == (206, body[a : b + 1])
        assert headers["X-Cache"] == "MISS"
    assert behaviour.gets["ranged"] == 1
    assert "Range" not in behaviour.seen[0]  # the cache wants all of it


# --- nothing partial is ever served as complete ------------------------------------------


async def test_a_client_leaving_mid_download_leaves_a_correct_entry(
    start: Start, origin: tuple[OriginBehaviour, str]
) -> None:
    behaviour, _ = origin
    body = blob(2 * MiB, seed=5)
    behaviour.put("left", body)
    behaviour.delay = 0.01
    proxy = await start()
    async with proxy.session.get(proxy.url + PREFIX + "left") as response:
        assert len(await response.content.readexactly(100 * KiB)) == 100 * KiB
        response.close()  # the client goes away mid-body
    status, _, got = await proxy.get("left")  # joins the fill, or hits its result
    assert (status, got) == (200, body)
    assert (await proxy.get("left"))[1]["X-Cache"] == "HIT"
    assert behaviour.gets["left"] == 1
    assert temp_files(proxy.cache) == []


async def test_an_origin_dying_mid_body_leaves_no_entry(
    start: Start, origin: tuple[OriginBehaviour, str]
) -> None:
    behaviour, _ = origin
    body = blob(1 * MiB, seed=6)
    behaviour.put("dies", body)
    behaviour.die["dies"] = 512 * KiB
    proxy = await start()
    for attempt in (1, 2):
        with pytest.raises(aiohttp.ClientPayloadError):
            await proxy.get("dies")  # truncated: never a short "complete" 200
        assert behaviour.gets["dies"] == attempt  # nothing was cached
    assert objects_on_disk(proxy.cache) == [] and temp_files(proxy.cache) == []
    del behaviour.die["dies"]
    assert (await proxy.get("dies"))[2] == body


# --- freshness ---------------------------------------------------------------------------


async def test_stale_entry_revalidated_by_304_is_refreshed(
    start: Start, origin: tuple[OriginBehaviour, str]
) -> None:
    behaviour, _ = origin
    behaviour.put("fresh", blob(30 * KiB))
    proxy = await start(ttl=0.3, stale_while_revalidate=0.0)
    assert (await proxy.get("fresh"))[1]["X-Cache"] == "MISS"
    await asyncio.sleep(0.4)
    status, headers, got = await proxy.get("fresh")
    assert (status, headers["X-Cache"], got) == (200, "REVALIDATED", behaviour.objects["fresh"])
    assert behaviour.seen[-1]["If-None-Match"] == behaviour.etag("fresh")
    assert (await proxy.get("fresh"))[1]["X-Cache"] == "HIT"  # fresh again: no origin call
    assert behaviour.gets["fresh"] == 2
    behaviour.put("fresh", blob(40 * KiB, seed=9))  # changed at the origin
    await asyncio.sleep(0.4)
    status, headers, got = await proxy.get("fresh")
    assert (headers["X-Cache"], got) == ("MISS", behaviour.objects["fresh"])


async def test_stale_while_revalidate_serves_at_once_and_refreshes_once(
    start: Start, origin: tuple[OriginBehaviour, str]
) -> None:
    behaviour, _ = origin
    behaviour.put("swr", blob(10 * KiB))
    proxy = await start(ttl=0.2, stale_while_revalidate=30.0)
    await proxy.get("swr")
    await asyncio.sleep(0.3)
    behaviour.mode = "hang"  # the refresh takes its time; clients do not wait for it
    replies = await asyncio.gather(*(proxy.get("swr") for _ in range(20)))
    assert {(status, headers["X-Cache"]) for status, headers, _ in replies} == {(200, "STALE")}
    assert behaviour.gets["swr"] == 2  # one background refresh for all 20


async def test_stale_if_error_then_502_and_504(
    start: Start, origin: tuple[OriginBehaviour, str]
) -> None:
    behaviour, _ = origin
    behaviour.put("sie", blob(10 * KiB))
    behaviour.put("sie-big", blob(1 * MiB))
    proxy = await start(ttl=0.2, stale_while_revalidate=0.0, stale_if_error=0.6)
    await proxy.get("sie")
    await proxy.get("sie-big")
    await asyncio.sleep(0.3)
    behaviour.mode = "error"
    for name in ("sie", "sie-big"):
        status, headers, got = await proxy.get(name)
        assert (status, headers["X-Cache"], got) == (200, "STALE", behaviour.objects[name])
    await asyncio.sleep(0.6)  # past ttl + stale_if_error
    assert (await proxy.get("sie"))[0] == 502
    behaviour.mode = "hang"
    assert (await proxy.get("sie"))[0] == 504


async def test_origin_404_is_cached_for_negative_ttl(
    start: Start, origin: tuple[OriginBehaviour, str]
) -> None:
    behaviour, _ = origin
    proxy = await start(negative_ttl=0.3)
    assert [(await proxy.get("nope"))[0] for _ in range(3)] == [404, 404, 404]
    assert behaviour.gets["nope"] == 1
    behaviour.put("nope", b"now it exists")
    await asyncio.sleep(0.4)
    assert (await proxy.get("nope"))[::2] == (200, b"now it exists")


# --- bounds --------------------------------------------------------------------------------


async def test_objects_over_max_object_size_pass_through_with_range(
    start: Start, origin: tuple[OriginBehaviour, str]
) -> None:
    behaviour, _ = origin
    body = blob(300 * KiB, seed=7)
    behaviour.put("huge", body)
    proxy = await start(max_object_size=256 * KiB)
    for _ in range(2):
        status, headers, got = await proxy.get("huge", Range="bytes=100-199")
        assert (status, headers["X-Cache"], got) == (206, "BYPASS", body[100:200])
        assert behaviour.seen[-1]["Range"] == "bytes=100-199"
    assert (await proxy.get("huge"))[::2] == (200, body)
    assert objects_on_disk(proxy.cache) == []


async def test_the_size_bound_holds_while_three_times_it_streams_through(
    start: Start, origin: tuple[OriginBehaviour, str]
) -> None:
    behaviour, _ = origin
    size, max_size = 100 * KiB, 1 * MiB
    proxy = await start(max_size=max_size)
    names = [f"many/{i}" for i in range(3 * max_size // size)]
    for i, name in enumerate(names):
        behaviour.put(name, blob(size, seed=i))
    for name in names[:20]:  # one after another: within the bound at every moment
        assert (await proxy.get(name))[2] == behaviour.objects[name]
        assert disk_bytes(proxy.cache) <= max_size  # the one being written is in tmp/
        await settle(proxy.cache)
        assert disk_bytes(proxy.cache) <= max_size
    replies = await asyncio.gather(*(proxy.get(name) for name in names[20:]))  # all at once
    assert [body for _, _, body in replies] == [behaviour.objects[n] for n in names[20:]]
    await settle(proxy.cache)
    assert disk_bytes(proxy.cache) <= max_size
    assert proxy.cache.evictions > 0
    assert (await proxy.get(names[-1]))[1]["X-Cache"] == "HIT"  # recent ones stay
    status, headers, got = await proxy.get(names[0])  # evicted: fetched again, exact
    assert (status, headers["X-Cache"], got) == (200, "MISS", behaviour.objects[names[0]])


async def test_a_cache_that_cannot_write_serves_uncached_and_counts(
    start: Start, origin: tuple[OriginBehaviour, str]
) -> None:
    behaviour, _ = origin
    body = blob(200 * KiB, seed=8)
    behaviour.put("nowrite", body)
    proxy = await start()
    os.rmdir(proxy.cache.store.tmp)
    Path(proxy.cache.store.tmp).write_text("not a folder")  # every temp file fails
    for _ in range(2):
        status, headers, got = await proxy.get("nowrite")
        assert (status, headers["X-Cache"], got) == (200, "BYPASS", body)
    assert proxy.cache.write_errors == 2


async def test_a_write_error_mid_body_finishes_the_response_from_the_origin(
    start: Start, origin: tuple[OriginBehaviour, str]
) -> None:
    """A disk that fills up mid-object: the readers get the rest of their bytes from
    the origin with a Range, and nothing is published."""
    behaviour, _ = origin
    body = blob(3 * MiB, seed=10)
    behaviour.put("full", body)
    behaviour.delay = 0.002
    proxy = await start()
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 * MiB, hard))  # writes past 1 MiB fail
    try:
        replies = await asyncio.gather(*(proxy.get("full") for _ in range(3)))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert all((status, got) == (200, body) for status, _, got in replies)
    assert proxy.cache.write_errors == 1
    assert objects_on_disk(proxy.cache) == [] and temp_files(proxy.cache) == []
    assert any(seen.get("Range", "").startswith("bytes=") for seen in behaviour.seen)


async def test_cached_404s_leave_before_any_object_when_space_runs_out(
    start: Start, origin: tuple[OriginBehaviour, str]
) -> None:
    """Review finding 8, by bytes: a cached 404 takes a block, so enough of them fill
    max_size; the sweep they cause must take 404s, not the objects (nobody hit those
    meanwhile, so by LRU alone they would go first)."""
    behaviour, _ = origin
    proxy = await start(max_size=200 * KiB, max_objects=1000)  # up to 100 cached 404s
    await asyncio.gather(*proxy.cache._tasks)  # the start-up recount, counting what it finds
    kept = [f"kept/{i}" for i in range(5)]
    for i, name in enumerate(kept):
        behaviour.put(name, blob(20 * KiB, seed=40 + i))
        assert (await proxy.get(name))[0] == 200
    for i in range(0, 90, 10):  # ~360 KiB of cached 404s, a few at a time
        replies = await asyncio.gather(*(proxy.get(f"absent/{n}") for n in range(i, i + 10)))
        assert {status for status, _, _ in replies} == {404}
        await settle(proxy.cache)
    assert disk_bytes(proxy.cache, everything=True) <= 200 * KiB
    assert proxy.cache.evictions > 0
    for name in kept:
        status, headers, got = await proxy.get(name)
        assert (status, headers["X-Cache"], got) == (200, "HIT", behaviour.objects[name])
    assert [behaviour.gets[name] for name in kept] == [1] * 5


async def test_a_key_has_a_cached_404_or_an_object_on_disk_never_both(
    start: Start, origin: tuple[OriginBehaviour, str]
) -> None:
    """Cached 404s live in a folder of their own (files.py): an object that appears at
    the origin removes the key's 404 file, one that disappears removes the object's
    file, and a purge removes either; the shared counts follow."""
    behaviour, _ = origin
    proxy = await start(ttl=0.2, negative_ttl=0.2, stale_while_revalidate=0)
    cache = proxy.cache
    await asyncio.gather(*cache._tasks)  # the start-up recount, counting what it finds

    def on_disk() -> tuple[int, int]:
        top = Path(cache.store.root)
        return tuple(  # type: ignore[return-value]
            sum(1 for p in (top / folder).rglob("*") if p.is_file())
            for folder in ("objects", "absent")
        )

    assert (await proxy.get("comes-and-goes"))[0] == 404
    assert on_disk() == (0, 1) and cache.space.counts()[1:] == (0, 1)
    behaviour.put("comes-and-goes", b"here now")
    await asyncio.sleep(0.3)
    assert (await proxy.get("comes-and-goes"))[::2] == (200, b"here now")
    assert on_disk() == (1, 0) and cache.space.counts()[1:] == (1, 0)
    del behaviour.objects["comes-and-goes"]
    await asyncio.sleep(0.3)
    assert (await proxy.get("comes-and-goes"))[0] == 404
    assert on_disk() == (0, 1) and cache.space.counts()[1:] == (0, 1)
    assert await cache.purge(PREFIX + "comes-and-goes") == 1
    assert on_disk() == (0, 0) and cache.space.counts()[1:] == (0, 0)
    assert (await proxy.get("comes-and-goes"))[0] == 404
    assert await cache.purge_prefix(PREFIX) == 1
    assert on_disk() == (0, 0) and cache.space.counts()[1:] == (0, 0)


# --- purge ------------------------------------------------------------------------------------


async def test_purge_by_path_and_prefix(start: Start, origin: tuple[OriginBehaviour, str]) -> None:
    behaviour, _ = origin
    for name in ("a/1", "a/2", "b/1"):
        behaviour.put(name, blob(5 * KiB))
    proxy = await start()
    for name in ("a/1", "a/2", "b/1"):
        await proxy.get(name)
    assert await proxy.cache.purge(PREFIX + "a/1") == 1
    assert (await proxy.get("a/1"))[1]["X-Cache"] == "MISS"
    assert await proxy.cache.purge_prefix(PREFIX + "a/") == 2
    assert (await proxy.get("a/2"))[1]["X-Cache"] == "MISS"
    assert (await proxy.get("b/1"))[1]["X-Cache"] == "HIT"
    assert await proxy.cache.purge(PREFIX + "never/there") == 0


# --- two processes' worth of caches on one folder ------------------------------------------------


async def test_two_caches_on_one_folder_fetch_once(
    start: Start, origin: tuple[OriginBehaviour, str]
) -> None:
    """Two Cache instances open the lock files separately, so their flocks exclude each
    other exactly as two worker processes' do."""
    behaviour, _ = origin
    body = blob(1 * MiB, seed=11)
    behaviour.put("shared", body)
    behaviour.delay = 0.01
    one, two = await start("shared"), await start("shared")
    replies = await asyncio.gather(
        *(proxy.get("shared") for _ in range(50) for proxy in (one, two))
    )
    assert all((status, got) == (200, body) for status, _, got in replies)
    assert behaviour.gets["shared"] == 1
    behaviour.put("later", b"stored by one")
    await one.get("later")
    assert (await two.get("later"))[1::1][0]["X-Cache"] == "HIT"  # found on disk
    assert behaviour.gets["later"] == 1


async def test_workers_starting_together_count_the_folder_once(
    start: Start, origin: tuple[OriginBehaviour, str], tmp_path: Path
) -> None:
    """Each server start recounts the folder unless another process already runs on it:
    two started together on a folder whose count drifted (here: lost) must not both add
    their recount."""
    behaviour, _ = origin
    first = await start("original")
    for name, size in (("a", 10 * KiB), ("b", 300 * KiB)):
        behaviour.put(name, blob(size))
        assert (await first.get(name))[0] == 200
    await settle(first.cache)
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "original", copy)
    for stale in ("size", "users"):
        (copy / stale).unlink(missing_ok=True)
    caches = [Cache(CacheConfig(dir=str(copy))) for _ in range(2)]
    await asyncio.gather(*(cache.open() for cache in caches))
    try:
        expected = (disk_bytes(caches[0], everything=True), 2, 0)
        for _ in range(100):  # the recount runs in the background
            if caches[0].space.counts() == expected:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # a second recount would land by now
        assert [cache.space.counts() for cache in caches] == [expected, expected]
    finally:
        for cache in caches:
            await cache.close()


async def test_large_hits_reach_a_slow_reader_whole_and_in_order(
    start: Start, origin: tuple[OriginBehaviour, str]
) -> None:
    """A large hit goes out as one sendfile when the socket takes it all; a client that
    reads slowly takes only part of it, and the rest must follow, before the next
    pipelined response on the same connection."""
    behaviour, _ = origin
    bodies = {"slow-a": blob(8 * MiB, seed=21), "slow-b": blob(5 * MiB, seed=22)}
    for name, body in bodies.items():
        behaviour.put(name, body)
    proxy = await start()
    for name in bodies:
        assert (await proxy.get(name))[1]["X-Cache"] == "MISS"
    host, port = proxy.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KiB)
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock, limit=16 * KiB)
    try:
        names = ["slow-a", "slow-b", "slow-a"]
        writer.write(
            b"".join(f"GET {PREFIX}{n} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for n in names)
        )
        for name in names:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode().split("\r\n")
            fields = dict(line.split(": ", 1) for line in lines[1:] if line)
            assert lines[0] == "HTTP/1.1 200 OK"
            assert (fields["X-Cache"], fields["Content-Length"]) == ("HIT", str(len(bodies[name])))
            got = bytearray()
            while len(got) < len(bodies[name]):
                want = min(64 * KiB, len(bodies[name]) - len(got))
                got += await asyncio.wait_for(reader.readexactly(want), 10)
                if len(got) < MiB:
                    await asyncio.sleep(0.001)  # slow at first: the socket fills up
            assert bytes(got) == bodies[name]
    finally:
        writer.close()


# --- the fill-sharing socket trusts only this user, and only its own temp files (issue 12) ---


async def _fill_under_way(proxy: Proxy, behaviour: OriginBehaviour, name: str) -> Any:
    """Start a slow fill of `name` in `proxy`; (task of the request, key, fill) once its
    lock file advertises the fill's socket."""
    behaviour.put(name, blob(1 * MiB, seed=31))
    behaviour.delay = 0.02  # 16 chunks: ~0.3 s of fill
    request = asyncio.create_task(proxy.get(name))
    for _ in range(250):
        fills = list(proxy.cache._fills.items())
        if fills and await fills[0][1].storing():
            key, fill = fills[0]
            return request, key, fill
        await asyncio.sleep(0.01)
    raise AssertionError("the fill did not start")


FOREIGN_FOLLOWER = """
import socket, sys
got = b""
try:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(sys.argv[1].encode("latin-1").replace(b"@", b"\\0", 1))
    sock.sendall(sys.argv[2].encode() + b"\\n")
    while chunk := sock.recv(4096):
        got += chunk
except OSError:
    pass
sys.stdout.write(repr(got))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as another user")
async def test_a_process_of_another_user_cannot_follow_a_fill(
    start: Start, origin: tuple[OriginBehaviour, str]
) -> None:
    behaviour, _ = origin
    proxy = await start()
    request, _, fill = await _fill_under_way(proxy, behaviour, "private")
    address = proxy.cache.sharing.address.replace("\0", "@", 1)
    foreign = await asyncio.create_subprocess_exec(
        "/usr/bin/python3", "-c", FOREIGN_FOLLOWER, address, fill.name,
        user="nobody", stdout=asyncio.subprocess.PIPE, cwd="/",
    )  # fmt: skip
    out, _ = await asyncio.wait_for(foreign.communicate(), 10)
    assert out == b"b''", out  # refused: neither the temp file's path nor its progress
    status, _, body = await request
    assert (status, body) == (200, behaviour.objects["private"])


async def test_a_follower_opens_no_file_outside_the_cache_temp_folder(
    start: Start, origin: tuple[OriginBehaviour, str], tmp_path: Path
) -> None:
    """A lock file that names a process answering with a path outside the cache's tmp/
    (a stale address squatted by another program, say): the follower must not open
    it, even when it looks like a cache file for the key, and waits for the filler."""
    behaviour, _ = origin
    one, two = await start("shared"), await start("shared")
    request, key, fill = await _fill_under_way(one, behaviour, "squatted")
    poison = b"poisoned bytes"
    entry = CacheEntry(key, fill.name, 200, len(poison), {}, time.time(), 7, 0)
    outside = tmp_path / "elsewhere"
    outside.write_bytes(encode_header(entry) + poison)
    opened = []

    async def squatter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        opened.append(True)
        writer.write(b"TEMP %s\nAT %d\nDONE\n" % (str(outside).encode(), len(poison)))
        await writer.drain()
        writer.close()

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(f"\0keyfront-test-squatter-{os.getpid()}")
    server = await asyncio.start_unix_server(squatter, sock=sock)
    try:
        lock = os.open(two.cache.store.lock_path(fill.name), os.O_WRONLY)
        os.pwrite(lock, sock.getsockname(), 0)  # the address, as a filler writes it
        os.ftruncate(lock, len(sock.getsockname()))
        os.close(lock)
        status, _, body = await two.get("squatted")
    finally:
        server.close()
    assert opened  # the follower did ask the squatter
    assert (status, body) == (200, behaviour.objects["squatted"])
    assert (await request)[2] == behaviour.objects["squatted"]


# --- lock files live as long as their fill, and nobody removes one that is held (issue 12) ---


def lock_files(cache: Cache) -> list[str]:
    top = cache.store.locks
    return [name for fan in os.listdir(top) for name in os.listdir(os.path.join(top, fan))]


async def test_lock_files_go_with_their_fill_and_a_held_one_is_never_removed(
    start: Start, origin: tuple[OriginBehaviour, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    behaviour, _ = origin
    one, two = await start("shared"), await start("shared")
    request, _, fill = await _fill_under_way(one, behaviour, "held")
    assert lock_files(one.cache) == [fill.name]
    # What a sweep and a start-up recount do with lock files, while `one` fills: a
    # held lock is kept (taking it away would let `two` fetch the object a second time).
    monkeypatch.setattr(space, "LEFTOVER_LOCK_AGE", -1.0)
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, space._drop_leftover_locks, two.cache.store) == 0
    await loop.run_in_executor(None, space._scan, two.cache.store)
    assert lock_files(two.cache) == [fill.name]
    replies = await asyncio.gather(request, two.get("held"))
    assert [body for _, _, body in replies] == [behaviour.objects["held"]] * 2
    assert behaviour.gets["held"] == 1
    # Ended fills leave none: stored, absent (404), passed through, failed.
    behaviour.delay = 0
    behaviour.put("big", blob(2 * MiB, seed=32))
    behaviour.die["cut"] = 64 * KiB
    behaviour.put("cut", blob(1 * MiB, seed=33))
    behaviour.put("again", b"stored")
    small = await start("shared", max_object_size=1 * MiB)
    for name in ("again", "absent", "big", "cut"):
        with contextlib.suppress(aiohttp.ClientPayloadError):
            await small.get(name)
    assert lock_files(small.cache) == []
    # A crashed filler's lock file (unheld, old) goes at the next sweep, and its block
    # leaves the count.
    leftover = small.cache.store.lock_path("ab" * 32)
    Path(leftover).write_text("\0keyfront-fills-gone")
    total = small.cache.space.total
    small.cache.space.charge(small.cache.store.block)  # as the crashed process did
    assert await small.cache.space._evict(space.Excess(0, 0, 0)) is False
    assert not os.path.exists(leftover)
    assert small.cache.space.total == total


# --- purge echoes (cache/echoes.py) ----------------------------------------------------


async def test_a_failed_announcement_leaves_no_echo_to_swallow_a_later_purge(
    tmp_path: Path,
) -> None:
    """Review finding 7: a purge whose announcement failed (store down) must not make
    this process skip a genuine purge of the same path from another instance."""
    from proxy.errors import StoreError
    from proxy.manage.purge import purge
    from proxy.store import store_from_url

    cache = Cache(CacheConfig(dir=str(tmp_path / "cache")), [Route(PREFIX, "http://127.0.0.1:1/")])
    await cache.open(rescan=False)
    store = store_from_url(f"sqlite://{tmp_path}/kf.db")
    await store.open()
    await store.close()  # the store refuses every call from here on: announce fails
    try:
        with pytest.raises(StoreError):
            await purge(store, cache, [f"{PREFIX}a.bin"], None)
        assert not cache.echoes.is_echo("purge", f"{PREFIX}a.bin")
        cache.echoes.expect("purge", f"{PREFIX}b.bin")  # an announcement that went out
        assert cache.echoes.is_echo("purge", f"{PREFIX}b.bin")
        assert not cache.echoes.is_echo("purge", f"{PREFIX}b.bin")  # one echo, once
    finally:
        await cache.close()


# --- a sweep and a fill's end never unlink a lock file someone holds (review finding 1) -------


def _holds(lock: KeyLock) -> bool:
    """Whether `lock`'s descriptor is the file its path names: the lock others see."""
    return os.stat(lock.path).st_ino == os.fstat(lock._fd).st_ino


@pytest.mark.parametrize("sweep", ["leftover locks", "start-up scan"])
def test_a_sweep_that_gets_a_released_lock_file_leaves_its_successor_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sweep: str
) -> None:
    """The sweep opens a lock file held by filler A; A's fill ends (unlinks it) and
    filler C creates the next one at the same path; only then does the sweep get the
    flock of the file it opened. It must not unlink C's file (a third process would then
    fill the object too), nor count A's blocks as freed a second time. Lock files held
    through separate open() calls exclude each other as two processes' do."""
    store = DiskStore(str(tmp_path / "cache"))
    store.prepare()
    path = store.lock_path("ab" * 32)
    a, c = KeyLock(path), KeyLock(path)
    assert a.acquire() and a.advertise("@keyfront-a") > 0
    real_flock = fcntl.flock
    handed_over = []

    def flock(fd: int, operation: int) -> None:
        if not handed_over and operation == fcntl.LOCK_EX | fcntl.LOCK_NB and fd != a._fd:
            handed_over.append(True)  # the sweep has opened A's file: A ends, C begins
            assert a.release() and c.acquire() and c.advertise("@keyfront-c") > 0
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    monkeypatch.setattr(space, "LEFTOVER_LOCK_AGE", -1.0)
    if sweep == "leftover locks":
        assert space._drop_leftover_locks(store) == 0  # A freed its own blocks already
    else:
        space._scan(store)
    monkeypatch.undo()
    assert handed_over
    assert _holds(c)
    assert KeyLock(path).acquire() is False  # C's fill is the only one
    assert c.release()
    assert not os.path.exists(path)


def test_a_fill_ending_removes_only_its_own_lock_file_and_frees_its_count(
    tmp_path: Path,
) -> None:
    """A lock file removed under its holder (by hand, or by an older version's sweep),
    and the path taken by another holder: the first one's release must leave the
    second's file in place, and still report its own file gone (its count is freed)."""
    store = DiskStore(str(tmp_path / "cache"))
    store.prepare()
    path = store.lock_path("cd" * 32)
    c, d = KeyLock(path), KeyLock(path)
    assert c.acquire()
    os.unlink(path)
    assert d.acquire()
    assert c.release() is True  # its file is gone: its charge is freed
    assert _holds(d)
    assert d.release() is True
    assert c.acquire()
    os.unlink(path)
    assert c.release() is True  # gone (ENOENT): still freed, not counted for ever
