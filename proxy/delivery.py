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
rule").

This module is the one owner of the response (issue 14 item 6): the cache
(cache/serve.py) and the origins return what to send (status, headers, and the body
as bytes, an open file, or chunks), and only the functions here write it to the
socket and set the request's X-Cache and byte count on its Exchange.

A route's variant parameters (`variant_params`) go into the cache key and the origin
request alike; a route without them never looks at the query.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import os
import select
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Literal

from aiohttp import web

from .cache import Cache, CacheEntry, Fill, FillBroken, FillOutcome, Freshness
from .cache.entry import cache_key, variant_query
from .cache.files import DiskStore
from .cache.serve import entry_body, fill_chunks, plan, rest_from_origin
from .compression import (
    add_vary,
    folder_coding,
    folder_representation,
    representation,
    sent_coded,
    varies,
)
from .conditional import ByteRange, if_range_holds, preconditions_hold, validators_of
from .config import Route
from .errors import NotFound, OriginError, OriginTimeout, Refusal
from .exchange import SERVER, Exchange, Target
from .listener import unsent
from .origin import Origin, OriginRequest, OriginResponse
from .wire import SentResponse, wire_head, wire_response
from .xcache import XCache

CHUNK = 128 * 1024  # what a slow client of a large cached body is sent per write
# Over TLS a large cached body cannot go by sendfile (`_send_now`): it is read and
# written through the TLS transport, which encrypts it into its memory BIO and copies
# that to the socket, in pieces of this size. Server CPU per 1 MB hit over TLS
# (`bench.run --only tls --tls-read-sizes`, interleaved rounds, c64 / c8): 16 KiB
# 1004 / 981 µs, 32 KiB 884 / 855, 64 KiB 994 / 945, 128 KiB 1023 / 1072, 256 KiB
# 1012 / 1062, 512 KiB 991 / 969, 1 MiB (the whole body in one write) 1015 / 1031,
# nginx over TLS 680 / 647; a second run: 32 KiB 900 / 939, 128 KiB 1045 / 1092,
# nginx 713 / 683. A piece that stays in the CPU cache through pread,
# encryption and the copy out wins; smaller ones pay Python's per-write cost more
# often. It also bounds what a connection holds: the piece, plus the transport's
# buffers (uvloop: 512 KiB of ciphertext before writing pauses, 64 KiB on the socket).
TLS_CHUNK = 32 * 1024

log = logging.getLogger("keyfront")
# XCache.HIT, looked up once for the hot path: an enum member read from its class
# costs ~75 ns on CPython 3.11, a module global ~10 ns.
_HIT = XCache.HIT


async def deliver(
    cache: Cache | None, exchange: Exchange, target: Target, object_path: str
) -> web.StreamResponse:
    """The response for a request that passed every check; see the module docstring.
    `cache` is None when this process has none: every request goes to the origin."""
    route = target.route
    query = exchange.request.query if route.variant_params else None
    variant = variant_query(route.variant_params, query) if query else ""
    if cache is None or target.local:
        # No disk cache, or a folder (issue 14 item 3): edits show at once. X-Cache
        # says BYPASS: the answer is the origin's as it is now, whatever memory the
        # file origin keeps of small files (validated by stat on every request). Its
        # compressed representations are cached, keyed by the file's identity (HIT).
        if cache is not None and cache.encoded.varies_by_name(route, object_path):
            return await _from_folder(cache, exchange, target, object_path)
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
            exchange.cache = _HIT
            return await _answer_entry(exchange, target.route, entry, cache)
        if freshness is Freshness.STALE_SERVE:
            _fill(cache, target, key, object_path, variant=variant, stale=entry)  # a refresh
            exchange.cache = XCache.STALE
            return await _answer_entry(exchange, target.route, entry, cache)
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
            return await _answer_entry(exchange, target.route, stale, cache)
        if outcome is FillOutcome.STORED:
            exchange.cache = XCache.MISS
            return await _answer_fill(exchange, target.route, fill, cache, target.origin)
        if outcome is FillOutcome.ABSENT:
            exchange.cache = XCache.MISS
            raise NotFound()
        if outcome in (FillOutcome.PASS, FillOutcome.UNCACHED):
            exchange.cache = XCache.BYPASS
            return await pass_through(exchange, target, object_path, variant)
        exchange.cache = XCache.REVALIDATED if outcome is FillOutcome.REFRESHED else XCache.HIT
        assert fill.entry is not None
        return await _answer_entry(exchange, target.route, fill.entry, cache)
    finally:
        fill.leave()


