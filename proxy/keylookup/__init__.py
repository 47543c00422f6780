"""Keys from an existing key system, looked up live in the operator's key API (SPEC
section 13, `keys.external.lookup`).

    client.py  POST {url} {"key": ...} with the bearer token; 200, 404, or LookupFailed
    answer.py  the 200 answer, validated as admin input is (docs/key-api.schema.json)
    cache.py   LookupCache: fresh, stale, negative and max_stale answers, single-flight,
               the concurrency cap, unknown_key_rate per client IP, invalidation
    digest.py  keyed digests that name a key on the change feed

The pipeline asks `hit()` first (no await), then, for a key that is not keyfront's own
format and matches `keys.external.pattern`, awaits `resolve()`. Either gives the same
CachedKey a keyfront key gets from the record cache, so checks 4 to 10, usage, the
access log and metrics treat both kinds of key alike, under the operator's key_id and
customer_id.

The package owns the key API: its HTTP client, the answers' validation and their cache.
It builds on the layers below it (records, cached_key.py's compile_key, the local
token buckets, manage/settings.py's validation, the store's Change, config) and must
not import the record cache (a sibling: both build CachedKeys), the request path
(pipeline, delivery, cache/, exchange), the admin API or app.py: the pipeline calls
it, never the reverse.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..config import Config

if TYPE_CHECKING:
    from .cache import LookupCache
    from .client import KeyApi, LookupFailed

__all__ = ["KeyApi", "LookupCache", "LookupFailed", "lookup_for"]


def __getattr__(name: str) -> Any:
    # The cache and the client bring aiohttp's client along: imported on first use, so
    # that the command line's key commands (which need only digest.py) do not pay ~0.14 s
    # of start-up for them (each `keyfront` call is a process of its own).
    if name == "LookupCache":
        from .cache import LookupCache

        return LookupCache
    if name in ("KeyApi", "LookupFailed"):
        from . import client

        return getattr(client, name)
    raise AttributeError(name)


def lookup_for(config: Config) -> LookupCache | None:
    """The process's LookupCache, or None when no key API is configured."""
    from .cache import LookupCache
    from .client import KeyApi

    external = config.keys.external
    if external.lookup is None:
        return None
    return LookupCache(
        external.lookup,
        KeyApi(external.lookup),
        pattern=external.pattern,
        prefix=config.keys.prefix,
        secrets=config.keys.secrets,
        defaults=config.keys.defaults,
    )
