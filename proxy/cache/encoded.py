"""Compressed representations (SPEC section 17): made once per object and coding, off
the request path, and kept in the cache beside the identity as entries of their own.

    Representations.varies(route, headers)     -> do this object's responses vary with
                                                  Accept-Encoding? (Vary)
    Representations.choose(Accept-Encoding)    -> the coding to send (accept_encoding.py)
    Representations.of_entry(entry, coding)    -> a cached object's representation, or
                                                  None: send the identity (and have one
                                                  made, if worth it)
    Representations.of_file(key, coding, ...)  -> the same for a file:// route's file

A representation is an ordinary cache entry (entry.py's one-file format) under the
object's key + two newlines + the coding: bounded by `cache.max_size` and swept LRU
like every object (a hit touches it), held in the memory tier when small, answered by
the same code as the identity (serve.py, sendfile or one write), and found by a purge
of the object's path or prefix (its public path is the object's). Its headers are the
identity's Content-Type and Last-Modified, `Content-Encoding`, and the origin's ETag
with the coding inside its quotes (`"abc"` -> `"abc-br"`, `W/"abc"` -> `W/"abc-br"`),
so that each representation has its own validator (RFC 9110 8.8.3). An origin that
sent no ETag, or one without quotes, gets none on its representations either: keyfront
never makes validators up (SPEC section 1); Last-Modified still serves conditionals.

It records what it was made from (`source`): the identity's fill id (a cached object),
or the file's ETag, which is its mtime and size (a folder file, whose path is in the
key: SPEC section 17's "file identity"). It is used only while that still holds, so a
refill or an edited file is never answered with the old bytes: the next request gets
the identity, and a new representation is made, replacing the old file in place. A
revalidation (origin 304) keeps the fill id and so the representations.

Made on the first request that asks for the coding, which gets the identity meanwhile
(not at fill: a coding nobody asks for costs nothing, and fills stay as they are, shared
across processes as they grow). One job per representation in this process (`_making`);
across worker processes, the representation's lock file (locks.py, never waited on) lets
one make it: another process that finds the lock taken serves the identity until the
file appears. Jobs run MAKING_AT_ONCE at a time, the coding in the default executor,
bodies up to MAX_SOURCE: at most ~2 x 16 MiB held per process. A representation that
would not be smaller than the identity is not kept; that is remembered (bounded) so the
identity is sent without asking again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from ..accept_encoding import Negotiator
from ..codings import CODINGS, Compressible, encode
from ..config import CompressionConfig, Route
from ..metrics import Metrics
from ..origin import Origin, OriginRequest
from ..origin.file import content_type
from ..routing import SEPARATOR
from .entry import CacheEntry, file_name, read_whole
from .files import SMALL_OBJECT, DiskStore, TempObject
from .fill import body_chunks
from .locks import KeyLock
from .space import Space

MAX_SOURCE = 16 * 1024**2  # larger bodies are always sent as they are
MAKING_AT_ONCE = 2  # jobs coding at once, per process
MAX_WAITING = 1_000  # jobs queued, per process; more first requests get the identity only
MAX_SKIPPED = 10_000  # representations remembered as not worth making
MAX_NAMES = 4_096  # folder file names whose type is remembered (varies_by_name)
STAGES = ("original", "sent")  # keyfront_compression_bytes_total's `stage`


class EncodingHost(Protocol):
    """What making a representation needs of the cache (`Cache` is one)."""

    store: DiskStore
    space: Space
    write_errors: int


def representation_key(key: str, coding: str) -> str:
    """The key of `key`'s representation in `coding`: no object's key holds two newlines
    in a row (routing.SEPARATOR), so none can be taken for another's."""
    return f"{key}{SEPARATOR}{SEPARATOR}{coding}"


def representation_keys(key: str) -> list[str]:
    """Every representation `key` can have, whatever coding is configured now."""
    return [representation_key(key, coding) for coding in CODINGS]


def representation_etag(etag: str | None, coding: str) -> str | None:
    if etag is None or len(etag) < 2 or not etag.endswith('"'):
        return None
    return f'{etag[:-1]}-{coding}"'


