"""Purging cached objects (SPEC section 5): `keyfront cache purge` and POST
/admin/v1/purge both come here.

A purge is done in two steps. First the caller removes the objects from its own host's
cache folder, so that the reply counts what was really removed there. Then it announces
the purge through the store's change feed (`Store.announce`). Every keyfront instance
and worker process follows that feed (app.follow_changes) and drops the objects from its
memory tier, its index, any fill still running and its own disk. With SQLite the feed is
the `changes` table; with Redis it is pub/sub. Either way the purge reaches every
instance within a second.

The caller's own process skips the echo of its announcement (cache/echoes.py): a
request in between may have refilled the object, and a second purge would drop that
fresh copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qsl

from ..cache import Cache
from ..config import Route
from ..errors import Refusal
from ..policy import normalise_path
from ..store import Change, Store
from .settings import within_routes


def purge_problem(target: str, routes: Sequence[Route], prefix: bool = False) -> str | None:
    """Why `target`, a purge's path (or `prefix`), can name no cached object, or None
    (issue 15: such a purge answered "0 object(s) removed"): outside every route, or a
    query string where the route has no variant its parameters could select (a query
    on a route with `variant_params` names one variant, README "Variants")."""
    path, has_query, query = target.partition("?")
    try:
        public = normalise_path(path)
    except Refusal:
        return "is not a valid URL path"
    listed = ", ".join(route.prefix for route in routes)
    if prefix:
        if has_query:
            return "is a prefix: it has no query string"
        return None if within_routes(public, routes) else f"is outside every route ({listed})"
    matching = [route for route in routes if public.startswith(route.prefix)]
    if not matching:
        return f"is outside every route ({listed})"
    route = max(matching, key=lambda r: len(r.prefix))
    names = {name for name, _ in parse_qsl(query, keep_blank_values=True)}
    if has_query and not names & set(route.variant_params):
        return (f"has a query string, which names no variant of route {route.prefix}: "
                "purge the path without it (its variants go with it)")  # fmt: skip
    return None


async def purge(store: Store, cache: Cache | None, paths: list[str], prefix: str | None) -> int:
    """Purge `paths` and the objects under `prefix` from every instance. Returns the
    number of objects removed from this host's folder."""
    purged = 0
    if cache is not None:
        purged = sum([await cache.purge(path) for path in paths])
        if prefix is not None:
            purged += await cache.purge_prefix(prefix)
    changes = [Change("purge", path) for path in paths]
    if prefix is not None:
        changes.append(Change("purge_prefix", prefix))
    for change in changes:
        if cache is not None:
            cache.echoes.expect(change.kind, change.id)
        try:
            await store.announce(change)
        except BaseException:
            if cache is not None:
                cache.echoes.cancel(change.kind, change.id)
            raise
    return purged
