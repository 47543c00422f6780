"""External keys looked up live in the operator's key API (SPEC section 13), end to
end: keyfront as a real process, the key API a real aiohttp process (tests/key_api.py)
whose answers the tests set per key and which counts its lookups per key."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from conftest import (
    KeyfrontProcess,
    RedisServer,
    empty_store_url,
    free_port,
    start_keyfront,
    wait_for_port,
)

API_TOKEN = "key-api-token-0123456789"
ADMIN_TOKEN = "admin-token-0123456789"
KEY_API = os.path.join(os.path.dirname(os.path.abspath(__file__)), "key_api.py")
BODY = b"hello from the operator's bucket\n"
TIMEOUT = 0.3  # keys.external.lookup.timeout in these configs


# --- the operator's key API, as a process ----------------------------------------------


@dataclass
class KeyApi:
    port: int
    process: subprocess.Popen[bytes]

    @classmethod
    def launch(cls, port: int | None = None) -> KeyApi:
        port = port or free_port()
        process = subprocess.Popen([sys.executable, KEY_API, str(port), API_TOKEN])
        wait_for_port(port)
        return cls(port, process)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/lookup"

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def _call(self, method: str, path: str, data: Any = None) -> Any:
        body = json.dumps(data).encode() if data is not None else None
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", body, method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def answer(self, key: str, mode: str = "record", sleep: float = 0.0, **record: Any) -> None:
        """How the API answers `key` from now on (see tests/key_api.py)."""
        quoted = urllib.parse.quote(key, safe="")
        self._call("PUT", f"/_keys/{quoted}", {"mode": mode, "sleep": sleep, "record": record})

    def restart_peak(self) -> int:
        """Count the most lookups in flight at once from now on; those in flight now."""
        return int(self._call("POST", "/_total")["in_flight"])

    def lookups(self, key: str) -> int:
        return int(self._call("GET", f"/_counts/{urllib.parse.quote(key, safe='')}")["lookups"])

    def total(self, what: str = "lookups") -> int:
        return int(self._call("GET", "/_total")[what])


@pytest.fixture(scope="module")
def key_api() -> Iterator[KeyApi]:
    api = KeyApi.launch()
    yield api
    if api.process.poll() is None:
        api.kill()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lookup-origin")
    (root / "maps").mkdir()
    (root / "maps" / "tile.txt").write_bytes(BODY)
    return root


def new_key() -> str:
    """An opaque key as an operator's customers hold them (a UUID)."""
    return str(uuid.uuid4())


def record(key_id: str | None = None, customer_id: str = "op-customer-1", **fields: Any) -> Any:
    return {"key_id": key_id or f"op-{uuid.uuid4().hex[:12]}", "customer_id": customer_id,
            **fields}  # fmt: skip


def lookup_config(api: KeyApi, store_url: str, files: Path, **lookup: str) -> str:
    settings = {"url": api.url, "token": API_TOKEN, "timeout": f"{int(TIMEOUT * 1000)}ms",
                "fresh": "1s", "stale": "1s", "max_stale": "4s", "negative_ttl": "1s",
                "concurrency": "4", "unknown_key_rate": "1/s", "unknown_key_burst": "5",
                **lookup}  # fmt: skip
    lines = "".join(f"      {name}: {value}\n" for name, value in settings.items())
    return f"""
store: {store_url}
trusted_proxies: [127.0.0.1/32]
access_log: {files.parent}/access-{free_port()}.log
admin: {{token: {ADMIN_TOKEN}}}
keys:
  secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}
  external:
    lookup:
{lines}routes:
  - {{prefix: /files/, origin: "file://{files}/"}}
"""


@pytest.fixture(scope="module")
def kf(
    key_api: KeyApi, files: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KeyfrontProcess]:
    workdir = tmp_path_factory.mktemp("kf-lookup")
    instance = start_keyfront(lookup_config(key_api, f"sqlite://{workdir}/kf.db", files),
                              str(workdir))  # fmt: skip
    yield instance
    assert instance.stop() == 0


_ips = iter(range(1, 250))


def client_ip() -> str:
    """A client IP of the test's own, so that unknown_key_rate buckets do not mix."""
    return f"10.13.{next(_ips)}.7"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float

    @property
    def code(self) -> str:
        return str(json.loads(self.body)["error"]["code"])


async def fetch(
    base: str, key: str, ip: str, path: str = "/files/maps/tile.txt", **headers: str
) -> Reply:
    headers = {"X-Forwarded-For": ip, **headers}
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        url = f"{base}{path}?key={urllib.parse.quote(key, safe='')}"
        async with session.get(url, headers=headers) as response:
            body = await response.read()
            return Reply(response.status, dict(response.headers), body,
                         time.monotonic() - started)  # fmt: skip


