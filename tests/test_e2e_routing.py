"""Routes, cache keys and paths mean one thing however a client spells the path
(issue 12 items 1-3, issue 14 "repointing a route"), with keyfront as a real process in
front of two real HTTP origins: a public one and a keyed one, mounted nested
(`/pub/` public, `/pub/secret/` keyed).

Each test here failed on the code before the fix; the purge tests guard that purges by
public path still find the entries under the new key format."""

from __future__ import annotations

import hashlib
import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.cache.entry import CacheEntry, encode_header

from conftest import HttpOriginServer, KeyfrontProcess, start_keyfront

ADMIN_TOKEN = "operator-token-0123456789"
PUBLIC_PLAN = b"the PUBLIC origin's secret/plan.txt\n"
SECRET_PLAN = b"the KEYED origin's plan.txt: not for keyless eyes\n"
PUBLIC_A = b"public a.txt\n"


@pytest.fixture(scope="module")
def public(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpOriginServer]:
    root = tmp_path_factory.mktemp("public-origin")
    (root / "secret").mkdir()
    (root / "secret" / "plan.txt").write_bytes(PUBLIC_PLAN)
    (root / "a.txt").write_bytes(PUBLIC_A)
    (root / "same.txt").write_bytes(b"origin A's same.txt\n")
    server = HttpOriginServer(str(root))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpOriginServer]:
    root = tmp_path_factory.mktemp("keyed-origin")
    (root / "plan.txt").write_bytes(SECRET_PLAN)
    (root / "same.txt").write_bytes(b"origin B's same.txt\n")
    server = HttpOriginServer(str(root))
    server.start()
    yield server
    server.stop()


def nested_config(tmp_path: Path, public: HttpOriginServer, keyed: HttpOriginServer) -> str:
    return f"""
store: sqlite://{tmp_path}/kf.db
keys: {{secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}}}
admin: {{token: {ADMIN_TOKEN}}}
routes:
  - {{prefix: /pub/, origin: "{public.url}", auth: none}}
  - {{prefix: /pub/secret/, origin: "{keyed.url}"}}
  - {{prefix: /v/, origin: "{public.url}", auth: none, variant_params: [w]}}
access_log: "off"
"""


@pytest.fixture
def keyfront(
    tmp_path: Path, public: HttpOriginServer, keyed: HttpOriginServer
) -> Iterator[KeyfrontProcess]:
    kf = start_keyfront(nested_config(tmp_path, public, keyed), str(tmp_path))
    yield kf
    assert kf.stop() == 0


def get(kf: KeyfrontProcess, path: str, key: str = "") -> tuple[int, str, bytes]:
    """(status, X-Cache or the error code, body) of a GET of `path` sent as is."""
    conn = http.client.HTTPConnection("127.0.0.1", kf.port, timeout=10)
    try:
        conn.request("GET", path, headers={"X-API-Key": key} if key else {})
        response = conn.getresponse()
        body = response.read()
        if response.status >= 400 and response.getheader("Content-Type") == "application/json":
            return response.status, json.loads(body)["error"]["code"], body
        return response.status, response.getheader("X-Cache", ""), body
    finally:
        conn.close()


def key_for(kf: KeyfrontProcess, *options: str) -> str:
    kf.given("customers", "create", "acme", check=False)  # made by an earlier call
    options = ("--customer", "acme", "--rate", "1000/s", *options, "--json")
    created = kf.given("keys", "create", *options)
    return str(json.loads(created)["key"])


