"""Process wiring: start-up, serve until a signal, graceful shutdown (SPEC section 11).

`serve_forever` is the `keyfront serve` entry point. With `workers > 1` it becomes a
supervisor of N worker processes that share the public and admin ports through
SO_REUSEPORT; each worker runs `serve()`, which reads top to bottom: start the store,
origins and record cache, open both listeners, wait for SIGTERM/SIGINT, then stop
accepting, drain in-flight responses up to `shutdown_timeout`, and close.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .accesslog import AccessLog
from .admin import PREFIX as ADMIN_PREFIX
from .admin import admin_app
from .cache import Cache
from .config import Config
from .errors import ConfigError, KeyfrontError
from .exchange import Target
from .imported import ExternalKeys, KeyIds
from .keylookup import LookupCache, lookup_for
from .keys import KeySigner
from .listener import KeyfrontAppRunner, PublicServer, connection_cap, raise_open_files_limit
from .metrics import Metrics
from .origin import Origin, origin_from_url
from .origin.metered import MeteredOrigin
from .pipeline import Pipeline, error_page
from .ratelimit import Limiter, LocalLimiter
from .record_cache import RecordCache
from .store import Store, store_from_url
from .store.sqlite import SqliteStore
from .usage import UsageMeter

log = logging.getLogger("keyfront")
WORKER_ENV = "KEYFRONT_WORKER"
WORKER_COUNT_ENV = "KEYFRONT_WORKER_COUNT"
METRICS_DIR_ENV = "KEYFRONT_METRICS_DIR"  # where workers share their counters
READY_TIMEOUT = 2.0
GC_THRESHOLD = 20_000  # allocations between gen-0 collections (CPython's default: 700)


@dataclass
class Runtime:
    """Everything one worker process opened, so shutdown can close it in order."""

    config: Config
    store: Store
    origins: list[Origin]
    records: RecordCache
    limiter: Limiter
    metrics: Metrics
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    public: asyncio.Server | None = None
    public_handler: PublicServer | None = None
    admin: web.AppRunner | None = None
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
    if count > 1 and WORKER_ENV not in os.environ:
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
    runtime = await startup(config)
    tune_gc()
    log.info(
        "keyfront serving on %s (admin %s), pid %d", config.listen, config.admin_listen, os.getpid()
    )
    try:
        await stop.wait()
    finally:
        await shutdown(runtime)


def tune_gc() -> None:
    """Every request allocates a few dozen container objects (futures, dicts, headers),
    so the default gen-0 threshold of 700 runs a collection every few requests. Objects
    that live as long as the process are frozen out of collections, and collections
    run less often. Measured on 10 KB keyed requests, 4 interleaved rounds: +3% req/s.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


async def startup(config: Config) -> Runtime:
    store = store_from_url(config.store)
    await store.open()
    records = RecordCache(
        store, config.keys.record_cache_ttl, config.keys.record_cache_size, config.keys.defaults
    )
    metrics = Metrics(os.environ.get(METRICS_DIR_ENV), config.metrics.customer_labels)
    targets = [
        Target(route, MeteredOrigin(origin_from_url(route, config.origin_timeouts), route.prefix,
                                    metrics))
        for route in config.routes
    ]  # fmt: skip
    limiter = limiter_for(config, store)
    runtime = Runtime(config, store, [t.origin for t in targets], records, limiter, metrics)
    for origin in runtime.origins:
        await origin.open()
    await limiter.open()
    await open_cache(runtime)
    external = await open_imported(runtime)
    await open_lookup(runtime)
    follow = follow_changes(store, records, runtime.cache, external, runtime.lookup)
    runtime.tasks.append(asyncio.create_task(follow))
    signer = KeySigner(config.keys.prefix, config.keys.secrets)
    access_log = AccessLog(config.access_log)
    access_log.start()
    runtime.closers.append(access_log.close)
    usage = UsageMeter(store, config.usage.flush_interval, config.usage.max_pending)
    usage.start()
    runtime.closers.append(usage.close)  # after the drain: every served request counted
    metrics.sources.append(functools.partial(_gauges, records, usage, external))
    metrics.start()
    runtime.closers.append(metrics.close)
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
    runtime.public_handler = PublicServer(
        pipeline.handle,
        error_page=error_page,
        timeouts=config.client_timeouts,
        max_connections=connection_cap(config.max_connections, raise_open_files_limit()),
        access_log=None,
    )
    metrics.sources.append(runtime.public_handler.count_into)
    runtime.public = await asyncio.get_running_loop().create_server(
        runtime.public_handler,
        config.listen.host,
        config.listen.port,
        reuse_port=True,
        backlog=2048,
    )
    runtime.admin = await start_admin(runtime)
    return runtime


async def open_cache(runtime: Runtime) -> None:
    """The disk cache for this process; a folder it cannot use stops start-up."""
    cache = Cache(runtime.config.cache, runtime.config.routes)
    try:
        await cache.open()
    except OSError as exc:
        raise ConfigError("cache.dir", f"cannot use {cache.store.root}: {exc}") from exc
    runtime.cache = cache
    runtime.closers.append(cache.close)
    runtime.metrics.sources.append(cache.count_into)


async def open_imported(runtime: Runtime) -> ExternalKeys:
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
    runtime.closers.append(external.close)
    return external


async def open_lookup(runtime: Runtime) -> None:
    """The key API's client and cache (SPEC section 13), when one is configured."""
    lookup = lookup_for(runtime.config)
    if lookup is None:
        return
    await lookup.open()
    runtime.lookup = lookup
    runtime.closers.append(lookup.close)
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


