"""The key API's answers (proxy/keylookup/answer.py) read as hostile input, their JSON
Schema (docs/key-api.schema.json), and how keys are named on the change feed
(keylookup/digest.py, manage/invalidate.py). End to end: tests/test_e2e_lookup.py."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from proxy.config import DEFAULT_EXTERNAL_PATTERN, KeyDefaults, LookupConfig
from proxy.errors import Invalid
from proxy.keylookup import KeyApi, LookupCache
from proxy.keylookup.answer import MalformedAnswer, answer_schema, read_answer
from proxy.keylookup.digest import key_digests
from proxy.manage.invalidate import MAX_TARGETS, invalidation_changes
from proxy.records import Customer, KeyRecord
from proxy.store import Change
from proxy.units import Rate

SCHEMA_FILE = Path(__file__).parent.parent / "docs" / "key-api.schema.json"


def answer(**fields: Any) -> bytes:
    return json.dumps({"key_id": "op-1", "customer_id": "cust-9", **fields}).encode()


def test_a_minimal_answer_is_an_active_key_of_an_active_customer() -> None:
    record, customer = read_answer(answer())
    assert record == KeyRecord("op-1", "cust-9")
    assert customer == Customer("cust-9")


def test_every_section_2_field_is_read() -> None:
    record, customer = read_answer(answer(
        name="web", status="disabled", expires_at="2030-01-01", created_at=1_700_000_000,
        referrers=["example.com", "*.example.org"], allow_no_referrer=False,
        ips=["10.0.0.0/8", "2001:db8::/32"], paths=["/maps/"], rate="10/s", burst=20,
        ip_rate="2/s", ip_burst=4, quota_requests=1000, quota_bytes="1GiB",
        link_secret="s" * 16, require_signed_links=True,
        customer={"status": "active", "name": "Acme", "max_rate": "100/s", "max_burst": 200,
                  "quota_requests": 10**6, "quota_bytes": 10**12, "max_keys": 5},
    ))  # fmt: skip
    assert record == KeyRecord(
        "op-1", "cust-9", name="web", status="disabled", expires_at=1_893_456_000,
        created_at=1_700_000_000, referrers=("example.com", "*.example.org"),
        allow_no_referrer=False, ips=("10.0.0.0/8", "2001:db8::/32"), paths=("/maps/",),
        rate=Rate(10, 1.0), burst=20, ip_rate=Rate(2, 1.0), ip_burst=4, quota_requests=1000,
        quota_bytes=1024**3, link_secret="s" * 16, require_signed_links=True,
    )  # fmt: skip
    assert customer == Customer("cust-9", "Acme", "active", max_rate=Rate(100, 1.0),
                                max_burst=200, quota_requests=10**6, quota_bytes=10**12,
                                max_keys=5)  # fmt: skip


def test_an_expiry_in_the_past_is_an_expired_key_not_an_error() -> None:
    record, _ = read_answer(answer(expires_at=1_000))
    assert record.expires_at == 1_000


HOSTILE: list[tuple[str, bytes, str]] = [
    ("not json", b'{"key_id": ', "not JSON"),
    ("not utf-8", b'{"key_id": "\xff"}', "not JSON"),
    ("an array", b"[1, 2]", "expected a JSON object"),
    ("NaN", answer()[:-1] + b', "burst": NaN}', "not JSON"),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, ""),
    ("no key_id", json.dumps({"customer_id": "c"}).encode(), "key_id"),
    ("key_id breaks a hash tag", answer(key_id="a}b"), "key_id"),
    ("key_id not a string", answer(key_id=7), "key_id"),
    ("long customer_id", answer(customer_id="c" * 65), "customer_id"),
    ("misspelt restriction", answer(referer=["example.com"]), "referer: unknown field"),
    ("keyfront-only field", answer(version=3), "version: unknown field"),
    ("bad status", answer(status="banana"), "status"),
    ("bad referrer", answer(referrers=["http://"]), "referrers"),
    ("too many referrers", answer(referrers=["a.example"] * 257), "at most 256"),
    ("bad CIDR", answer(ips=["10.0.0.0/33"]), "ips"),
    ("path without /", answer(paths=["maps/"]), "paths"),
    ("bad rate", answer(rate="9" * 40 + "/s"), "rate"),
    ("boolean burst", answer(burst=True), "burst"),
    ("huge quota", answer(quota_requests=10**30), "quota_requests"),
    ("short link secret", answer(link_secret="short"), "link_secret"),
    ("expiry past 9999", answer(expires_at=10**15), "expires_at"),
    ("customer not an object", answer(customer="acme"), "customer"),
    ("customer of another id", answer(customer={"customer_id": "other"}), "customer.customer_id"),
    ("customer bad cap", answer(customer={"max_burst": -1}), "customer.max_burst"),
    ("customer unknown field", answer(customer={"plan": "gold"}), "customer.plan"),
    ("customer revoked", answer(customer={"status": "revoked"}), "customer.status"),
]


@pytest.mark.parametrize(("body", "problem"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_a_malformed_answer_is_refused_naming_the_field(body: bytes, problem: str) -> None:
    started = time.process_time()
    with pytest.raises(MalformedAnswer) as caught:
        read_answer(body)
    assert problem in str(caught.value)
    assert time.process_time() - started < 0.5  # linear: no backtracking, no blow-up


def test_the_schema_file_is_the_contract_keyfront_reads() -> None:
    schema = answer_schema()
    assert json.loads(SCHEMA_FILE.read_text()) == schema, "regenerate: python -m proxy.keylookup"
    assert set(schema["properties"]) >= {
        "key_id", "customer_id", "name", "status", "expires_at", "referrers",
        "allow_no_referrer", "ips", "paths", "rate", "burst", "quota_requests", "quota_bytes",
        "link_secret", "require_signed_links", "customer",
    }  # fmt: skip
    assert schema["additionalProperties"] is False


def test_key_digests_name_a_key_per_secret_version_without_showing_it() -> None:
    key = "publickey123"
    digests = key_digests({2: "second-secret-0123456789", 1: "first-secret-0123456789"}, key)
    assert [d.split(".")[0] for d in digests] == ["1", "2"]
    assert all(len(d.split(".")[1]) == 32 and key not in d for d in digests)
    assert key_digests({1: "first-secret-0123456789"}, key) == digests[:1]  # stable
    assert key_digests({1: "another-secret-012345678"}, key) != digests[:1]  # keyed


def test_invalidation_changes_name_keys_by_digest_and_ids_as_they_are() -> None:
    secrets = {1: "first-secret-0123456789"}
    own_key = "pk_1_" + "A" * 22 + "_" + "0" * 32
    changes = invalidation_changes(secrets, ["publickey123", own_key], ["op-1"], ["cust-9"])
    assert changes == [
        Change("lookup_key", ",".join(key_digests(secrets, "publickey123"))),
        Change("key", "A" * 22),  # keyfront's own key: cached under its key id
        Change("key", "op-1"),
        Change("customer", "cust-9"),
    ]
    with pytest.raises(Invalid):
        invalidation_changes(secrets)
    with pytest.raises(Invalid):
        invalidation_changes(secrets, key_ids=["k"] * (MAX_TARGETS + 1))


# --- LookupCache against a real HTTP server (the e2e tests drive keyfront itself) ----------


class FakeKeyApi:
    """An aiohttp key API on a socket: answers per key, counting calls."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, dict[str, Any], float]] = {}
        self.calls: dict[str, int] = {}

    async def handle(self, request: web.Request) -> web.Response:
        key = (await request.json())["key"]
        self.calls[key] = self.calls.get(key, 0) + 1
        status, body, delay = self.answers.get(key, (404, {}, 0.0))
        await asyncio.sleep(delay)
        return web.json_response(body, status=status)


