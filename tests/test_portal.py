"""The customer page's parts that need no browser (proxy/portal): sealed sessions, their
limits and CSRF tokens, the Origin check, the bound on failed sign-ins, and the SVG
charts' escaping. The page itself is driven in Chromium by tests/test_e2e_portal.py."""

from __future__ import annotations

import base64
import json

from proxy.portal.charts import chart
from proxy.portal.key_page import referrers_table
from proxy.portal.pages import e
from proxy.portal.session import (
    ABSOLUTE,
    IDLE,
    MAX_COOKIE,
    RENEW_AFTER,
    Sealer,
    SignInLimit,
    same_origin,
)

NOW = 1_800_000_000.0


def test_a_sealed_session_opens_only_with_the_same_admin_token_and_unaltered() -> None:
    sealer = Sealer("operator-token")
    session = sealer.new("acme", "tok123", NOW)
    cookie = sealer.seal(session)
    assert sealer.open(cookie, NOW + 1) == session
    assert Sealer("another-token").open(cookie, NOW + 1) is None  # admin.token changed
    body, _, mac = cookie.partition(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["c"] = "globex"  # another customer, with the old MAC
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    assert sealer.open(f"{forged}.{mac}", NOW + 1) is None
    for junk in ("", ".", "x" * (MAX_COOKIE + 1), "é.é", cookie + "x"):
        assert sealer.open(junk, NOW) is None


def test_a_session_ends_when_idle_or_old_and_is_renewed_while_used() -> None:
    sealer = Sealer("operator-token")
    session = sealer.new(None, None, NOW)
    assert sealer.open(sealer.seal(session), NOW + IDLE + 1) is None
    assert sealer.renewed(session, NOW + RENEW_AFTER - 1) is None  # no Set-Cookie yet
    at, renewed = NOW, session
    while at - NOW <= ABSOLUTE:  # used every 20 minutes: renewed, until the absolute limit
        at += 20 * 60
        fresh = sealer.renewed(renewed, at)
        assert fresh is not None
        opened = sealer.open(sealer.seal(fresh), at)
        if at - NOW > ABSOLUTE:
            assert opened is None
            break
        assert opened == fresh
        renewed = fresh
    else:
        raise AssertionError("the absolute limit never ended the session")


def test_the_csrf_token_belongs_to_one_session() -> None:
    sealer = Sealer("operator-token")
    one, two = sealer.new("acme", "t1", NOW), sealer.new("acme", "t1", NOW)
    assert sealer.csrf_ok(one, sealer.csrf_token(one))
    assert not sealer.csrf_ok(one, sealer.csrf_token(two))
    assert not sealer.csrf_ok(one, None) and not sealer.csrf_ok(one, "")


def test_the_origin_must_be_the_pages_own() -> None:
    assert same_origin("http://127.0.0.1:9080", "127.0.0.1:9080")
    assert same_origin("https://admin.example.com", "admin.example.com")
    assert same_origin(None, "127.0.0.1:9080")  # not a browser: the CSRF token decides
    for origin in ("http://127.0.0.1:9081", "null", "https://evil.example", "ftp://127.0.0.1:9080"):
        assert not same_origin(origin, "127.0.0.1:9080")


def test_failed_sign_ins_are_bounded_per_address_in_a_bounded_table() -> None:
    limit = SignInLimit()
    for _ in range(SignInLimit.BURST):
        assert limit.allow("198.51.100.7", NOW)
        limit.failed("198.51.100.7", NOW)
    assert not limit.allow("198.51.100.7", NOW)
    assert limit.allow("198.51.100.8", NOW)  # another address is not held up
    assert limit.allow("198.51.100.7", NOW + SignInLimit.REFILL)  # one more after REFILL s
    for n in range(SignInLimit.MAX_CLIENTS * 2):
        limit.failed(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", NOW)
    assert len(limit._clients) <= SignInLimit.MAX_CLIENTS


def test_charts_and_tables_escape_what_clients_chose() -> None:
    hostile = '<script>alert("x")</script>'
    svg = chart(hostile, [hostile], {hostile: [3.0], "b": [1.0]})
    assert "<script>" not in svg and e(hostile) in svg
    assert svg.count('data-value="') == 2
    table = referrers_table([{"host": hostile, "requests": 2, "bytes": 0,
                              "code": "referrer_not_allowed"}], "k", "c", [])  # fmt: skip
    assert "<script>" not in table and 'value="&lt;script&gt;' in table
