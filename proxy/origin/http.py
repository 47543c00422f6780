"""The `http(s)://host/base/` origin: any HTTP server, through one pooled aiohttp session.

Bytes arrive exactly as stored (`Accept-Encoding: identity`, no decompression), so a
forwarded Range means the same bytes the client asked for. Range (single ranges only,
see conditional.single_range) with its If-Range, If-None-Match and If-Modified-Since
are forwarded; the origin's own 200/206/304/416 pass through with only the headers
keyfront sends on.

Failures are translated in one place, `_origin_failures`: timeouts -> OriginTimeout
(504), everything else -> OriginError (502), both `from` the aiohttp exception.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from urllib.parse import quote

import aiohttp
from yarl import URL

from ..conditional import LONGEST_DATE, etag_list, single_range
from ..config import OriginTimeouts, Route
from ..errors import NotFound, OriginError, OriginTimeout
from .base import Origin, OriginRequest, OriginResponse

CHUNK = 64 * 1024
# A body of known length up to this size is read whole before answering: the pipeline
# then sends headers and body in one write instead of prepare + write + write_eof.
SMALL_BODY = 64 * 1024
POOL_SIZE = 256  # connections to the origin, all requests of this worker together
KEEPALIVE = 30.0  # seconds an idle origin connection stays open

_PASSED = (200, 206, 304, 416)
_LONGEST_IF_RANGE = 256  # an ETag or a date; anything longer is not forwarded
_GONE = (404, 410)
# Per status, the origin headers passed on (SPEC 1: x-amz-*, Set-Cookie, Server and the
# rest are dropped). A 304 carries the validators only (RFC 9110 15.4.5); a 416 only
# its Content-Range, as its body (an S3 XML error, say) is not sent on.
# Content-Encoding is kept too: an object stored gzip-compressed (S3 metadata
# `Content-Encoding: gzip`) comes back compressed even to `identity`, and without the
# header browsers would show the compressed bytes.
_ENTITY = (
    "Content-Type",
    "Content-Length",
    "Content-Encoding",
    "ETag",
    "Last-Modified",
    "Content-Range",
)
_KEPT = {200: _ENTITY, 206: _ENTITY, 304: ("ETag", "Last-Modified"), 416: ("Content-Range",)}
_FRESHNESS = ("Cache-Control", "Expires", "Date")  # read by the cache, not passed on


class HttpOrigin(Origin):
    """Fetches `<route.origin><percent-encoded path>` with the configured timeouts:
    `connect` for the TCP (and TLS) connection, `first_byte` for the response headers
    from the start of the request, `idle` for any wait between body chunks."""

    def __init__(self, route: Route, timeouts: OriginTimeouts) -> None:
        self.base = str(URL(route.origin))  # encoded once; ends in "/" (config.load)
        self.timeouts = timeouts
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(limit=POOL_SIZE, keepalive_timeout=KEEPALIVE)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                sock_connect=self.timeouts.connect, sock_read=self.timeouts.idle
            ),
            headers={"Accept-Encoding": "identity", "User-Agent": "keyfront"},
            auto_decompress=False,
            # Never store an origin's Set-Cookie and send it back on other clients' requests.
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, request: OriginRequest) -> OriginResponse:
        url = self.url(request.path) + (f"?{request.query}" if request.query else "")
        response = await self._send(request.method, url, _forwarded(request))
        try:
            return await self._answer(request, response)
        except BaseException:
            response.release()
            raise

    async def ping(self) -> None:
        """Reachable if the base URL answers anything at all, even 403 or 404."""
        try:
            response = await self._send("HEAD", self.base, {})
        except OriginTimeout as exc:
            raise OriginError(str(exc)) from exc
        response.release()

    def url(self, path: str) -> str:
        """The base plus `path`, each segment percent-encoded: an object key may hold
        any character, and `?`, `#` or `%` in it must reach the origin as data."""
        return self.base + "/".join(quote(segment, safe="") for segment in path.split("/"))

    async def _send(
        self, method: str, url: str, headers: Mapping[str, str]
    ) -> aiohttp.ClientResponse:
        if self._session is None:
            raise RuntimeError("HttpOrigin.open() was not called")
        with _origin_failures("response headers"):
            async with asyncio.timeout(self.timeouts.first_byte):
                return await self._session.request(
                    method,
                    URL(url, encoded=True),
                    headers=headers,
                    allow_redirects=False,  # a redirect could lead anywhere: a failure
                )

    async def _answer(
        self, request: OriginRequest, response: aiohttp.ClientResponse
    ) -> OriginResponse:
        """The OriginResponse for an origin's answer; whatever it raises, the caller
        releases the response."""
        status = response.status
        if status in _GONE:
            raise NotFound()
        if status not in _PASSED:
            raise OriginError(f"the origin answered HTTP {status}")
        headers = _kept_headers(status, response.headers)
        freshness = {k: response.headers[k] for k in _FRESHNESS if k in response.headers}
        if request.method == "HEAD" or status in (304, 416):
            response.release()
            return OriginResponse(status, headers, freshness=freshness)
        length = response.content_length
        if length is not None and length <= SMALL_BODY:
            with _origin_failures("the body"):
                data = await response.read()
            response.release()
            return OriginResponse(status, headers, data=data, freshness=freshness)
        return OriginResponse(
            status,
            headers,
            stream=ResponseBody(response),
            release=_releaser(response),
            freshness=freshness,
        )


class ResponseBody:
    """The origin's body in chunks of up to CHUNK bytes. A stall longer than the idle
    timeout raises OriginTimeout, a cut connection or a body shorter than its
    Content-Length OriginError (aiohttp checks the length)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._content = response.content

    def __aiter__(self) -> ResponseBody:
        return self

    async def __anext__(self) -> bytes:
        with _origin_failures("the body"):
            chunk = await self._content.read(CHUNK)
        if not chunk:
            raise StopAsyncIteration
        return chunk


