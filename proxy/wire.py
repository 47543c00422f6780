"""Small responses written as one byte string, bypassing aiohttp's header machinery,
together with the other responses of the same loop tick (`TickWrites`).

aiohttp builds each response's headers in a CIMultiDict, then fills in defaults, checks
them, serialises them and hands the result to a StreamWriter. For a 10 KB cache hit
that work took about 15% of keyfront's CPU per request (py-spy, wrk -c64). Much of it
does nothing for us: our headers are already canonical and complete. `wire_response`
writes the status line, the headers and the body in one `transport.write` instead.

It is used only where nothing else is needed. The request must be HTTP/1.1 and
keep-alive, because aiohttp then keeps the connection open exactly as it would for its
own response. The body must be in memory and complete, with no chunking and no
compression, and the response must be one that carries a body (not HEAD, 204 or 304).
Everything else takes the ordinary path.
"""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate
from http import HTTPStatus

from aiohttp import web
from aiohttp.http import HttpVersion11

_REASONS = {s.value: s.phrase for s in HTTPStatus}


class TickWrites:
    """The whole responses of one loop tick, written together at its end.

    A response's bytes wait for the end of the tick, and so does its handler. The loop
    first runs the Python work of every request that arrived in the tick, then makes
    all their `send` calls back to back. On 10 KB hits (auth off, three interleaved
    rounds, same session) that cost 31 µs of CPU per request against 36.6 µs with
    each response written as soon as it is ready at 64 connections, and 40 µs against
    44.5 µs at 8. Throughput rose by 18% and 10%. Each handler waits for its own
    write (a future of its own: a cancelled handler cancels only that one), so aiohttp
    handles a connection's next pipelined request only after it, and responses keep
    their order."""

    def __init__(self) -> None:
        self._pending: list[tuple[asyncio.BaseTransport, bytes, asyncio.Future[bool]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def write(self, transport: asyncio.BaseTransport, data: bytes) -> asyncio.Future[bool]:
        """Queue `data`; the future says at the end of the tick whether it was written
        (False: the connection had closed meanwhile)."""
        loop = asyncio.get_running_loop()
        if not self._pending or self._loop is not loop:
            # (Another loop's queue is a closed loop's, e.g. between tests: dropped.)
            self._pending, self._loop = [], loop
            loop.call_soon(self._flush)
        written: asyncio.Future[bool] = loop.create_future()
        self._pending.append((transport, data, written))
        return written

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for transport, data, written in pending:
            closing = transport.is_closing()
            if not closing:
                transport.write(data)  # type: ignore[attr-defined]  # a WriteTransport
            if not written.done():  # its handler may have been cancelled
                written.set_result(not closing)


_TICK_WRITES = TickWrites()


class WireResponse(web.StreamResponse):
    """A response that is already bytes: `prepare` writes them, and that is all."""

    def __init__(self, status: int, data: bytes) -> None:
        super().__init__(status=status)
        self._data = data

    async def prepare(self, request: web.BaseRequest) -> None:
        # `_eof_sent` and `_keep_alive` are aiohttp's own (private) flags: set, they tell
        # its RequestHandler that the response is complete and the connection stays
        # open, without its header machinery. Checked against aiohttp 3.14, the pinned
        # release; tests/test_aiohttp_internals.py fails first if they move.
        if self._eof_sent:
            return
        self._eof_sent = True
        self._keep_alive = True
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client has gone")
        if not await _TICK_WRITES.write(transport, self._data):
            raise ConnectionResetError("the client left before its response was written")
        # Backpressure, as aiohttp's own writes have it: a client that does not read
        # holds its next pipelined request here instead of growing the buffer.
        await request.writer.drain()

    async def write_eof(self, data: bytes = b"") -> None:
        return


class SentResponse(WireResponse):
    """A response its handler has already written to the transport (a head from
    `wire_head`, then a file's bytes): aiohttp only learns that it is complete."""

    def __init__(self, status: int) -> None:
        super().__init__(status, b"")

    async def prepare(self, request: web.BaseRequest) -> None:
        self._eof_sent = True
        self._keep_alive = True


def wire_response(
    request: web.BaseRequest, status: int, headers: dict[str, str], body: bytes
) -> web.StreamResponse | None:
    """`body` and `headers` (canonical names) as one WireResponse, with Date added, and
    Content-Length if missing. None where the ordinary path must answer (see the
    module docstring), or where a header value would break the framing."""
    head = wire_head(request, status, headers, len(body))
    return None if head is None else WireResponse(status, head + body)


def wire_head(
    request: web.BaseRequest, status: int, headers: dict[str, str], length: int
) -> bytes | None:
    """The status line and headers of a response with a body of `length` bytes, as
    `wire_response` writes them; None where the ordinary path must answer."""
    if request.version != HttpVersion11 or not request.keep_alive:
        return None
    if request.method == "HEAD" or status in (204, 304) or status < 200:
        return None  # no body may follow these: aiohttp knows how to frame them
    lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    if lines.count("\r") != len(headers) or lines.count("\n") != len(headers):
        return None  # a CR or LF inside a value: let aiohttp refuse it
    if "Content-Type" not in headers:
        lines += "Content-Type: application/octet-stream\r\n"  # aiohttp's default too
    if headers.get("Content-Length", str(length)) != str(length):
        return None  # a bug: never frame a body with another length
    if "Content-Length" not in headers:
        lines += f"Content-Length: {length}\r\n"
    head = f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n{lines}Date: {http_date()}\r\n\r\n"
    return head.encode()


_date = (0, "")


def http_date() -> str:
    """The Date header's value, formatted once a second."""
    global _date  # noqa: PLW0603 (a one-second memo shared by every response)
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True))
    return _date[1]
