"""Origin metrics (SPEC section 10): every fetch, from the cache's fills and from
pass-through alike, is counted by wrapping the route's Origin once at start-up.

    keyfront_origin_requests_total{route,status}   status: the origin's HTTP status
        (200, 206, 304, 404, 416) or `error` (-> 502) / `timeout` (-> 504)
    keyfront_origin_duration_seconds{route}        to the origin's answer: its headers,
        or the failure; streaming the body is the client's pace, not the origin's
    keyfront_origin_bytes_total{route}             body bytes received, as they arrive
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from ..errors import NotFound, OriginError, OriginTimeout
from ..metrics import Metrics
from .base import Origin, OriginRequest, OriginResponse


class MeteredOrigin(Origin):
    def __init__(self, inner: Origin, route: str, metrics: Metrics) -> None:
        self.inner = inner
        self.local = inner.local
        self._route = route
        self._metrics = metrics

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def ping(self) -> None:
        await self.inner.ping()

    async def fetch(self, request: OriginRequest) -> OriginResponse:
        started = time.monotonic()
        try:
            response = await self.inner.fetch(request)
        except NotFound:
            self._answered("404", started)
            raise
        except OriginTimeout:
            self._answered("timeout", started)
            raise
        except OriginError:
            self._answered("error", started)
            raise
        self._answered(str(response.status), started)
        if response.data:
            self._metrics.count("origin_bytes", self._route, len(response.data))
        elif response.stream is not None:
            response.stream = self._counted(response.stream)
        return response

    def _answered(self, status: str, started: float) -> None:
        self._metrics.origin(self._route, status, time.monotonic() - started)

    async def _counted(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        count, route = self._metrics.count, self._route
        async for chunk in stream:
            count("origin_bytes", route, len(chunk))
            yield chunk
