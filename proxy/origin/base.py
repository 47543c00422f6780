"""What every origin shares: the request and response value types and the `Origin`
interface (SPEC section 6). A leaf: the backends (file.py, http.py, s3.py) import it,
and the package's `origin_from_url` picks one of them by URL scheme, so imports flow
one way (issue 14)."""

from __future__ import annotations

import abc
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

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


def s3_endpoint_from_env() -> str | None:
    return next((os.environ[name] for name in S3_ENDPOINT_ENV if os.environ.get(name)), None)
