"""What a fill tells its readers, as values: how it started (`FillOutcome`) and how it
broke (`FillBroken`). A leaf of the cache package (it imports nothing), so that
share.py, fill.py, serve.py and delivery.py name them without importing one another:
share.py once imported fill.py inside a function to break the cycle between the two."""

from __future__ import annotations

import enum


class FillOutcome(enum.Enum):
    """What a fill did with the origin's answer, known once its headers are in: the
    value of `Fill.started`, on which delivery decides how to answer (X-Cache)."""

    STORED = "stored"  # a 200 is being written: stream it from the fill
    FOUND = "found"  # another process stored it meanwhile: serve the entry
    REFRESHED = "refreshed"  # origin 304: the stale entry is fresh again
    ABSENT = "absent"  # origin 404: a negative entry, answered 404
    PASS = "pass"  # over max_object_size, of unknown length, or no-store: pass through
    UNCACHED = "uncached"  # the temp file could not be created: pass through


class FillBroken(Exception):
    """The fill stopped mid-body: `by_origin` (an origin failure: the response is cut
    short) or a write error (readers fetch the rest from the origin)."""

    def __init__(self, by_origin: bool) -> None:
        super().__init__("origin failure" if by_origin else "cache write error")
        self.by_origin = by_origin
