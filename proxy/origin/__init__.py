"""Origins: where objects come from, chosen by the route's URL scheme (SPEC section 6).

    origin_from_url(route, timeouts)   file:///dir/   http(s)://host/base/   s3://bucket/prefix/
    origin_identity(route)             what names the objects: part of the cache key

An Origin answers one OriginRequest with an OriginResponse, or raises NotFound,
OriginError (-> 502) or OriginTimeout (-> 504). Errors while the body streams are
raised from the body iterator, after the headers went out: the pipeline then aborts
the connection (STYLE "streaming rule"). Every implementation passes the contract
suite in tests/test_origin.py.

Conditionals: an OriginRequest carries the client's Range, If-Range, If-None-Match,
If-Modified-Since, If-Match and If-Unmodified-Since. The file origin answers them all
itself through conditional.plan; the http(s) and s3 origins forward Range with its
If-Range, If-None-Match and If-Modified-Since, and delivery.py judges their answer
with the same planner (a 206 of another version is never passed on).

What this package owns, and what it may import: reaching origins (files, HTTP, S3),
translating their failures into keyfront's errors in one place per origin, and origin
metrics (metered.py). It imports, of keyfront, only config, errors, conditional and
metrics. It must never import the cache, delivery, pipeline, exchange, the record store
or policy: an origin knows nothing of who asks, or of caching (a file origin's memory
of small files is validated by stat on every request, not a cache with a lifetime).
"""

from __future__ import annotations

import abc
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from ..config import OriginTimeouts, Route

# Where an s3:// route without `s3.endpoint_url` sends its requests (else AWS itself).
S3_ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


@dataclass(frozen=True, slots=True)
class OriginRequest:
    path: str  # decoded, normalised object path below the route prefix; no leading "/"
    method: Literal["GET", "HEAD"] = "GET"
    range: str | None = None  # the client's Range header, forwarded as is
    if_none_match: str | None = None
    if_modified_since: str | None = None
    query: str = ""  # the route's variant parameters, encoded (http(s) origins only)
    if_range: str | None = None  # forwarded with the Range (issue 14 item 1)
    # Judged by keyfront (conditional.plan), on the file's stat or the origin's answer;
    # not forwarded, so that an origin's 412 never becomes a 502.
    if_match: str | None = None
    if_unmodified_since: str | None = None

    def conditionals(self) -> dict[str, str]:
        """The client's conditional and range headers by name, as conditional.plan
        reads them."""
        named = (
            ("If-Match", self.if_match),
            ("If-Unmodified-Since", self.if_unmodified_since),
            ("If-None-Match", self.if_none_match),
            ("If-Modified-Since", self.if_modified_since),
            ("Range", self.range),
            ("If-Range", self.if_range),
        )
        return {name: value for name, value in named if value is not None}


@dataclass(slots=True)
class OriginResponse:
    """Status is 200, 206, 304 or 416 (and 412 from the file origin, which judges
    If-Match itself). `headers` holds only what keyfront passes on:
    Content-Type, Content-Length, ETag, Last-Modified, Content-Range.

    The body is either `data` (small objects, already in memory) or `stream`, an
    async iterator of chunks; both are empty for HEAD, 304 and 416. `close()` must be
    called once the response is done with, whatever happened."""

    status: int
    headers: dict[str, str]
    data: bytes | None = None
    stream: AsyncIterator[bytes] | None = None
    release: Callable[[], Awaitable[None]] | None = None  # frees the origin connection / file
    # The origin's Cache-Control, Expires and Date: for a route that respects them when
    # caching (SPEC section 5); never sent on to clients.
    freshness: dict[str, str] | None = None

    async def close(self) -> None:
        if self.release is not None:
            release, self.release = self.release, None
            await release()


class Origin(abc.ABC):
    # Already on this host (file://): served straight from it, never copied into the
    # disk cache, where an edit would stay unseen for up to cache.ttl (SPEC section 5).
    local: bool = False

    async def open(self) -> None:
        """Create clients / sessions. Called once before use."""

    async def close(self) -> None:
        """Release them. Called once at shutdown."""

    @abc.abstractmethod
    async def fetch(self, request: OriginRequest) -> OriginResponse: ...

    async def ping(self) -> None:
        """Raise OriginError unless the origin is reachable (for /readyz)."""


def origin_from_url(route: Route, timeouts: OriginTimeouts) -> Origin:
    scheme = route.origin.partition("://")[0].lower()
    if scheme == "file":
        from .file import FileOrigin

        return FileOrigin(route)
    if scheme in ("http", "https"):
        from .http import HttpOrigin

        return HttpOrigin(route, timeouts)
    if scheme == "s3":
        from .s3 import S3Origin  # imports botocore: paid only with an s3:// route

        return S3Origin(route, timeouts)
    raise ValueError(f"unknown origin scheme {scheme!r} (use file://, http://, https://, s3://)")


def origin_identity(route: Route) -> str:
    """What names the objects a route's origin holds, for the cache key (SPEC section 5:
    scheme, host or bucket, base path), so that a route pointed at another origin never
    answers with the old one's bytes (issue 14). It is the origin URL as config.load
    normalised it (absolute, ending in "/"), and for S3 the endpoint too: a bucket name
    is unique only within one endpoint. Credentials and region are left out: they
    change who may read, not what is read."""
    if route.origin.startswith(("http://", "https://")):
        scheme, rest = route.origin.split("://", 1)
        host, slash, path = rest.partition("/")
        # user:password@ is left out too: it would land in every cache file's header.
        return f"{scheme}://{host.rpartition('@')[2]}{slash}{path}"
    if not route.origin.startswith("s3://"):
        return route.origin
    endpoint = route.s3.endpoint_url if route.s3 is not None else None
    return f"{route.origin} at {endpoint or s3_endpoint_from_env() or 'aws'}"


def s3_endpoint_from_env() -> str | None:
    return next((os.environ[name] for name in S3_ENDPOINT_ENV if os.environ.get(name)), None)
