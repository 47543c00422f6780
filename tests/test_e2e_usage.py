"""Billing-grade counting end to end (SPEC sections 4 and 11): a Redis outage in the
middle of traffic and a SIGTERM in the middle of traffic lose and double nothing."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from proxy.units import Rate

from conftest import RedisServer, start_keyfront
from test_e2e_limits import config, provision  # one way to provision keys and configs

UNLIMITED = Rate(1_000_000, 1.0)  # these tests count, they do not limit


@pytest.fixture
def durable_redis() -> Iterator[RedisServer]:
    """A redis-server that keeps its data across a restart (AOF, fsync always), as a
    production Redis would: the outage test restarts it."""
    server = RedisServer.launch("--appendonly", "yes", "--appendfsync", "always")
    yield server
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.txt").write_bytes(b"a" * 1000)
    return tmp_path / "files"


async def _traffic(url: str, stop: asyncio.Event, served: list[int]) -> None:
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            try:
                async with session.get(url) as response:
                    body = await response.read()
                    if response.status == 200:
                        served.append(len(body))
            except aiohttp.ClientError:
                await asyncio.sleep(0.01)


def _totals(kf_cli: object, key_id: str) -> dict[str, int]:
    out = kf_cli("usage", "--key", key_id, "--by", "hour", "--json").stdout  # type: ignore[operator]
    rows = json.loads(out)
    return {k: sum(r.get(k, 0) for r in rows) for k in ("requests", "bytes")}


async def test_a_redis_outage_loses_no_counts(
    tmp_path: Path, files: Path, durable_redis: RedisServer
) -> None:
    key = await provision(durable_redis.url, rate=UNLIMITED, burst=UNLIMITED.count)
    key_id = key.split("_")[2]
    kf = start_keyfront(config(durable_redis.url, files), str(tmp_path))
    try:
        stop, served = asyncio.Event(), []
        traffic = asyncio.create_task(_traffic(f"{kf.url}/files/a.txt?key={key}", stop, served))
        await asyncio.sleep(1.0)
        await asyncio.to_thread(durable_redis.stop)
        await asyncio.sleep(5.0)
        await asyncio.to_thread(durable_redis.start)
        await asyncio.sleep(1.0)
        stop.set()
        await traffic
        assert len(served) > 500
        expected = {"requests": len(served), "bytes": sum(served)}
        deadline = time.monotonic() + 10
        got = _totals(kf.cli, key_id)
        while got != expected and time.monotonic() < deadline:  # flushed within a second
            await asyncio.sleep(0.5)
            got = _totals(kf.cli, key_id)
        assert got == expected
    finally:
        assert kf.stop() == 0


async def test_sigterm_mid_traffic_counts_every_served_request(tmp_path: Path, files: Path) -> None:
    store_url = f"sqlite://{tmp_path}/kf.db"
    key = await provision(store_url, rate=UNLIMITED, burst=UNLIMITED.count)
    kf = start_keyfront(config(store_url, files), str(tmp_path))
    stop, served = asyncio.Event(), []
    traffic = asyncio.create_task(_traffic(f"{kf.url}/files/a.txt?key={key}", stop, served))
    await asyncio.sleep(1.5)
    kf.process.terminate()
    assert await asyncio.to_thread(kf.process.wait, 20) == 0
    stop.set()
    await traffic
    assert len(served) > 200
    assert _totals(kf.cli, key.split("_")[2]) == {"requests": len(served), "bytes": sum(served)}