# --- a looked-up key is served like a keyfront key ---------------------------------------


async def test_looked_up_key_is_served_with_its_restrictions(
    kf: KeyfrontProcess, key_api: KeyApi
) -> None:
    key, ip = new_key(), client_ip()
    key_api.answer(
        key, **record("op-key-referrer", referrers=["app.example.com"], rate="50/s", burst=50)
    )
    good = await fetch(kf.url, key, ip, Referer="https://app.example.com/map")
    assert (good.status, good.body) == (200, BODY)
    assert good.headers["RateLimit-Limit"] == "50"  # the answer's burst
    evil = await fetch(kf.url, key, ip, Referer="https://evil.example.org/")
    assert (evil.status, evil.code) == (403, "referrer_not_allowed")
    assert (await fetch(kf.url, key, ip)).code == "referrer_not_allowed"  # no referrer
    assert key_api.lookups(key) == 1  # one answer served all three
    # The access log (flushed every second) names the operator's key id and customer,
    # never the key.
    log = Path(kf.config_path).read_text().split("access_log: ")[1].split("\n")[0]
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        text = Path(log).read_text() if os.path.exists(log) else ""
        ours = [json.loads(x) for x in text.splitlines() if '"op-key-referrer"' in x]
        if len(ours) == 3:
            break
        await asyncio.sleep(0.1)
    assert [line["key_id"] for line in ours] == ["op-key-referrer"] * 3
    assert {line["customer_id"] for line in ours} == {"op-customer-1"}
    assert key not in text

    # Usage is kept under the operator's key id too (flushed every second, like the log).
    def usage(*by: str) -> list[dict[str, Any]]:
        return list(json.loads(kf.cli("usage", *by, "--format", "json").stdout))

    [row] = usage("--key", "op-key-referrer")
    assert (row["requests"], row["denied_referrer_not_allowed"]) == (1, 2)
    assert usage("--customer", "op-customer-1")[0]["requests"] >= 1
    assert kf.cli("usage", "--key", "op-no-such-key", check=False).returncode == 1


async def test_answer_status_and_customer_are_checked(kf: KeyfrontProcess, key_api: KeyApi) -> None:
    revoked, expired, suspended, ip = new_key(), new_key(), new_key(), client_ip()
    key_api.answer(revoked, **record(status="revoked"))
    key_api.answer(expired, **record(expires_at="2020-01-01T00:00:00Z"))
    key_api.answer(suspended, **record(customer={"status": "disabled"}))
    assert (await fetch(kf.url, revoked, ip)).code == "key_revoked"
    assert (await fetch(kf.url, expired, ip)).code == "key_expired"
    assert (await fetch(kf.url, suspended, ip)).code == "key_disabled"


async def test_fresh_answer_is_used_without_a_new_lookup(
    kf: KeyfrontProcess, key_api: KeyApi
) -> None:
    key, ip = new_key(), client_ip()
    key_api.answer(key, **record())
    for _ in range(5):
        assert (await fetch(kf.url, key, ip)).status == 200
    assert key_api.lookups(key) == 1
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{kf.admin_url}/metrics") as response,
    ):
        metrics = await response.text()
    hits = [line for line in metrics.splitlines()
            if line.startswith('keyfront_key_lookups_total{result="hit"}')]  # fmt: skip
    assert hits and float(hits[0].split()[-1]) >= 4
    assert key not in metrics


async def test_at_most_concurrency_lookups_run_at_once(
    kf: KeyfrontProcess, key_api: KeyApi
) -> None:
    keys = [new_key() for _ in range(8)]
    for key in keys:
        key_api.answer(key, "sleep", 0.2, **record())
    assert key_api.restart_peak() == 0
    replies = await asyncio.gather(*(fetch(kf.url, key, client_ip()) for key in keys))
    assert key_api.total("most_in_flight") <= 4  # concurrency: 4
    statuses = sorted(r.status for r in replies)
    assert statuses.count(200) >= 4  # the first four; the rest waited for a slot, and
    assert set(statuses) <= {200, 503}  # those that got none in time answer 503
    assert max(r.seconds for r in replies) < TIMEOUT + 0.5


async def test_stale_answer_is_served_while_one_refresh_runs(
    kf: KeyfrontProcess, key_api: KeyApi
) -> None:
    key, ip = new_key(), client_ip()
    key_api.answer(key, **record("op-key-stale"))
    assert (await fetch(kf.url, key, ip)).status == 200
    # The key is revoked in the operator's system; the API now takes 0.2 s to say so.
    key_api.answer(key, "sleep", 0.2, **record("op-key-stale", status="revoked"))
    await asyncio.sleep(1.1)  # past fresh (1 s), within stale (1 s more)
    stale = await asyncio.gather(*(fetch(kf.url, key, ip) for _ in range(5)))
    assert [r.status for r in stale] == [200] * 5  # served at once, not after the lookup
    assert max(r.seconds for r in stale) < 0.2
    await asyncio.sleep(0.4)  # the one refresh has answered
    assert key_api.lookups(key) == 2
    assert (await fetch(kf.url, key, ip)).code == "key_revoked"