async def lookup_cache(aiohttp_server: Any, **settings: Any) -> tuple[LookupCache, FakeKeyApi]:
    api = FakeKeyApi()
    app = web.Application()
    app.router.add_post("/lookup", api.handle)
    server = await aiohttp_server(app)
    config = LookupConfig(url=str(server.make_url("/lookup")), **settings)
    cache = LookupCache(config, KeyApi(config), pattern=DEFAULT_EXTERNAL_PATTERN, prefix="pk",
                        secrets={1: "first-secret-0123456789"}, defaults=KeyDefaults())  # fmt: skip
    await cache.open()
    return cache, api


async def test_a_change_during_a_lookup_keeps_its_answer_out_of_the_cache(
    aiohttp_server: Any,
) -> None:
    cache, api = await lookup_cache(aiohttp_server, timeout=2.0)
    try:
        key = "publickey123"
        api.answers[key] = (200, {"key_id": "op-1", "customer_id": "c"}, 0.2)
        first = asyncio.create_task(cache.resolve(key, "10.0.0.1"))
        await asyncio.sleep(0.05)  # the lookup is in flight
        api.answers[key] = (200, {"key_id": "op-1", "customer_id": "c", "status": "revoked"}, 0)
        cache.apply(Change("key", "op-1"))  # the operator revoked it and invalidated it
        after = await cache.resolve(key, "10.0.0.1")  # a new lookup, not the old one's answer
        assert after.record is not None and after.record.status == "revoked"
        assert (await first).record.status == "active"  # type: ignore[union-attr]
        assert api.calls[key] == 2
        hit = cache.hit(key)
        assert hit is not None and hit.record is not None and hit.record.status == "revoked"
    finally:
        await cache.close()


async def test_after_missed_changes_answers_ask_again_but_survive_a_failing_api(
    aiohttp_server: Any,
) -> None:
    cache, api = await lookup_cache(aiohttp_server, timeout=0.5)
    try:
        key = "publickey123"
        api.answers[key] = (200, {"key_id": "op-1", "customer_id": "c"}, 0)
        await cache.resolve(key, "10.0.0.1")
        assert cache.hit(key) is not None
        cache.apply(Change("all"))  # the change feed had a gap
        assert cache.hit(key) is None  # no longer used without asking
        api.answers[key] = (500, {}, 0)
        still = await cache.resolve(key, "10.0.0.1")  # asked, failed: the answer held
        assert still.record is not None and api.calls[key] == 2
        assert cache.hit(key) is not None  # and used without asking for RETRY_PAUSE
        cache.apply(Change("lookup_key", ",".join(key_digests({1: "first-secret-0123456789"},
                                                              key))))  # fmt: skip
        assert cache.hit(key) is None and len(cache) == 0
    finally:
        await cache.close()