@contextlib.contextmanager
def _origin_failures(waiting_for: str) -> Iterator[None]:
    """The one place aiohttp and socket errors become keyfront errors. Messages reach
    clients, so they name what was late or broken, never the origin's address."""
    try:
        yield
    except TimeoutError as exc:  # asyncio.timeout, and aiohttp's ServerTimeoutError
        raise OriginTimeout(f"the origin did not send {waiting_for} in time") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise OriginError(f"the origin connection failed while waiting for {waiting_for}") from exc


def _forwarded(request: OriginRequest) -> dict[str, str]:
    """The client's Range and conditionals, as far as keyfront would honour them: a
    malformed one is not passed on (the origin answers in full, as keyfront would)."""
    headers = {}
    if (wanted := single_range(request.range)) is not None:
        headers["Range"] = wanted
        # With its If-Range, so that the origin sends the whole new version rather than
        # a range of it (issue 14 item 1); delivery.py checks the answer all the same.
        if_range = request.if_range
        if if_range is not None and if_range.isascii() and len(if_range) <= _LONGEST_IF_RANGE:
            headers["If-Range"] = if_range
    if request.if_none_match is not None and _forwardable(request.if_none_match):
        headers["If-None-Match"] = request.if_none_match
    since = request.if_modified_since
    if since is not None and since.isascii() and len(since) <= LONGEST_DATE:
        headers["If-Modified-Since"] = since
    return headers


def _forwardable(if_none_match: str) -> bool:
    """A list keyfront can parse, in ASCII (a non-UTF-8 byte cannot be re-encoded for
    the origin: issue 12 item 9)."""
    value = if_none_match
    return value.isascii() and (value.strip() == "*" or etag_list(value) is not None)


def _kept_headers(status: int, origin: Mapping[str, str]) -> dict[str, str]:
    return {name: origin[name] for name in _KEPT[status] if name in origin}


def _releaser(response: aiohttp.ClientResponse) -> Callable[[], Awaitable[None]]:
    async def release() -> None:
        # Back to the pool if the body was read to the end, else the connection closes.
        response.release()

    return release
