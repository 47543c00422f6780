"""Process wiring: start-up, serve until a signal, graceful shutdown (SPEC section 11).

`serve_forever` is the `keyfront serve` entry point. With `workers > 1` it hands the
process to the supervisor (proxy/supervisors), which runs N workers sharing the public
and admin ports through SO_REUSEPORT; each worker runs `serve()`, which reads top to
bottom: start the store, origins and record cache, open both listeners, wait for
SIGTERM/SIGINT, then stop accepting, drain in-flight responses up to
`shutdown_timeout`, and close. Everything start-up opens is entered on one
`AsyncExitStack`, so shutdown closes it in the reverse order, and a start-up that fails
half-way closes what it had opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from .accesslog import AccessLog
from .admin.listener import start_admin
from .cache import Cache
from .config import Config
from .errors import ConfigError, KeyfrontError
from .exchange import Target
from .front_listener import Front
from .imported import ExternalKeys, KeyIds
from .keylookup import LookupCache, lookup_for
from .keys import KeySigner
from .listener import PublicServer, connection_cap, error_page, raise_open_files_limit
from .metrics import Metrics
from .origin import Origin, origin_from_url
from .origin.metered import MeteredOrigin
from .periodic import Periodic, stop_tasks
from .pipeline import Pipeline
from .ratelimit import Limiter, LocalLimiter
from .record_cache import RecordCache
from .redirect import Redirector
from .store import Store, store_from_url
from .store.sqlite import SqliteStore
from .supervisors import is_worker, shared_metrics_dir, supervise, worker_count
from .tls import Certificates
from .usage import UsageMeter
from .usage_spool import store_identity

log = logging.getLogger("keyfront")
GC_THRESHOLD = 20_000  # allocations between gen-0 collections (CPython's default: 700)


@dataclass
class Runtime:
    """What one worker process opened: for the admin listener, and for start-up's steps."""

    config: Config
    store: Store
    origins: list[Origin]
    records: RecordCache
    limiter: Limiter
    metrics: Metrics
    cache: Cache | None = None  # for purges (SPEC section 5)
    external: ExternalKeys | None = None  # the imported keys' set (SPEC section 13)
    lookup: LookupCache | None = None  # the operator's key API (SPEC section 13)


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """`event_loop`: uvloop by default, 12-17% less CPU per 10 KB hit; large hits do not
    need the loop.sendfile it lacks (cache/serve.py). None: asyncio's own loop. uvloop
    is imported only when chosen, so `asyncio` runs where it is not installed."""
    if name == "asyncio":
        return None
    import uvloop

    return uvloop.new_event_loop


def serve_forever(config: Config, workers: int | None = None) -> int:
    """Run keyfront until SIGTERM/SIGINT; the process exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    count = workers or config.workers
    if count > 1 and not is_worker():
        return supervise(config, count)
    try:
        with asyncio.Runner(loop_factory=loop_factory(config.event_loop)) as runner:
            runner.run(serve(config))
    except KeyfrontError as exc:
        log.error("keyfront cannot start: %s", exc)
        return 1
    return 0


async def serve(config: Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:  # leaving it is the shutdown
        await startup(config, stack)
        tune_gc()
        log.info(
            "keyfront serving on %s (admin %s), pid %d",
            config.listen,
            config.admin_listen,
            os.getpid(),
        )
        await stop.wait()


def tune_gc() -> None:
    """Every request allocates a few dozen container objects (futures, dicts, headers),
    so the default gen-0 threshold of 700 runs a collection every few requests. Objects
    that live as long as the process are frozen out of collections, and collections
    run less often. Measured on 10 KB keyed requests, 4 interleaved rounds: +3% req/s.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


