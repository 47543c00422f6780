"""Scenario checks of SPEC section 12 that a throughput table cannot show:

- garbage-key flood: valid traffic (wrk -c64) with and without a concurrent flood of
  random, well-formed keys with wrong MACs (a second wrk, -c8, on the client core),
  interleaved with nginx under the same flood; and the Redis commands keyfront sends
  while only garbage arrives (`INFO commandstats` before and after);
- 1,000 concurrent requests for one object nobody asked for before, which the origin
  holds back COLD_DELAY: the fetches are counted by the origin itself;
- a 2 GiB object streamed through keyfront: its VmRSS sampled while a client reads.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import secrets
import statistics
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from .load import FLOOD_LUA, Sample, finish_wrk, measure, start_wrk, wrk_argv
from .servers import OBJECTS, REFERER, Target
from .system import Cores, cpu_times, cpu_used, rss_bytes

VALID_CONNECTIONS = 64
FLOOD_CONNECTIONS = 8
COLD_REQUESTS = 1000
RSS_SAMPLE_INTERVAL = 0.02
STREAM_TIMEOUT = 180.0
SETTLE = 2.5  # seconds: longer than keyfront's usage.flush_interval (1 s)


# --- garbage-key flood ---------------------------------------------------------------


@dataclass
class FloodResult:
    label: str
    alone: list[float] = field(default_factory=list)  # valid req/s without the flood
    flooded: list[float] = field(default_factory=list)  # valid req/s during it
    garbage: list[float] = field(default_factory=list)  # garbage req/s during it
    valid_errors: int = 0

    @property
    def slowdown(self) -> float:
        """Median over rounds of 1 - flooded / alone (same round)."""
        pairs = zip(self.flooded, self.alone, strict=True)
        return statistics.median(1 - f / a for f, a in pairs)


def flood(
    cores: Cores, targets: list[Target], rounds: int, duration: float, script: Path
) -> list[FloodResult]:
    script.write_text(FLOOD_LUA)
    results = {t.label: FloodResult(t.label) for t in targets}
    name = OBJECTS["10k"][0]
    for round_index in range(rounds):
        shift = round_index % len(targets)
        for target in [*targets[shift:], *targets[:shift]]:
            result = results[target.label]
            alone = measure(cores, target.url(name), target.server.pids(), 64, duration)
            flooded, garbage = _flooded_run(cores, target, duration, script)
            result.alone.append(alone.wrk.rps)
            result.flooded.append(flooded.wrk.rps)
            result.garbage.append(garbage)
            result.valid_errors += alone.wrk.non_2xx + flooded.wrk.non_2xx
    return list(results.values())


def _flooded_run(
    cores: Cores, target: Target, duration: float, script: Path
) -> tuple[Sample, float]:
    """Valid traffic for `duration` inside a slightly longer flood; (valid, garbage req/s)."""
    garbage_url = target.server.base + target.path.partition("?")[0].format(name=OBJECTS["10k"][0])
    flood_proc = start_wrk(cores, wrk_argv(garbage_url, FLOOD_CONNECTIONS, duration + 1, script))
    try:
        time.sleep(0.5)
        valid = measure(
            cores, target.url(OBJECTS["10k"][0]), target.server.pids(), VALID_CONNECTIONS, duration
        )
    finally:
        garbage = finish_wrk(flood_proc, duration + 15)
    return valid, garbage.rps


@dataclass(frozen=True)
class StoreCalls:
    requests: int
    cpu_us_per_request: float
    calls: dict[str, int]  # Redis command -> calls during the garbage-only run
    idle_calls: dict[str, int]  # the same during as long a pause without traffic

    @property
    def attributable(self) -> int:
        """Calls beyond what the same commands did in the pause. PING is left out: the
        change feed's watchdog sends one every 5 s whatever the traffic (store/redis.py)."""
        return sum(
            max(0, n - self.idle_calls.get(name, 0))
            for name, n in self.calls.items()
            if name != "ping"
        )


