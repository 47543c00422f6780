"""The request pipeline: one handler that reads top to bottom, in SPEC section 1's order.

    path (check 11) -> route -> method -> key (1, 2) -> record (3) -> status (4)
    -> signed link (5) -> referrer (6) -> IP (7) -> path scope (8)
    -> [rate, quota: 9, 10] -> origin -> stream -> [count]

Every refusal is a `Refusal` raised by its step and rendered once, by
`refusal_response`. The public listener runs this handler on aiohttp's low-level
`web.Server`: `web.Application`'s router alone costs ~25 µs a request (docs/dependencies.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from aiohttp import web

from . import failpoints
from .accesslog import AccessLog
from .cache import Cache
from .cached_key import CachedKey
from .config import Config
from .delivery import deliver
from .errors import (
    KeyInvalid,
    KeyMissing,
    KeyUnknown,
    MethodNotAllowed,
    NotFound,
    Refusal,
    error_body,
)
from .exchange import SERVER, Exchange, Target
from .imported import KeyIds
from .keylookup import LookupCache
from .metrics import Metrics
from .policy import check_link, client_ip, cors_headers, normalise_path, preflight_headers
from .ratelimit import Limiter
from .record_cache import RecordCache, status_refusal
from .request_ids import RequestIds
from .routing import Routes
from .usage import UsageMeter
from .wire import wire_response

log = logging.getLogger("keyfront")
ALLOW = "GET, HEAD, OPTIONS"


class Pipeline:
    """The public listener's handler (SPEC section 1)."""

    def __init__(
        self,
        config: Config,
        *,
        key_ids: KeyIds,
        records: RecordCache,
        limiter: Limiter,
        targets: list[Target],
        access_log: AccessLog,
        usage: UsageMeter,
        metrics: Metrics,
        cache: Cache | None = None,
        lookup: LookupCache | None = None,
    ) -> None:
        self._key_ids = key_ids
        self._remembered = key_ids.remembered
        self._lookup = lookup  # SPEC section 13: the operator's key API, if configured
        self._records = records
        self._limiter = limiter
        self._key_param = config.keys.query_param
        self._trusted = config.trusted_proxies
        self._routes = Routes((target.route.prefix, target) for target in targets)
        self._request_ids = RequestIds()
        self._log = access_log
        self._usage = usage
        self._analytics = config.usage.analytics
        self._metrics = metrics
        self._cache = cache  # None: no disk cache, every request goes to the origin
        # SPEC section 14: Strict-Transport-Security on every HTTPS response
        self._hsts = config.hsts if config.tls is not None else None
        if failpoints.armed(failpoints.AFTER_KEY):  # tests only: unarmed, it costs nothing
            after_key = failpoints.after(failpoints.AFTER_KEY, self._authorise)
            self._authorise = after_key  # type: ignore[method-assign]

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        request_id = self._request_ids(request.headers.get("X-Request-Id"))
        exchange = Exchange(request, request_id, time.monotonic())
        if self._hsts is not None:
            exchange.headers["Strict-Transport-Security"] = self._hsts
        status, code = 500, None
        self._metrics.in_flight += 1
        try:
            response = await self._serve(exchange)
            status = response.status
            return response
        except Refusal as refusal:
            status, code = refusal.status, refusal.code
            if status >= 500:
                _log_detail(refusal, exchange)
            return refusal_response(refusal, exchange)
        except Exception:
            # SPEC section 1: a bug answers 500 internal_error with the request id, and
            # is logged with its traceback; once bytes are out, only an abort is left.
            log.exception("%s internal_error", exchange.request_id)
            self._metrics.count("internal_errors", "public")
            if request.writer.output_size > 0:
                raise
            status, code = 500, "internal_error"
            return refusal_response(Refusal(), exchange)
        finally:
            self._metrics.in_flight -= 1
            self._count(exchange)
            if self._analytics and exchange.entry is not None:  # SPEC 15: keys' clients
                self._client_ip(exchange)
            self._usage.record(exchange, status, code)
            self._measure(exchange, status, code)
            if self._log.enabled:
                self._client_ip(exchange)
                self._log.write(exchange, status)

    async def _serve(self, exchange: Exchange) -> web.StreamResponse:
        request = exchange.request
        raw_path = exchange.path = request.raw_path.partition("?")[0]
        # Check 11 runs first (it needs no I/O), and the route is picked on the decoded
        # path that the object path, the path scopes and signed links are read from:
        # on the raw one, /pub/secre%74/x took route /pub/ to /pub/secret/'s object
        # (issue 12 item 1).
        path = exchange.decoded_path = normalise_path(raw_path)
        target = self._target(path)
        exchange.route = target.route.prefix
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            raise MethodNotAllowed(headers={"Allow": ALLOW})
        object_path = path[len(target.route.prefix) :]
        if not object_path:
            raise NotFound()
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS":
            return preflight(exchange, origin)
        if target.route.auth == "key":
            self._authorise(exchange, await self._record(exchange), path, origin)
            await self._limit(exchange)
        if origin:
            exchange.headers.update(cors_headers(origin))
        return await deliver(self._cache, exchange, target, object_path)

    def _target(self, path: str) -> Target:
        target = self._routes.match(path)
        if target is None:
            raise NotFound()
        return target

    async def _record(self, exchange: Exchange) -> CachedKey:
        """Checks 1-3: a key, well-formed and signed, whose record exists (SPEC section
        2), or an external key (section 13) that passes check 2 by
        `keys.external.pattern` and check 3 by the set of imported keys or, failing
        that, the key API's answer (keylookup/). Only a record-cache or lookup-cache
        miss awaits; an external key that is neither imported nor looked up is refused
        with no I/O. An imported key wins over the key API's answer for the same key."""
        request = exchange.request
        headers = request.headers
        key = request.query.get(self._key_param) or _bearer(headers) or headers.get("X-API-Key")
        if not key:
            raise KeyMissing()
        key_id = self._remembered(key)  # a key seen before, of either kind: one dict look-up
        if key_id is not None:
            entry = self._records.lookup(key_id) or await self._records.load(key_id)
        else:
            entry = await self._first_record(exchange, key)
        if entry.record is None:
            raise KeyUnknown()
        exchange.entry = entry
        return entry

    async def _first_record(self, exchange: Exchange, key: str) -> CachedKey:
        """A key not seen before (or no longer remembered): verified or found in the
        imported set, else answered by the key API (a cached answer does not await)."""
        lookup = self._lookup
        entry = lookup.hit(key) if lookup is not None else None
        if entry is not None:
            return entry
        try:
            key_id = self._key_ids(key)
        except (KeyInvalid, KeyUnknown):  # not keyfront's, and not imported
            if lookup is None or not lookup.is_external(key):
                raise
            return await lookup.resolve(key, self._client_ip(exchange))
        return self._records.lookup(key_id) or await self._records.load(key_id)

    def _authorise(
        self, exchange: Exchange, entry: CachedKey, path: str, origin: str | None
    ) -> None:
        """Checks 4-8, in order, with no I/O; the first failure raises its Refusal."""
        record, policy = entry.record, entry.policy
        assert record is not None and policy is not None
        referer = exchange.request.headers.get("Referer")
        exchange.page = referer or (origin if origin != "null" else None)
        now = time.time()
        refusal = status_refusal(record, entry.customer, now)
        if refusal is not None:
            raise refusal
        query = exchange.request.query
        if record.require_signed_links or "sig" in query or "expires" in query:
            check_link(
                path,
                query.get("expires"),
                query.get("sig"),
                record.link_secret,
                record.require_signed_links,
                now,
            )
        ip = self._client_ip(exchange) if policy.ips is not None else ""
        policy.check(path, referer, origin, ip)

    async def _limit(self, exchange: Exchange) -> None:
        """Checks 9 and 10: at most one store round trip, shared with the requests of
        this loop tick. Its headers go on every keyed response from here on."""
        assert exchange.entry is not None and exchange.entry.limits is not None
        limits = exchange.entry.limits
        if limits.unlimited:
            return
        ip = self._client_ip(exchange) if limits.ip_rate is not None else ""
        decision = await self._limiter.check(limits, ip)
        if decision.refusal is not None:
            raise decision.refusal
        if limits.bucket is not None:
            exchange.headers.update(decision.headers())

    def _client_ip(self, exchange: Exchange) -> str:
        """The peer, or what a trusted proxy says in X-Forwarded-For (SPEC section 11).
        Every X-Forwarded-For line counts: a proxy may add its own line rather than
        append to the client's, and the first line is the client's own word."""
        if exchange.client_ip is None:
            if not self._trusted:
                # No proxy to believe: the peer, without reading any header (0.25 µs
                # saved on every keyed request, which analytics asks this of).
                exchange.client_ip = exchange.request.remote or ""
                return exchange.client_ip
            headers = exchange.request.headers
            forwarded = ",".join(headers.getall("X-Forwarded-For", ())) or None
            peer = exchange.request.remote or ""
            exchange.client_ip = client_ip(peer, forwarded, self._trusted)
        return exchange.client_ip

    def _measure(self, exchange: Exchange, status: int, code: str | None) -> None:
        metrics = self._metrics
        duration = time.monotonic() - exchange.started
        cache = exchange.cache._value_  # the plain str: see xcache.py
        metrics.request(exchange.route or "none", status, cache, exchange.sent, duration)
        if code is not None:
            metrics.count("denied", code)
        elif status < 400 and exchange.entry is not None and exchange.entry.record is not None:
            customer = exchange.entry.record.customer_id
            metrics.count("customer_requests", customer)
            metrics.count("customer_bytes", customer, exchange.sent)

    def _count(self, exchange: Exchange) -> None:
        """Bytes sent count against the monthly byte quotas (the key's, its customer's)."""
        entry = exchange.entry
        if entry is not None and entry.limits is not None and entry.limits.counts_bytes:
            self._limiter.sent(entry.limits, exchange.sent)


