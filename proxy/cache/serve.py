"""Answering a request from the cache: from a published entry (HIT, STALE,
REVALIDATED) or from a fill as it grows (MISS).

Preconditions, conditionals, then Range with If-Range are judged on the entry's
validators by the one planner every path uses (conditional.plan): 412, 304 with the
origin's ETag and Last-Modified, 206 for one range, 416, or 200.

Body paths, fastest first (10 KB hits measured with aiohttp on one core: ~11,200 req/s
with the body in memory, ~5,800 reading the file in the loop thread; 1 MB hits: 481 µs
of server CPU with loop.sendfile against 673 µs with web.FileResponse):
- a small body held in memory: one `web.Response`, headers and body in one write;
- a small body on disk: one pread in the loop thread (~6 µs page-cached), then the same;
- a large body: its head as bytes (wire.py), then one `os.sendfile` in the loop thread,
  and `loop.sendfile` (or, on uvloop, chunked reads) only for what the socket did not
  take. Never `web.FileResponse`: ~300 µs of executor hops a request, and it would
  replace the origin's ETag with its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import os

from aiohttp import web

from ..conditional import ByteRange, HeadersAsked, unsatisfied_range
from ..conditional import plan as conditional_plan
from ..config import Route
from ..errors import NotFound, Refusal
from ..exchange import SERVER, Exchange
from ..listener import unsent
from ..origin import Origin, OriginResponse
from ..wire import SentResponse, wire_head, wire_response
from .entry import CacheEntry
from .files import SMALL_OBJECT, DiskStore
from .fill import Fill, body_chunks
from .fill_outcome import FillBroken

CHUNK = 128 * 1024  # what a reader of a growing fill sends per write
_VALIDATORS = ("ETag", "Last-Modified")

log = logging.getLogger("keyfront")


def base_headers(route: Route, exchange: Exchange) -> dict[str, str]:
    """The headers every delivered response carries (SPEC section 1). A plain dict:
    aiohttp copies it into its own CIMultiDict once; every name here is canonical."""
    out = {
        "Server": SERVER,
        "Accept-Ranges": "bytes",
        "Cache-Control": route.cache_control,
        "X-Cache": exchange.cache,
        "X-Request-Id": exchange.request_id,
    }
    if exchange.headers:
        out.update(exchange.headers)
    return out


def plan(
    entry: CacheEntry, exchange: Exchange, route: Route
) -> tuple[int, dict[str, str], ByteRange | None]:
    """Status, headers, and the body bytes a GET gets (None: no body), as
    conditional.plan decides on the entry's validators for every path."""
    if entry.status != 200:
        raise NotFound()  # a cached 404 (negative_ttl)
    out = base_headers(route, exchange)
    status, part = conditional_plan(HeadersAsked(exchange.request.headers), entry.validators)
    if part is None:
        if status == 416:
            out["Content-Range"] = unsatisfied_range(entry.size)
        else:  # 304, 412: the validators only (RFC 9110 15.4.5)
            out.update((k, v) for k, v in entry.headers.items() if k in _VALIDATORS)
        return status, out, None
    out.update(entry.headers)
    out["Content-Length"] = str(part.length)
    if status == 206:
        out["Content-Range"] = part.content_range(entry.size)
    return status, out, part


async def from_entry(
    exchange: Exchange, route: Route, entry: CacheEntry, store: DiskStore
) -> web.StreamResponse | None:
    """The answer from a published entry; None if its file vanished or was replaced
    by another process meanwhile (the caller looks again)."""
    status, headers, part = plan(entry, exchange, route)
    if part is None or exchange.request.method == "HEAD":
        return web.Response(status=status, headers=headers)
    body = entry.body
    if body is None and entry.size <= SMALL_OBJECT:
        body = store.read_small(entry)
        if body is None:
            return None
    if body is not None:
        if part.length != len(body):
            body = body[part.start : part.end + 1]
        exchange.sent = len(body)
        wire = wire_response(exchange.request, status, headers, body)
        return wire or web.Response(status=status, headers=headers, body=body)
    file = store.open_body(entry)
    if file is None:
        return None
    return await _sendfile(exchange, status, headers, file, at=entry.body_offset, part=part)


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
    away, then `_send_rest` for whatever the socket did not take. `exchange.sent` is
    what the kernel took, also when the client leaves midway."""
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
            exchange.sent = max(0, exchange.sent - unsent(request))
            transport.abort()
            return response
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
    item 5). Only a client slower than its socket buffers comes here."""
    writer = exchange.request.writer
    while exchange.sent < length:
        data = os.pread(file.fileno(), min(CHUNK, length - exchange.sent), offset + exchange.sent)
        if not data or transport.is_closing():
            raise ConnectionResetError("the file shrank or the client left")
        transport.write(data)
        exchange.sent += len(data)
        await writer.drain()