def admin_purge(kf: KeyfrontProcess, body: object) -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", kf.admin_port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
        conn.request("POST", "/admin/v1/purge", json.dumps(body), headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


# --- issue 12 item 1: the route is picked on the decoded path ----------------------------


@pytest.mark.parametrize("path", ["/pub/secre%74/plan.txt", "/pub/%73ecret/plan.txt"])
def test_an_encoded_spelling_does_not_reach_the_keyed_route_without_a_key(
    keyfront: KeyfrontProcess, path: str
) -> None:
    """Before the fix, /pub/ (public) took the request on its raw path, and its cache key
    `/pub/` + `secret/plan.txt` was the keyed route's: once a keyed client had fetched
    the object, a keyless client got it as a HIT."""
    assert get(keyfront, path)[:2] == (401, "key_missing")  # nothing cached yet
    key = key_for(keyfront)
    assert get(keyfront, "/pub/secret/plan.txt", key)[::2] == (200, SECRET_PLAN)
    status, code, body = get(keyfront, path)
    assert SECRET_PLAN not in body
    assert (status, code) == (401, "key_missing")


def test_the_encoded_spelling_is_the_keyed_route_with_a_key(keyfront: KeyfrontProcess) -> None:
    key = key_for(keyfront)
    assert get(keyfront, "/pub/secre%74/plan.txt")[:2] == (401, "key_missing")
    assert get(keyfront, "/pub/secre%74/plan.txt", key)[::2] == (200, SECRET_PLAN)
    assert get(keyfront, "/pub/secret/plan.txt", key) == (200, "HIT", SECRET_PLAN)


def test_a_keyless_request_cannot_fill_the_keyed_routes_cache_entry(
    keyfront: KeyfrontProcess, public: HttpOriginServer
) -> None:
    """The reverse direction: before the fix the keyless request was served by /pub/
    from the PUBLIC origin under the cache key `/pub/secret/plan.txt`, which keyed
    clients of /pub/secret/ then hit."""
    get(keyfront, "/pub/secre%74/plan.txt")
    key = key_for(keyfront)
    assert get(keyfront, "/pub/secret/plan.txt", key)[::2] == (200, SECRET_PLAN)
    assert public.gets.get("secret/plan.txt", 0) == 0


def test_nested_routes_with_the_same_public_path_keep_apart(
    tmp_path: Path, public: HttpOriginServer, keyed: HttpOriginServer
) -> None:
    """A route added later inside another (`/pub/secret/` after `/pub/`): the outer
    route's cached `secret/plan.txt` is not the inner route's `plan.txt`."""
    outer_only = f"""
store: sqlite://{tmp_path}/kf.db
keys: {{secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}}}
routes:
  - {{prefix: /pub/, origin: "{public.url}", auth: none}}
access_log: "off"
"""
    kf = start_keyfront(outer_only, str(tmp_path))
    try:
        assert get(kf, "/pub/secret/plan.txt") == (200, "MISS", PUBLIC_PLAN)
    finally:
        assert kf.stop() == 0
    kf = start_keyfront(nested_config(tmp_path, public, keyed), str(tmp_path))
    try:
        key = key_for(kf)
        assert get(kf, "/pub/secret/plan.txt", key) == (200, "MISS", SECRET_PLAN)
    finally:
        assert kf.stop() == 0


# --- issue 14: repointing a route never serves the old origin's bytes ---------------------


def repointed_config(tmp_path: Path, origin: HttpOriginServer) -> str:
    return f"""
store: sqlite://{tmp_path}/kf.db
keys: {{secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}}}
routes:
  - {{prefix: /obj/, origin: "{origin.url}", auth: none}}
cache: {{dir: {tmp_path}/cache, ttl: 1h}}
access_log: "off"
"""


def test_repointing_a_route_serves_the_new_origins_bytes(
    tmp_path: Path, public: HttpOriginServer, keyed: HttpOriginServer
) -> None:
    kf = start_keyfront(repointed_config(tmp_path, public), str(tmp_path))
    try:
        assert get(kf, "/obj/same.txt") == (200, "MISS", b"origin A's same.txt\n")
        assert get(kf, "/obj/same.txt") == (200, "HIT", b"origin A's same.txt\n")
    finally:
        assert kf.stop() == 0
    kf = start_keyfront(repointed_config(tmp_path, keyed), str(tmp_path))
    try:
        assert get(kf, "/obj/same.txt") == (200, "MISS", b"origin B's same.txt\n")
    finally:
        assert kf.stop() == 0


def test_an_object_cached_under_the_old_key_format_is_not_served(
    tmp_path: Path, public: HttpOriginServer
) -> None:
    """Cache files written before the key carried the route and origin (`/obj/same.txt`)
    are never found under the new key: they are evicted in time, and a purge by prefix
    reads them without failing (and removes them)."""
    old_key = "/obj/same.txt"
    name = hashlib.sha256(old_key.encode()).hexdigest()
    entry = CacheEntry(old_key, name, 200, 6, {"ETag": '"old"'}, time.time(), 7, 0)
    folder = tmp_path / "cache" / "objects" / name[:2]
    folder.mkdir(parents=True)
    (folder / name).write_bytes(encode_header(entry) + b"STALE!")
    kf = start_keyfront(repointed_config(tmp_path, public), str(tmp_path))
    try:
        assert get(kf, "/obj/same.txt") == (200, "MISS", b"origin A's same.txt\n")
        assert get(kf, "/obj/same.txt") == (200, "HIT", b"origin A's same.txt\n")
        purged = kf.cli("cache", "purge", "--prefix", "/obj/", "--json")
        assert json.loads(purged.stdout)["purged"] == 2
        assert not (folder / name).exists()
    finally:
        assert kf.stop() == 0


# --- issue 12 item 2: `?` and `#` never enter an object path ------------------------------


@pytest.mark.parametrize(
    "path", ["/v/a.txt%3Fw=100", "/v/a.txt%3fw=100", "/v/a.txt%23w=100", "/v/a.txt#w=100"]
)
def test_an_encoded_query_or_fragment_in_the_path_is_bad_path(
    keyfront: KeyfrontProcess, path: str
) -> None:
    assert get(keyfront, "/v/a.txt?w=100") == (200, "MISS", PUBLIC_A)  # the variant
    status, code, _ = get(keyfront, path)
    assert (status, code) == (400, "bad_path")


# --- issue 12 item 3: path scopes compare decoded paths -------------------------------------


def test_a_path_scope_written_encoded_matches_the_decoded_request(
    keyfront: KeyfrontProcess,
) -> None:
    key = key_for(keyfront, "--path", "/pub/secret/pl%61")
    assert get(keyfront, "/pub/secret/plan.txt", key)[::2] == (200, SECRET_PLAN)
    assert get(keyfront, "/pub/secret/other.txt", key)[:2] == (403, "path_not_allowed")


# --- purges take public URL paths, and still find the entries ------------------------------


def test_purges_by_public_path_reach_each_nested_route(keyfront: KeyfrontProcess) -> None:
    """Purges name public URL paths; each is resolved to its route as a request is.
    (No object is refilled between purges: each purge is also announced to this
    instance through the store, and may land after a refill.)"""
    key = key_for(keyfront)
    assert get(keyfront, "/pub/secret/plan.txt", key)[1] == "MISS"
    assert get(keyfront, "/pub/a.txt")[1] == "MISS"
    assert get(keyfront, "/pub/same.txt")[1] == "MISS"
    # Spelt as a client may spell it: the same normalisation as requests.
    assert admin_purge(keyfront, {"paths": ["/pub/secre%74/plan.txt"]}) == (200, {"purged": 1})
    assert get(keyfront, "/pub/a.txt")[1] == "HIT"
    # a.txt and same.txt; plan.txt was gone
    assert admin_purge(keyfront, {"prefix": "/pub/"}) == (200, {"purged": 2})
    assert get(keyfront, "/pub/a.txt")[1] == "MISS"
    assert get(keyfront, "/pub/secret/plan.txt", key)[1] == "MISS"


def test_a_purge_by_path_resolves_variants_as_requests_do(keyfront: KeyfrontProcess) -> None:
    """With a query, a purge removes the one entry a request with that query uses;
    without one, the path and all its variants, from the command line too (which
    knew no route's variants before: it removed the bare path only)."""
    for query in ("", "?w=100", "?w=200"):
        assert get(keyfront, f"/v/a.txt{query}")[:2] == (200, "MISS")
    assert admin_purge(keyfront, {"paths": ["/v/a.txt?w=100&utm=x"]}) == (200, {"purged": 1})
    assert get(keyfront, "/v/a.txt?w=200")[1] == "HIT"
    cli = keyfront.cli("cache", "purge", "/v/a.txt", "--json")
    assert json.loads(cli.stdout)["purged"] == 2  # the bare path and w=200