_detail_logged: dict[str, float] = {}


def _log_detail(refusal: Refusal, exchange: Exchange) -> None:
    """A 5xx refusal's detail (an origin's status, S3's error code) goes to the log, not
    to the client; one line per code, route and second, so a dead origin or store
    under full traffic does not flood the log (the metrics count every one)."""
    now, which = exchange.started, f"{refusal.code} {exchange.route}"
    if now - _detail_logged.get(which, -1.0) >= 1.0:
        _detail_logged[which] = now
        log.warning("%s %s %s: %s", exchange.request_id, refusal.code, exchange.path, refusal)


def _bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("Authorization")
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip()
    return None


def preflight(exchange: Exchange, origin: str | None) -> web.Response:
    """CORS preflight (SPEC section 1): answered without a key and without consuming
    rate, since browsers send no credentials on it; the real request is checked."""
    headers = {"Server": SERVER, "X-Request-Id": exchange.request_id, "Allow": ALLOW}
    headers.update(exchange.headers)  # HSTS (SPEC section 14)
    if origin:
        asked = exchange.request.headers.get("Access-Control-Request-Headers")
        headers.update(preflight_headers(origin, asked))
    return web.Response(status=204, headers=headers)


def refusal_response(refusal: Refusal, exchange: Exchange) -> web.StreamResponse:
    """The one place a Refusal becomes a public response: SPEC's JSON error body
    (errors.error_body, the admin listener's too), with the refusal's fixed message
    (never its detail). The key is never echoed. RateLimit-* headers ride along once
    the limiter has decided. A flood of garbage keys is answered here, so the response
    is written whole (wire.py)."""
    body = error_body(refusal, exchange.request_id)
    headers = {"Server": SERVER, "X-Request-Id": exchange.request_id, **exchange.headers}
    headers.update(refusal.headers)
    headers["Content-Type"] = "application/json"
    wire = wire_response(exchange.request, refusal.status, headers, body)
    return wire or web.Response(status=refusal.status, body=body, headers=headers)
