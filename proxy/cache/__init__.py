"""The disk cache (SPEC section 5), purpose-built: neither aiohttp-client-cache (bodies
in memory, pickled, unbounded, unsafe across processes) nor diskcache (an SQLite write
per LRU read) fits file bodies shared by worker processes.

    entry.py         CacheEntry and the one-file format (header + body, os.replace'd whole)
    files.py         the files, this process's index of them, the in-memory tier
    fill.py          coalesced fills: one origin fetch per object, readers served as it grows
    fill_outcome.py  what a fill tells its readers: FillOutcome, FillBroken (a leaf)
    locks.py         the per-object flock that coalesces fills across worker processes
    share.py         other processes follow a fill as it grows, through a Unix socket
    space.py         the max_size and max_objects bounds: shared counts and an LRU sweep
    echoes.py        purges this process announced, whose echo on the change feed it skips
    serve.py         answering from an entry or a fill: 200/206/304/412/416, HEAD, sendfile
    encoded.py       compressed representations (SPEC section 17): entries of their own
                     beside the identity, made off the request path
    freshness.py     an origin's Cache-Control / Expires, for routes that respect them

`Cache` ties them together for `delivery.deliver`, which decides per request between
HIT, STALE, a fill (MISS / REVALIDATED) and BYPASS. A `file://` route never comes here
(its files are served from the folder: delivery.py).

What this package owns, and what it may import: the cache folder and everything in it,
fills, and answering from an entry. It imports, of keyfront, only the value and edge
modules below the request pipeline: config, errors, conditional, origin (to fetch),
routing (cache keys), wire and listener (the bytes on the socket), exchange (the
request it answers), metrics (counters at scrape time), policy.normalise_path (a
purge path is normalised as a request path is), and the leaves codings and
accept_encoding (SPEC section 17). It must never import pipeline,
delivery, the record store (proxy/store/), usage, ratelimit, keys, records or admin:
the cache knows nothing of API keys, customers or billing. Inside it, imports flow one
way: fill_outcome, entry and locks are leaves; share.py does not import fill.py (it
names the fill it shares as a Protocol), and fill.py takes the narrow `FillHost`
Protocol, not `Cache`.

Decisions where SPEC section 5 leaves room:
- Freshness is `cache.ttl` from the fetch or the last revalidation, unless the route
  says `origin_cache_control: respect`: then the origin's s-maxage / max-age / Expires
  (freshness.py) set the entry's lifetime, `no-cache` makes it revalidate every time,
  and `no-store` or `private` pass the request through (remembered for negative_ttl).
  A 304 refreshes the entry's age, not its lifetime. The stale windows count from the
  end of the lifetime: `stale_while_revalidate` and `stale_if_error` are extra seconds
  past it, whatever the origin says of them.
- A miss fetches the whole object, whatever Range the client sent, and answers that
  Range from the file as it fills; a range near the end of a large cold object waits
  for the bytes before it (as nginx's proxy_cache without its slice module).
- HEAD and conditional misses fill too (as nginx's `proxy_cache_convert_head`), and
  are answered as soon as the origin's headers are known.
- An object over `max_object_size` costs one cut-short GET, then is remembered for a
  ttl so that its requests go straight through, with their Range.
- An origin answer without Content-Length is not cached (its length cannot be checked).
- The key is the route's prefix, its origin's identity and the decoded object path
  (routing.key_space, entry.cache_key), newline-separated: nested routes never share an
  entry, and a route pointed at another origin starts afresh (issue 12 item 1, issue
  14). Entries of the old key format (`/prefix/path`) are never looked up again; they
  leave by eviction or by a purge by prefix.
- Variant query parameters (`variant_params`, http(s) routes) enter the key as
  `w=100&format=webp` in the route's order, after one more newline.
- Purges take public URL paths (SPEC section 5), normalised as requests are, and find
  their route as a request does. A path purges the object and its variants; a path
  with a query purges the one entry a request with that query would use. A prefix
  purges every entry whose public path (route prefix + object path) starts with it,
  whatever its route or origin.
- Counters (`write_errors`, `coalesced`, `evictions`) are per process; `count_into`
  hands them to /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any
from urllib.parse import parse_qsl

from ..config import CacheConfig, CompressionConfig, Route
from ..errors import BadPath
from ..metrics import Metrics
from ..origin import Origin, OriginRequest
from ..policy import normalise_path
from ..routing import SEPARATOR, Routes, key_space
from .echoes import PurgeEchoes
from .encoded import Representations, representation_keys
from .entry import CacheEntry, cache_key, file_name, public_path, variant_query
from .files import DiskStore
from .fill import Fill
from .fill_outcome import FillBroken, FillOutcome
from .share import FillSharing
from .space import Space, remove_matching

__all__ = ["Cache", "CacheEntry", "Fill", "FillBroken", "FillOutcome", "Freshness"]

MAX_PASSING = 10_000  # keys remembered as passing through, per process

log = logging.getLogger("keyfront.cache")


class Freshness(enum.Enum):
    FRESH = "fresh"  # within ttl (negative_ttl for a cached 404): a HIT
    STALE_SERVE = "stale, serve"  # within stale_while_revalidate: serve, refresh behind
    STALE = "stale"  # revalidate before answering


class Cache:
    """One process's view of the cache folder; `open()` before use, `close()` after.
    `routes`: the configured routes, which purges resolve public paths with."""

    def __init__(
        self,
        config: CacheConfig,
        routes: Iterable[Route] = (),
        compression: CompressionConfig | None = None,
    ) -> None:
        self.config = config
        self.store = DiskStore(config.dir, max_index=config.max_objects)
        self.space: Space
        self.write_errors = 0  # disk full or write failed: served uncached (SPEC 5)
        self.coalesced = 0  # requests that joined another's fill
        self._fills: dict[str, Fill] = {}
        self._passing: dict[str, float] = {}  # key -> until (unix time)
        self._tasks: set[asyncio.Task[None]] = set()
        self.sharing = FillSharing(config.dir, self.store.tmp, self._fill_named)
        self.echoes = PurgeEchoes()  # purges this process announced (echoes.py)
        self._spaces = tuple((route, key_space(route)) for route in routes)
        self._routes = Routes((route.prefix, (route, space)) for route, space in self._spaces)
        # SPEC section 17; none configured: nothing is ever compressed
        self.encoded = Representations(compression or CompressionConfig(encodings=()), self)

    async def open(self, rescan: bool = True) -> None:
        """Prepare the folder. `rescan` recounts its bytes in the background, as each
        server start does; a one-off command (`keyfront cache purge`) skips it."""
        await asyncio.get_running_loop().run_in_executor(None, self.store.prepare)
        self.space = Space(self.store, self.config.max_size, self.config.max_objects)
        if rescan:
            self._spawn(self.space.rescan())
            await self.sharing.start()

    async def close(self) -> None:
        """Stop fills still running (in-flight responses have drained by now): their
        temp files are removed, nothing half-written is published."""
        await self.sharing.close()
        await self.encoded.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.space.close()

    @property
    def evictions(self) -> int:
        return self.space.evictions

    def count_into(self, metrics: Metrics) -> None:
        """Copy this process's counters into /metrics (SPEC section 10) at scrape time:
        per-process counts, which the scrape sums across workers, and the folder's
        shared size and object count, which it does not (they are the host's)."""
        metrics.counters["cache_evictions"] = {"": self.evictions}
        metrics.counters["cache_coalesced"] = {"": self.coalesced}
        metrics.counters["cache_write_errors"] = {"": self.write_errors}
        self.encoded.count_into(metrics)
        size, objects, absent = self.space.counts()
        metrics.host_gauges["cache_size_bytes"] = size
        metrics.host_gauges["cache_objects"] = objects + absent  # cached 404s included

    # --- lookups ------------------------------------------------------------------

    def lookup(self, key: str) -> CacheEntry | None:
        return self.store.lookup(key)

    def freshness(self, entry: CacheEntry, now: float) -> Freshness:
        age = now - entry.stored_at
        if entry.status != 200:
            return Freshness.FRESH if age < self.config.negative_ttl else Freshness.STALE
        ttl = self.config.ttl if entry.ttl is None else entry.ttl
        if age < ttl:
            return Freshness.FRESH
        if age < ttl + self.config.stale_while_revalidate:
            return Freshness.STALE_SERVE
        return Freshness.STALE

    def fresh(self, entry: CacheEntry, now: float) -> bool:
        return self.freshness(entry, now) is Freshness.FRESH

    def usable_on_error(self, entry: CacheEntry, now: float) -> bool:
        """Within stale_if_error past its ttl: served when the origin fails."""
        if entry.status != 200:
            ttl = self.config.negative_ttl
        else:
            ttl = self.config.ttl if entry.ttl is None else entry.ttl
        return now - entry.stored_at < ttl + self.config.stale_if_error

    def forget(self, key: str) -> None:
        self.store.forget(key)

    # --- fills ----------------------------------------------------------------------

    def fill(
        self,
        key: str,
        origin: Origin,
        request: OriginRequest,
        previous: CacheEntry | None,
        *,
        respect: bool = False,
    ) -> Fill:
        """The fill under way for `key`, else a new one: one origin fetch per object.
        `respect`: the route takes freshness from the origin's Cache-Control."""
        fill = self._fills.get(key)
        if fill is not None:
            self.coalesced += 1
            return fill
        fill = self._fills[key] = Fill(self, key, origin, request, previous, respect=respect)
        self._spawn(fill.run())
        return fill

    @property
    def sharing_address(self) -> str:
        """Where other processes follow this one's fills ("" when not shared)."""
        return self.sharing.address if self.sharing.listening else ""

    def _fill_named(self, name: str) -> Fill | None:
        return next((f for f in self._fills.values() if f.name == name), None)

    def finished(self, fill: Fill) -> None:
        if self._fills.get(fill.key) is fill:
            del self._fills[fill.key]

    def bypass_for(self, key: str, seconds: float) -> None:
        """Remember for `seconds` that `key` passes through (too big, or the origin
        forbids storing it), to skip a wasted full GET."""
        if len(self._passing) >= MAX_PASSING:
            self._passing.clear()
        self._passing[key] = time.time() + seconds

    def bypassed(self, key: str) -> bool:
        until = self._passing.get(key)
        if until is None:
            return False
        if until > time.time():
            return True
        del self._passing[key]
        return False

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- purge (SPEC section 5: by public URL path or prefix) -------------------------

    async def purge(self, path: str) -> int:
        """Remove the object at public URL path `path` (`/request/12345.svg`) from this
        process and the disk, with its variants on a route that has some (found by a
        scan, as for a prefix), or only the variant its query names; the number of
        objects removed from disk."""
        path, _, query = path.partition("?")
        public = _public(path)
        found = self._routes.match(public)
        if found is None:
            return 0
        route, space = found
        if route.origin.startswith("file://"):
            # Such a route is served from its folder, never from here (SPEC section 5):
            # an edit shows within a second. Only entries of older versions may remain.
            log.info("purge %s: a file:// route is not cached; its files are current", path)
        object_path = public[len(route.prefix) :]
        variant = variant_query(route.variant_params, _first_values(query)) if query else ""
        key = cache_key(space, object_path, variant)
        self._drop_key(key)
        size = self.store.remove(file_name(key))
        self.space.freed(size)
        absent = self.store.remove_absent(file_name(key))  # a cached 404
        self.space.freed(absent, objects=0, absent=1)
        encoded = 0  # its compressed representations (encoded.py), of a folder's file too
        for rep_key in representation_keys(key):
            self._drop_key(rep_key)
            freed = self.store.remove(file_name(rep_key))
            self.space.freed(freed)
            encoded += 1 if freed else 0
        variants = 0
        if route.variant_params and not query:
            self._drop_local(lambda k: k.startswith(key + SEPARATOR))
            variants = await self._remove(lambda k: k.startswith(key + SEPARATOR))
        return variants + encoded + (1 if size else 0) + (1 if absent else 0)

    async def purge_prefix(self, prefix: str) -> int:
        """Remove every object whose public path starts with `prefix` (`/request/`);
        the number removed from disk. On disk, entries of every route and origin the
        folder ever held, and of the old key format, are matched by public path."""
        prefix = _public(prefix)
        keys = self._key_prefixes(prefix)  # this process holds current keys only
        self._drop_local(lambda k: k.startswith(keys))
        return await self._remove(lambda k: public_path(k).startswith(prefix))

    def _key_prefixes(self, public: str) -> tuple[str, ...]:
        """The starts of the current keys whose public path starts with `public`: a
        route inside it whole, or the part of the route it names."""
        starts = []
        for route, space in self._spaces:
            if route.prefix.startswith(public):
                starts.append(space)
            elif public.startswith(route.prefix):
                starts.append(space + public[len(route.prefix) :])
        return tuple(starts)

    async def _remove(self, matches: Callable[[str], bool]) -> int:
        """Unlink the files whose key `matches`; the number removed. Files are matched
        by the key in their header, read in a worker thread: objects other processes
        stored are found too."""
        loop = asyncio.get_running_loop()
        removed = await loop.run_in_executor(None, remove_matching, self.store, matches)
        objects, absent, size = removed
        self.space.freed(size, objects, absent)
        return objects + absent

    def _drop_key(self, key: str) -> None:
        """`_drop_local` of one key, without a scan."""
        self.store.forget(key)
        fill = self._fills.get(key)
        if fill is not None:
            fill.discard = True
        self._passing.pop(key, None)

    def _drop_local(self, matches: Callable[[str], bool]) -> None:
        for key in [k for k in self.store.indexed() if matches(k)]:
            self.store.forget(key)
        for key, fill in self._fills.items():
            if matches(key):
                fill.discard = True  # its readers finish; the object is not published
        for key in [k for k in self._passing if matches(k)]:
            del self._passing[key]


def _public(path: str) -> str:
    """Purge paths are as clients request them: percent-decoded like the pipeline's. A
    path no request could have (BadPath) is kept as given: it matches nothing cached
    under the current key format."""
    try:
        return normalise_path(path)
    except BadPath:
        return path


def _first_values(query: str) -> dict[str, str]:
    """A query's parameters, the first value of each, as a request's `query.get`."""
    values: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        values.setdefault(name, value)
    return values