async def test_concurrent_requests_for_an_uncached_key_share_one_lookup(
    kf: KeyfrontProcess, key_api: KeyApi
) -> None:
    key = new_key()
    key_api.answer(key, "sleep", 0.1, **record())
    replies = await asyncio.gather(*(fetch(kf.url, key, client_ip()) for _ in range(20)))
    assert [r.status for r in replies] == [200] * 20
    assert key_api.lookups(key) == 1


async def test_unknown_key_is_remembered_for_negative_ttl(
    kf: KeyfrontProcess, key_api: KeyApi
) -> None:
    key, ip = new_key(), client_ip()  # the API answers 404 for keys it was not given
    for _ in range(3):
        assert (await fetch(kf.url, key, ip)).code == "key_unknown"
    assert key_api.lookups(key) == 1
    await asyncio.sleep(1.1)  # negative_ttl
    assert (await fetch(kf.url, key, ip)).code == "key_unknown"
    assert key_api.lookups(key) == 2


async def test_keys_outside_the_pattern_are_never_looked_up(
    kf: KeyfrontProcess, key_api: KeyApi
) -> None:
    before, ip = key_api.total(), client_ip()
    for key in ("short", "has space in it", "x" * 129, "pk_1_" + "A" * 22 + "_" + "0" * 32):
        assert (await fetch(kf.url, key, ip)).code == "key_invalid"
    assert key_api.total() == before
    # keyfront's format with another prefix than keys.prefix is an operator's key.
    theirs = "sk_1_" + "A" * 22 + "_" + "0" * 32
    assert (await fetch(kf.url, theirs, ip)).code == "key_unknown"
    assert key_api.lookups(theirs) == 1


# --- the key API failing -----------------------------------------------------------------

FAILURES = ("500", "sleep", "garbage", "bad", "huge")


async def test_failing_key_api_uses_cached_answers_else_503_within_the_timeout(
    kf: KeyfrontProcess, key_api: KeyApi
) -> None:
    cached = {mode: new_key() for mode in FAILURES}
    for key in cached.values():
        key_api.answer(key, **record())
        assert (await fetch(kf.url, key, client_ip())).status == 200
    for mode, key in cached.items():
        key_api.answer(key, mode, 2.0, **record())
    await asyncio.sleep(2.1)  # past fresh + stale (2 s), within max_stale (4 s past fresh)
    for mode, key in cached.items():
        reply = await fetch(kf.url, key, client_ip())
        assert (reply.status, reply.body) == (200, BODY), mode
        assert reply.seconds < TIMEOUT + 0.5, mode
        assert key_api.lookups(key) == 2, mode  # it asked, and got nothing usable
    for mode in FAILURES:
        key = new_key()
        key_api.answer(key, mode, 2.0, **record())
        for attempt in (1, 2):  # a failure is never cached: each request asks again
            reply = await fetch(kf.url, key, client_ip())
            assert (reply.status, reply.code) == (503, "unavailable"), mode
            assert reply.seconds < TIMEOUT + 0.5, mode
            assert key not in reply.body.decode()
            assert key_api.lookups(key) == attempt, mode


async def test_killed_key_api_uses_cached_answers_else_503(
    kf: KeyfrontProcess, key_api: KeyApi
) -> None:
    key, ip = new_key(), client_ip()
    key_api.answer(key, **record())
    assert (await fetch(kf.url, key, ip)).status == 200
    key_api.kill()
    try:
        await asyncio.sleep(2.1)
        reply = await fetch(kf.url, key, ip)
        assert (reply.status, reply.body) == (200, BODY)
        uncached = await fetch(kf.url, new_key(), ip)
        assert (uncached.status, uncached.code) == (503, "unavailable")
        assert uncached.seconds < TIMEOUT + 0.5
    finally:
        key_api.process = KeyApi.launch(key_api.port).process


# --- floods of made-up keys --------------------------------------------------------------