async def _from_folder(
    cache: Cache, exchange: Exchange, target: Target, object_path: str
) -> web.StreamResponse:
    """A folder file of a compressible type: its cached representation when the client
    takes one and it is made for the file as it is now (compression.py), else the file
    itself; either way with `Vary: Accept-Encoding`."""
    encoded = cache.encoded
    coding = folder_coding(encoded, exchange)
    found = None
    if coding is not None:
        found = await folder_representation(encoded, target, object_path, coding)
    if found is not None:
        rep, size = found
        cache.store.touch(rep, time.time())
        exchange.cache = _HIT
        out = base_headers(target.route, exchange)
        add_vary(out)
        response = await _answer_planned(exchange, rep, cache.store, out)
        if response is not None:
            sent_coded(encoded, exchange, size, rep)
            return response
        cache.forget(rep.key)  # its file vanished: the file itself, and a new one is made
        exchange.cache = XCache.BYPASS
    return await pass_through(exchange, target, object_path, vary=True)


# --- pass-through: straight from the origin, uncached ----------------------------------


async def pass_through(
    exchange: Exchange, target: Target, object_path: str, variant: str = "", *, vary: bool = False
) -> web.StreamResponse:
    """Fetch from the origin with the client's Range and conditionals and send it on:
    the body in one write when the origin has it in memory, else streamed chunk by
    chunk with bounded memory. `vary`: the object has compressed representations (a
    folder file's), so its answers say `Vary: Accept-Encoding`."""
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
        if vary:
            add_vary(out)
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
    if not preconditions_hold(asked.conditionals(), validators):
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
    response = web.StreamResponse(status=fetched.status, headers=headers)
    await response.prepare(exchange.request)
    try:
        await _write_all(exchange, response, fetched.stream)
    except (OriginError, OriginTimeout, ConnectionError):
        # A client cut for not reading (proxy/listener.py) lands here too; the
        # caller's `finally` then closes the origin response: its connection is freed.
        return _abort(exchange, response)
    await response.write_eof()
    return response


# --- writing: the one place bytes go out, and the Exchange learns what went ------------


def base_headers(route: Route, exchange: Exchange) -> dict[str, str]:
    """The headers every delivered response carries (SPEC section 1). A plain dict:
    aiohttp copies it into its own CIMultiDict once; every name here is canonical."""
    out = {
        "Server": SERVER,
        "Accept-Ranges": "bytes",
        "Cache-Control": route.cache_control,
        "X-Cache": exchange.cache._value_,  # the plain str: see xcache.py
        "X-Request-Id": exchange.request_id,
    }
    if exchange.headers:
        out.update(exchange.headers)
    return out


def _answer_entry(
    exchange: Exchange, route: Route, entry: CacheEntry, cache: Cache
) -> Coroutine[Any, Any, web.StreamResponse | None]:
    """The answer from a published entry, or from its compressed representation
    (compression.py), to be awaited; None if its file vanished or was replaced by
    another process meanwhile (the caller looks again). Not a coroutine itself, so that
    a hit still runs one coroutine, as before compression; an object of a type never
    compressed pays one attribute read (`varies` is False)."""
    out = base_headers(route, exchange)
    if entry.varies is not False:
        rep = representation(cache.encoded, exchange.request.headers, route, entry, out)
        if rep is not None:
            return _answer_coded(exchange, entry, rep, cache, out)
    return _answer_planned(exchange, entry, cache.store, out)


