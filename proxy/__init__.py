"""keyfront: a keyed file proxy in front of object storage (see README.md and SPEC).

The package's layers, from the entry points down to the value types; a module imports
from its own layer and the ones below it, never from one above:

    entry points     __main__.py, cli/, app.py (wiring), supervisors/ (--workers N)
    operators        admin/ (the admin listener and API), manage/ (shared with the CLI)
    request path     listener.py, pipeline.py, delivery.py, cache/, exchange.py,
                     accesslog.py
    per-key state    cached_key.py, record_cache.py, keylookup/, imported.py,
    and backends     ratelimit.py, shared_limiter.py, usage.py, metrics.py, origin/,
                     store/, routing.py
    values, rules    records.py, keys.py, policy.py, referrers.py, units.py, config/,
    (no I/O)         errors.py (every error), conditional.py, wire.py, periodic.py,
                     manage/settings.py, xcache.py, request_ids.py, failpoints.py

A value type lives in a leaf module next to the lowest layer that uses it (the store's
rows in store/base.py, the origins' requests in origin/base.py, CachedKey in
cached_key.py), so naming a type never means importing the layer above.
tests/test_structure.py parses every module and fails on any import cycle; imports
under `if TYPE_CHECKING:` are the one exception, since they never run.

This module owns the version only, and imports nothing: every module of the package
imports it first, and `python -m proxy --help` must stay cheap.
"""

__version__ = "0.1.0"
