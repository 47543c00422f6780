"""How long an origin's answer stays fresh, from its own headers, for a route with
`origin_cache_control: respect` (SPEC section 5), read as a shared cache reads them
(RFC 9111 sections 3 and 4.2.1):

    no-store, private       not stored: the request passes through
    no-cache                stored, but stale at once: every hit revalidates
    s-maxage, else max-age  that many seconds
    Expires (minus Date)    until then; an unparseable Expires is already stale
    none of these           None: the cache's own `ttl` applies
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from ..conditional import parse_http_date


def directives(cache_control: str) -> dict[str, str]:
    """`max-age=60, no-cache` -> {"max-age": "60", "no-cache": ""}, names lowercased."""
    found: dict[str, str] = {}
    for part in cache_control.split(","):
        name, _, value = part.strip().partition("=")
        if name:
            found.setdefault(name.strip().lower(), value.strip().strip('"'))
    return found


# RFC 9111 section 1.2.2: a delta-seconds too large to represent is taken as 2^31.
_MAX_DELTA = 2**31


def _delta_seconds(value: str) -> float:
    """max-age's value; a bad one makes the answer stale (RFC 9111 section 4.2.1)."""
    if not value.isascii() or not value.isdigit():
        return 0.0
    return float(_MAX_DELTA if len(value) > 10 else min(int(value), _MAX_DELTA))


def storable(headers: Mapping[str, str] | None) -> bool:
    said = directives((headers or {}).get("Cache-Control", ""))
    return "no-store" not in said and "private" not in said


def lifetime(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds of freshness the origin grants; None if it says nothing about it."""
    headers = headers or {}
    said = directives(headers.get("Cache-Control", ""))
    if "no-cache" in said:
        return 0.0
    for name in ("s-maxage", "max-age"):
        if name in said:
            value = said[name]
            return _delta_seconds(value)
    expires = headers.get("Expires")
    if expires is None:
        return None
    until = parse_http_date(expires)
    if until is None:
        return 0.0
    date = parse_http_date(headers.get("Date", ""))
    base = date if date is not None else (time.time() if now is None else now)
    return max(0.0, until - base)