async def from_fill(
    exchange: Exchange, route: Route, fill: Fill, origin: Origin
) -> web.StreamResponse:
    """A MISS: the client's bytes from the fill's temp file as it grows. The caller
    has joined the fill, so its file stays open until the caller leaves."""
    assert fill.entry is not None
    entry = fill.entry
    status, headers, part = plan(entry, exchange, route)
    if part is None or exchange.request.method == "HEAD":
        return web.Response(status=status, headers=headers)
    response = web.StreamResponse(status=status, headers=headers)
    await response.prepare(exchange.request)
    try:
        position = await _copy_growing(exchange, response, fill, part)
    except FillBroken as broken:
        if broken.by_origin:
            return _abort(exchange, response)
        return await _rest_from_origin(exchange, response, origin, fill, part)
    except ConnectionError:
        return _abort(exchange, response)  # the client left; the fill goes on
    if position <= part.end:
        return _abort(exchange, response)
    await response.write_eof()
    return response


async def _copy_growing(
    exchange: Exchange, response: web.StreamResponse, fill: Fill, part: ByteRange
) -> int:
    """Send body bytes part.start..part.end as they reach the file: wake per chunk,
    pread what is there (just written: in the page cache), write, repeat."""
    assert fill.entry is not None
    offset = fill.entry.body_offset
    position, end = part.start, part.end + 1
    while position < end:
        available = await fill.readable(position)
        size = min(CHUNK, available - position, end - position)
        data = os.pread(fill.fd, size, offset + position)
        if len(data) != size:
            break
        await response.write(data)
        exchange.sent += size
        position += size
    return position


async def _rest_from_origin(
    exchange: Exchange, response: web.StreamResponse, origin: Origin, fill: Fill, part: ByteRange
) -> web.StreamResponse:
    """The cache could not write the object (disk full): fetch the bytes this client
    still lacks from the origin with a Range, as long as it is the same object."""
    assert fill.entry is not None
    start = part.start + max(0, exchange.sent)
    wanted = dataclasses.replace(fill.request, range=f"bytes={start}-{part.end}")
    try:
        fetched = await origin.fetch(wanted)
    except Refusal:
        return _abort(exchange, response)
    try:
        if fetched.status != 206 or not _same_object(fetched, fill.entry):
            return _abort(exchange, response)
        async for chunk in body_chunks(fetched):
            await response.write(chunk)
            exchange.sent += len(chunk)
    except (Refusal, ConnectionError):
        return _abort(exchange, response)
    finally:
        await fetched.close()
    if exchange.sent != part.length:
        return _abort(exchange, response)
    await response.write_eof()
    return response


def _same_object(fetched: OriginResponse, entry: CacheEntry) -> bool:
    for validator in ("ETag", "Last-Modified"):
        if validator in entry.headers:
            return fetched.headers.get(validator) == entry.headers[validator]
    return False  # nothing to tell versions apart by: do not splice


def _abort(exchange: Exchange, response: web.StreamResponse) -> web.StreamResponse:
    """STYLE streaming rule: headers are out, so a failure cuts the connection and the
    client sees a truncated transfer, never a short 'complete' one. What a client cut
    for not reading never got is not counted as sent."""
    exchange.sent = max(0, exchange.sent - unsent(exchange.request))
    transport = exchange.request.transport
    if transport is not None:
        transport.abort()
    return response
