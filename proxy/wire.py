"""Small responses written as one byte string, bypassing aiohttp's header machinery.

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

import time
from email.utils import formatdate
from http import HTTPStatus

from aiohttp import web
from aiohttp.http import HttpVersion11

_REASONS = {s.value: s.phrase for s in HTTPStatus}


class WireResponse(web.StreamResponse):
    """A response that is already bytes: `prepare` writes them, and that is all."""

    def __init__(self, status: int, data: bytes) -> None:
        super().__init__(status=status)
        self._data = data

    async def prepare(self, request: web.BaseRequest) -> None:
        if self._eof_sent:
            return
        self._eof_sent = True
        self._keep_alive = True
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client has gone")
        transport.write(self._data)

    async def write_eof(self, data: bytes = b"") -> None:
        return


def wire_response(
    request: web.BaseRequest, status: int, headers: dict[str, str], body: bytes
) -> web.StreamResponse | None:
    """`body` and `headers` (canonical names; Date, and Content-Length if missing, are added) as
    one WireResponse; None where the ordinary path must answer (see the module
    docstring), or where a header value would break the framing."""
    if request.version != HttpVersion11 or not request.keep_alive:
        return None
    if request.method == "HEAD" or status in (204, 304) or status < 200:
        return None  # no body may follow these: aiohttp knows how to frame them
    lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    if lines.count("\r") != len(headers) or lines.count("\n") != len(headers):
        return None  # a CR or LF inside a value: let aiohttp refuse it
    if "Content-Type" not in headers:
        lines += "Content-Type: application/octet-stream\r\n"  # aiohttp's default too
    if headers.get("Content-Length", str(len(body))) != str(len(body)):
        return None  # a bug: never frame a body with another length
    if "Content-Length" not in headers:
        lines += f"Content-Length: {len(body)}\r\n"
    head = f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n{lines}Date: {http_date()}\r\n\r\n"
    return WireResponse(status, head.encode() + body)


_date = (0, "")


def http_date() -> str:
    """The Date header's value, formatted once a second."""
    global _date  # noqa: PLW0603 (a one-second memo shared by every response)
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True))
    return _date[1]
