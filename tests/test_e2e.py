"""End to end: keyfront as a real process, on both stores, in front of a real folder and
a real HTTP origin. Asserts what a client sees: status, headers, body bytes."""

from __future__ import annotations

import asyncio
import http.client
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from proxy.keys import KeySigner, new_key_id
from proxy.policy import sign_link
from proxy.records import Customer, KeyRecord
from proxy.store import store_from_url

from conftest import (
    SECRET,
    HttpOriginServer,
    KeyfrontProcess,
    RedisServer,
    empty_store_url,
    start_keyfront,
)

SIGNER = KeySigner("pk", {1: SECRET})
BIG = random.Random(7).randbytes(700_000)  # larger than any in-memory fast path


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        assert self.headers["Content-Type"].startswith("application/json")
        return json.loads(self.body)

    @property
    def code(self) -> str:
        return str(self.json()["error"]["code"])


def get(base: str, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> Reply:
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("origin")
    root = base / "files"
    (root / "icons").mkdir(parents=True)
    (root / "hello.txt").write_bytes(b"hello keyfront\n")
    (root / "icons" / "star.svg").write_bytes(b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    (root / "big.bin").write_bytes(BIG)
    (base / "outside").mkdir()
    (base / "outside" / "secret.txt").write_bytes(b"not for you")
    (root / "escape.txt").symlink_to(base / "outside" / "secret.txt")
    (root / "inside.txt").symlink_to(root / "hello.txt")
    return root


@dataclass
class Deployment:
    kind: str
    store_url: str
    instances: list[KeyfrontProcess]
    origin: HttpOriginServer
    redis: RedisServer

    @property
    def kf(self) -> KeyfrontProcess:
        return self.instances[0]

    def key(self, customer: str = "acme", customer_status: str = "active", **fields: Any) -> str:
        """Provision a customer (once) and a key straight through the store API."""
        key_id = new_key_id()

        async def create() -> None:
            store = store_from_url(self.store_url)
            await store.open()
            try:
                if await store.get_customer(customer) is None:
                    await store.create_customer(Customer(customer, status=customer_status))  # type: ignore[arg-type]
                record = KeyRecord(key_id, customer, created_at=int(time.time()), **fields)
                await store.create_key(record)
            finally:
                await store.close()

        asyncio.run(create())
        return SIGNER.mint(key_id)


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def deployment(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    files: Path,
) -> Iterator[Deployment]:
    workdir = tmp_path_factory.mktemp(f"kf-{request.param}")
    store_url = empty_store_url(request.param, redis_server, str(workdir))
    origin = HttpOriginServer(str(files))
    origin.start()
    body = f"""
store: {store_url}
trusted_proxies: [127.0.0.1/32]
keys:
  secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}
routes:
  - {{prefix: /files/, origin: "file://{files}/"}}
  - {{prefix: /http/, origin: "{origin.url}", cache_control: "public, max-age=60"}}
  - {{prefix: /open/, origin: "file://{files}/", auth: none}}
"""
    instances = [start_keyfront(body, str(workdir)), start_keyfront(body, str(workdir))]
    yield Deployment(request.param, store_url, instances, origin, redis_server)
    for instance in instances:
        assert instance.stop() == 0
    origin.stop()


def q(path: str, key: str, **params: str) -> str:
    extra = "".join(f"&{k}={v}" for k, v in params.items())
    return f"{path}?key={key}{extra}"


# --- success -----------------------------------------------------------------------


def test_valid_key_gets_exact_bytes_and_spec_headers(deployment: Deployment) -> None:
    key = deployment.key()
    reply = get(deployment.kf.url, q("/files/hello.txt", key))
    assert reply.status == 200
    assert reply.body == b"hello keyfront\n"
    h = reply.headers
    assert h["Content-Type"].startswith("text/plain")
    assert h["Content-Length"] == "15"
    assert h["ETag"] and h["Last-Modified"]
    assert h["Accept-Ranges"] == "bytes"
    assert h["Cache-Control"] == "private, max-age=3600"
    assert h["X-Cache"] in {"HIT", "MISS", "BYPASS"}
    assert h["X-Request-Id"]


def test_key_from_bearer_and_x_api_key_headers(deployment: Deployment) -> None:
    key = deployment.key()
    for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
        reply = get(deployment.kf.url, "/files/icons/star.svg", headers)
        assert reply.status == 200
        assert reply.headers["Content-Type"] == "image/svg+xml"


def test_large_object_streams_byte_exact(deployment: Deployment) -> None:
    key = deployment.key()
    for prefix in ("/files/", "/http/"):
        reply = get(deployment.kf.url, q(f"{prefix}big.bin", key))
        assert reply.status == 200
        assert reply.body == BIG


def test_request_id_is_echoed_when_sane(deployment: Deployment) -> None:
    key = deployment.key()
    sane = get(deployment.kf.url, q("/files/hello.txt", key), {"X-Request-Id": "abc-123"})
    assert sane.headers["X-Request-Id"] == "abc-123"
    hostile = get(deployment.kf.url, q("/files/hello.txt", key), {"X-Request-Id": "a b\x01"})
    assert hostile.headers["X-Request-Id"] != "a b\x01"


def test_public_route_needs_no_key(deployment: Deployment) -> None:
    reply = get(deployment.kf.url, "/open/hello.txt")
    assert (reply.status, reply.body) == (200, b"hello keyfront\n")


def test_http_origin_headers_are_filtered(deployment: Deployment) -> None:
    key = deployment.key()
    reply = get(deployment.kf.url, q("/http/hello.txt", key))
    assert (reply.status, reply.body) == (200, b"hello keyfront\n")
    assert reply.headers["Cache-Control"] == "public, max-age=60"
    assert "Set-Cookie" not in reply.headers
    assert "x-amz-meta-owner" not in reply.headers
    assert reply.headers.get("Server") != "OriginServer/1.0"
    assert reply.headers["ETag"]


# --- Range, HEAD, 304 ---------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/files/", "/http/"])
def test_range_head_and_not_modified(deployment: Deployment, prefix: str) -> None:
    key = deployment.key()
    url = deployment.kf.url
    path = q(f"{prefix}big.bin", key)
    part = get(url, path, {"Range": "bytes=10-19"})
    assert part.status == 206
    assert part.body == BIG[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(BIG)}"
    suffix = get(url, path, {"Range": "bytes=-5"})
    assert (suffix.status, suffix.body) == (206, BIG[-5:])
    assert get(url, path, {"Range": f"bytes={len(BIG)}-"}).status == 416
    assert get(url, path, {"Range": "bytes=oops"}).status == 200
    head = get(url, path, method="HEAD")
    assert (head.status, head.body) == (200, b"")
    assert head.headers["Content-Length"] == str(len(BIG))
    etag = head.headers["ETag"]
    not_modified = get(url, path, {"If-None-Match": etag})
    assert (not_modified.status, not_modified.body) == (304, b"")
    assert not_modified.headers["ETag"] == etag
    since = get(url, path, {"If-Modified-Since": head.headers["Last-Modified"]})
    assert since.status == 304


# --- every refusal has its SPEC code --------------------------------------------------


def test_key_refusals(deployment: Deployment) -> None:
    url = deployment.kf.url
    valid_unknown = SIGNER.mint(new_key_id())
    forged = valid_unknown[:-1] + ("0" if valid_unknown[-1] != "0" else "1")
    past = int(time.time()) - 10
    cases = {
        "/files/hello.txt": (401, "key_missing"),
        q("/files/hello.txt", "garbage"): (401, "key_invalid"),
        q("/files/hello.txt", forged): (401, "key_invalid"),
        q("/files/hello.txt", valid_unknown): (401, "key_unknown"),
        q("/files/hello.txt", deployment.key(status="revoked")): (403, "key_revoked"),
        q("/files/hello.txt", deployment.key(status="disabled")): (403, "key_disabled"),
        q("/files/hello.txt", deployment.key(expires_at=past)): (403, "key_expired"),
        q("/files/hello.txt", deployment.key("shut", "disabled")): (403, "key_disabled"),
    }
    for path, (status, code) in cases.items():
        reply = get(url, path)
        assert (reply.status, reply.code) == (status, code), path
        error = reply.json()["error"]
        assert error["request_id"] == reply.headers["X-Request-Id"]
        assert forged not in reply.body.decode()


def test_policy_refusals(deployment: Deployment) -> None:
    url = deployment.kf.url
    scoped = deployment.key(paths=("/files/icons/",))
    assert get(url, q("/files/icons/star.svg", scoped)).status == 200
    assert get(url, q("/files/hello.txt", scoped)).code == "path_not_allowed"

    only_ten = deployment.key(ips=("10.0.0.0/8",))
    assert get(url, q("/files/hello.txt", only_ten)).code == "ip_not_allowed"
    # The peer (127.0.0.1) is a trusted proxy, so X-Forwarded-For is believed.
    forwarded = get(url, q("/files/hello.txt", only_ten), {"X-Forwarded-For": "10.1.2.3"})
    assert forwarded.status == 200

    referred = deployment.key(referrers=("*.example.com",))
    ok = get(url, q("/files/hello.txt", referred), {"Referer": "https://app.example.com/x"})
    assert ok.status == 200
    for headers in ({"Referer": "https://example.com/"}, {"Referer": "https://evil.com/"}, {}):
        assert get(url, q("/files/hello.txt", referred), headers).code == "referrer_not_allowed"


def test_cors_and_preflight(deployment: Deployment) -> None:
    url = deployment.kf.url
    key = deployment.key(referrers=("app.example.com",))
    origin = {"Origin": "https://app.example.com"}
    reply = get(url, q("/files/hello.txt", key), origin)
    assert reply.status == 200
    assert reply.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "Origin" in reply.headers["Vary"]
    denied = get(url, q("/files/hello.txt", key), {"Origin": "https://evil.example.org"})
    assert denied.code == "referrer_not_allowed"
    assert "Access-Control-Allow-Origin" not in denied.headers
    preflight = get(
        url,
        "/files/hello.txt",
        {**origin, "Access-Control-Request-Method": "GET"},
        method="OPTIONS",
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example.com"


def test_signed_links(deployment: Deployment) -> None:
    url = deployment.kf.url
    secret = "link-secret-for-tests"
    key = deployment.key(link_secret=secret, require_signed_links=True)
    path = "/files/hello.txt"
    soon, past = int(time.time()) + 60, int(time.time()) - 60
    good = q(path, key, expires=str(soon), sig=sign_link(path, soon, secret))
    assert get(url, good).status == 200
    assert get(url, q(path, key)).code == "link_required"
    bad_sig = q(path, key, expires=str(soon), sig=sign_link(path, soon, "wrong-secret"))
    assert get(url, bad_sig).code == "link_invalid"
    other_path = q(
        "/files/icons/star.svg", key, expires=str(soon), sig=sign_link(path, soon, secret)
    )
    assert get(url, other_path).code == "link_invalid"
    expired = q(path, key, expires=str(past), sig=sign_link(path, past, secret))
    assert get(url, expired).code == "link_expired"


def test_method_and_route_refusals(deployment: Deployment) -> None:
    key = deployment.key()
    reply = get(deployment.kf.url, q("/files/hello.txt", key), method="POST")
    assert (reply.status, reply.code) == (405, "method_not_allowed")
    assert reply.headers["Allow"] == "GET, HEAD, OPTIONS"
    assert get(deployment.kf.url, q("/elsewhere/hello.txt", key)).code == "not_found"
    assert get(deployment.kf.url, q("/files/missing.txt", key)).code == "not_found"
    assert get(deployment.kf.url, q("/http/missing.txt", key)).code == "not_found"


# --- no path escapes the origin folder ---------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/files/../outside/secret.txt",
        "/files/%2e%2e/outside/secret.txt",
        "/files/%2E%2E%2Foutside%2Fsecret.txt",
        "/files/icons/..%2f..%2foutside/secret.txt",
        "/files/%252e%252e/outside/secret.txt",
        "/files/..%5coutside%5csecret.txt",
        "/files/hello.txt%00.svg",
        "/files//etc/passwd",
    ],
)
def test_hostile_paths_are_bad_path(deployment: Deployment, path: str) -> None:
    key = deployment.key()
    reply = get(deployment.kf.url, q(path, key))
    assert (reply.status, reply.code) == (400, "bad_path")
    assert b"not for you" not in reply.body


def test_symlinks_cannot_leave_the_folder(deployment: Deployment) -> None:
    key = deployment.key()
    escape = get(deployment.kf.url, q("/files/escape.txt", key))
    assert (escape.status, escape.code) == (404, "not_found")
    inside = get(deployment.kf.url, q("/files/inside.txt", key))
    assert (inside.status, inside.body) == (200, b"hello keyfront\n")


# --- changes reach every instance within 1 s ---------------------------------------------


def _wait_for(predicate: Any, limit: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit + 1.0:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"not seen within {limit + 1.0}s")


def test_revocation_reaches_both_instances_within_a_second(deployment: Deployment) -> None:
    key = deployment.key()
    key_id = key.split("_")[2]
    for instance in deployment.instances:  # both now hold the record in their caches
        assert get(instance.url, q("/files/hello.txt", key)).status == 200
    deployment.kf.cli("keys", "revoke", key_id)
    for instance in deployment.instances:
        took = _wait_for(
            lambda i=instance: get(i.url, q("/files/hello.txt", key)).status == 403, 1.0
        )
        assert took <= 1.0
        assert get(instance.url, q("/files/hello.txt", key)).code == "key_revoked"


def test_referrer_change_reaches_the_other_instance(deployment: Deployment) -> None:
    key = deployment.key()
    key_id = key.split("_")[2]
    other = deployment.instances[1]
    evil = {"Referer": "https://evil.example.org/page"}
    assert get(other.url, q("/files/hello.txt", key), evil).status == 200
    deployment.kf.cli("keys", "update", key_id, "--referrer", "app.example.com")
    took = _wait_for(lambda: get(other.url, q("/files/hello.txt", key), evil).status == 403, 1.0)
    assert took <= 1.0
    good = {"Referer": "https://app.example.com/"}
    assert get(other.url, q("/files/hello.txt", key), good).status == 200


# --- garbage keys never reach the store ----------------------------------------------------


def _store_calls(redis: RedisServer) -> int:
    total = 0
    for line in redis.cli("INFO", "commandstats").splitlines():
        name, _, stats = line.partition(":")
        if name.startswith("cmdstat_") and name not in {"cmdstat_info", "cmdstat_ping"}:
            total += int(stats.split(",")[0].removeprefix("calls="))
    return total


def test_garbage_key_flood_makes_no_store_calls(deployment: Deployment) -> None:
    if deployment.kind != "redis":
        pytest.skip("store calls are counted with redis-server's INFO commandstats")
    rng = random.Random(1)
    garbage = [SIGNER.mint(new_key_id())[:-32] + f"{rng.getrandbits(128):032x}" for _ in range(150)]
    garbage += [
        "".join(rng.choices("abcdef_0123456789XYZ", k=rng.randint(1, 120))) for _ in range(150)
    ]
    host, port = deployment.kf.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    time.sleep(1.5)  # usage counted by earlier tests is flushed (every 1 s) before the baseline
    before = _store_calls(deployment.redis)
    for key in garbage:
        conn.request("GET", q("/files/hello.txt", key))
        response = conn.getresponse()
        response.read()
        assert response.status == 401
    assert _store_calls(deployment.redis) == before
    # The counter does see a request whose key must be looked up (a positive control).
    conn.request("GET", q("/files/hello.txt", SIGNER.mint(new_key_id())))
    conn.getresponse().read()
    conn.close()
    assert _store_calls(deployment.redis) > before


# --- usage metering (SPEC section 4) --------------------------------------------------------


def test_usage_counts_every_request_and_byte_once(deployment: Deployment) -> None:
    key = deployment.key("metered", rate=None, referrers=("app.example.com",))
    key_id = key.split("_")[2]
    served = [("/files/hello.txt", 15), ("/files/icons/star.svg", 41), ("/http/hello.txt", 15)]
    for instance in deployment.instances:  # both instances count into one store
        for path, size in served:
            reply = get(instance.url, q(path, key), {"Referer": "https://app.example.com/"})
            assert (reply.status, len(reply.body)) == (200, size)
    assert get(deployment.kf.url, q("/files/hello.txt", key)).code == "referrer_not_allowed"
    head = get(
        deployment.kf.url,
        q("/files/big.bin", key),
        {"Referer": "https://app.example.com/"},
        method="HEAD",
    )
    assert head.status == 200
    expected = {"requests": 7, "bytes": 2 * (15 + 41 + 15), "denied_referrer_not_allowed": 1}
    deadline = time.monotonic() + 5
    while True:  # flushed every usage.flush_interval (1 s)
        rows = json.loads(
            deployment.kf.cli("usage", "--key", key_id, "--by", "hour", "--json").stdout
        )
        got = {k: sum(r.get(k, 0) for r in rows) for k in expected}
        if got == expected or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got == expected
    by_customer = json.loads(deployment.kf.cli("usage", "--customer", "metered", "--json").stdout)
    assert sum(r["requests"] for r in by_customer) == 7
    csv_text = deployment.kf.cli("usage", "--key", key_id, "--format", "csv").stdout
    assert csv_text.splitlines()[0].startswith("customer,key,period,requests,bytes")
