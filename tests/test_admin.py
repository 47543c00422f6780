"""The admin API (SPEC section 9) over HTTP, against keyfront running as a real process
on both stores: who may call what, the actions and their JSON, plan caps, and the
OpenAPI document. Customers and tokens are seeded with the real `keyfront` CLI."""

from __future__ import annotations

import calendar
import http.client
import json
import os
import re
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from proxy.admin import ENDPOINTS, PREFIX, admin_app
from proxy.config import AdminConfig, Config, KeysConfig
from proxy.errors import Conflict
from proxy.keys import KeySigner
from proxy.store import CustomerToken, store_from_url

from conftest import (
    SECRET,
    HttpOriginServer,
    KeyfrontProcess,
    RedisServer,
    empty_store_url,
    start_keyfront,
)

SIGNER = KeySigner("pk", {1: SECRET})
ADMIN_TOKEN = "operator-token-0123456789"
ADMIN_API_OFF = "the admin API is off: set admin.token in the config"
ACME_CAPS = ("--max-rate", "10/s", "--max-burst", "20",
             "--quota-requests", "1000", "--quota-bytes", "1GiB")  # fmt: skip


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        assert self.headers["Content-Type"].startswith("application/json"), self.headers
        return json.loads(self.body)

    @property
    def code(self) -> str:
        return str(self.json()["error"]["code"])


def call(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = ADMIN_TOKEN,
    *,
    scheme: str = "Bearer",
) -> Reply:
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"Authorization": f"{scheme} {token}"} if token else {}
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


@dataclass
class Deployment:
    """One keyfront on one store, with customers acme (plan caps) and globex, a token
    for each, and a key of globex's that acme's token must never reach."""

    kind: str
    kf: KeyfrontProcess
    tokens: dict[str, str]
    globex_key: dict[str, Any]

    def admin(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = ADMIN_TOKEN,
        expect: int | None = None,
    ) -> Reply:
        reply = call(self.kf.admin_url, method, PREFIX + path, body, token)
        if expect is not None:
            assert reply.status == expect, (reply.status, reply.body)
        return reply

    def as_customer(self, customer: str, method: str, path: str, body: Any = None) -> Reply:
        return self.admin(method, path, body, token=self.tokens[customer])

    def fetch(self, key: str, path: str = "/files/a.txt") -> int:
        return call(self.kf.url, "GET", f"{path}?key={key}", token=None).status


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("origin")
    (root / "a.txt").write_bytes(b"a" * 100)
    return root


@pytest.fixture(scope="module")
def web_origin(files: Path) -> Iterator[HttpOriginServer]:
    server = HttpOriginServer(str(files))
    server.start()
    yield server
    server.stop()


def config(
    store_url: str,
    files: Path,
    admin: str = f"admin: {{token: {ADMIN_TOKEN}}}",
    web: HttpOriginServer | None = None,
) -> str:
    # /web/: the same files through an HTTP origin, which the disk cache holds (a
    # file:// route is served from its folder, never cached: SPEC section 5).
    web_route = f'  - {{prefix: /web/, origin: "{web.url}"}}\n' if web else ""
    return f"""
store: {store_url}
keys:
  secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}
{admin}
usage: {{flush_interval: 100ms}}
routes:
  - {{prefix: /files/, origin: "file://{files}/"}}
{web_route}"""


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def deployment(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    files: Path,
    web_origin: HttpOriginServer,
) -> Iterator[Deployment]:
    workdir = tmp_path_factory.mktemp(f"admin-{request.param}")
    store_url = empty_store_url(request.param, redis_server, str(workdir))
    kf = start_keyfront(config(store_url, files, web=web_origin), str(workdir))
    kf.given("customers", "create", "acme", *ACME_CAPS)
    kf.given("customers", "create", "globex")
    tokens = {
        c: json.loads(kf.given("customers", "token", c, "--json"))["token"]
        for c in ("acme", "globex")
    }
    globex_key = json.loads(kf.given("keys", "create", "--customer", "globex", "--json"))
    yield Deployment(request.param, kf, tokens, globex_key)
    assert kf.stop() == 0


# --- who may call what ------------------------------------------------------------------


def concrete(path: str) -> str:
    """A route's path with its parameters filled in (the values need not exist)."""
    return re.sub(r"\{\w+\}", "acme", path.removeprefix(PREFIX))