async def _answer_coded(
    exchange: Exchange, entry: CacheEntry, rep: CacheEntry, cache: Cache, out: dict[str, str]
) -> web.StreamResponse | None:
    cache.store.touch(rep, time.time())  # for the LRU sweep and the memory tier
    response = await _answer_planned(exchange, rep, cache.store, out)
    if response is None:  # evicted or replaced: found again, or made again
        cache.forget(rep.key)
        if entry.encoded is not None:
            entry.encoded.clear()
        return None
    sent_coded(cache.encoded, exchange, entry.size, rep)
    return response


async def _answer_planned(
    exchange: Exchange, entry: CacheEntry, files: DiskStore, out: dict[str, str]
) -> web.StreamResponse | None:
    """`entry` as conditional.plan decides, `out` its headers so far. A small body goes
    out with its head in one write; a large one by sendfile."""
    status, part = plan(entry, exchange.request.headers, out)
    if part is None or exchange.request.method == "HEAD":
        return web.Response(status=status, headers=out)
    body = entry_body(entry, files, part)
    if body is None:
        return None
    if isinstance(body, bytes):
        exchange.sent = len(body)
        wire = wire_response(exchange.request, status, out, body)
        return wire or web.Response(status=status, headers=out, body=body)
    return await _sendfile(exchange, status, out, body, at=entry.body_offset, part=part)


async def _answer_fill(
    exchange: Exchange, route: Route, fill: Fill, cache: Cache, origin: Origin
) -> web.StreamResponse:
    """A MISS: the client's bytes from the fill's temp file as it grows. The caller
    has joined the fill, so its file stays open until the caller leaves. If the cache
    cannot write the object (disk full), the rest comes from the origin. Always the
    identity: representations are made from the stored object (compression.py)."""
    assert fill.entry is not None
    out = base_headers(route, exchange)
    if varies(cache.encoded, route, fill.entry):
        add_vary(out)
    status, part = plan(fill.entry, exchange.request.headers, out)
    if part is None or exchange.request.method == "HEAD":
        return web.Response(status=status, headers=out)
    response = web.StreamResponse(status=status, headers=out)
    await response.prepare(exchange.request)
    try:
        await _write_all(exchange, response, fill_chunks(fill, part))
    except FillBroken as broken:
        if broken.by_origin:
            return _abort(exchange, response)
        try:
            rest = rest_from_origin(origin, fill, part.start + exchange.sent, part.end)
            async with contextlib.aclosing(rest):  # frees the origin whatever happens
                await _write_all(exchange, response, rest)
        except (Refusal, ConnectionError):
            return _abort(exchange, response)
    except ConnectionError:
        return _abort(exchange, response)  # the client left; the fill goes on
    if exchange.sent != part.length:
        return _abort(exchange, response)
    await response.write_eof()
    return response


async def _write_all(
    exchange: Exchange, response: web.StreamResponse, chunks: AsyncIterator[bytes]
) -> None:
    async for chunk in chunks:
        await response.write(chunk)
        exchange.sent += len(chunk)


def _abort(exchange: Exchange, response: web.StreamResponse) -> web.StreamResponse:
    """STYLE streaming rule: headers are out, so a failure cuts the connection and the
    client sees a truncated transfer, never a short 'complete' one. What a client cut
    for not reading never got is not counted as sent."""
    exchange.sent = max(0, exchange.sent - unsent(exchange.request))
    transport = exchange.request.transport
    if transport is not None:
        transport.abort()
    return response