async def test_flood_of_made_up_keys_costs_a_bounded_number_of_lookups(
    kf: KeyfrontProcess, key_api: KeyApi
) -> None:
    known, flooder = new_key(), client_ip()
    key_api.answer(known, **record())
    assert (await fetch(kf.url, known, flooder)).status == 200
    before, started = key_api.total(), time.monotonic()
    statuses: dict[str, int] = {}
    for _ in range(40):
        reply = await fetch(kf.url, new_key(), flooder)
        statuses[reply.code] = statuses.get(reply.code, 0) + 1
        if reply.status == 429:
            assert int(reply.headers["Retry-After"]) >= 1
            assert reply.headers["RateLimit-Limit"] == "5"  # unknown_key_burst
            assert reply.headers["RateLimit-Remaining"] == "0"
            message = json.loads(reply.body)["error"]["message"]  # which limit (issue 15)
            assert message == "rate limit exceeded: keys not seen before, from this client IP"
    looked_up = key_api.total() - before
    assert looked_up <= 5 + 1 * (time.monotonic() - started) + 1  # burst + rate * time
    assert statuses["rate_limited"] >= 40 - looked_up - 1
    assert statuses["key_unknown"] == looked_up
    # The flooder's own known key, and other clients' new keys, still work.
    assert (await fetch(kf.url, known, flooder)).status == 200
    assert (await fetch(kf.url, new_key(), client_ip())).code == "key_unknown"


# --- invalidation: two instances sharing one store ----------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def pair(
    request: pytest.FixtureRequest,
    key_api: KeyApi,
    files: Path,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[KeyfrontProcess]]:
    workdir = tmp_path_factory.mktemp(f"kf-pair-{request.param}")
    store_url = empty_store_url(request.param, redis_server, str(workdir))
    body = lookup_config(key_api, store_url, files, fresh="60s", stale="60s", max_stale="60s")
    instances = [start_keyfront(body, str(workdir)), start_keyfront(body, str(workdir))]
    yield instances
    for instance in instances:
        assert instance.stop() == 0


def _within_a_second(check: Callable[[], bool]) -> float:
    started = time.monotonic()
    while time.monotonic() - started < 1.5:
        if check():
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError("not seen within 1.5 s")


def _status(instance: KeyfrontProcess, key: str, ip: str) -> tuple[int, str]:
    reply = asyncio.run(fetch(instance.url, key, ip))
    return reply.status, reply.code if reply.status >= 400 else ""


def _admin_invalidate(instance: KeyfrontProcess, body: dict[str, list[str]]) -> Any:
    request = urllib.request.Request(
        f"{instance.admin_url}/admin/v1/keys/invalidate",
        json.dumps(body).encode(),
        {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _revoke_everywhere(pair: list[KeyfrontProcess], key_api: KeyApi, invalidate: Callable[
        [str, dict[str, Any]], None]) -> None:  # fmt: skip
    key, ip = new_key(), client_ip()
    answer = record(customer_id=f"op-c-{uuid.uuid4().hex[:8]}")
    key_api.answer(key, **answer)
    for instance in pair:  # both now hold the answer, fresh for a minute
        assert _status(instance, key, ip) == (200, "")
    key_api.answer(key, **{**answer, "status": "revoked"})
    assert _status(pair[1], key, ip) == (200, "")  # cached: the API is not asked
    invalidate(key, answer)
    for instance in pair:
        took = _within_a_second(lambda i=instance: _status(i, key, ip) == (403, "key_revoked"))
        assert took <= 1.0
    assert key_api.lookups(key) == 4  # one answer each before, one each after


def test_invalidate_by_key_reaches_both_instances(
    pair: list[KeyfrontProcess], key_api: KeyApi
) -> None:
    def by_key(key: str, answer: dict[str, Any]) -> None:
        assert _admin_invalidate(pair[0], {"keys": [key]}) == {"announced": 1}

    _revoke_everywhere(pair, key_api, by_key)


def test_invalidate_by_customer_reaches_both_instances(
    pair: list[KeyfrontProcess], key_api: KeyApi
) -> None:
    def by_customer(key: str, answer: dict[str, Any]) -> None:
        _admin_invalidate(pair[1], {"customer_ids": [answer["customer_id"]]})

    _revoke_everywhere(pair, key_api, by_customer)


def test_cli_invalidate_by_key_id_and_by_key(pair: list[KeyfrontProcess], key_api: KeyApi) -> None:
    def by_key_id(key: str, answer: dict[str, Any]) -> None:
        done = pair[0].cli("keys", "invalidate", "--key-id", answer["key_id"], "--json")
        assert json.loads(done.stdout) == {"announced": 1}

    def by_key(key: str, answer: dict[str, Any]) -> None:
        done = pair[1].cli("keys", "invalidate", "--key", key)
        assert key not in done.stdout + done.stderr

    _revoke_everywhere(pair, key_api, by_key_id)
    _revoke_everywhere(pair, key_api, by_key)
    nothing = pair[0].cli("keys", "invalidate", check=False)
    assert nothing.returncode == 2 and "at least one" in nothing.stderr