def garbage_store_calls(
    cores: Cores, target: Target, redis_port: int, duration: float, script: Path
) -> StoreCalls:
    """Only garbage keys for `duration`: the Redis commands keyfront sent meanwhile, and
    for comparison in a pause as long. SETTLE first, so that the counts of earlier
    traffic (flushed every second) are out of the way."""
    url = target.server.base + target.path.partition("?")[0].format(name=OBJECTS["10k"][0])
    pids = target.server.pids()
    time.sleep(SETTLE)
    before = commandstats(redis_port)
    time.sleep(duration)
    between, cpu_before = commandstats(redis_port), cpu_times(pids)
    done = finish_wrk(start_wrk(cores, wrk_argv(url, VALID_CONNECTIONS, duration, script)), 30)
    spent, after = cpu_used(cpu_before, cpu_times(pids)), commandstats(redis_port)
    return StoreCalls(
        done.requests,
        1e6 * spent / max(1, done.requests),
        _delta(between, after),
        _delta(before, between),
    )


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


def commandstats(port: int) -> dict[str, int]:
    """Calls per command from redis-cli INFO commandstats, without INFO itself."""
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "INFO", "commandstats"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    calls = {}
    for line in out.splitlines():
        if line.startswith("cmdstat_") and not line.startswith("cmdstat_info:"):
            name, _, stats = line.removeprefix("cmdstat_").partition(":")
            calls[name] = int(stats.split(",")[0].removeprefix("calls="))
    return calls


# --- 1,000 concurrent cold requests --------------------------------------------------


@dataclass(frozen=True)
class ColdResult:
    label: str
    statuses: dict[str, int]
    origin_fetches: int
    seconds: float


def cold(target: Target, origin: str, count: int = COLD_REQUESTS) -> ColdResult:
    name = f"cold-{secrets.token_hex(6)}.bin"
    started = time.monotonic()
    statuses = asyncio.run(_many_gets(target.url(name), count))
    seconds = time.monotonic() - started
    with urllib.request.urlopen(f"{origin}/stats/{name}", timeout=10) as response:
        fetches = int(json.load(response)["fetches"])
    return ColdResult(target.label, statuses, fetches, seconds)


async def _many_gets(url: str, count: int) -> dict[str, int]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        outcomes = await asyncio.gather(*(_get(session, url) for _ in range(count)))
    return dict(collections.Counter(outcomes))


async def _get(session: aiohttp.ClientSession, url: str) -> str:
    try:
        async with session.get(url, headers={"Referer": REFERER}) as response:
            await response.read()
            return f"{response.status} {response.headers.get('X-Cache', '-')}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return type(exc).__name__


# --- 2 GiB stream --------------------------------------------------------------------


@dataclass(frozen=True)
class StreamResult:
    label: str
    received: int
    seconds: float
    rss_before: int
    rss_peak: int

    @property
    def growth_mib(self) -> float:
        return (self.rss_peak - self.rss_before) / 1024**2


def stream(label: str, url: str, pid: int) -> StreamResult:
    return asyncio.run(_stream(label, url, pid))


async def _stream(label: str, url: str, pid: int) -> StreamResult:
    rss_before = rss_bytes(pid)
    peak = [rss_before]
    sampler = asyncio.create_task(_sample_rss(pid, peak))
    started = time.monotonic()
    received = 0
    timeout = aiohttp.ClientTimeout(total=STREAM_TIMEOUT)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, headers={"Referer": REFERER}) as response,
        ):
            async for chunk in response.content.iter_any():
                received += len(chunk)
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    return StreamResult(label, received, time.monotonic() - started, rss_before, peak[0])


async def _sample_rss(pid: int, peak: list[int]) -> None:
    while True:
        peak[0] = max(peak[0], rss_bytes(pid))
        await asyncio.sleep(RSS_SAMPLE_INTERVAL)
