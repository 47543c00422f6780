"""Which route a path names (SPEC section 1): the longest route prefix it starts with;
and each route's identity in the cache key (SPEC section 5): its prefix and its origin.

One rule for every caller, so that a request, a purge and a path scope agree on what a
path means (issue 12 item 1): the path compared is always the normalised, decoded one
(`policy.normalise_path`), never the raw request text. Matching the raw text let
`/pub/secre%74/plan.txt` take the public route `/pub/` while its decoded object path
`secret/plan.txt` named the keyed route `/pub/secret/`'s object.

Route prefixes start and end with "/" (config.load refuses others), so a plain string
prefix test matches whole segments only: `/pubx/a` is not under `/pub/`. The compare is
case-sensitive, as paths are (RFC 3986 6.2.2.1 folds only the scheme and host).

A cache key starts with `key_space(route)`: the route's prefix and its origin's
identity, so that nested routes never share an entry (`/pub/` + `secret/plan.txt` is
not `/pub/secret/` + `plan.txt`), and a route pointed at another origin never answers
with the old origin's bytes (issue 14). `cache.entry.cache_key` adds the object path.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar
from urllib.parse import quote

from .config import Route
from .origin import origin_identity

T = TypeVar("T")

# Between the parts of a cache key: a decoded object path never holds a control
# character (policy.normalise_path refuses them), nor does a route prefix (config), nor
# an origin identity or a variant query once percent-encoded. So no two (route, origin,
# object path, variant) share a key, however the prefixes nest or the paths read.
SEPARATOR = "\n"


class Routes(Generic[T]):
    """Values by route prefix; `match(path)` is the value of the longest prefix of the
    decoded `path`, or None. Costs one `startswith` per route tried."""

    __slots__ = ("_table",)

    def __init__(self, entries: Iterable[tuple[str, T]]) -> None:
        table = list(entries)
        for prefix, _ in table:
            if not (prefix.startswith("/") and prefix.endswith("/")):
                raise ValueError(f"a route prefix starts and ends with '/': {prefix!r}")
        # Longest first, so /pub/secret/ wins over /pub/.
        self._table = tuple(sorted(table, key=lambda entry: len(entry[0]), reverse=True))

    def match(self, path: str) -> T | None:
        for prefix, value in self._table:
            if path.startswith(prefix):
                return value
        return None


def key_space(route: Route) -> str:
    """The start of every cache key of `route`: prefix, newline, origin identity, newline.
    Computed once per route (exchange.Target)."""
    origin = quote(origin_identity(route), safe=":/@ ")
    return f"{route.prefix}{SEPARATOR}{origin}{SEPARATOR}"
