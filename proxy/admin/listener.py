"""The admin listener (SPEC sections 9 and 10): `/healthz`, `/readyz`, `/metrics`, and
the admin API mounted at PREFIX, on `admin_listen`, with the public listener's
deadlines and a connection cap of its own.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ..errors import KeyfrontError
from ..listener import KeyfrontAppRunner, error_page
from ..metrics import Metrics
from ..origin import Origin
from ..portal import portal_app
from . import PREFIX, admin_app
from .http import AdminRuntime

READY_TIMEOUT = 2.0  # seconds each /readyz check may take
# The admin API's largest request is a key with its lists (manage/settings.py MAX_ITEMS:
# 256 referrer patterns, CIDRs and path prefixes): ~60 KB at the most. aiohttp's default
# is 1 MiB; a smaller cap bounds what one customer token makes the loop parse (issue 12
# item 3). Larger bodies get 413.
ADMIN_MAX_BODY = 64 * 1024
# Admin connections per worker (review finding 5): the admin listener serves operators'
# tools, health checks, Prometheus and customer pages, a few connections each, not the
# public. It shares the worker's descriptors with the public listener, whose cap
# (connection_cap) leaves FD_RESERVE (1,024) for everything else: a quarter of that.
ADMIN_MAX_CONNECTIONS = 256


class ListenerRuntime(AdminRuntime, Protocol):
    """What the admin listener uses of the running process (app.Runtime): the admin
    API's part, the origins (one per route, in order) for /readyz, the metrics."""

    origins: list[Origin]
    metrics: Metrics


async def start_admin(runtime: ListenerRuntime) -> web.AppRunner:
    """Open the admin listener; the runner, whose cleanup() closes it."""
    app = web.Application(client_max_size=ADMIN_MAX_BODY)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", functools.partial(readyz, runtime))
    app.router.add_get("/metrics", functools.partial(metrics_page, runtime.metrics))
    app.add_subapp(PREFIX, admin_app(runtime))  # the admin API (SPEC section 9)
    app.router.add_get("/portal", _to_portal)
    app.add_subapp("/portal", portal_app(runtime))  # the customer page (SPEC section 15)
    runner = KeyfrontAppRunner(
        app,
        error_page=error_page,
        timeouts=runtime.config.client_timeouts,  # the public deadlines
        max_connections=ADMIN_MAX_CONNECTIONS,
        access_log=None,
    )
    await runner.setup()
    listen = runtime.config.admin_listen
    await web.TCPSite(runner, listen.host, listen.port, reuse_port=True).start()
    return runner


async def _to_portal(request: web.Request) -> web.Response:
    return web.Response(status=308, headers={"Location": "/portal/"})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics_page(metrics: Metrics, request: web.Request) -> web.Response:
    """Prometheus text, merged across the workers of this host (SPEC section 10)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    body = generate_latest(registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def readyz(runtime: ListenerRuntime, request: web.Request) -> web.Response:
    """200 when this instance can serve: the store answers within READY_TIMEOUT, else
    503 naming what failed. Origins are not asked unless `?origins=1`: an origin's
    outage would otherwise take every instance out of its load balancer at once, and
    cache hits with them (issue 16); origins belong in metrics and alerts."""
    checks: dict[str, Awaitable[None]] = {"store": runtime.store.ping()}
    if request.query.get("origins") == "1":
        for route, origin in zip(runtime.config.routes, runtime.origins, strict=True):
            checks[f"origin {route.prefix}"] = origin.ping()
    failed = {}
    for name, check in checks.items():
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await check
        except (KeyfrontError, TimeoutError) as exc:
            failed[name] = str(exc) or type(exc).__name__
    status = 503 if failed else 200
    return web.json_response(
        {"status": "unready" if failed else "ready", "failed": failed}, status=status
    )
