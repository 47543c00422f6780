"""Delivery: the cache, else the origin (SPEC sections 5 and 6). The pipeline calls
`deliver` once every check has passed; it reads top to bottom:

    too big to cache (remembered)  -> pass through                          BYPASS
    fresh entry                    -> answer from the cache                 HIT
    stale, within stale_while_revalidate -> answer, refresh behind          STALE
    otherwise, through the object's one coalesced fill (cache/fill.py):
      new body being stored       -> answer from the fill as it grows      MISS
      origin 304                  -> answer from the refreshed entry       REVALIDATED
      another process stored it   -> answer from the cache                 HIT
      origin 404                  -> 404, cached for negative_ttl          MISS
      origin fails                -> stale entry within stale_if_error     STALE
                                     else 502 / 504
      over max_object_size, or the cache cannot write -> pass through      BYPASS

A `file://` route never uses the disk cache (SPEC section 5): every request is passed
through to the folder (BYPASS), so an edit shows at once.

Pass-through forwards the client's Range and conditionals, and streams with bounded
memory. After the headers are out, a failure aborts the connection (STYLE "streaming
rule"). A route's variant parameters (`variant_params`) go into the cache key and the
origin request alike; a route without them never looks at the query.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Literal

from aiohttp import web

from .cache import Cache, CacheEntry, Fill, FillOutcome, Freshness
from .cache.entry import cache_key, variant_query
from .cache.serve import base_headers, from_entry, from_fill
from .conditional import if_range_holds, preconditions_hold, validators_of
from .errors import NotFound, OriginError, OriginTimeout
from .exchange import Exchange, Target
from .listener import unsent
from .origin import Origin, OriginRequest, OriginResponse
from .xcache import XCache


async def deliver(
    cache: Cache | None, exchange: Exchange, target: Target, object_path: str
) -> web.StreamResponse:
    """The response for a request that passed every check; see the module docstring.
    `cache` is None when this process has none: every request goes to the origin."""
    route = target.route
    query = exchange.request.query if route.variant_params else None
    variant = variant_query(route.variant_params, query) if query else ""
    if cache is None or target.origin.local:
        # No disk cache, or a folder (issue 14 item 3): edits show at once. X-Cache
        # says BYPASS: the answer is the origin's as it is now, whatever memory the
        # file origin keeps of small files (validated by stat on every request).
        return await pass_through(exchange, target, object_path, variant)
    key = cache_key(target.key_space, object_path, variant)
    if not cache.bypassed(key):
        for _ in range(2):  # again if the entry's file vanished (evicted, replaced)
            response = await _from_cache(cache, exchange, target, key, object_path, variant=variant)
            if response is not None:
                return response
            cache.forget(key)
    exchange.cache = XCache.BYPASS
    return await pass_through(exchange, target, object_path, variant)


async def _from_cache(
    cache: Cache, exchange: Exchange, target: Target, key: str, object_path: str, *, variant: str
) -> web.StreamResponse | None:
    entry = cache.lookup(key)
    if entry is not None:
        now = time.time()
        freshness = cache.freshness(entry, now)
        if freshness is Freshness.FRESH:
            cache.store.touch(entry, now)
            exchange.cache = XCache.HIT
            return await from_entry(exchange, target.route, entry, cache.store)
        if freshness is Freshness.STALE_SERVE:
            _fill(cache, target, key, object_path, variant=variant, stale=entry)  # a refresh
            exchange.cache = XCache.STALE
            return await from_entry(exchange, target.route, entry, cache.store)
    return await _through_fill(
        cache, exchange, target, key, object_path, variant=variant, stale=entry
    )


def _fill(
    cache: Cache, target: Target, key: str, object_path: str, *, variant: str,
    stale: CacheEntry | None,
) -> Fill:  # fmt: skip
    """The object's one fill (cache/fill.py), started here if none is under way."""
    respect = target.route.origin_cache_control == "respect"
    request = OriginRequest(object_path, query=variant)
    return cache.fill(key, target.origin, request, stale, respect=respect)