class Representations:
    def __init__(self, config: CompressionConfig, host: EncodingHost) -> None:
        self.offered = config.encodings
        self.min_size = config.min_size
        self._negotiator = Negotiator(config.encodings)
        self._types = Compressible(config.types)
        self._host = host
        self._making: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(MAKING_AT_ONCE)
        self._skipped: dict[str, str] = {}  # representation key -> source not worth coding
        self._by_name: dict[str, bool] = {}  # folder file name -> varies (varies_by_name)
        self.bytes = {f"{c}\0{stage}": 0 for c in config.encodings for stage in STAGES}
        self._labels = {c: (f"{c}\0original", f"{c}\0sent") for c in CODINGS}

    # --- the request path -----------------------------------------------------------

    def varies(self, route: Route, headers: Mapping[str, str]) -> bool:
        """Whether responses of an object with these (origin) headers vary with
        Accept-Encoding: a compressible type, not coded by the origin, on a route that
        compresses. By type, not size (SPEC section 17: every response of a
        compressible type says so, compressed or not)."""
        return (
            bool(self.offered)
            and route.compress
            and "Content-Encoding" not in headers
            and self._types.media(headers.get("Content-Type"))
        )

    def varies_by_name(self, route: Route, object_path: str) -> bool:
        """`varies` for a folder file, whose type comes from its name (file.py does
        the same); memoised by name, bounded, so that a folder's PNG costs a lookup."""
        if not (self.offered and route.compress):
            return False
        known = self._by_name.get(object_path)
        if known is None:
            known = self._types.media(content_type(object_path))
            if len(self._by_name) >= MAX_NAMES:
                self._by_name.clear()
            self._by_name[object_path] = known
        return known

    def choose(self, accept_encoding: str | None) -> str:
        return self._negotiator.choose(accept_encoding)

    def of_entry(self, entry: CacheEntry, coding: str) -> CacheEntry | None:
        """The representation of cached `entry` in `coding` if it is made and current;
        else None (send the identity), and one is made if worth it."""
        reps = entry.encoded
        if reps is None:
            reps = entry.encoded = {}
        else:
            rep = reps.get(coding)
            if rep is not None:
                return None if rep is entry else rep  # itself: the identity it is
        if not self.min_size <= entry.size <= MAX_SOURCE:
            reps[coding] = entry
            return None
        key = representation_key(entry.key, coding)
        source = f"{entry.fill_id:x}"
        rep = self._current(key, source)
        if rep is not None:
            reps[coding] = rep
        elif self._skipped.get(key) == source:
            reps[coding] = entry
        else:
            headers = _headers(entry.headers, coding)
            self._start(key, source, headers, lambda: self._read_entry(entry), reps)
        return rep

    def of_file(
        self, key: str, coding: str, headers: Mapping[str, str], origin: Origin, path: str
    ) -> CacheEntry | None:
        """The representation in `coding` of the folder file whose current headers (a
        HEAD's: ETag, Content-Length, ...) are `headers`, under object key `key`; else
        None, and one is made if worth it."""
        etag = headers.get("ETag")
        length = headers.get("Content-Length", "")
        if etag is None or not length.isdigit() or not self.min_size <= int(length) <= MAX_SOURCE:
            return None
        key = representation_key(key, coding)
        rep = self._current(key, etag)
        if rep is None and self._skipped.get(key) != etag:
            read = lambda: _read_file(origin, path, etag)  # noqa: E731
            self._start(key, etag, _headers(headers, coding), read, None)
        return rep

    def _current(self, key: str, source: str) -> CacheEntry | None:
        """The representation under `key` made from `source`: from the index, else
        from the disk (another process made it) unless one is being made here."""
        store = self._host.store
        rep = store.index.get(key)
        if rep is None and key not in self._making:
            rep = store.load(key)
        return rep if rep is not None and rep.source == source and rep.status == 200 else None

    def count(self, coding: str, original: int, sent: int) -> None:
        """A representation was sent: `sent` bytes standing for `original` identity ones."""
        counts = self.bytes
        original_label, sent_label = self._labels[coding]
        counts[original_label] = counts.get(original_label, 0) + original
        counts[sent_label] = counts.get(sent_label, 0) + sent

    def count_into(self, metrics: Metrics) -> None:
        metrics.counters["compression_bytes"] = dict(self.bytes)

    # --- making them, off the request path ---------------------------------------------

    def _start(
        self,
        key: str,
        source: str,
        headers: dict[str, str],
        read: Callable[[], Awaitable[bytes | None]],
        reps: dict[str, CacheEntry] | None,
    ) -> None:
        if key in self._making or len(self._making) >= MAX_WAITING:
            return
        task = asyncio.get_running_loop().create_task(self._make(key, source, headers, read, reps))
        self._making[key] = task
        task.add_done_callback(lambda _: self._making.pop(key, None))

    async def _make(
        self,
        key: str,
        source: str,
        headers: dict[str, str],
        read: Callable[[], Awaitable[bytes | None]],
        reps: dict[str, CacheEntry] | None,
    ) -> None:
        coding = headers["Content-Encoding"]
        async with self._slots:
            lock = KeyLock(self._host.store.lock_path(file_name(key)))
            if not lock.acquire():
                return  # another process is making it: its file is found once published
            try:
                identity = await read()
                if identity is None:
                    return  # gone or changed meanwhile: the next request starts afresh
                loop = asyncio.get_running_loop()
                coded = await loop.run_in_executor(None, encode, identity, coding)
                if len(coded) >= len(identity):
                    self._skip(key, source)
                    return
                fill_id = int.from_bytes(os.urandom(8), "little")
                rep = CacheEntry(
                    key, file_name(key), 200, len(coded), headers, time.time(), fill_id, 0,
                    source=source,
                )  # fmt: skip
                if await self._publish(rep, coded) and reps is not None:
                    reps[coding] = rep
            finally:
                lock.release()

    def _skip(self, key: str, source: str) -> None:
        if len(self._skipped) >= MAX_SKIPPED:
            self._skipped.clear()
        self._skipped[key] = source

    async def _publish(self, rep: CacheEntry, coded: bytes) -> bool:
        """Write `rep` to a temp file and put it in place, counted against max_size
        like a fill's object (space.py); False if the cache could not write it."""
        host = self._host
        try:
            temp = TempObject(host.store, rep)
        except OSError:
            host.write_errors += 1
            return False
        allocated = host.store.allocated(rep.file_size)
        host.space.reserve(allocated)
        kept = False
        try:
            temp.write(coded)
            await host.space.settled()  # publish after any sweep: see space.py
            host.space.freed(temp.publish())
            kept = True
        except OSError:
            host.write_errors += 1
        finally:
            host.space.settle(allocated, kept)
            temp.drop()
            temp.close()
        if kept:
            host.store.remember(rep, coded if rep.size <= SMALL_OBJECT else None)
        return kept

    async def _read_entry(self, entry: CacheEntry) -> bytes | None:
        if entry.body is not None:
            return entry.body
        path = self._host.store.path(entry.name)
        return await asyncio.get_running_loop().run_in_executor(None, _read_body, path, entry)

    async def close(self) -> None:
        tasks = list(self._making.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _headers(identity: Mapping[str, str], coding: str) -> dict[str, str]:
    headers = {"Content-Encoding": coding}
    for name in ("Content-Type", "Last-Modified"):
        if name in identity:
            headers[name] = identity[name]
    etag = representation_etag(identity.get("ETag"), coding)
    if etag is not None:
        headers["ETag"] = etag
    return headers


def _read_body(path: str, entry: CacheEntry) -> bytes | None:
    """The identity's body from its file, in a worker thread; None if the file is gone
    or another fill replaced it."""
    whole = read_whole(path, entry)
    return None if whole is None else whole[0][entry.body_offset :]


async def _read_file(origin: Origin, path: str, etag: str) -> bytes | None:
    """A folder file's bytes, if it still has `etag` (its mtime and size)."""
    fetched = await origin.fetch(OriginRequest(path))
    try:
        if fetched.status != 200 or fetched.headers.get("ETag") != etag:
            return None
        chunks: list[bytes] = []
        size = 0
        async for chunk in body_chunks(fetched):
            size += len(chunk)
            if size > MAX_SOURCE:
                return None
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        await fetched.close()