async def startup(config: Config, stack: contextlib.AsyncExitStack) -> Runtime:
    """Open everything, each closer entered on `stack` as soon as its part is open.
    The stack closes in reverse, which is the shutdown order (SPEC section 11): stop
    accepting and drain the listeners; publish metrics; flush usage (after the drain:
    every served request counted) and the access log; stop following changes; close
    the key API, the cache, the limiter (it flushes byte counts for quotas), the
    origins, and the store last."""
    store = store_from_url(config.store)
    await store.open()
    stack.push_async_callback(store.close)
    if config.export is not None:  # before any flush, a dead process's spool's included
        store.track_touched_hours()
    records = RecordCache(
        store, config.keys.record_cache_ttl, config.keys.record_cache_size, config.keys.defaults
    )
    metrics = Metrics(shared_metrics_dir(), config.metrics.customer_labels)
    targets = [
        Target(route, MeteredOrigin(origin_from_url(route, config.origin_timeouts), route.prefix,
                                    metrics))
        for route in config.routes
    ]  # fmt: skip
    limiter = limiter_for(config, store)
    runtime = Runtime(config, store, [t.origin for t in targets], records, limiter, metrics)
    for origin in runtime.origins:
        await origin.open()
        stack.push_async_callback(origin.close)
    await limiter.open()
    stack.push_async_callback(limiter.close)
    await open_cache(runtime, stack)
    external = await open_imported(runtime, stack)
    await open_lookup(runtime, stack)
    follow = asyncio.create_task(
        follow_changes(store, records, runtime.cache, external, runtime.lookup)
    )
    stack.push_async_callback(stop_tasks, [follow])
    signer = KeySigner(config.keys.prefix, config.keys.secrets)
    access_log = AccessLog(config.access_log)
    access_log.start()
    stack.push_async_callback(access_log.close)
    usage = UsageMeter(store, config.usage.flush_interval, config.usage.max_pending,
                       config.usage.analytics, spool_dir=spool_dir(config),
                       store_id=store_identity(config.store))  # fmt: skip
    usage.start()
    stack.push_async_callback(usage.close)
    await open_export(runtime, stack)
    metrics.sources.append(functools.partial(_gauges, records, usage, external, limiter))
    metrics.start()
    stack.push_async_callback(metrics.close)
    pipeline = Pipeline(
        config,
        key_ids=KeyIds(signer, external),
        records=records,
        limiter=limiter,
        targets=targets,
        access_log=access_log,
        usage=usage,
        metrics=metrics,
        cache=runtime.cache,
        lookup=runtime.lookup,
    )
    await open_listeners(runtime, pipeline, stack)
    return runtime


async def open_export(runtime: Runtime, stack: contextlib.AsyncExitStack) -> None:
    """The usage export and the quota alerts (SPEC section 16), when configured: every
    worker runs an Exporter, the one holding the store's lease does the work
    (proxy/export/outbox.py)."""
    config = runtime.config
    if config.export is None and config.alerts is None:
        return
    from .export.alerts import QuotaAlerts
    from .export.outbox import Exporter, holder_name
    from .export.sinks import sink_for
    from .export.sinks.alert import AlertSink

    sinks = [sink_for(sink) for sink in config.export.sinks] if config.export else []
    alerts = alert_sink = None
    if config.alerts is not None:
        alerts = QuotaAlerts(runtime.store, config.alerts, config.keys.defaults)
        if config.alerts.secret:
            alert_sink = AlertSink(config.alerts.secret)
    holder = holder_name(config.listen)
    exporter = Exporter(runtime.store, config.export, sinks, config.usage.flush_interval, holder,
                        alerts=alerts, alert_sink=alert_sink)  # fmt: skip
    exporter.start()
    stack.push_async_callback(exporter.close)
    runtime.metrics.sources.append(exporter.publish)


