"""Per-key traffic for analytics (SPEC section 15): per key and hour, the referrer
origins, objects and client addresses of served and refused requests, each in a
bounded Space-Saving sketch (proxy/sketch.py), beside section 4's exact counters.

Every value comes from the client, so each is bounded before it is stored: a referrer
is reduced to its page origin by the referrer parser (referrers.page_origin, cached per
process like its parses), a path is the normalised one (no control character, so no
TAB or newline for the sketches' wire form), and each is cut to MAX_VALUE characters.
A refused request's item is "<code> <value>" (codes hold no space). No referrer is the
empty origin; an unparsable one is UNPARSABLE (no parsed origin has parentheses).
"""

from __future__ import annotations

from .referrers import page_origin
from .sketch import Sketch, merged

SERVED = ("referrers", "objects", "ips")
REFUSED = ("refused_referrers", "refused_objects", "refused_ips")
DIMENSIONS = SERVED + REFUSED
MAX_VALUE = 256  # a DNS name has at most 253 characters; paths past this are cut
NO_REFERRER = ""
UNPARSABLE = "(unparsable)"
_origins: dict[str, str] = {}  # page (Referer value) -> its origin, as referrers caches parses
origins = _origins  # read-only outside this module: referrer_of's cache


class Traffic:
    """One key's sketches for one hour."""

    __slots__ = DIMENSIONS

    def __init__(self) -> None:
        for name in DIMENSIONS:
            setattr(self, name, Sketch())

    referrers: Sketch
    objects: Sketch
    ips: Sketch
    refused_referrers: Sketch
    refused_objects: Sketch
    refused_ips: Sketch

    def add(self, referrer: str, path: str, ip: str, sent: int, code: str | None) -> None:
        if code is None:
            # Sketch.add's path for an item already tracked, written out: three method
            # calls were half this method's cost (0.58 µs a request, 0.3 µs now).
            entry = self.referrers.counters.get(referrer)
            if entry is None:
                self.referrers.add(referrer, sent)
            else:
                entry[0] += 1
                entry[2] += sent
            entry = self.objects.counters.get(path)
            if entry is None:
                self.objects.add(path, sent)
            else:
                entry[0] += 1
                entry[2] += sent
            entry = self.ips.counters.get(ip)
            if entry is None:
                self.ips.add(ip, sent)
            else:
                entry[0] += 1
                entry[2] += sent
        else:
            self.refused_referrers.add(f"{code} {referrer}")
            self.refused_objects.add(f"{code} {path}")
            self.refused_ips.add(f"{code} {ip}")

    def sketches(self) -> dict[str, Sketch]:
        """The dimensions that counted something."""
        found = {name: getattr(self, name) for name in DIMENSIONS}
        return {name: sketch for name, sketch in found.items() if len(sketch)}


def merged_sketches(rows: list[dict[str, Sketch]]) -> dict[str, Sketch]:
    """Dimension by dimension, the merge of several rows' sketches (hours, keys)."""
    names = sorted({name for row in rows for name in row})
    return {name: merged(row[name] for row in rows if name in row) for name in names}


def referrer_of(page: str | None) -> str:
    """The origin of the page a request came from (Exchange.page: Referer, else Origin
    unless "null"), as counted. `origins.get(page)` first is this function's fast path,
    for callers on the request path."""
    if not page:
        return NO_REFERRER
    found = _origins.get(page)
    if found is not None:
        return found
    found = (page_origin(page) or UNPARSABLE)[:MAX_VALUE]
    if len(page) <= 1024:  # as referrers._url_cache: 4096 entries of 1 KiB at most
        if len(_origins) >= 4096:
            _origins.clear()
        _origins[page] = found
    return found


def split_item(item: str, refused: bool) -> tuple[str | None, str]:
    """(code, value) of a sketch item: code None for a served request's."""
    if not refused:
        return None, item
    code, _, value = item.partition(" ")
    return code, value
