"""Rate limits end to end (SPEC section 3): keyfront processes under saturating load, on
SQLite and on one shared redis-server, and a redis-server killed mid-traffic."""

from __future__ import annotations

import asyncio
import calendar
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.keys import KeySigner, new_key_id
from proxy.records import Customer, KeyRecord
from proxy.store import store_from_url
from proxy.units import Rate

from conftest import SECRET, KeyfrontProcess, RedisServer, empty_store_url, start_keyfront

SIGNER = KeySigner("pk", {1: SECRET})
RATE, BURST, SECONDS = 100, 50, 10.0


async def provision(store_url: str, key_id: str | None = None, **fields: Any) -> str:
    store = store_from_url(store_url)
    await store.open()
    try:
        if await store.get_customer("acme") is None:
            await store.create_customer(Customer("acme"))
        key_id = key_id or new_key_id()
        await store.create_key(KeyRecord(key_id, "acme", created_at=int(time.time()), **fields))
    finally:
        await store.close()
    return SIGNER.mint(key_id)


def config(store_url: str, files: Path, extra: str = "", store_timeout: str = "50ms") -> str:
    return f"""
store: {store_url}
store_timeout: {store_timeout}
keys:
  secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}
routes:
  - {{prefix: /files/, origin: "file://{files}/"}}
{extra}
"""


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.txt").write_bytes(b"a" * 100)
    return tmp_path / "files"


@dataclass
class Load:
    """Closed-loop load from `workers` concurrent clients over the given instances."""

    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[tuple[float, int, float]] = field(default_factory=list)  # (at, status, s)

    async def run(self, urls: list[str], seconds: float, workers: int = 16) -> float:
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(
                *(
                    self._worker(session, urls[i % len(urls)], started + seconds)
                    for i in range(workers)
                )
            )
        return time.monotonic() - started

    async def _worker(self, session: aiohttp.ClientSession, url: str, until: float) -> None:
        while (now := time.monotonic()) < until:
            async with session.get(url) as response:
                await response.read()
            took = time.monotonic() - now
            self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
            self.latencies.append((now, response.status, took))


def _within_one_percent(allowed: int, seconds: float) -> None:
    expected = RATE * seconds + BURST
    assert abs(allowed - expected) <= 0.01 * expected, (allowed, expected)


async def test_one_instance_holds_rate_and_burst(tmp_path: Path, files: Path) -> None:
    store_url = f"sqlite://{tmp_path}/kf.db"
    key = await provision(store_url, rate=Rate(RATE, 1.0), burst=BURST)
    kf = start_keyfront(config(store_url, files), str(tmp_path))
    try:
        load = Load()
        seconds = await load.run([f"{kf.url}/files/a.txt?key={key}"], SECONDS)
        assert load.statuses.get(429, 0) > 1000  # the load saturated the limit
        _within_one_percent(load.statuses[200], seconds)
    finally:
        assert kf.stop() == 0


async def test_two_instances_share_one_limit(tmp_path: Path, files: Path, redis_url: str) -> None:
    key = await provision(redis_url, rate=Rate(RATE, 1.0), burst=BURST)
    # A generous store_timeout: this measures the shared limit, and on this 2-core
    # machine a saturated client and two servers can delay Redis replies past 50 ms,
    # which (correctly) trips the breaker to local decisions.
    body = config(redis_url, files, store_timeout="1s")
    instances = [start_keyfront(body, str(tmp_path)) for _ in range(2)]
    try:
        load = Load()
        urls = [f"{kf.url}/files/a.txt?key={key}" for kf in instances]
        seconds = await load.run(urls, SECONDS)
        assert load.statuses.get(429, 0) > 1000
        _within_one_percent(load.statuses[200], seconds)
    finally:
        for kf in instances:
            assert kf.stop() == 0


@pytest.fixture
def redis_outage(redis_server: RedisServer, redis_url: str) -> Iterator[RedisServer]:
    yield redis_server
    if redis_server.process.poll() is not None:
        redis_server.start()