async def open_listeners(
    runtime: Runtime, pipeline: Pipeline, stack: contextlib.AsyncExitStack
) -> None:
    """The public listener, then the admin one (whose /healthz answering says the
    process is up). Both close in one step: the public one stops accepting and drains,
    and only then the admin one closes, so /healthz and /metrics answer during the drain."""
    config = runtime.config
    handler = PublicServer(
        pipeline.handle,
        error_page=error_page if config.tls is None else _with_hsts(config.hsts),
        timeouts=config.client_timeouts,
        max_connections=connection_cap(config.max_connections, raise_open_files_limit()),
        access_log=None,
    )
    runtime.metrics.sources.append(handler.count_into)
    certificates = open_tls(runtime, stack)
    loop = asyncio.get_running_loop()
    # listener.fast_path: keyfront's own protocol first, aiohttp's for what it hands over
    front = Front(handler, pipeline.handle) if config.listener.fast_path else None
    public = await loop.create_server(
        front or handler,
        config.listen.host,
        config.listen.port,
        reuse_port=True,
        backlog=2048,
        ssl=None if certificates is None else certificates.default,
    )
    redirects = await open_redirects(config)
    admin: list[web.AppRunner] = []

    async def close() -> None:
        public.close()
        for server in redirects:
            server.close()
        # pre_shutdown closes idle keep-alive connections and marks busy ones to close
        # after their response (as AppRunner does); without it a client that keeps
        # sending on a keep-alive connection holds the process for shutdown_timeout.
        handler.pre_shutdown()
        if front is None:
            await handler.shutdown(config.shutdown_timeout)
        else:
            front.pre_shutdown()
            await asyncio.gather(
                front.shutdown(config.shutdown_timeout),
                handler.shutdown(config.shutdown_timeout),
            )
        for runner in admin:
            await runner.cleanup()

    stack.push_async_callback(close)
    admin.append(await start_admin(runtime))


def open_tls(runtime: Runtime, stack: contextlib.AsyncExitStack) -> Certificates | None:
    """The public listener's certificates (SPEC section 14), each worker its own, and
    their reload every `reload_interval`; None without `tls:`."""
    tls = runtime.config.tls
    if tls is None:
        return None
    certificates = Certificates(tls)
    reloader = Periodic("tls reload", tls.reload_interval, certificates.reload, final=_nothing)
    reloader.start()
    stack.push_async_callback(reloader.stop)
    runtime.metrics.sources.append(certificates.count_into)
    return certificates


def _with_hsts(hsts: str | None) -> Callable[[int], web.Response]:
    """The public listener's error page for what aiohttp refuses before the pipeline
    runs, with Strict-Transport-Security on HTTPS (SPEC section 14)."""
    if hsts is None:
        return error_page

    def page(status: int) -> web.Response:
        response = error_page(status)
        response.headers["Strict-Transport-Security"] = hsts
        return response

    return page


def _nothing() -> None:
    return None


async def open_redirects(config: Config) -> list[asyncio.Server]:
    """The `redirect_http_listen` listener: 308 to https:// (SPEC section 14)."""
    if config.redirect_http_listen is None:
        return []
    handler = PublicServer(
        Redirector(config.listen.port).handle,
        error_page=error_page,
        timeouts=config.client_timeouts,
        max_connections=connection_cap(config.max_connections, raise_open_files_limit()),
        access_log=None,
    )
    where = config.redirect_http_listen
    server = await asyncio.get_running_loop().create_server(
        handler, where.host, where.port, reuse_port=True, backlog=2048
    )
    return [server]


async def open_cache(runtime: Runtime, stack: contextlib.AsyncExitStack) -> None:
    """The disk cache for this process; a folder it cannot use stops start-up."""
    cache = Cache(runtime.config.cache, runtime.config.routes, runtime.config.compression)
    try:
        await cache.open()
    except OSError as exc:
        raise ConfigError("cache.dir", f"cannot use {cache.store.root}: {exc}") from exc
    runtime.cache = cache
    stack.push_async_callback(cache.close)
    runtime.metrics.sources.append(cache.count_into)