def routes(document: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(method, path, access) of every operation in the document."""
    return [
        (method.upper(), path, operation["x-access"])
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    ]


def test_wrong_or_missing_token_is_401_on_every_route(deployment: Deployment) -> None:
    document = deployment.admin("GET", "/openapi.json", token=None, expect=200).json()
    checked = 0
    for method, path, access in routes(document):
        if access == "public":
            continue
        for token in (None, "wrong-token", ADMIN_TOKEN[:-1], "kfc_" + "A" * 43):
            reply = deployment.admin(method, concrete(path), {}, token=token)
            assert (reply.status, reply.code) == (401, "unauthorized"), (method, path, token)
            assert reply.json()["error"]["message"] != ADMIN_API_OFF
            assert reply.headers["WWW-Authenticate"].startswith("Bearer")
            assert reply.json()["error"]["request_id"] == reply.headers["X-Request-Id"]
        checked += 1
    assert checked == len(ENDPOINTS) - 1
    basic = call(deployment.kf.admin_url, "GET", f"{PREFIX}/keys", scheme="Basic")
    assert basic.status == 401
    assert deployment.admin("GET", "/keys", expect=200).headers["X-Request-Id"]


def test_a_customer_token_gets_403_on_operator_routes(deployment: Deployment) -> None:
    document = deployment.admin("GET", "/openapi.json", token=None).json()
    operator_only = [(m, p) for m, p, access in routes(document) if access == "operator"]
    # with POST /keys/import and /keys/invalidate (issue 13), GET /export (SPEC section 16)
    assert len(operator_only) == 12
    for method, path in operator_only:
        reply = deployment.as_customer("acme", method, concrete(path), {})
        assert (reply.status, reply.code) == (403, "forbidden"), (method, path)


# Every route a customer token may call, aimed at globex's key or globex itself.
OTHER_CUSTOMERS = [
    ("GET", "/keys?customer=globex", None),
    ("POST", "/keys", {"customer_id": "globex"}),
    ("GET", "/keys/{globex}", None),
    ("PATCH", "/keys/{globex}", {"name": "taken over", "status": "disabled"}),
    ("POST", "/keys/{globex}/revoke", None),
    ("POST", "/keys/{globex}/roll", {"grace": 0}),
    ("GET", "/usage?customer=globex", None),
    ("GET", "/usage?key={globex}", None),
    ("GET", "/usage?customer=acme&key={globex}", None),
]


@pytest.mark.parametrize(("method", "path", "body"), OTHER_CUSTOMERS)
def test_a_customer_token_cannot_reach_another_customers_keys_or_usage(
    deployment: Deployment, method: str, path: str, body: Any
) -> None:
    globex = deployment.globex_key["key_id"]
    before = deployment.admin("GET", "/keys?customer=globex", expect=200).json()
    reply = deployment.as_customer("acme", method, path.replace("{globex}", globex), body)
    assert (reply.status, reply.code) == (404, "not_found")
    assert list(reply.json()) == ["error"]  # and nothing of globex's
    assert deployment.admin("GET", "/keys?customer=globex").json() == before  # nothing changed
    assert deployment.fetch(deployment.globex_key["key"]) == 200


def test_a_customer_token_sees_only_its_own_keys_and_usage(deployment: Deployment) -> None:
    mine = deployment.as_customer("acme", "POST", "/keys", {"name": "mine"}).json()
    listed = deployment.as_customer("acme", "GET", "/keys").json()
    assert mine["key_id"] in [k["key_id"] for k in listed]
    assert {k["customer_id"] for k in listed} == {"acme"}
    assert deployment.as_customer("acme", "GET", "/keys?customer=acme").json() == listed
    totals = deployment.as_customer("acme", "GET", "/usage").json()
    assert {row["customer"] for row in totals} <= {"acme"}
    own = deployment.as_customer("acme", "GET", f"/usage?key={mine['key_id']}")
    assert own.status == 200


def test_a_customer_token_stays_within_its_plan_caps(deployment: Deployment) -> None:
    for field, value in (
        ("rate", "11/s"),
        ("burst", 21),
        ("ip_rate", "3600/m"),
        ("quota_requests", 1001),
        ("quota_bytes", "2GiB"),
    ):
        reply = deployment.as_customer("acme", "POST", "/keys", {field: value})
        assert (reply.status, reply.json()["error"]["field"]) == (400, field)
        assert "plan cap" in reply.json()["error"]["message"]
    # Fields left to the configured defaults (20/s, burst 40, no quota) take the caps.
    key = deployment.as_customer("acme", "POST", "/keys", {}).json()
    caps = ("10/s", 20, 1000, 1024**3)
    assert (key["rate"], key["burst"], key["quota_requests"], key["quota_bytes"]) == caps
    path = f"/keys/{key['key_id']}"
    assert deployment.as_customer("acme", "PATCH", path, {"burst": 30}).status == 400
    cleared = deployment.as_customer("acme", "PATCH", path, {"quota_requests": None, "rate": "5/s"})
    assert (cleared.json()["quota_requests"], cleared.json()["rate"]) == (1000, "5/s")
    # The operator's own keys keep the CLI's rule: only the settings given are capped.
    assert deployment.admin("POST", "/keys", {"customer_id": "acme"}).json()["rate"] is None


def test_a_disabled_customers_token_is_refused(deployment: Deployment) -> None:
    deployment.admin("POST", "/customers", {"customer_id": "initech"}, expect=201)
    token = deployment.admin("POST", "/customers/initech/tokens", {}, expect=201).json()["token"]
    assert deployment.admin("GET", "/keys", token=token).status == 200
    deployment.admin("POST", "/customers/initech/disable", expect=200)
    reply = deployment.admin("GET", "/keys", token=token)
    assert (reply.status, reply.code) == (403, "forbidden")


# --- customer tokens ------------------------------------------------------------------


def test_tokens_are_shown_once_listed_without_the_secret_and_revocable(
    deployment: Deployment,
) -> None:
    minted = deployment.admin("POST", "/customers/acme/tokens", {"name": "ci"}, expect=201).json()
    assert minted["token"].startswith("kfc_") and minted["name"] == "ci"
    assert deployment.admin("GET", "/keys", token=minted["token"]).status == 200
    listed = deployment.admin("GET", "/customers/acme/tokens", expect=200).json()
    assert {
        "token_id": minted["token_id"],
        "customer_id": "acme",
        "name": "ci",
        "created_at": minted["created_at"],
    } in listed
    assert minted["token"] not in json.dumps(listed)
    deployment.admin("DELETE", f"/customers/acme/tokens/{minted['token_id']}", expect=200)
    assert deployment.admin("GET", "/keys", token=minted["token"]).status == 401
    again = deployment.admin("DELETE", f"/customers/acme/tokens/{minted['token_id']}")
    assert again.status == 404
    assert deployment.admin("GET", "/customers/nobody/tokens").status == 404


def test_token_commands_on_the_command_line(deployment: Deployment) -> None:
    kf = deployment.kf
    minted = kf.cli("customers", "token", "globex", "--name", "deploy")
    token = dict(line.split(":", 1) for line in minted.stdout.splitlines())["token"].strip()
    assert "only this once" in minted.stderr
    listed = json.loads(kf.cli("customers", "tokens", "globex", "--json").stdout)
    token_id = next(t["token_id"] for t in listed if t["name"] == "deploy")
    assert token not in kf.cli("customers", "tokens", "globex").stdout
    assert deployment.admin("GET", "/keys", token=token).status == 200
    revoked = kf.cli("customers", "revoke-token", "globex", token_id)
    assert revoked.stdout.strip() == f"revoked token {token_id}"
    assert deployment.admin("GET", "/keys", token=token).status == 401
    assert kf.cli("customers", "revoke-token", "globex", token_id, check=False).returncode == 1


# --- customers and keys ---------------------------------------------------------------


def test_customers_create_list_get_patch_disable(deployment: Deployment) -> None:
    created = deployment.admin(
        "POST",
        "/customers",
        {"customer_id": "umbrella", "name": "U", "max_rate": "600/m"},
        expect=201,
    ).json()
    assert (created["max_rate"], created["status"]) == ("600/m", "active")
    assert abs(created["created_at"] - time.time()) < 5
    duplicate = deployment.admin("POST", "/customers", {"customer_id": "umbrella"})
    assert (duplicate.status, duplicate.code) == (409, "conflict")
    for body, field in (
        ({"customer_id": "bad id!"}, "customer_id"),
        ({}, "customer_id"),
        ({"customer_id": "x", "max_burst": 0}, "max_burst"),
        ({"customer_id": "x", "colour": "red"}, "colour"),
    ):
        reply = deployment.admin("POST", "/customers", body)
        assert (reply.status, reply.json()["error"]["field"]) == (400, field)
    assert "umbrella" in [c["customer_id"] for c in deployment.admin("GET", "/customers").json()]
    patched = deployment.admin("PATCH", "/customers/umbrella", {"max_burst": 5, "max_rate": None})
    assert (patched.json()["max_burst"], patched.json()["max_rate"]) == (5, None)
    assert deployment.admin("GET", "/customers/umbrella").json() == patched.json()
    billing = {"billing_id": "cus_9s6XKzkNRiz8i3", "alert_webhook": "https://h.example/a"}
    patched = deployment.admin("PATCH", "/customers/umbrella", billing, expect=200)
    assert {k: patched.json()[k] for k in billing} == billing  # SPEC section 16
    for body in ({"alert_webhook": "http://10.0.0.1/"}, {"billing_id": ""}):
        reply = deployment.admin("PATCH", "/customers/umbrella", body)
        assert (reply.status, reply.json()["error"]["field"]) == (400, next(iter(body)))
    cleared = deployment.admin("PATCH", "/customers/umbrella", {"alert_webhook": None})
    assert cleared.json()["alert_webhook"] is None
    disabled = deployment.admin("POST", "/customers/umbrella/disable", expect=200).json()
    assert disabled["status"] == "disabled"
    refused = deployment.admin("POST", "/keys", {"customer_id": "umbrella"})
    assert (refused.status, refused.code) == (409, "conflict")
    assert deployment.admin("GET", "/customers/nobody").status == 404


def test_keys_create_get_patch_and_serve_through_the_public_listener(
    deployment: Deployment,
) -> None:
    created = deployment.admin(
        "POST",
        "/keys",
        {
            "customer_id": "acme",
            "name": "site",
            "referrers": ["*.example.com"],
            "ips": ["10.1.2.3/8"],
            "rate": "5/s",
            "expires_at": "30d",
            "require_signed_links": False,
        },
        expect=201,
    ).json()
    assert SIGNER.verify(created["key"]).key_id == created["key_id"]
    assert created["ips"] == ["10.0.0.0/8"] and created["link_secret"] is None
    assert abs(created["expires_at"] - (time.time() + 30 * 86400)) < 5
    path = f"/keys/{created['key_id']}"
    shown = deployment.admin("GET", path, expect=200).json()
    assert "key" not in shown and shown["has_link_secret"] is False
    assert created["key"] not in json.dumps(deployment.admin("GET", "/keys").json())
    assert deployment.admin("GET", f"/keys/{created['key']}").json() == shown  # a full key too

    plain = deployment.admin("POST", "/keys", {"customer_id": "acme"}).json()
    assert deployment.fetch(plain["key"]) == 200
    patched = deployment.admin(
        "PATCH",
        path,
        {
            "ips": [],
            "referrers": ["a.example.com"],
            "expires_at": None,
            "require_signed_links": True,
        },
    ).json()
    assert (patched["ips"], patched["referrers"], patched["expires_at"]) == (
        [],
        ["a.example.com"],
        None,
    )
    assert len(patched["link_secret"]) >= 32  # set by this call, so shown
    renamed = deployment.admin("PATCH", path, {"name": "n"}).json()
    assert "link_secret" not in renamed and renamed["has_link_secret"] is True
    for body, field in (
        ({"ips": ["10.0.0.300/8"]}, "ips"),
        ({"rate": "fast"}, "rate"),
        ({"paths": ["files/"]}, "paths"),
        ({"burst": True}, "burst"),
        ({"expires_at": 5}, "expires_at"),
        ({"status": "revoked"}, "status"),
        ({"link_secret": "short"}, "link_secret"),
    ):
        reply = deployment.admin("PATCH", path, body)
        assert (reply.status, reply.json()["error"]["field"]) == (400, field), body
    for raw in ("not an object", b"{not json", b"\xff\xfe{", b""):
        reply = deployment.admin("PATCH", path, raw)
        assert (reply.status, reply.json()["error"]["field"]) == (400, "body"), raw
    too_big = deployment.admin("PATCH", path, b'{"name": "' + b"x" * 2**20 + b'"}')
    assert (too_big.status, too_big.code) == (413, "request_entity_too_large")
    assert deployment.admin("GET", "/keys/" + "A" * 22).status == 404
    assert deployment.admin("GET", "/keys?customer=nobody").status == 404


def test_a_revoked_key_is_refused_within_one_second(deployment: Deployment) -> None:
    key = deployment.admin("POST", "/keys", {"customer_id": "acme"}, expect=201).json()
    assert deployment.fetch(key["key"]) == 200  # now in the record cache
    revoked = deployment.admin("POST", f"/keys/{key['key_id']}/revoke", expect=200).json()
    assert revoked["status"] == "revoked"
    started = time.monotonic()
    while deployment.fetch(key["key"]) != 403:
        assert time.monotonic() - started < 1.0, "the revocation took more than 1 s"
        time.sleep(0.02)
    final = deployment.admin("PATCH", f"/keys/{key['key_id']}", {"status": "active"})
    assert (final.status, final.code) == (409, "conflict")
    assert deployment.admin("POST", f"/keys/{key['key_id']}/roll").status == 409


def test_roll_mints_a_new_key_and_retires_the_old(deployment: Deployment) -> None:
    old = deployment.admin(
        "POST", "/keys", {"customer_id": "acme", "name": "site", "paths": ["/files/"]}
    ).json()
    rolled = deployment.admin(
        "POST", f"/keys/{old['key_id']}/roll", {"grace": "1h"}, expect=201
    ).json()
    assert SIGNER.verify(rolled["key"]).key_id == rolled["key_id"] != old["key_id"]
    assert (rolled["replaces"], rolled["name"], rolled["paths"]) == (
        old["key_id"],
        "site",
        ["/files/"],
    )
    retired = deployment.admin("GET", f"/keys/{old['key_id']}").json()
    assert abs(retired["expires_at"] - (time.time() + 3600)) < 5
    assert retired["expires_at"] == rolled["replaced_expires_at"]
    assert deployment.fetch(rolled["key"]) == deployment.fetch(old["key"]) == 200
    default = deployment.admin("POST", f"/keys/{rolled['key_id']}/roll").json()  # 24h
    assert abs(default["replaced_expires_at"] - (time.time() + 86400)) < 5
    assert deployment.admin("POST", f"/keys/{old['key_id']}/roll", {"grace": -1}).status == 400


# --- usage, purge -----------------------------------------------------------------------


def test_usage_matches_keyfront_usage(deployment: Deployment) -> None:
    key = deployment.as_customer("globex", "POST", "/keys", {}).json()
    for _ in range(3):
        assert deployment.fetch(key["key"]) == 200
    query = f"/usage?key={key['key_id']}&by=hour"
    deadline = time.monotonic() + 5
    rows = deployment.admin("GET", query).json()
    while sum(r["requests"] for r in rows) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
        rows = deployment.admin("GET", query).json()
    assert sum(r["requests"] for r in rows) == 3 and sum(r["bytes"] for r in rows) == 300
    cli = deployment.kf.cli("usage", "--key", key["key_id"], "--by", "hour", "--format", "json")
    assert json.loads(cli.stdout) == rows
    assert deployment.as_customer("globex", "GET", query).json() == rows
    csv = deployment.admin("GET", query + "&format=csv")
    assert csv.headers["Content-Type"].startswith("text/csv")
    assert csv.body.decode().splitlines()[0].startswith("key,period,requests,bytes")
    for bad, field in (
        ("by=week", "by"),
        ("from=yesterday", "from"),
        ("customer_id=x", "customer_id"),
        ("key=!", "key"),
    ):
        reply = deployment.admin("GET", f"/usage?{bad}")
        assert (reply.status, reply.json()["error"]["field"]) == (400, field)
    month = deployment.admin("GET", "/usage?customer=globex&by=month&from=2020-01-01").json()
    assert sum(r["requests"] for r in month) >= 3


def test_purge_by_path_and_prefix_empties_the_cache(deployment: Deployment) -> None:
    key = deployment.admin("POST", "/keys", {"customer_id": "acme"}, expect=201).json()["key"]
    url = f"/web/a.txt?key={key}"

    def cached(url: str = url) -> str:
        return call(deployment.kf.url, "GET", url, token=None).headers["X-Cache"]

    cached()
    assert cached() == "HIT"
    purged = deployment.admin("POST", "/purge", {"paths": ["/web/a.txt", "/web/b.txt"]})
    assert (purged.status, purged.json()) == (200, {"purged": 1})
    assert cached() == "MISS"
    assert cached() == "HIT"
    assert deployment.admin("POST", "/purge", {"prefix": "/web/"}).json() == {"purged": 1}
    assert cached() == "MISS"
    # A file:// route is never cached: nothing to purge, and it is always current.
    assert cached(f"/files/a.txt?key={key}") == "BYPASS"
    assert deployment.admin("POST", "/purge", {"paths": ["/files/a.txt"]}).json() == {"purged": 0}
    for body in ({}, {"paths": []}, {"paths": ["no-slash"]}, {"prefix": 1},
                 {"paths": ["/a"], "prefix": "/b"}):  # fmt: skip
        reply = deployment.admin("POST", "/purge", body)
        assert (reply.status, reply.code) == (400, "bad_request"), body


def test_invalidate_announces_each_target_and_refuses_bad_bodies(deployment: Deployment) -> None:
    """POST /keys/invalidate (SPEC section 13); tests/test_e2e_lookup.py shows the
    answers dropped on two instances."""
    body = {"keys": ["publickey123"], "key_ids": ["op-1", "op-2"], "customer_ids": ["acme"]}
    done = deployment.admin("POST", "/keys/invalidate", body)
    assert (done.status, done.json()) == (200, {"announced": 4})
    secret = "opaque-key-" + "s" * 2000
    for bad, field in (
        ({}, "body"),
        ({"keyz": ["publickey123"]}, "keyz"),
        ({"keys": "publickey123"}, "keys"),
        ({"keys": [secret]}, "keys"),  # too long: refused without echoing it
        ({"keys": [7]}, "keys"),
        ({"key_ids": ["a}b"]}, "key_ids"),
        ({"customer_ids": ["no spaces"]}, "customer_ids"),
        ({"key_ids": ["k"] * 1001}, "key_ids"),
        ({"keys": ["k1234567"] * 600, "key_ids": ["k"] * 600}, "body"),  # 1000 in all
    ):
        reply = deployment.admin("POST", "/keys/invalidate", bad)
        assert (reply.status, reply.code, reply.json()["error"]["field"]) == (
            400, "bad_request", field), bad  # fmt: skip
        assert secret not in reply.body.decode()


async def test_purge_without_a_cache_is_501(tmp_path: Path, aiohttp_client: Any) -> None:
    store = store_from_url(f"sqlite://{tmp_path}/kf.db")
    runtime = types.SimpleNamespace(config=_config(ADMIN_TOKEN), store=store, cache=None)
    client = await aiohttp_client(_mounted(runtime))
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    response = await client.post(f"{PREFIX}/purge", json={"prefix": "/"}, headers=auth)
    assert response.status == 501
    assert (await response.json())["error"]["code"] == "not_implemented"


# --- without admin.token, and the OpenAPI document -------------------------------------


def test_without_an_admin_token_every_call_is_401(tmp_path: Path, files: Path) -> None:
    """Every call says the admin API is off, customer tokens' too: they work only while
    admin.token is set (SPEC section 9). (On SQLite only: the check never reaches the
    store.)"""
    store_url = f"sqlite://{tmp_path}/kf.db"
    kf = start_keyfront(config(store_url, files, admin=""), str(tmp_path))
    try:
        kf.given("customers", "create", "acme")
        token = json.loads(kf.given("customers", "token", "acme", "--json"))["token"]
        for endpoint in ENDPOINTS:
            if endpoint.access == "public":
                continue
            for bearer in (ADMIN_TOKEN, token, None):
                path = PREFIX + concrete(endpoint.path)
                reply = call(kf.admin_url, endpoint.method, path, {}, bearer)
                assert reply.status == 401, (endpoint.method, path)
                # Issue 15: it says why, whatever the token (customer tokens included).
                assert reply.json()["error"]["message"] == ADMIN_API_OFF, (endpoint.method, path)
        assert call(kf.admin_url, "GET", f"{PREFIX}/openapi.json", token=None).status == 200
    finally:
        assert kf.stop() == 0


def test_openapi_document_lists_every_route_and_nothing_else(deployment: Deployment) -> None:
    reply = deployment.admin("GET", "/openapi.json", token=None, expect=200)
    document = json.loads(reply.body)
    assert document["openapi"].startswith("3.1")
    documented = {(m, p) for m, p, _ in routes(document)}
    app = _mounted(types.SimpleNamespace(config=_config(ADMIN_TOKEN), store=None))
    registered = {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.resource.canonical.startswith(PREFIX) and r.method != "*"
    }
    assert documented == registered and len(documented) == len(ENDPOINTS)
    _check_structure(document)


def _check_structure(document: dict[str, Any]) -> None:
    """What a validator checks that matters here: path parameters declared, every
    operation answered, every $ref resolvable, operation ids unique."""
    schemas = document["components"]["schemas"]
    refs = re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(document))
    assert refs and set(refs) <= set(schemas)
    ids = [op["operationId"] for _, ops in document["paths"].items() for op in ops.values()]
    assert len(ids) == len(set(ids))
    for path, operations in document["paths"].items():
        for operation in operations.values():
            declared = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
            assert declared == set(re.findall(r"\{(\w+)\}", path))
            assert any(status.startswith("2") for status in operation["responses"])


def _config(token: str) -> Config:
    return Config(keys=KeysConfig(secrets={1: SECRET}), routes=(), admin=AdminConfig(token))


def _mounted(runtime: Any) -> web.Application:
    app = web.Application()
    app.add_subapp(PREFIX, admin_app(runtime))
    return app


# --- token storage, on every store -----------------------------------------------------


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """(Not Redis Cluster: starting the session's cluster this early slows every later
    module; the token methods use the same slot-keyed helpers as the rest of RedisStore,
    which tests/test_store.py runs on the cluster.)"""
    server = request.getfixturevalue("redis_server") if request.param == "redis" else None
    # Database 5 of its own: `deployment` keeps database 0.
    return empty_store_url(request.param, server, str(tmp_path), db=5)


async def test_tokens_are_stored_by_hash_only(store_url: str) -> None:
    store = store_from_url(store_url)
    await store.open()
    try:
        first = CustomerToken("t1", "acme", "ci", 100)
        second = CustomerToken("t2", "acme", "", 200)
        await store.create_token("a" * 64, second)
        await store.create_token("b" * 64, first)
        await store.create_token("c" * 64, CustomerToken("t3", "globex", "", 50))
        with pytest.raises(Conflict):
            await store.create_token("a" * 64, CustomerToken("t4", "acme", "", 300))
        assert await store.get_token("b" * 64) == first
        assert await store.get_token("d" * 64) is None
        assert await store.list_tokens("acme") == [first, second]
        assert await store.delete_token("globex", "t1") is None  # another customer's id
        assert await store.delete_token("acme", "t1") == first
        assert await store.get_token("b" * 64) is None
        assert await store.list_tokens("acme") == [second]
        assert await store.delete_token("acme", "t1") is None
    finally:
        await store.close()


# --- issue 12 item 11: the operator's suspension is the operator's to lift -------------


def _fetch_until(deployment: Deployment, key: str, status: int) -> None:
    started = time.monotonic()
    while deployment.fetch(key) != status:
        assert time.monotonic() - started < 2.0, f"the key never answered {status}"
        time.sleep(0.02)


def test_only_the_operator_lifts_its_own_suspension(deployment: Deployment) -> None:
    key = deployment.as_customer("globex", "POST", "/keys", {}).json()
    path = f"/keys/{key['key_id']}"
    assert deployment.fetch(key["key"]) == 200
    suspended = deployment.admin("PATCH", path, {"status": "disabled"}, expect=200).json()
    assert (suspended["status"], suspended["disabled_by"]) == ("disabled", "operator")
    _fetch_until(deployment, key["key"], 403)
    reply = call(deployment.kf.url, "GET", f"/files/a.txt?key={key['key']}", token=None)
    assert reply.code == "key_disabled"
    # The customer's token may neither re-enable it nor take the suspension over.
    for status in ("active", "disabled"):
        refused = deployment.as_customer("globex", "PATCH", path, {"status": status})
        assert (refused.status, refused.code) == (403, "forbidden"), status
        assert "operator" in refused.json()["error"]["message"]
    shown = deployment.as_customer("globex", "GET", path).json()
    assert (shown["status"], shown["disabled_by"]) == ("disabled", "operator")
    assert deployment.fetch(key["key"]) == 403
    # A roll by the customer keeps the suspension on the new key.
    rolled = deployment.as_customer("globex", "POST", f"{path}/roll", {"grace": 0}).json()
    assert (rolled["status"], rolled["disabled_by"]) == ("disabled", "operator")
    assert deployment.fetch(rolled["key"]) == 403
    # Other settings stay the customer's to change; the operator lifts the suspension.
    path = f"/keys/{rolled['key_id']}"
    deployment.as_customer("globex", "PATCH", path, {"name": "renamed"})
    lifted = deployment.admin("PATCH", path, {"status": "active"}, expect=200).json()
    assert (lifted["status"], lifted["disabled_by"]) == ("active", None)
    _fetch_until(deployment, rolled["key"], 200)


def test_a_customer_disables_and_re_enables_its_own_key(deployment: Deployment) -> None:
    key = deployment.as_customer("globex", "POST", "/keys", {}).json()
    path = f"/keys/{key['key_id']}"
    off = deployment.as_customer("globex", "PATCH", path, {"status": "disabled"}).json()
    assert (off["status"], off["disabled_by"]) == ("disabled", "customer")
    _fetch_until(deployment, key["key"], 403)
    on = deployment.as_customer("globex", "PATCH", path, {"status": "active"}).json()
    assert (on["status"], on["disabled_by"]) == ("active", None)
    _fetch_until(deployment, key["key"], 200)
    # The operator may take over a customer's own disabling: it becomes a suspension.
    deployment.as_customer("globex", "PATCH", path, {"status": "disabled"})
    taken = deployment.admin("PATCH", path, {"status": "disabled"}, expect=200).json()
    assert taken["disabled_by"] == "operator"
    assert deployment.as_customer("globex", "PATCH", path, {"status": "active"}).status == 403


def test_the_command_line_suspends_and_lifts_as_the_operator(deployment: Deployment) -> None:
    key = deployment.as_customer("globex", "POST", "/keys", {}).json()
    path = f"/keys/{key['key_id']}"
    out = deployment.kf.cli("keys", "update", key["key_id"], "--status", "disabled", "--json")
    assert json.loads(out.stdout)["disabled_by"] == "operator"
    assert deployment.as_customer("globex", "PATCH", path, {"status": "active"}).status == 403
    deployment.kf.cli("keys", "update", key["key_id"], "--status", "active")
    assert deployment.as_customer("globex", "GET", path).json()["disabled_by"] is None


def test_a_key_disabled_before_disabled_by_existed_stays_the_operators() -> None:
    from proxy.errors import Forbidden
    from proxy.manage.actions import status_change
    from proxy.records import KeyRecord

    legacy = KeyRecord.from_json('{"key_id": "k", "customer_id": "c", "status": "disabled"}')
    assert legacy.disabled_by is None and legacy.suspended
    with pytest.raises(Forbidden):
        status_change(legacy, {"status": "active"}, "customer")
    assert status_change(legacy, {"status": "active"}, "operator") == {"disabled_by": None}


# --- issue 12 item 7: usage over an absurd range is clamped and bounded ----------------


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (the machine is shared: CPU time,
    not wall time, is what the report costs)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_usage_over_an_absurd_range_is_clamped_to_retention(deployment: Deployment) -> None:
    pid = deployment.kf.process.pid
    far = "9" * 30  # unix seconds far past any date
    for query, most in (
        ("from=0&by=hour", 35 * 24 + 1),  # hourly rows are kept 35 days
        ("from=0&by=day", 401),  # daily ones 400
        ("from=0&by=month", 15),
        (f"from=0&to={far}&by=hour", 35 * 24 + 2),
        (f"to={far}&by=day", 32),
        ("from=1970-01-01&to=9999-12-31&by=hour", 35 * 24 + 2),
    ):
        before = _cpu_seconds(pid)
        reply = deployment.as_customer("globex", "GET", f"/usage?{query}")
        spent = _cpu_seconds(pid) - before
        assert reply.status == 200, (query, reply.body)
        assert len(reply.json()) <= most, query
        assert spent < 0.5, (query, spent)  # was 9 s on Redis for from=0&by=hour
    cli = deployment.kf.cli("usage", "--customer", "globex", "--from", "1970-01-01", "--to",
                            "9999-12-31", "--by", "hour", "--format", "json")  # fmt: skip
    assert len(json.loads(cli.stdout)) <= 35 * 24 + 2


def test_usage_refuses_an_unreadable_date_and_an_unbounded_answer(deployment: Deployment) -> None:
    for query, field in (
        ("from=-5", "from"),
        ("to=99999-01-01", "to"),
        ("from=1e400", "from"),
    ):
        reply = deployment.as_customer("globex", "GET", f"/usage?{query}")
        assert (reply.status, reply.json()["error"]["field"]) == (400, field), query


# --- issue 12: a cap on a customer's live keys (SPEC section 2: max_keys) -----------------


def test_max_keys_caps_live_keys_for_tokens_and_the_operator(deployment: Deployment) -> None:
    created = deployment.admin("POST", "/customers", {"customer_id": "capped", "max_keys": 2})
    assert created.json()["max_keys"] == 2
    token = deployment.admin("POST", "/customers/capped/tokens", {}, expect=201).json()["token"]
    first = deployment.admin("POST", "/keys", {}, token=token, expect=201).json()
    deployment.admin("POST", "/keys", {}, token=token, expect=201)
    for caller in (token, ADMIN_TOKEN):
        full = deployment.admin("POST", "/keys", {"customer_id": "capped"}, token=caller)
        assert (full.status, full.code) == (409, "conflict")
        assert "max_keys 2" in full.json()["error"]["message"]
    cli = deployment.kf.cli("keys", "create", "--customer", "capped", check=False)
    assert cli.returncode == 3 and "max_keys 2" in cli.stderr  # a conflict (issue 15)
    # A roll replaces a key: the retiring one does not count, for one roll at a time.
    rolled = deployment.admin("POST", f"/keys/{first['key_id']}/roll", {}, token=token)
    assert rolled.status == 201
    again = deployment.admin("POST", f"/keys/{rolled.json()['key_id']}/roll", {}, token=token)
    assert (again.status, again.code) == (409, "conflict")
    # Revoked keys are not live; the operator raises the cap.
    deployment.admin("POST", f"/keys/{first['key_id']}/revoke", token=token, expect=200)
    deployment.admin("POST", "/keys", {}, token=token, expect=409)  # the roll's new key
    deployment.kf.cli("customers", "update", "capped", "--max-keys", "4")
    deployment.admin("POST", "/keys", {}, token=token, expect=201)
    shown = json.loads(deployment.kf.cli("customers", "show", "capped", "--json").stdout)
    assert shown["max_keys"] == 4
    bad = deployment.admin("PATCH", "/customers/capped", {"max_keys": 0})
    assert (bad.status, bad.json()["error"]["field"]) == (400, "max_keys")


def test_an_expired_key_comes_back_to_life_only_within_max_keys(deployment: Deployment) -> None:
    # Review of issue 12, finding 2a: clearing or moving the expiry of an expired key
    # made it live again past the cap (create N expiring keys, wait, create N more,
    # revive the first N: 2N live keys).
    name = f"reviver-{deployment.kind}"
    deployment.admin("POST", "/customers", {"customer_id": name, "max_keys": 2}, expect=201)
    token = deployment.admin("POST", f"/customers/{name}/tokens", {}, expect=201).json()["token"]
    soon = int(time.time()) + 1
    expiring = [deployment.admin("POST", "/keys", {"expires_at": soon}, token=token, expect=201)
                .json()["key_id"] for _ in range(2)]  # fmt: skip
    while time.time() <= soon:
        time.sleep(0.05)
    live = [deployment.admin("POST", "/keys", {}, token=token, expect=201).json()["key_id"]
            for _ in range(2)]  # fmt: skip
    later = int(time.time()) + 3600
    for change in ({"expires_at": None}, {"expires_at": later}, {"expires_at": "30d"}):
        for caller in (token, ADMIN_TOKEN):
            revived = deployment.admin("PATCH", f"/keys/{expiring[0]}", change, token=caller)
            assert revived.status == 409, (change, revived.body)
            assert revived.code == "conflict"
            assert "max_keys 2" in revived.json()["error"]["message"]
    cli = deployment.kf.cli("keys", "update", expiring[0], "--expires", "30d", check=False)
    assert cli.returncode == 3 and "max_keys 2" in cli.stderr  # a conflict (issue 15)
    shown = deployment.admin("GET", f"/keys/{expiring[0]}", token=token, expect=200).json()
    assert shown["expires_at"] == soon  # unchanged
    # A change that leaves it expired is no revival; with a slot free, it comes back.
    renamed = deployment.admin("PATCH", f"/keys/{expiring[0]}", {"name": "old"}, token=token)
    assert renamed.status == 200
    deployment.admin("POST", f"/keys/{live[0]}/revoke", token=token, expect=200)
    back = deployment.admin("PATCH", f"/keys/{expiring[0]}", {"expires_at": None}, token=token)
    assert (back.status, back.json()["expires_at"]) == (200, None)
    full = deployment.admin("PATCH", f"/keys/{expiring[1]}", {"expires_at": None}, token=token)
    assert full.status == 409


def test_key_records_are_capped_at_ten_times_max_keys(deployment: Deployment) -> None:
    # Review of issue 12, finding 2b: revoked and expired keys are kept for good, so
    # create + revoke grew a customer's records without bound (each create read them
    # all). Records, live or not, are capped at 10 x max_keys, refused with 409.
    name = f"churner-{deployment.kind}"
    deployment.admin("POST", "/customers", {"customer_id": name, "max_keys": 2}, expect=201)
    token = deployment.admin("POST", f"/customers/{name}/tokens", {}, expect=201).json()["token"]
    for _ in range(20):
        key = deployment.admin("POST", "/keys", {}, token=token, expect=201).json()
        deployment.admin("POST", f"/keys/{key['key_id']}/revoke", token=token, expect=200)
    for caller in (token, ADMIN_TOKEN):
        full = deployment.admin("POST", "/keys", {"customer_id": name}, token=caller)
        assert (full.status, full.code) == (409, "conflict"), full.body
        assert "20 keys counting revoked and expired ones" in full.json()["error"]["message"]
        assert "max_keys 2" in full.json()["error"]["message"]
    listed = deployment.admin("GET", "/keys", token=token, expect=200).json()
    assert len(listed) == 20 and all(k["status"] == "revoked" for k in listed)
    # The operator raises max_keys, and with it the cap on records.
    deployment.kf.cli("customers", "update", name, "--max-keys", "3")
    deployment.admin("POST", "/keys", {}, token=token, expect=201)


async def test_a_customer_token_is_capped_by_default(tmp_path: Path, files: Path) -> None:
    store_url = f"sqlite://{tmp_path}/kf.db"
    admin = f"admin: {{token: {ADMIN_TOKEN}, customer_max_keys: 2}}"
    kf = start_keyfront(config(store_url, files, admin), str(tmp_path))
    try:
        kf.given("customers", "create", "open")
        token = json.loads(kf.given("customers", "token", "open", "--json"))["token"]
        for _ in range(2):
            assert call(kf.admin_url, "POST", PREFIX + "/keys", {}, token).status == 201
        full = call(kf.admin_url, "POST", PREFIX + "/keys", {}, token)
        assert (full.status, full.code) == (409, "conflict")
        assert "admin.customer_max_keys 2" in full.json()["error"]["message"]
        # The operator's own customers are not capped unless their record says so.
        assert call(kf.admin_url, "POST", PREFIX + "/keys", {"customer_id": "open"}).status == 201
        assert kf.cli("keys", "create", "--customer", "open").returncode == 0
    finally:
        assert kf.stop() == 0


# --- GET /me: a customer's own plan (issue 15) -------------------------------------------


def test_me_shows_a_customer_token_its_plan_keys_and_quota_left(deployment: Deployment) -> None:
    caps = {"max_rate": "50/s", "max_burst": 60, "quota_requests": 10, "quota_bytes": 1000,
            "max_keys": 3}  # fmt: skip
    deployment.admin("POST", "/customers", {"customer_id": "planned", **caps}, expect=201)
    token = deployment.admin("POST", "/customers/planned/tokens", {}, expect=201).json()["token"]
    keys = [deployment.admin("POST", "/keys", {}, token=token, expect=201).json()["key"]
            for _ in range(2)]  # fmt: skip
    for key in keys:  # 4 requests of 100 bytes, from the pool of both keys
        assert [deployment.fetch(key) for _ in range(2)] == [200, 200]
    deadline = time.monotonic() + 5
    while True:  # bytes are counted as responses finish
        plan = deployment.admin("GET", "/me", token=token, expect=200).json()
        if plan["quota"]["bytes"]["used"] == 400 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert {name: plan[name] for name in caps} == caps
    assert (plan["customer_id"], plan["status"]) == ("planned", "active")
    assert plan["keys"] == {"live": 2, "max": 3}
    assert plan["quota"]["requests"] == {"limit": 10, "used": 4, "left": 6}
    assert plan["quota"]["bytes"] == {"limit": 1000, "used": 400, "left": 600}
    now = time.gmtime()
    next_month = (now.tm_year + now.tm_mon // 12, now.tm_mon % 12 + 1, 1, 0, 0, 0)
    assert plan["quota"]["resets_at"] == calendar.timegm(next_month)
    assert plan["quota"]["month"] == time.strftime("%Y-%m", now)
    # No quota on the plan: nothing counted against one; the token's default key cap.
    other = deployment.as_customer("globex", "GET", "/me").json()
    assert other["quota"]["requests"] == {"limit": None, "used": None, "left": None}
    assert other["keys"]["max"] == 1000  # admin.customer_max_keys, the default
    # The operator has no plan of its own.
    operator = deployment.admin("GET", "/me")
    assert (operator.status, operator.code) == (400, "bad_request")
    assert "customer token" in operator.json()["error"]["message"]
    document = deployment.admin("GET", "/openapi.json", token=None, expect=200).json()
    me = document["paths"][f"{PREFIX}/me"]["get"]
    assert me["x-access"] == "customer"
    assert me["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Plan"
    }
    assert set(document["components"]["schemas"]["Plan"]["required"]) >= {"keys", "quota"}