def _gauges(
    records: RecordCache, usage: UsageMeter, external: ExternalKeys, metrics: Metrics
) -> None:
    metrics.counters["key_cache"] = {"hit": records.hits, "miss": records.misses}
    metrics.host_gauges["imported_keys"] = len(external)  # every worker holds the same set
    metrics.gauges["usage_pending"] = usage.pending


def limiter_for(config: Config, store: Store) -> Limiter:
    """Redis stores share buckets through Redis; SQLite means one host, where each of
    the N worker processes holds 1/N of every rate (README "Rate limits")."""
    if isinstance(store, SqliteStore):
        workers = int(os.environ.get(WORKER_COUNT_ENV, "1"))
        return LocalLimiter(1 / workers, store, config.usage.flush_interval)
    from .shared_limiter import SharedLimiter
    from .store.resp import resp_client_from_url

    client = resp_client_from_url(config.store)
    fallback = LocalLimiter(quotas=False)  # quotas are not checked while degraded
    return SharedLimiter(client, config.store_timeout, config.on_store_error, fallback)


async def stop_tasks(tasks: list[asyncio.Task[None]], grace: float = 2.0) -> None:
    """Cancel `tasks` and wait for them, `grace` seconds at most: a task that swallows its
    cancellation (a driver turning a cancel into its own timeout error) must not hold a
    SIGTERM'd process for ever. One that does is named in the log."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    done, pending = await asyncio.wait(tasks, timeout=grace)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())
    for task in pending:
        log.warning(
            "task %s did not stop within %.0f s of its cancellation", task.get_name(), grace
        )


async def shutdown(runtime: Runtime) -> None:
    """Stop accepting, let in-flight responses finish (bounded), then close."""
    timeout = runtime.config.shutdown_timeout
    if runtime.public is not None:
        runtime.public.close()
    if runtime.public_handler is not None:
        # pre_shutdown closes idle keep-alive connections and marks busy ones to close
        # after their response (as AppRunner does); without it a client that keeps
        # sending on a keep-alive connection holds the process for shutdown_timeout.
        runtime.public_handler.pre_shutdown()
        await runtime.public_handler.shutdown(timeout)
    if runtime.admin is not None:
        await runtime.admin.cleanup()
    await stop_tasks(runtime.tasks)
    await runtime.limiter.close()  # flushes byte counts for quotas
    for close in runtime.closers:
        await close()
    for origin in runtime.origins:
        await origin.close()
    await runtime.store.close()


# --- admin listener: /healthz, /readyz, /metrics and the admin API (proxy/admin) ---

RUNTIME = web.AppKey("runtime", Runtime)


# The admin API's largest request is a key with its lists (manage/values.py MAX_ITEMS:
# 256 referrer patterns, CIDRs and path prefixes): ~60 KB at the most. aiohttp's default
# is 1 MiB; a smaller cap bounds what one customer token makes the loop parse (issue 12
# item 3). Larger bodies get 413.
ADMIN_MAX_BODY = 64 * 1024
# Admin connections per worker (review finding 5): the admin listener serves operators'
# tools, health checks, Prometheus and customer pages, a few connections each, not the
# public. It shares the worker's descriptors with the public listener, whose cap
# (connection_cap) leaves FD_RESERVE (1,024) for everything else: a quarter of that.
ADMIN_MAX_CONNECTIONS = 256


async def start_admin(runtime: Runtime) -> web.AppRunner:
    app = web.Application(client_max_size=ADMIN_MAX_BODY)
    app[RUNTIME] = runtime
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    app.add_subapp(ADMIN_PREFIX, admin_app(runtime))  # the admin API (SPEC section 9)
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


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics_page(request: web.Request) -> web.Response:
    """Prometheus text, merged across the workers of this host (SPEC section 10)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(request.app[RUNTIME].metrics)
    body = generate_latest(registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def readyz(request: web.Request) -> web.Response:
    """200 when the store and every origin answer within READY_TIMEOUT, else 503
    naming what failed."""
    runtime = request.app[RUNTIME]
    checks = {"store": runtime.store.ping()}
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


# --- supervisor for --workers N ---


def supervise(config: Config, count: int) -> int:
    """Run `count` worker processes sharing the listeners; restart one that dies,
    forward SIGTERM/SIGINT to all and wait for them (each drains on its own)."""
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    metrics_dir = tempfile.mkdtemp(prefix="keyfront-metrics-")  # fresh: no stale counters
    os.environ[METRICS_DIR_ENV] = metrics_dir
    procs = [_spawn_worker(config, i, count) for i in range(count)]
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        for i, proc in enumerate(procs):
            if proc.poll() is not None and not stopping:
                log.error("worker %d exited with %s; restarting it", i, proc.returncode)
                time.sleep(1.0)  # a worker that dies at once must not spin the host
                if stopping:
                    continue  # a signal came during the pause: nothing to restart
                procs[i] = _spawn_worker(config, i, count)
                if stopping:  # it came between the check and the spawn: pass it on
                    procs[i].send_signal(signal.SIGTERM)
        if stopping and all(p.poll() is not None for p in procs):
            shutil.rmtree(metrics_dir, ignore_errors=True)
            return max(p.returncode or 0 for p in procs)
        time.sleep(0.1)


def _spawn_worker(config: Config, index: int, count: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, WORKER_ENV: str(index), WORKER_COUNT_ENV: str(count)}
    argv = [sys.executable, "-m", "proxy", "serve", "-c", config.source, "--workers", "1"]
    return subprocess.Popen(argv, env=env)
