"""Origin freshness for routes that respect Cache-Control (proxy/cache/freshness.py)."""

from __future__ import annotations

import calendar

import pytest

from proxy.cache.freshness import directives, lifetime, storable

NOW = 1_800_000_000.0


def test_directives_are_parsed_case_blind_with_quoted_values() -> None:
    said = directives('Max-Age=60, no-cache="Set-Cookie" , public,')
    assert said == {"max-age": "60", "no-cache": "Set-Cookie", "public": ""}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),  # nothing said: the cache's ttl
        ({"Cache-Control": "public"}, None),
        ({"Cache-Control": "max-age=60"}, 60.0),
        ({"Cache-Control": "max-age=60, s-maxage=5"}, 5.0),  # a shared cache takes s-maxage
        ({"Cache-Control": "no-cache, max-age=60"}, 0.0),
        ({"Cache-Control": "max-age=soon"}, 0.0),  # invalid: stale (RFC 9111 4.2.1)
        (
            {"Expires": "Thu, 15 Jan 2027 08:00:00 GMT", "Date": "Thu, 15 Jan 2027 07:00:00 GMT"},
            3600.0,
        ),
        ({"Expires": "0"}, 0.0),  # an unparseable Expires is already expired
        ({"Cache-Control": "max-age=10", "Expires": "Thu, 15 Jan 2027 08:00:00 GMT"}, 10.0),
    ],
)
def test_lifetime(headers: dict[str, str], expected: float | None) -> None:
    assert lifetime(headers, NOW) == expected


def test_expires_without_date_counts_from_now() -> None:
    expires = calendar.timegm((2027, 1, 15, 8, 0, 0))
    assert lifetime({"Expires": "Fri, 15 Jan 2027 08:00:00 GMT"}, NOW) == expires - NOW
    assert lifetime({"Expires": "Thu, 01 Jan 2026 00:00:00 GMT"}, NOW) == 0.0  # past


@pytest.mark.parametrize(
    ("cache_control", "expected"),
    [("", True), ("max-age=60", True), ("no-store", False), ("private, max-age=9", False)],
)
def test_storable(cache_control: str, expected: bool) -> None:
    assert storable({"Cache-Control": cache_control}) is expected