async def _through_fill(
    cache: Cache,
    exchange: Exchange,
    target: Target,
    key: str,
    object_path: str,
    *,
    variant: str,
    stale: CacheEntry | None,
) -> web.StreamResponse | None:
    fill = _fill(cache, target, key, object_path, variant=variant, stale=stale)
    fill.join()
    try:
        try:
            outcome = await asyncio.shield(fill.started)
        except (OriginError, OriginTimeout):
            if stale is None or not cache.usable_on_error(stale, time.time()):
                raise
            exchange.cache = XCache.STALE  # SPEC 5 stale_if_error
            return await from_entry(exchange, target.route, stale, cache.store)
        if outcome is FillOutcome.STORED:
            exchange.cache = XCache.MISS
            return await from_fill(exchange, target.route, fill, target.origin)
        if outcome is FillOutcome.ABSENT:
            exchange.cache = XCache.MISS
            raise NotFound()
        if outcome in (FillOutcome.PASS, FillOutcome.UNCACHED):
            exchange.cache = XCache.BYPASS
            return await pass_through(exchange, target, object_path, variant)
        exchange.cache = XCache.REVALIDATED if outcome is FillOutcome.REFRESHED else XCache.HIT
        assert fill.entry is not None
        return await from_entry(exchange, target.route, fill.entry, cache.store)
    finally:
        fill.leave()


# --- pass-through: straight from the origin, uncached ----------------------------------


async def pass_through(
    exchange: Exchange, target: Target, object_path: str, variant: str = ""
) -> web.StreamResponse:
    """Fetch from the origin with the client's Range and conditionals and send it on:
    the body in one write when the origin has it in memory, else streamed chunk by
    chunk with bounded memory."""
    request = exchange.request
    headers = request.headers
    method: Literal["GET", "HEAD"] = "HEAD" if request.method == "HEAD" else "GET"
    asked = OriginRequest(
        object_path,
        method,
        headers.get("Range"),
        headers.get("If-None-Match"),
        headers.get("If-Modified-Since"),
        variant,
        headers.get("If-Range"),
        headers.get("If-Match"),
        headers.get("If-Unmodified-Since"),
    )
    fetched = await _fetch_judged(target.origin, asked)
    try:
        out = base_headers(target.route, exchange)
        out.update(fetched.headers)
        if fetched.stream is None:
            exchange.sent = len(fetched.data) if fetched.data else 0
            return web.Response(status=fetched.status, headers=out, body=fetched.data)
        return await _stream(exchange, fetched, out)
    finally:
        await fetched.close()


async def _fetch_judged(origin: Origin, asked: OriginRequest) -> OriginResponse:
    """The origin's answer to `asked`, judged by keyfront as a cache hit would be
    (conditional.py), whatever the origin made of the headers: a failed If-Match or
    If-Unmodified-Since becomes 412, and a 206 of another version than the client's
    If-Range names is fetched again whole (issue 14 item 1: an origin that ignores
    If-Range must not splice two versions into one download)."""
    fetched = await origin.fetch(asked)
    if fetched.status not in (200, 206) or not _judged(asked):
        return fetched
    validators = validators_of(0, fetched.headers)
    if not preconditions_hold(asked, validators):
        await fetched.close()
        kept = {k: v for k, v in fetched.headers.items() if k in ("ETag", "Last-Modified")}
        return OriginResponse(412, kept)
    if_range = asked.if_range
    if fetched.status == 206 and if_range is not None and not if_range_holds(if_range, validators):
        await fetched.close()
        return await origin.fetch(dataclasses.replace(asked, range=None, if_range=None))
    return fetched


def _judged(asked: OriginRequest) -> bool:
    return (
        asked.if_range is not None
        or asked.if_match is not None
        or (asked.if_unmodified_since is not None)
    )


async def _stream(
    exchange: Exchange, fetched: OriginResponse, headers: dict[str, str]
) -> web.StreamResponse:
    """STYLE streaming rule: once headers are sent, an origin failure aborts the
    connection, so the client sees a truncated transfer, never a short 'complete' one.
    `exchange.sent` counts what was handed to the transport, also when cut short."""
    assert fetched.stream is not None
    request = exchange.request
    response = web.StreamResponse(status=fetched.status, headers=headers)
    await response.prepare(request)
    try:
        async for chunk in fetched.stream:
            await response.write(chunk)
            exchange.sent += len(chunk)
    except (OriginError, OriginTimeout, ConnectionError):
        # A client cut for not reading (proxy/listener.py) lands here too; the
        # caller's `finally` then closes the origin response: its connection is freed.
        exchange.sent = max(0, exchange.sent - unsent(request))
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response