async def _sendfile(
    exchange: Exchange,
    status: int,
    headers: dict[str, str],
    file: io.FileIO,
    *,
    at: int,
    part: ByteRange,
) -> web.StreamResponse:
    """Zero-copy from the file (whose body starts at `at`) to the socket, after the
    head, written as bytes (wire.py) where it can be: first one `os.sendfile` straight
    away, then `_send_rest` for whatever the socket did not take. Never
    `web.FileResponse`: ~300 µs of executor hops a request, and it would replace the
    origin's ETag with its own. `exchange.sent` is what the kernel took, also when the
    client leaves midway."""
    request = exchange.request
    offset = at + part.start
    head = wire_head(request, status, headers, part.length)
    response = (
        web.StreamResponse(status=status, headers=headers) if head is None else SentResponse(status)
    )
    try:
        transport = request.transport
        if head is None:
            await response.prepare(request)
        elif transport is not None and not transport.is_closing():
            transport.write(head)
        if transport is None or transport.is_closing():
            return response
        try:
            exchange.sent = _send_now(transport, file, offset, part.length)
            if exchange.sent < part.length:
                await _send_rest(exchange, transport, file, offset, part.length)
        except (OSError, RuntimeError) as exc:
            # The head is out: whatever failed (the client left, or the file or the
            # socket did: EBADF, EIO), only an abort is left (STYLE streaming rule); an
            # error page now would be a second status line in a keep-alive stream.
            if not isinstance(exc, ConnectionError | RuntimeError):
                log.warning("%s: sending a cached body failed: %s", exchange.request_id, exc)
            return _abort(exchange, response)
        exchange.sent = part.length
    finally:
        file.close()
    await response.write_eof()
    return response


def _send_now(transport: asyncio.Transport, file: io.FileIO, offset: int, count: int) -> int:
    """One non-blocking `os.sendfile` from the loop thread, as `loop.sendfile` itself
    makes, when nothing is queued ahead of it (the headers went out whole): the bytes
    the socket took. On loopback it takes a whole 1 MB hit at once; `loop.sendfile`
    would then still pause reading, wait a loop turn for writability and seek the
    file: 4 epoll_ctl calls and a future a request (strace). Server CPU per 1 MB hit,
    interleaved wrk runs at 8 and 64 connections: 24% less (187 -> 142 µs), and 30%
    less with the head written as bytes too."""
    sock = transport.get_extra_info("socket")
    if sock is None or transport.get_write_buffer_size():
        return 0
    if transport.get_extra_info("sslcontext") is not None:
        # Over TLS (SPEC section 14) the socket under the transport carries records:
        # bytes written to it straight would go out as plaintext in the middle of the
        # encrypted stream. `_send_rest` writes through the transport, which encrypts.
        return 0
    try:
        return os.sendfile(sock.fileno(), file.fileno(), offset, count)
    except (BlockingIOError, InterruptedError):
        return 0


async def _send_rest(
    exchange: Exchange, transport: asyncio.Transport, file: io.FileIO, offset: int, length: int
) -> None:
    """The bytes from `offset + exchange.sent` on, to a socket that did not take them
    at once, in CHUNK reads written as the client drains them. Not `loop.sendfile`
    (which uvloop lacks anyway): it waits on the socket with no deadline and no way to
    learn how far it got, while a write and `drain()` stay under the listener's send
    deadline (proxy/listener.py), which cuts a client that stops reading (issue 12
    item 5). Only a client slower than its socket buffers comes here, and every large
    body over TLS (`_send_now` sends nothing there)."""
    writer = exchange.request.writer
    secure = transport.get_extra_info("sslcontext") is not None
    chunk = TLS_CHUNK if secure else CHUNK
    left = _client_shut(transport) if secure else _still_there
    while exchange.sent < length:
        data = os.pread(file.fileno(), min(chunk, length - exchange.sent), offset + exchange.sent)
        if not data or transport.is_closing() or left():
            raise ConnectionResetError("the file shrank or the client left")
        transport.write(data)
        exchange.sent += len(data)
        await writer.drain()


def _still_there() -> bool:
    return False


def _client_shut(transport: asyncio.Transport) -> Callable[[], bool]:
    """Whether the client has shut its side of the connection (a FIN: a cancelled
    download) or reset it, as a poll of the socket for POLLRDHUP (POLLHUP, POLLERR and
    POLLNVAL come unasked): one system call, ~1 µs, a TLS_CHUNK. Over TLS this is the
    one way to learn it: asyncio's and uvloop's TLS transports then drop every write
    without a word, never pause, and keep `is_closing()` False until the TCP
    connection is gone, so the loop above would read the rest of the file without
    yielding and count it as sent (a 24 MiB HIT "sent" whole in 40 ms to a client that
    left after 2 MiB). Plain TCP closes itself on a FIN (aiohttp's `eof_received`)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return _still_there
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLRDHUP)
    return lambda: bool(poller.poll(0))
