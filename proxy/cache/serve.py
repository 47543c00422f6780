"""Answering from the cache, as values: what a request gets from a published entry
(HIT, STALE, REVALIDATED) or from a fill as it grows (MISS). delivery.py writes it;
nothing here touches the socket or the request's Exchange (issue 14 item 6).

    plan(entry, request headers, out)   -> status and the bytes to send; `out` gets
                                           the entry's headers
    entry_body(entry, files, part)      -> those bytes: in memory, or the open file
    fill_chunks(fill, part)             -> those bytes as the fill writes them
    rest_from_origin(origin, fill, ...) -> the rest from the origin, when the cache
                                           could not write the object (disk full)

Preconditions, conditionals, then Range with If-Range are judged on the entry's
validators by the one planner every path uses (conditional.plan): 412, 304 with the
origin's ETag and Last-Modified, 206 for one range, 416, or 200.

Body sources, fastest first (10 KB hits measured with aiohttp on one core: ~11,200
req/s with the body in memory, ~5,800 reading the file in the loop thread): a small
body held in memory; a small body on disk, one pread in the loop thread (~6 µs
page-cached); a large body as its open file, which delivery.py sends with sendfile.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import AsyncGenerator, Mapping

from ..conditional import ByteRange, unsatisfied_range
from ..conditional import plan as conditional_plan
from ..errors import NotFound
from ..origin import Origin, OriginResponse
from .entry import CacheEntry
from .files import SMALL_OBJECT, DiskStore
from .fill import Fill, body_chunks

CHUNK = 128 * 1024  # what a reader of a growing fill reads per wake-up
_VALIDATORS = ("ETag", "Last-Modified")


def plan(
    entry: CacheEntry, asked: Mapping[str, str], out: dict[str, str]
) -> tuple[int, ByteRange | None]:
    """The status a request with headers `asked` gets from `entry`, and the bytes of
    its body (None: no body), as conditional.plan decides for every path; `out` (the
    response headers so far) gets the entry's headers for that status."""
    if entry.status != 200:
        raise NotFound()  # a cached 404 (negative_ttl)
    status, part = conditional_plan(asked, entry.validators)
    if part is None:
        if status == 416:
            out["Content-Range"] = unsatisfied_range(entry.size)
        else:  # 304, 412: the validators only (RFC 9110 15.4.5)
            out.update((k, v) for k, v in entry.headers.items() if k in _VALIDATORS)
        return status, None
    out.update(entry.headers)
    out["Content-Length"] = str(part.length)
    if status == 206:
        out["Content-Range"] = part.content_range(entry.size)
    return status, part


def entry_body(entry: CacheEntry, files: DiskStore, part: ByteRange) -> bytes | io.FileIO | None:
    """The bytes of `part` of a published entry: from memory or one pread when small,
    else its file, open (its body starts at `entry.body_offset`; the caller closes it).
    None if the file vanished or another process replaced it meanwhile."""
    body = entry.body
    if body is None and entry.size <= SMALL_OBJECT:
        body = files.read_small(entry)
        if body is None:
            return None
    if body is not None:
        return body if part.length == len(body) else body[part.start : part.end + 1]
    return files.open_body(entry)


async def fill_chunks(fill: Fill, part: ByteRange) -> AsyncGenerator[bytes, None]:
    """Body bytes part.start..part.end as they reach the fill's file: wake per chunk,
    pread what is there (just written: in the page cache), repeat. Raises FillBroken
    if the fill stops; ends early (short) if the file is shorter than it says."""
    assert fill.entry is not None
    offset = fill.entry.body_offset
    position, end = part.start, part.end + 1
    while position < end:
        available = await fill.readable(position)
        size = min(CHUNK, available - position, end - position)
        data = os.pread(fill.fd, size, offset + position)
        if len(data) != size:
            return
        yield data
        position += size


async def rest_from_origin(
    origin: Origin, fill: Fill, start: int, end: int
) -> AsyncGenerator[bytes, None]:
    """Bytes start..end of the fill's object fetched from the origin with a Range, for
    a reader of a fill the cache could not write (disk full): nothing, if the origin
    no longer has the same object (never splice two versions). Raises what the origin
    raises (Refusal) and closes its response however the caller stops."""
    assert fill.entry is not None
    wanted = dataclasses.replace(fill.request, range=f"bytes={start}-{end}")
    fetched = await origin.fetch(wanted)
    try:
        if fetched.status != 206 or not _same_object(fetched, fill.entry):
            return
        async for chunk in body_chunks(fetched):
            yield chunk
    finally:
        await fetched.close()


def _same_object(fetched: OriginResponse, entry: CacheEntry) -> bool:
    for validator in _VALIDATORS:
        if validator in entry.headers:
            return fetched.headers.get(validator) == entry.headers[validator]
    return False  # nothing to tell versions apart by: do not splice
