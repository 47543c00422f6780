"""The request pipeline: one handler that reads top to bottom, in SPEC section 1's order.

    route -> method -> path (check 11) -> key (1, 2) -> record (3) -> status (4)
    -> signed link (5) -> referrer (6) -> IP (7) -> path scope (8)
    -> [rate, quota: 9, 10] -> origin -> stream -> [count]

Every refusal is a `Refusal` raised by its step and rendered once, by
`refusal_response`. The public listener runs this handler on aiohttp's low-level
`web.Server`: `web.Application`'s router alone costs ~25 µs a request (NOTES.md).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from multidict import CIMultiDict

from .config import Config, Route
from .errors import (
    KeyMissing,
    KeyUnknown,
    MethodNotAllowed,
    NotFound,
    OriginError,
    OriginTimeout,
    Refusal,
)
from .keys import KeySigner
from .origin import Origin, OriginRequest, OriginResponse
from .policy import check_link, client_ip, cors_headers, normalise_path, preflight_headers
from .record_cache import CachedKey, RecordCache, status_refusal

ALLOW = "GET, HEAD, OPTIONS"
SERVER = "keyfront"  # not aiohttp's default, which names its and Python's versions
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(frozen=True, slots=True)
class Target:
    """A configured route and its origin."""

    route: Route
    origin: Origin


class RequestIds:
    """X-Request-Id values: the client's when sane, else a per-process prefix and a
    counter (unique, and cheaper than a random id per request)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count(1)

    def __call__(self, incoming: str | None) -> str:
        if incoming and _SANE_REQUEST_ID.fullmatch(incoming):
            return incoming
        return f"{self._prefix}-{next(self._counter):x}"


class Pipeline:
    """The public listener's handler (SPEC section 1)."""

    def __init__(
        self, config: Config, signer: KeySigner, records: RecordCache, targets: list[Target]
    ) -> None:
        self._signer = signer
        self._records = records
        self._key_param = config.keys.query_param
        self._trusted = config.trusted_proxies
        # Longest prefix first, so /files/big/ wins over /files/.
        self._targets = sorted(targets, key=lambda t: len(t.route.prefix), reverse=True)
        self._request_ids = RequestIds()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        request_id = self._request_ids(request.headers.get("X-Request-Id"))
        try:
            return await self._serve(request, request_id)
        except Refusal as refusal:
            return refusal_response(refusal, request_id)

    async def _serve(self, request: web.BaseRequest, request_id: str) -> web.StreamResponse:
        raw_path = request.raw_path.partition("?")[0]
        target = self._target(raw_path)
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            raise MethodNotAllowed(headers={"Allow": ALLOW})
        path = normalise_path(raw_path)  # check 11 runs first: it needs no I/O
        object_path = path[len(target.route.prefix) :]
        if not object_path:
            raise NotFound()
        origin_header = request.headers.get("Origin")
        if request.method == "OPTIONS":
            return preflight(request, origin_header, request_id)
        if target.route.auth == "key":
            await self._authorise(request, path, origin_header)
        cors = cors_headers(origin_header) if origin_header else None
        return await deliver(request, target, object_path, request_id, cors)

    def _target(self, raw_path: str) -> Target:
        for target in self._targets:
            if raw_path.startswith(target.route.prefix):
                return target
        raise NotFound()

    async def _authorise(self, request: web.BaseRequest, path: str, origin: str | None) -> None:
        """SPEC checks 1-8, in order; the first failure raises its Refusal."""
        query = request.query
        headers = request.headers
        key = query.get(self._key_param) or _bearer(headers) or headers.get("X-API-Key")
        if not key:
            raise KeyMissing()
        parsed = self._signer.verify(key)
        entry = self._records.lookup(parsed.key_id) or await self._records.load(parsed.key_id)
        record = entry.record
        if record is None:
            raise KeyUnknown()
        now = time.time()
        refusal = status_refusal(record, entry.customer, now)
        if refusal is not None:
            raise refusal
        if record.require_signed_links or "sig" in query or "expires" in query:
            check_link(
                path,
                query.get("expires"),
                query.get("sig"),
                record.link_secret,
                record.require_signed_links,
                now,
            )
        self._check_policy(request, entry, path, origin)

    def _check_policy(
        self, request: web.BaseRequest, entry: CachedKey, path: str, origin: str | None
    ) -> None:
        policy = entry.policy
        assert policy is not None
        ip = self.client_ip(request) if policy.ips is not None else ""
        policy.check(path, request.headers.get("Referer"), origin, ip)

    def client_ip(self, request: web.BaseRequest) -> str:
        """The peer, or what a trusted proxy says in X-Forwarded-For (SPEC section 11).
        Every X-Forwarded-For line counts: a proxy may add its own line rather than
        append to the client's, and the first line is the client's own word."""
        forwarded = ",".join(request.headers.getall("X-Forwarded-For", ())) or None
        return client_ip(request.remote or "", forwarded, self._trusted)


def _bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("Authorization")
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip()
    return None


def preflight(request: web.BaseRequest, origin: str | None, request_id: str) -> web.Response:
    """CORS preflight (SPEC section 1): answered without a key and without consuming
    rate, since browsers send no credentials on it; the real request is checked."""
    headers = {"X-Request-Id": request_id, "Allow": ALLOW}
    if origin:
        asked = request.headers.get("Access-Control-Request-Headers")
        headers.update(preflight_headers(origin, asked))
    return web.Response(status=204, headers=headers)


async def deliver(
    request: web.BaseRequest,
    target: Target,
    object_path: str,
    request_id: str,
    cors: Mapping[str, str] | None,
) -> web.StreamResponse:
    """Fetch from the origin and send it on: the body in one write when the origin
    has it in memory, else streamed chunk by chunk with bounded memory."""
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
        out = _response_headers(fetched, target.route, request_id, cors)
        if fetched.stream is None:
            return web.Response(status=fetched.status, headers=out, body=fetched.data)
        return await _stream(request, fetched, out)
    finally:
        await fetched.close()


def _response_headers(
    fetched: OriginResponse, route: Route, request_id: str, cors: Mapping[str, str] | None
) -> CIMultiDict[str]:
    out = CIMultiDict(fetched.headers)
    out["Server"] = SERVER
    out["Accept-Ranges"] = "bytes"
    out["Cache-Control"] = route.cache_control
    out["X-Cache"] = "BYPASS"  # no disk cache yet: every response comes from the origin
    out["X-Request-Id"] = request_id
    if cors:
        out.update(cors)
    return out


async def _stream(
    request: web.BaseRequest, fetched: OriginResponse, headers: CIMultiDict[str]
) -> web.StreamResponse:
    """STYLE streaming rule: once headers are sent, an origin failure aborts the
    connection, so the client sees a truncated transfer, never a short 'complete' one."""
    assert fetched.stream is not None
    response = web.StreamResponse(status=fetched.status, headers=headers)
    await response.prepare(request)
    try:
        async for chunk in fetched.stream:
            await response.write(chunk)
    except (OriginError, OriginTimeout):
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response


def refusal_response(refusal: Refusal, request_id: str) -> web.Response:
    """The one place a Refusal becomes a response: SPEC's JSON error body. The key is
    never echoed."""
    body = {"error": {"code": refusal.code, "message": refusal.message, "request_id": request_id}}
    response = web.Response(
        status=refusal.status,
        body=json.dumps(body, separators=(",", ":")).encode(),
        content_type="application/json",
        headers={"Server": SERVER, "X-Request-Id": request_id, **refusal.headers},
    )
    return response
