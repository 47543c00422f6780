"""Per-key analytics and what-if (SPEC section 15) against keyfront as a real process on
both stores: requests with various referrers, paths and client addresses (a trusted
proxy's X-Forwarded-For), flushed, then read back through the admin API; customer
tokens see their own keys only."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_admin import ADMIN_TOKEN, Reply, call

from proxy.admin import PREFIX

from conftest import KeyfrontProcess, RedisServer, empty_store_url, start_keyfront

# (referrer, client address, object, how many): the acme key allows good.example and
# *.ok.example, so evil.example and no referrer at all are refused (403).
SERVED = [("https://good.example/page", "10.0.0.1", "a.txt", 5),
          ("https://app.ok.example/x", "10.0.0.2", "b.txt", 3)]  # fmt: skip
REFUSED = [("https://evil.example/", "10.0.0.9", "a.txt", 4), (None, "10.0.0.8", "b.txt", 2)]


@dataclass
class Deployment:
    kf: KeyfrontProcess
    tokens: dict[str, str]
    key_id: str

    def admin(self, method: str, path: str, body: Any = None, token: str = ADMIN_TOKEN) -> Reply:
        return call(self.kf.admin_url, method, PREFIX + path, body, token)

    def get(self, path: str, referrer: str | None, ip: str, key: str) -> int:
        headers = {"X-Forwarded-For": ip} | ({"Referer": referrer} if referrer else {})
        url = f"/files/{path}?key={key}"
        conn = http.client.HTTPConnection("127.0.0.1", self.kf.port, timeout=10)
        try:
            conn.request("GET", url, headers=headers)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def deployment(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
) -> Iterator[Deployment]:
    workdir = tmp_path_factory.mktemp(f"analytics-{request.param}")
    files = workdir / "files"
    files.mkdir()
    (files / "a.txt").write_bytes(b"a" * 100)
    (files / "b.txt").write_bytes(b"b" * 10)
    store_url = empty_store_url(request.param, redis_server, str(workdir))
    kf = start_keyfront(_config(store_url, files), str(workdir))
    for customer in ("acme", "globex"):
        kf.given("customers", "create", customer)
    tokens = {c: json.loads(kf.given("customers", "token", c, "--json"))["token"]
              for c in ("acme", "globex")}  # fmt: skip
    minted = call(kf.admin_url, "POST", f"{PREFIX}/keys", {"referrers": ["good.example",
                  "*.ok.example"]}, tokens["acme"]).json()  # fmt: skip
    deployment = Deployment(kf, tokens, minted["key_id"])
    for referrer, ip, path, times in SERVED + REFUSED:
        expected = 200 if (referrer, ip, path, times) in SERVED else 403
        for _ in range(times):
            assert deployment.get(path, referrer, ip, minted["key"]) == expected
    _wait_for_flush(deployment, requests=8, refused=6)
    yield deployment
    assert kf.stop() == 0


def _config(store_url: str, files: Path) -> str:
    return f"""
store: {store_url}
keys:
  secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}
admin: {{token: {ADMIN_TOKEN}}}
trusted_proxies: [127.0.0.1/32]
usage: {{flush_interval: 100ms}}
routes:
  - {{prefix: /files/, origin: "file://{files}/"}}
