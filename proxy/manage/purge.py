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

from ..cache import Cache
from ..store import Change, Store


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
