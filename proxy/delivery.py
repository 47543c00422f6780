"""Delivery: fetch the object from the route's origin and send it to the client
(SPEC sections 1 and 6). The body goes out in one write when the origin has it in
memory, else chunk by chunk with bounded memory; after the headers are out, a failure
aborts the connection (STYLE "streaming rule")."""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from multidict import CIMultiDict

from .config import Route
from .errors import OriginError, OriginTimeout
from .exchange import SERVER, Exchange, Target
from .origin import OriginRequest, OriginResponse


async def deliver(exchange: Exchange, target: Target, object_path: str) -> web.StreamResponse:
    """Fetch from the origin and send it on: the body in one write when the origin
    has it in memory, else streamed chunk by chunk with bounded memory."""
    request = exchange.request
    headers = request.headers
    method: Literal["GET", "HEAD"] = "HEAD" if request.method == "HEAD" else "GET"
    fetched = await target.origin.fetch(
        OriginRequest(
            object_path,
            method,
            headers.get("Range"),
            headers.get("If-None-Match"),
            headers.get("If-Modified-Since"),
        )
    )
    try:
        out = _response_headers(fetched, target.route, exchange)
        if fetched.stream is None:
            exchange.sent = len(fetched.data) if fetched.data else 0
            return web.Response(status=fetched.status, headers=out, body=fetched.data)
        return await _stream(exchange, fetched, out)
    finally:
        await fetched.close()


def _response_headers(
    fetched: OriginResponse, route: Route, exchange: Exchange
) -> CIMultiDict[str]:
    out = CIMultiDict(fetched.headers)
    out["Server"] = SERVER
    out["Accept-Ranges"] = "bytes"
    out["Cache-Control"] = route.cache_control
    out["X-Cache"] = exchange.cache
    out["X-Request-Id"] = exchange.request_id
    out.update(exchange.headers)
    return out


async def _stream(
    exchange: Exchange, fetched: OriginResponse, headers: CIMultiDict[str]
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
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response