async def degraded(session: aiohttp.ClientSession, kf: KeyfrontProcess) -> float:
    """keyfront_store_degraded on the instance's /metrics: workers whose store circuit
    breaker is open (issue 16's dashboard and alert read it)."""
    async with session.get(f"{kf.admin_url}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith("keyfront_store_degraded "):
                return float(line.split()[1])
    raise AssertionError("no keyfront_store_degraded on /metrics")


async def test_store_outage_allow_deny_and_recovery(
    tmp_path: Path, files: Path, redis_outage: RedisServer, redis_url: str
) -> None:
    key = await provision(redis_url, rate=Rate(100_000, 1.0), burst=100_000)
    key_id = key.split("_")[2]
    allow = start_keyfront(config(redis_url, files), str(tmp_path))
    deny = start_keyfront(config(redis_url, files, "on_store_error: deny"), str(tmp_path))
    try:
        async with aiohttp.ClientSession() as session:
            for kf in (allow, deny):  # records cached, buckets live in Redis
                async with session.get(f"{kf.url}/files/a.txt?key={key}") as response:
                    assert response.status == 200
            assert redis_outage.cli("EXISTS", f"kf:b:{{{key_id}}}").strip() == "1"
            assert await degraded(session, allow) == 0

            load = Load()
            traffic = asyncio.create_task(
                load.run([f"{allow.url}/files/a.txt?key={key}"], 2.0, workers=4)
            )
            await asyncio.sleep(0.5)
            killed_at = time.monotonic()
            await asyncio.to_thread(redis_outage.stop)  # the load's event loop runs on
            await asyncio.sleep(0.3)
            async with session.get(f"{deny.url}/files/a.txt?key={key}") as response:
                assert response.status == 503
                assert (await response.json())["error"]["code"] == "unavailable"
            await traffic
            assert set(load.statuses) == {200}, load.statuses
            assert await degraded(session, allow) == 1  # the breaker is open: on the page
            during = [took for at, _, took in load.latencies if at >= killed_at]
            assert len(during) > 100  # the outage was under load, not after it
            slow = [
                (round(at - killed_at, 3), round(took, 3))
                for at, _, took in load.latencies
                if at >= killed_at - 0.1 and took > 0.070
            ]
            assert not slow, slow

            redis_outage.start()  # an empty redis-server: the test's has no persistence
            await provision(redis_url, key_id, rate=Rate(100_000, 1.0), burst=100_000)
            restarted = time.monotonic()
            while redis_outage.cli("EXISTS", f"kf:b:{{{key_id}}}").strip() != "1":
                assert time.monotonic() - restarted < 2.0, "shared limiting did not resume"
                async with session.get(f"{allow.url}/files/a.txt?key={key}") as response:
                    assert response.status == 200
                await asyncio.sleep(0.05)
            deadline = time.monotonic() + 2.0
            while True:  # the deny instance serves again once its breaker closes
                async with session.get(f"{deny.url}/files/a.txt?key={key}") as response:
                    status = response.status
                if status == 200 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert status == 200
            assert await degraded(session, allow) == 0
    finally:
        for kf in (allow, deny):
            assert kf.stop() == 0


async def test_rate_headers_and_quota_refusal(tmp_path: Path, files: Path, redis_url: str) -> None:
    key = await provision(redis_url, rate=Rate(10, 1.0), burst=5, quota_requests=7)
    kf: KeyfrontProcess = start_keyfront(config(redis_url, files), str(tmp_path))
    try:
        async with aiohttp.ClientSession() as session:
            seen = []
            for _ in range(9):
                async with session.get(f"{kf.url}/files/a.txt?key={key}") as response:
                    body = await response.read()
                    seen.append((response.status, dict(response.headers), body))
                await asyncio.sleep(0.15)
        statuses = [status for status, _, _ in seen]
        assert statuses == [200] * 7 + [429, 429]
        first = seen[0][1]
        assert (first["RateLimit-Limit"], first["RateLimit-Remaining"]) == ("5", "4")
        assert int(first["RateLimit-Reset"]) >= 1
        refused = seen[7]
        assert b'"quota_exceeded"' in refused[2]
        assert int(refused[1]["Retry-After"]) > 60  # until the month ends
        assert "RateLimit-Remaining" in refused[1]
    finally:
        assert kf.stop() == 0


# --- issue 12 item 6: a refused client spends nobody else's allowance -------------------


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    server = request.getfixturevalue("redis_server") if request.param == "redis" else None
    return empty_store_url(request.param, server, str(tmp_path))


async def _provision_customer(store_url: str, customer: Customer, *keys: KeyRecord) -> list[str]:
    store = store_from_url(store_url)
    await store.open()
    try:
        await store.create_customer(customer)
        for record in keys:
            await store.create_key(record)
    finally:
        await store.close()
    return [SIGNER.mint(record.key_id) for record in keys]


async def _codes(session: aiohttp.ClientSession, url: str, ip: str, times: int) -> list[str]:
    """The outcome of each of `times` requests from client `ip` (through the trusted
    proxy 127.0.0.1): "ok", or the refusal's code."""
    codes = []
    for _ in range(times):
        async with session.get(url, headers={"X-Forwarded-For": ip}) as response:
            body = await response.read()
            codes.append("ok" if response.status == 200 else json.loads(body)["error"]["code"])
    return codes


async def test_a_refused_client_spends_no_one_elses_tokens_nor_the_quota(
    tmp_path: Path, files: Path, store_url: str
) -> None:
    slow, per_ip = Rate(1, 60.0), {"ip_rate": Rate(1, 60.0), "ip_burst": 2}
    now = int(time.time())
    bucket, quota, pooled_a, pooled_b = (new_key_id() for _ in range(4))
    keys = await _provision_customer(
        store_url,
        Customer("acme", max_rate=slow, max_burst=8),
        KeyRecord(bucket, "acme", created_at=now, rate=slow, burst=6, **per_ip),  # type: ignore[arg-type]
    )
    keys += await _provision_customer(
        store_url,
        Customer("initech"),
        KeyRecord(quota, "initech", created_at=now, quota_requests=4, **per_ip),  # type: ignore[arg-type]
    )
    pooled = await _provision_customer(
        store_url,
        Customer("pool", quota_requests=5),
        KeyRecord(pooled_a, "pool", created_at=now),
        KeyRecord(pooled_b, "pool", created_at=now),
    )
    extra = "trusted_proxies: [127.0.0.1/32]\nusage: {flush_interval: 100ms}"
    kf = start_keyfront(config(store_url, files, extra), str(tmp_path))
    try:
        async with aiohttp.ClientSession() as session:
            # The key's bucket holds 6, its customer's 8: client 1's refusals take neither.
            url = f"{kf.url}/files/a.txt?key={keys[0]}"
            assert await _codes(session, url, "10.0.0.1", 12) == ["ok"] * 2 + ["rate_limited"] * 10
            assert await _codes(session, url, "10.0.0.2", 3) == ["ok"] * 2 + ["rate_limited"]
            assert await _codes(session, url, "2001:db8::1", 2) == ["ok"] * 2  # the key's 6
            assert await _codes(session, url, "10.0.0.4", 1) == ["rate_limited"]  # the key's own

            # A monthly quota of 4: client 1's refusals do not count against it.
            url = f"{kf.url}/files/a.txt?key={keys[1]}"
            assert await _codes(session, url, "10.1.0.1", 12) == ["ok"] * 2 + ["rate_limited"] * 10
            assert await _codes(session, url, "10.1.0.2", 2) == ["ok"] * 2
            assert await _codes(session, url, "10.1.0.3", 1) == ["quota_exceeded"]

            # A customer's quota of 5 is one pool for both its keys (SPEC section 2).
            served = [await _codes(session, f"{kf.url}/files/a.txt?key={k}", "10.2.0.1", 3)
                      for k in pooled]  # fmt: skip
            assert served == [["ok"] * 3, ["ok"] * 2 + ["quota_exceeded"]]
        deadline = time.monotonic() + 5
        while True:
            out = kf.cli("usage", "--key", quota, "--by", "month", "--format", "json").stdout
            rows = json.loads(out)
            if (rows and rows[0].get("denied_quota_exceeded")) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        billed = (rows[0]["requests"], rows[0]["denied_rate_limited"])
        assert billed == (4, 10)  # the refused requests are seen, not billed
    finally:
        assert kf.stop() == 0


# --- issue 15: a 429 says which limit refused it; a quota's 429 carries its headers ----


async def _refusal(
    session: aiohttp.ClientSession, url: str, ip: str
) -> tuple[int, dict[str, str], dict[str, Any]]:
    async with session.get(url, headers={"X-Forwarded-For": ip}) as response:
        body = await response.read()
        error = json.loads(body)["error"] if response.status != 200 else {}
        return response.status, dict(response.headers), error


def _month_end() -> int:
    now = time.gmtime()
    return calendar.timegm((now.tm_year + now.tm_mon // 12, now.tm_mon % 12 + 1, 1, 0, 0, 0))


async def test_a_429_says_which_limit_refused_it(
    tmp_path: Path, files: Path, store_url: str
) -> None:
    slow, now = Rate(1, 60.0), int(time.time())
    per_ip, by_rate = new_key_id(), new_key_id()
    quota, pooled = new_key_id(), new_key_id()
    keys = await _provision_customer(
        store_url,
        Customer("acme", max_rate=slow, max_burst=3),
        KeyRecord(per_ip, "acme", created_at=now, rate=slow, burst=2, ip_rate=slow, ip_burst=1),
        KeyRecord(by_rate, "acme", created_at=now),  # keys.defaults' bucket, 20/s
    )
    keys += await _provision_customer(
        store_url,
        Customer("initech"),
        KeyRecord(quota, "initech", created_at=now, quota_requests=2),
    )
    keys += await _provision_customer(
        store_url, Customer("pool", quota_bytes=150), KeyRecord(pooled, "pool", created_at=now)
    )
    extra = "trusted_proxies: [127.0.0.1/32]\nusage: {flush_interval: 100ms}"
    kf = start_keyfront(config(store_url, files, extra), str(tmp_path))
    try:
        async with aiohttp.ClientSession() as session:
            url = f"{kf.url}/files/a.txt?key="
            seen = [await _refusal(session, url + keys[0], ip) for ip in ("10.0.0.1",) * 2]
            seen += [await _refusal(session, url + keys[0], ip) for ip in ("10.0.0.2", "10.0.0.3")]
            seen += [await _refusal(session, url + keys[1], "10.0.0.4") for _ in range(2)]
            seen += [await _refusal(session, url + keys[2], "10.0.0.5") for _ in range(3)]
            messages = [(status, error.get("message")) for status, _, error in seen]
            assert messages == [
                (200, None),
                (429, "rate limit exceeded: this key's rate per client IP address"),
                (200, None),
                (429, "rate limit exceeded: this key's rate (its token bucket)"),
                (200, None),  # the plan's third token: the refusals above spent none
                (429, "rate limit exceeded: the customer's plan rate, shared by all its keys"),
                (200, None),
                (200, None),
                (429, "monthly quota exhausted: this key's quota"),
            ]
            assert {error["code"] for _, _, error in seen if error} == {
                "rate_limited",
                "quota_exceeded",
            }
            assert not any("X-Quota-Limit" in headers for _, headers, _ in seen[:6])
            _, headers, _ = seen[-1]
            assert (headers["X-Quota-Limit"], headers["X-Quota-Unit"]) == ("2", "requests")
            assert headers["X-Quota-Remaining"] == "0"
            reset = int(headers["X-Quota-Reset"])
            assert abs(time.time() + reset - _month_end()) < 5
            assert headers["Retry-After"] == headers["X-Quota-Reset"]
            # RateLimit-* stay the key bucket's (keys.defaults: burst 40), as on a 200.
            assert headers["RateLimit-Limit"] == "40"

            # A byte quota of 150 shared by the customer's keys: requests of 100 bytes
            # are served until the bytes sent reach it (counted as responses finish).
            deadline, status = time.monotonic() + 5, 200
            while status == 200 and time.monotonic() < deadline:
                status, headers, error = await _refusal(session, url + keys[3], "10.0.0.6")
                await asyncio.sleep(0.2)
            assert (status, error["code"]) == (429, "quota_exceeded")
            assert error["message"] == (
                "monthly quota exhausted: the customer's quota, shared by all its keys"
            )
            assert (headers["X-Quota-Limit"], headers["X-Quota-Unit"]) == ("150", "bytes")
            assert headers["X-Quota-Remaining"] == "0"
            assert abs(time.time() + int(headers["X-Quota-Reset"]) - _month_end()) < 5
    finally:
        assert kf.stop() == 0


async def test_a_pooled_quota_refusal_spends_nothing_of_the_keys_own_quota(
    tmp_path: Path, files: Path, store_url: str
) -> None:
    """Issue 15, plans per customer: the customer's pool and the key's own quota are
    decided together, all or nothing; raising the pool lets the key use the rest of its
    own quota, which the pool's refusals did not touch."""
    key_id = new_key_id()
    (key,) = await _provision_customer(
        store_url,
        Customer("pool", quota_requests=2),
        KeyRecord(key_id, "pool", created_at=int(time.time()), quota_requests=3),
    )
    kf = start_keyfront(config(store_url, files, "trusted_proxies: [127.0.0.1/32]"), str(tmp_path))
    try:
        async with aiohttp.ClientSession() as session:
            url = f"{kf.url}/files/a.txt?key={key}"
            seen = [await _refusal(session, url, "10.3.0.1") for _ in range(6)]
            assert [status for status, _, _ in seen] == [200] * 2 + [429] * 4
            assert {error["message"] for _, _, error in seen[2:]} == {
                "monthly quota exhausted: the customer's quota, shared by all its keys"
            }
            kf.cli("customers", "update", "pool", "--quota-requests", "10")
            deadline, status = time.monotonic() + 5, 429
            while status == 429 and time.monotonic() < deadline:  # the record cache
                status, _, error = await _refusal(session, url, "10.3.0.1")
                await asyncio.sleep(0.05)
            assert status == 200  # the key's third: refused by the pool, it spent none
            status, headers, error = await _refusal(session, url, "10.3.0.1")
            assert (status, error["message"]) == (429, "monthly quota exhausted: this key's quota")
            assert (headers["X-Quota-Limit"], headers["X-Quota-Unit"]) == ("3", "requests")
    finally:
        assert kf.stop() == 0
