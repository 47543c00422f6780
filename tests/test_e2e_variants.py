"""Route cache settings end to end (SPEC section 5): `origin_cache_control: respect`
and `variant_params`, with keyfront as a real process in front of a real HTTP origin
that sets Cache-Control per path and serves a different body per variant."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from conftest import HttpOriginServer, KeyfrontProcess, start_keyfront

BODY = b"the object itself\n" * 100
ADMIN_TOKEN = "operator-token-0123456789"


class ShapingOrigin(HttpOriginServer):
    """`cc/<value>/<name>`: the file with `Cache-Control: <value>` (and ETag, so a
    revalidation can be answered 304); `variant/<name>`: a body that names the query it
    was asked with. Records every request's path, query and validator."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.seen: list[tuple[str, str, str | None]] = []

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        self.seen.append((path, request.query_string, request.headers.get("If-None-Match")))
        kind, _, rest = path.partition("/")
        if kind == "cc":
            value, _, _ = rest.partition("/")
            etag = '"v1"'
            headers = {"ETag": etag, "Cache-Control": value}
            if request.headers.get("If-None-Match") == etag:
                return web.Response(status=304, headers=headers)
            return web.Response(body=BODY, headers=headers)
        if kind == "variant":
            return web.Response(body=f"variant of {rest} for {request.query_string!r}".encode())
        return await super()._serve(request)

    def asked(self, prefix: str) -> list[tuple[str, str, str | None]]:
        return [seen for seen in self.seen if seen[0].startswith(prefix)]


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShapingOrigin]:
    server = ShapingOrigin(str(tmp_path_factory.mktemp("shaping-origin")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def keyfront(tmp_path: Path, origin: ShapingOrigin) -> Iterator[KeyfrontProcess]:
    body = f"""
store: sqlite://{tmp_path}/kf.db
keys: {{secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}}}
admin: {{token: {ADMIN_TOKEN}}}
routes:
  - {{prefix: /obey/, origin: "{origin.url}", auth: none, origin_cache_control: respect,
      variant_params: [w, format]}}
  - {{prefix: /plain/, origin: "{origin.url}", auth: none}}
cache: {{dir: {tmp_path}/cache, ttl: 1h, stale_while_revalidate: 0s}}
access_log: "off"
"""
    kf = start_keyfront(body, str(tmp_path))
    origin.seen.clear()
    yield kf
    assert kf.stop() == 0


def get(kf: KeyfrontProcess, path: str) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", kf.port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("X-Cache", ""), response.read()
    finally:
        conn.close()


# --- origin_cache_control: respect ----------------------------------------------------------


def test_a_respected_max_age_expires_the_entry_and_revalidates(
    keyfront: KeyfrontProcess, origin: ShapingOrigin
) -> None:
    path = "cc/max-age=1/a.bin"
    assert get(keyfront, f"/obey/{path}") == (200, "MISS", BODY)
    assert get(keyfront, f"/obey/{path}") == (200, "HIT", BODY)
    time.sleep(1.2)
    assert get(keyfront, f"/obey/{path}") == (200, "REVALIDATED", BODY)
    # One full GET, then one conditional GET answered 304.
    assert [validator for _, _, validator in origin.asked("cc/")] == [None, '"v1"']


def test_the_same_origin_header_is_not_consulted_by_a_route_that_ignores_it(
    keyfront: KeyfrontProcess, origin: ShapingOrigin
) -> None:
    path = "cc/max-age=1/b.bin"
    assert get(keyfront, f"/plain/{path}") == (200, "MISS", BODY)
    time.sleep(1.2)
    assert get(keyfront, f"/plain/{path}") == (200, "HIT", BODY)  # cache.ttl: 1h
    assert len(origin.asked("cc/")) == 1


@pytest.mark.parametrize("directive", ["no-store", "private"])
def test_no_store_passes_every_request_through(
    keyfront: KeyfrontProcess, origin: ShapingOrigin, directive: str
) -> None:
    path = f"cc/{directive}/c.bin"
    for _ in range(3):
        assert get(keyfront, f"/obey/{path}") == (200, "BYPASS", BODY)
    # The first request's fill learns it may not store (one cut-short GET), then every
    # request goes straight through: 1 + 3.
    assert len(origin.asked("cc/")) == 4
    assert list((Path(keyfront.config_path).parent / "cache" / "objects").rglob("*.*")) == []


def test_no_cache_revalidates_every_hit(keyfront: KeyfrontProcess, origin: ShapingOrigin) -> None:
    path = "cc/no-cache/d.bin"
    assert get(keyfront, f"/obey/{path}") == (200, "MISS", BODY)
    assert get(keyfront, f"/obey/{path}") == (200, "REVALIDATED", BODY)
    assert [validator for _, _, validator in origin.asked("cc/")] == [None, '"v1"']


# --- variant_params ----------------------------------------------------------------------


def test_variants_are_cached_apart_and_asked_for_by_their_params(
    keyfront: KeyfrontProcess, origin: ShapingOrigin
) -> None:
    small = get(keyfront, "/obey/variant/e.png?w=100&tracking=1")
    large = get(keyfront, "/obey/variant/e.png?w=200")
    assert (small[0], small[1], large[0], large[1]) == (200, "MISS", 200, "MISS")
    assert small[2] == b"variant of e.png for 'w=100'"  # `tracking` is not sent on
    assert large[2] == b"variant of e.png for 'w=200'"
    # Same variant, other unrelated params, params in another order: one entry.
    assert get(keyfront, "/obey/variant/e.png?other=1&w=100") == (200, "HIT", small[2])
    both = get(keyfront, "/obey/variant/e.png?format=webp&w=100")
    assert both[2] == b"variant of e.png for 'w=100&format=webp'"  # the route's order
    assert get(keyfront, "/obey/variant/e.png?w=100&format=webp")[1] == "HIT"
    assert [query for _, query, _ in origin.asked("variant/")] == [
        "w=100",
        "w=200",
        "w=100&format=webp",
    ]


def test_a_route_without_variant_params_ignores_the_query(
    keyfront: KeyfrontProcess, origin: ShapingOrigin
) -> None:
    first = get(keyfront, "/plain/variant/f.png?w=100")
    assert first == (200, "MISS", b"variant of f.png for ''")
    assert get(keyfront, "/plain/variant/f.png?w=200") == (200, "HIT", first[2])


def test_purging_a_path_removes_its_variants(
    keyfront: KeyfrontProcess, origin: ShapingOrigin
) -> None:
    for query in ("", "?w=100", "?w=200"):
        assert get(keyfront, f"/obey/variant/g.png{query}")[1] == "MISS"
    conn = http.client.HTTPConnection("127.0.0.1", keyfront.admin_port, timeout=10)
    conn.request(
        "POST",
        "/admin/v1/purge",
        json.dumps({"paths": ["/obey/variant/g.png"]}),
        {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    reply = conn.getresponse()
    answer = (reply.status, json.loads(reply.read()))
    conn.close()
    assert answer == (200, {"purged": 3})
    for query in ("", "?w=100", "?w=200"):
        assert get(keyfront, f"/obey/variant/g.png{query}")[1] == "MISS"