"""


def _wait_for_flush(deployment: Deployment, requests: int, refused: int) -> None:
    # Served and refused requests may reach the store in different flushes (100 ms
    # apart): both are waited for.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        data = deployment.admin("GET", f"/analytics?key={deployment.key_id}").json()
        counts = data["counts"]
        denied = sum(v for k, v in counts.items() if k.startswith("denied_"))
        if counts["requests"] == requests and denied == refused and data["referrers"]:
            return
        time.sleep(0.1)
    pytest.fail(f"analytics not flushed: {data}")


def _short(items: list[dict[str, Any]], name: str) -> list[tuple[Any, ...]]:
    return [(i[name], i["requests"], i["bytes"], i["error"], i.get("code")) for i in items]


def test_analytics_lists_the_exact_top_referrers_objects_and_refused_addresses(
    deployment: Deployment,
) -> None:
    data = deployment.admin("GET", f"/analytics?key={deployment.key_id}&by=hour").json()
    assert data["counts"]["requests"] == 8
    assert data["counts"]["bytes"] == 5 * 100 + 3 * 10
    assert data["counts"]["denied_referrer_not_allowed"] == 6
    assert (data["no_referrer"], data["no_referrer_share"]) == (2, round(2 / 14, 4))
    assert _short(data["referrers"], "host") == [
        ("good.example", 5, 500, 0, None),
        ("app.ok.example", 3, 30, 0, None),
        ("evil.example", 4, 0, 0, "referrer_not_allowed"),
    ]  # no referrer is counted by no_referrer, not listed as a host
    assert data["referrers"][0]["origin"] == "https://good.example"
    assert _short(data["objects"], "path") == [
        ("/files/a.txt", 5, 500, 0, None),
        ("/files/b.txt", 3, 30, 0, None),
        ("/files/a.txt", 4, 0, 0, "referrer_not_allowed"),
        ("/files/b.txt", 2, 0, 0, "referrer_not_allowed"),
    ]
    assert _short(data["refused_ips"], "ip") == [
        ("10.0.0.9", 4, 0, 0, "referrer_not_allowed"),
        ("10.0.0.8", 2, 0, 0, "referrer_not_allowed"),
    ]
    assert [i["ip"] for i in data["ips"]] == ["10.0.0.1", "10.0.0.2"]
    assert sum(p["requests"] for p in data["periods"]) == 8
    by_day = deployment.admin("GET", "/analytics?customer=acme&by=day").json()
    assert _short(by_day["referrers"], "host") == _short(data["referrers"], "host")


def test_a_customer_token_reads_its_own_keys_only(deployment: Deployment) -> None:
    own = deployment.admin("GET", f"/analytics?key={deployment.key_id}",
                           token=deployment.tokens["acme"])  # fmt: skip
    assert own.status == 200 and own.json()["counts"]["requests"] == 8
    assert deployment.admin("GET", "/analytics", token=deployment.tokens["acme"]).json()[
        "customer"] == "acme"  # fmt: skip
    unknown_id = "A" * len(deployment.key_id)
    for key_id in (deployment.key_id, unknown_id):
        reply = deployment.admin("GET", f"/analytics?key={key_id}",
                                 token=deployment.tokens["globex"])  # fmt: skip
        assert (reply.status, reply.code) == (404, "not_found")
        assert reply.json()["error"]["message"] == f"no such key: {key_id}"
        what_if = deployment.admin("POST", f"/keys/{key_id}/what-if", {"ips": []},
                                   token=deployment.tokens["globex"])  # fmt: skip
        assert (what_if.status, what_if.json()["error"]["message"]) == (
            404, f"no such key: {key_id}")  # fmt: skip
    other = deployment.admin("GET", "/analytics?customer=acme", token=deployment.tokens["globex"])
    assert (other.status, other.code) == (404, "not_found")


def test_what_if_answers_a_referrer_rule_change_from_the_recorded_traffic(
    deployment: Deployment,
) -> None:
    path = f"/keys/{deployment.key_id}/what-if"
    narrower = deployment.admin("POST", path, {"referrers": ["good.example"]}).json()
    assert (narrower["served"], narrower["would_refuse"], narrower["would_allow"]) == (8, 3, 0)
    assert [i["host"] for i in narrower["behind"]["would_refuse"]["referrers"]] == [
        "app.ok.example"
    ]
    wider = {"referrers": ["good.example", "*.ok.example", "evil.example"]}
    opened = deployment.admin("POST", path, wider, token=deployment.tokens["acme"]).json()
    assert (opened["would_refuse"], opened["would_allow"]) == (0, 4)
    assert _short(opened["behind"]["would_allow"]["referrers"], "host") == [
        ("evil.example", 4, 0, 0, "referrer_not_allowed")
    ]
    no_referrer = deployment.admin("POST", path, {"allow_no_referrer": True}).json()
    assert no_referrer["would_allow"] == 2
    ips = deployment.admin("POST", path, {"ips": ["10.0.0.0/31"]}).json()  # .0 and .1
    assert (ips["would_refuse"], [i["ip"] for i in ips["behind"]["would_refuse"]["ips"]]) == (
        3, ["10.0.0.2"])  # fmt: skip
    # Nothing was saved: the key still has its own rules.
    record = deployment.admin("GET", f"/keys/{deployment.key_id}").json()
    assert (record["referrers"], record["ips"]) == (["good.example", "*.ok.example"], [])


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/keys/{key}/what-if", {"rate": "1/s"}, "rate"),
        ("POST", "/keys/{key}/what-if", {"referrers": ["https://"]}, "referrers"),
        ("POST", "/keys/{key}/what-if", {}, "body"),
        ("GET", "/analytics?key={key}&by=month", None, "by"),
        ("GET", "/analytics?key={key}&from=2&to=1", None, "to"),
        ("GET", "/analytics?key={key}&by=hour&from=0", None, "from"),
        ("GET", "/analytics?key={key}&customer_id=x", None, "customer_id"),
        ("GET", "/analytics", None, "key"),
    ],
)
def test_bad_input_is_400_naming_the_field(
    deployment: Deployment, method: str, path: str, body: Any, field: str
) -> None:
    reply = deployment.admin(method, path.format(key=deployment.key_id), body)
    assert (reply.status, reply.code) == (400, "bad_request")
    assert reply.json()["error"]["field"] == field


def test_the_endpoints_are_in_the_openapi_document(deployment: Deployment) -> None:
    document = deployment.admin("GET", "/openapi.json").json()
    assert document["paths"][f"{PREFIX}/analytics"]["get"]["x-access"] == "customer"
    what_if = document["paths"][f"{PREFIX}/keys/{{key_id}}/what-if"]["post"]
    assert what_if["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/WhatIf"
    }


def test_hostile_values_are_stored_cut_to_their_bound(deployment: Deployment) -> None:
    # Issue 12's rule: what a client chooses is capped before it is kept. A 300-letter
    # host and a 600-character path are stored as their first 256 characters.
    minted = deployment.admin("POST", "/keys", {}, token=deployment.tokens["globex"]).json()
    host, path = "h" * 300 + ".example", "x" * 600
    assert deployment.get(path, f"https://{host}/", "10.1.1.1", minted["key"]) == 404
    deadline, data = time.monotonic() + 10, {}
    while time.monotonic() < deadline and not data.get("objects"):
        time.sleep(0.1)
        data = deployment.admin("GET", f"/analytics?key={minted['key_id']}").json()
    assert _short(data["objects"], "path") == [(f"/files/{path}"[:256], 1, 0, 0, "not_found")]
    assert data["referrers"][0]["origin"] == f"https://{host}"[:256]
    assert data["refused_ips"][0]["ip"] == "10.1.1.1"
