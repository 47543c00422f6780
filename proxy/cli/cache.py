"""`keyfront cache purge PATH... | --prefix PREFIX` (SPEC sections 5 and 8).

The command removes the objects from this host's cache folder, if the folder exists here.
It then announces the purge through the store, so every running instance drops the
objects from memory and from its own disk (proxy/manage/purge.py). A host whose
keyfront is stopped when the purge is announced does not see it. Run the command there
too, or let those objects expire by `cache.ttl`.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from ..config import Config
from ..errors import UsageError
from ..manage.settings import parse_path_prefix
from ..store import Store

if TYPE_CHECKING:
    from ..cache import Cache
from .options import Option
from .output import Output, warn

PURGE_OPTIONS: list[Option] = [
    ("paths", {"nargs": "*", "metavar": "PATH", "type": parse_path_prefix,
               "help": "public URL paths, as clients request them: /request/12345.svg"}),
    ("--prefix", {"type": parse_path_prefix, "help": "every object under it: /request/"}),
]  # fmt: skip


async def cache_purge(args: argparse.Namespace, config: Config, store: Store) -> Output:
    # Imported here: the cache brings aiohttp's client along, ~0.2 s of every other
    # command's start-up (each `keyfront` call is a process of its own).
    from ..manage.purge import purge, purge_problem

    if bool(args.paths) == (args.prefix is not None):
        raise UsageError("PATH", "give paths or --prefix (one of the two)")
    targets = [(path, False) for path in args.paths] + [(args.prefix, True)] * bool(args.prefix)
    for target, is_prefix in targets:  # before anything is purged (issue 15)
        problem = purge_problem(target, config.routes, is_prefix)
        if problem:
            raise UsageError("--prefix" if is_prefix else "PATH", f"{target} {problem}")
    cache = await _this_hosts_cache(config)
    try:
        purged = await purge(store, cache, args.paths, args.prefix)
    finally:
        if cache is not None:
            await cache.close()
    where = f"{purged} object(s) removed from {config.cache.dir}" if cache else "no cache here"
    data = {"purged": purged, "announced": True}
    return Output(data, f"{where}; the purge is announced to every instance")


async def _this_hosts_cache(config: Config) -> Cache | None:
    from ..cache import Cache

    """The cache folder on this host, if there is one we can use; the command does not
    create one."""
    if not os.path.isdir(config.cache.dir):
        return None
    cache = Cache(config.cache, config.routes)
    try:
        await cache.open(rescan=False)
    except OSError as exc:
        warn(f"cannot use the cache folder {config.cache.dir} here ({exc}); announcing only")
        return None
    return cache