async def open_imported(runtime: Runtime, stack: contextlib.AsyncExitStack) -> ExternalKeys:
    """The set of imported keys (SPEC section 13), loaded before the listeners open.
    A store that is down does not stop start-up: the set loads in the background, and
    external keys get 503 until it has."""
    external = ExternalKeys(runtime.config.keys.external)
    started = time.monotonic()
    try:
        await external.load(runtime.store)
    except KeyfrontError as exc:
        log.warning("imported keys: cannot load the set (%s); retrying", exc)
        external.reload(runtime.store)
    else:
        took = time.monotonic() - started
        log.info("imported keys: %d loaded in %.2fs", len(external), took)
    runtime.external = external
    stack.push_async_callback(external.close)
    return external


async def open_lookup(runtime: Runtime, stack: contextlib.AsyncExitStack) -> None:
    """The key API's client and cache (SPEC section 13), when one is configured."""
    lookup = lookup_for(runtime.config)
    if lookup is None:
        return
    await lookup.open()
    stack.push_async_callback(lookup.close)
    runtime.lookup = lookup
    runtime.metrics.sources.append(lambda metrics: metrics.counters["key_lookups"].update(
        lookup.counts))  # fmt: skip


async def follow_changes(
    store: Store,
    records: RecordCache,
    cache: Cache | None,
    external: ExternalKeys | None = None,
    lookup: LookupCache | None = None,
) -> None:
    """Apply the store's change feed until cancelled (run as a task). Record changes
    drop cached key records (SPEC section 2); purges drop cached objects (SPEC section
    5, proxy/manage/purge.py). A prefix purge scans the folder in a worker thread, so
    it runs on its own (so does a path purge, which scans for a path's variants): a
    revocation right behind it must not wait for the scan. Key, customer and
    `lookup_key` changes also drop the key API's cached answers (SPEC section 13)."""
    purges: set[asyncio.Task[int]] = set()
    async for change in store.changes():
        if external is not None and change.kind in ("imported", "all"):
            external.apply(change, store)
        if lookup is not None:
            lookup.apply(change)
        if change.kind not in ("purge", "purge_prefix"):
            records.apply(change)
        elif cache is not None and not cache.echoes.is_echo(change.kind, change.id):
            purge = cache.purge if change.kind == "purge" else cache.purge_prefix
            task = asyncio.create_task(purge(change.id))
            purges.add(task)
            task.add_done_callback(purges.discard)


def spool_dir(config: Config) -> str:
    """Where usage spool files live (issue 19): `usage.spool_dir`, else in the cache
    folder, which every deployment kit gives keyfront to write (a volume, CacheDirectory)."""
    return config.usage.spool_dir or os.path.join(config.cache.dir, "usage")


def _gauges(
    records: RecordCache,
    usage: UsageMeter,
    external: ExternalKeys,
    limiter: Limiter,
    metrics: Metrics,
) -> None:
    metrics.counters["key_cache"] = {"hit": records.hits, "miss": records.misses}
    metrics.counters["usage_dropped_requests"] = {"": usage.dropped_total}
    metrics.counters["usage_spool_refused"] = {"": usage.spool_refused}
    metrics.host_gauges["imported_keys"] = len(external)  # every worker holds the same set
    metrics.gauges["usage_pending"] = usage.pending
    metrics.gauges["store_degraded"] = int(limiter.degraded)  # summed: workers degraded


def limiter_for(config: Config, store: Store) -> Limiter:
    """Redis stores share buckets through Redis; SQLite means one host, where each of
    the N worker processes holds 1/N of every rate (README "Rate limits")."""
    if isinstance(store, SqliteStore):
        return LocalLimiter(1 / worker_count(), store, config.usage.flush_interval)
    from .shared_limiter import SharedLimiter
    from .store.resp import resp_client_from_url

    client = resp_client_from_url(config.store)
    fallback = LocalLimiter(quotas=False)  # quotas are not checked while degraded
    return SharedLimiter(client, config.store_timeout, config.on_store_error, fallback)
