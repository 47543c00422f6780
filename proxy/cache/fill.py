"""Coalesced fills: one origin fetch per object, however many requests want it.

A `Fill` is a task of its own, not part of any request, so a client that disconnects
does not stop it for the others. Requests that miss meanwhile `join()` it and are served
from its temp file as it grows: each wakes on the fill's per-chunk event (no polling
delay) and reads what it needs with pread, so its memory stays one chunk whatever the
object's size, and a slow client never holds up the fill or the other clients.

Steps (SPEC section 5):
1. take the object's cross-process lock (locks.py); if another process holds it, follow
   that process's fill as it grows (share.py), or once it is done use the object it
   stored (FOUND): one origin fetch across all worker processes;
2. GET the whole object from the origin (no Range: the cache wants all of it), with
   If-None-Match / If-Modified-Since when revalidating a stale entry;
3. 304 -> the entry is refreshed (REFRESHED); 404 -> a negative entry (ABSENT); a body
   larger than `max_object_size`, of unknown length, or that a respected origin
   Cache-Control forbids storing -> pass-through (PASS);
4. 200 -> reserve its size (space.py), write header and body to a uniquely named temp
   file, and `os.replace` it into place only once the byte count matches Content-Length.

An origin failure mid-body, a short body or a write error leaves no published object:
the temp file is unlinked. Readers then see `FillBroken`; on a write error (disk full)
they fetch the rest of their bytes from the origin themselves (serve.py), so the request
still succeeds, uncached, and `write_errors` counts it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Protocol

from ..config import CacheConfig
from ..errors import NotFound, OriginError, OriginTimeout, Unavailable
from ..origin import Origin, OriginRequest, OriginResponse
from .entry import CacheEntry, file_name, kept_headers
from .files import SMALL_OBJECT, DiskStore, TempObject
from .fill_outcome import FillBroken, FillOutcome
from .freshness import lifetime, storable
from .locks import ATTEMPTS, KeyLock
from .share import FillSharing, FollowedFill
from .space import Space

log = logging.getLogger("keyfront.cache")


class FillHost(Protocol):
    """The pieces of the cache a fill uses, and no more (`Cache` is one): its files,
    their space, the fills other processes share, its settings, and three reports
    back: entry freshness, "pass this key through", "this fill is done"."""

    config: CacheConfig
    store: DiskStore
    space: Space
    sharing: FillSharing
    write_errors: int  # counted here: the cache could not write (SPEC section 5)

    @property
    def sharing_address(self) -> str: ...

    def fresh(self, entry: CacheEntry, now: float) -> bool: ...

    def bypass_for(self, key: str, seconds: float) -> None: ...

    def finished(self, fill: Fill) -> None: ...


class _WriteError(Exception):
    pass


class Fill:
    """One origin fetch of `key` into the cache; see the module docstring."""

    def __init__(
        self,
        cache: FillHost,
        key: str,
        origin: Origin,
        request: OriginRequest,
        previous: CacheEntry | None,
        *,
        respect: bool = False,
    ) -> None:
        self.cache = cache
        self.key = key
        self.name = file_name(key)
        self.origin = origin
        self.request = request  # the object (and variant) to GET, without conditionals
        self.previous = previous  # the stale entry being revalidated, if any
        self.respect = respect  # freshness from the origin's Cache-Control (freshness.py)
        self.started: asyncio.Future[FillOutcome] = asyncio.get_running_loop().create_future()
        self.started.add_done_callback(_retrieve)
        self.entry: CacheEntry | None = None
        self.written = 0  # body bytes in the temp file
        self.complete = False
        self.broken: FillBroken | None = None
        self.discard = False  # purged while filling: do not publish
        self._temp: TempObject | FollowedFill | None = None
        self._readers = 0
        self._finished = False
        self._wake = asyncio.Event()
        self._lock_size = 0  # bytes the held lock file takes: counted (space.py)
        self._allocated = 0  # the bytes reserved for the object being written

    # --- readers --------------------------------------------------------------

    def join(self) -> None:
        """Register a reader before awaiting `started`: the temp file stays open until
        every reader that joined has left."""
        self._readers += 1

    def leave(self) -> None:
        self._readers -= 1
        self._close_if_idle()

    @property
    def fd(self) -> int:
        """The temp file (published or not), open while a reader is registered."""
        assert self._temp is not None
        return self._temp.fd

    async def readable(self, position: int) -> int:
        """Wait until body byte `position` is in the file; the bytes there now. Raises
        FillBroken once nothing more will come."""
        while self.written <= position and not self.complete:
            if self.broken is not None:
                raise self.broken
            wake = self._wake
            await wake.wait()
        if self.written <= position:  # complete, yet short of it: only for a bad caller
            raise FillBroken(by_origin=True)
        return self.written

    def _progress(self) -> None:
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    # --- the fill task -----------------------------------------------------------

    async def run(self) -> None:
        lock = KeyLock(self.cache.store.lock_path(self.name))
        try:
            await self._locked_run(lock)
        except (OriginError, OriginTimeout) as exc:
            self._fail(exc)
        except _WriteError:
            self.cache.write_errors += 1
            self._fail(FillBroken(by_origin=False))
        except asyncio.CancelledError:
            self._fail(Unavailable("keyfront is shutting down"))
            raise
        except Exception:
            log.exception("cache fill of %r failed", self.key)
            self._fail(OriginError())
        finally:
            if lock.release():
                self.cache.space.freed(self._lock_size, objects=0)
            self._finish()

    async def _locked_run(self, lock: KeyLock) -> None:
        for _ in range(ATTEMPTS):
            if lock.acquire():
                written = lock.advertise(self.cache.sharing_address)
                self._lock_size = self.cache.store.allocated(written)
                self.cache.space.charge(self._lock_size)
                break
            # Another process is filling it: follow its fill as it grows, else wait for
            # it to finish and use what it stored.
            if await self._follow(lock):
                return
            await lock.released()
            if self._found(self.cache.store.load(self.key)):
                return
        found = self.cache.store.load(self.key)  # stored by another process since?
        if self._found(found):
            return
        base = found if found is not None and found.status == 200 else self.previous
        try:
            response = await self.origin.fetch(_conditional(self.request, base))
        except NotFound:
            self._store_absent()
            return
        try:
            await self._receive(response, base)
        finally:
            await response.close()

    async def _follow(self, lock: KeyLock) -> bool:
        """Serve this fill's readers from another process's fill of the same object, as
        it grows (share.py); False if there is none to follow."""
        followed = await self.cache.sharing.follow(lock.holder, self.key, self.name)
        if followed is None:
            return False
        self._temp, self.entry = followed, followed.entry
        self._start(FillOutcome.STORED)
        try:
            async for written in followed.progress():
                self.written = written
                self._progress()
        except (ConnectionError, ValueError):
            # The filler stopped short (an origin failure, or it died): its bytes so far
            # are good, and readers fetch the rest from the origin (serve.py).
            self._fail(FillBroken(by_origin=False))
            return True
        self.complete = True
        self._progress()
        self.cache.store.load(self.key)  # index what the other process published
        return True

    async def storing(self) -> bool:
        """Whether this process writes a body that others can follow (share.py): once
        the origin has answered, True for a 200 being stored here."""
        try:
            outcome = await asyncio.shield(self.started)
        except Exception:  # any failure means: nothing to follow
            return False
        return outcome is FillOutcome.STORED and isinstance(self._temp, TempObject)

    @property
    def temp_path(self) -> str:
        """The temp file being written ("" once published or dropped)."""
        return self._temp.path if isinstance(self._temp, TempObject) else ""

    def _found(self, found: CacheEntry | None) -> bool:
        """Use `found` (FOUND) if it is a fresh object stored or revalidated since this
        fill began, by another process."""
        if found is None or not self.cache.fresh(found, time.time()):
            return False
        previous = self.previous
        if previous is not None and (found.fill_id, found.stored_at) == (
            previous.fill_id,
            previous.stored_at,
        ):
            return False
        self.entry = found
        self._start(FillOutcome.FOUND)
        return True

    async def _receive(self, response: OriginResponse, base: CacheEntry | None) -> None:
        if response.status == 304 and base is not None:
            self.cache.store.refresh(base, time.time())
            self.cache.store.remember(base)
            self.entry = base
            self._start(FillOutcome.REFRESHED)
            return
        if response.status != 200:
            raise OriginError(f"the origin answered {response.status} to a full GET")
        config = self.cache.config
        if self.respect and not storable(response.freshness):
            self.cache.bypass_for(self.key, config.negative_ttl)
            self._start(FillOutcome.PASS)
            return
        length = _content_length(response.headers)
        if length is None or length > config.max_object_size:
            self.cache.bypass_for(self.key, config.ttl)
            self._start(FillOutcome.PASS)
            return
        entry = self._new_entry(200, length, kept_headers(response.headers))
        if self.respect:
            entry.ttl = lifetime(response.freshness, entry.stored_at)
        try:
            self._temp = TempObject(self.cache.store, entry)
        except OSError:
            self.cache.write_errors += 1
            self._start(FillOutcome.UNCACHED)
            return
        self.entry = entry
        self._allocated = self.cache.store.allocated(entry.file_size)
        self.cache.space.reserve(self._allocated)
        self._start(FillOutcome.STORED)
        try:
            await self._write_body(response, entry, self._temp)
        except BaseException:
            self.cache.space.settle(self._allocated, kept=False)
            raise

    def _new_entry(self, status: int, size: int, headers: dict[str, str]) -> CacheEntry:
        fill_id = int.from_bytes(os.urandom(8), "little")
        return CacheEntry(self.key, self.name, status, size, headers, time.time(), fill_id, 0)

    async def _write_body(
        self, response: OriginResponse, entry: CacheEntry, temp: TempObject
    ) -> None:
        """Origin chunks into the temp file, waking the readers after each."""
        small = bytearray() if entry.size <= SMALL_OBJECT else None
        async for chunk in body_chunks(response):
            if self.written + len(chunk) > entry.size:
                raise OriginError("the origin sent more than its Content-Length")
            try:
                temp.write(chunk)
            except OSError as exc:
                raise _WriteError() from exc
            if small is not None:
                small += chunk
            self.written += len(chunk)
            self._progress()
        if self.written != entry.size:
            raise OriginError("the origin's body was shorter than its Content-Length")
        await self.cache.space.settled()  # publish after any sweep: see space.py
        kept = not self.discard and self._publish(temp)
        if kept:
            self.cache.store.remember(entry, bytes(small) if small is not None else None)
        self.cache.space.settle(self._allocated, kept)
        self.complete = True
        self._progress()

    def _publish(self, temp: TempObject, absent: bool = False) -> bool:
        """Put the object (or the cached 404) in place, and remove the key's cached 404
        (or object) if there is one: it is out of date (files.py: one of the two)."""
        space, store = self.cache.space, self.cache.store
        try:
            replaced = temp.publish()
        except OSError:
            self.cache.write_errors += 1
            return False
        if absent:
            space.freed(replaced, objects=0, absent=1)
            space.freed(store.remove(self.name))
        else:
            space.freed(replaced)
            space.freed(store.remove_absent(self.name), objects=0, absent=1)
        return True

    def _store_absent(self) -> None:
        """Origin 404: a header-only file with status 404 in absent/ (bounded apart from
        the objects, files.py), so that other processes see it too; kept in the index
        even if it cannot be written."""
        entry = self._new_entry(404, 0, {})
        try:
            temp = TempObject(self.cache.store, entry)
        except OSError:
            self.cache.write_errors += 1
        else:
            if self._publish(temp, absent=True):  # counted at its blocks: ~100 bytes take 4 KiB
                self.cache.space.stored_absent(self.cache.store.allocated(entry.file_size))
            temp.drop()
            temp.close()
        self.cache.store.remember(entry)
        self.entry = entry
        self._start(FillOutcome.ABSENT)

    # --- ends ----------------------------------------------------------------------

    def _start(self, outcome: FillOutcome) -> None:
        if not self.started.done():
            self.started.set_result(outcome)

    def _fail(self, exc: BaseException) -> None:
        if not self.started.done():
            self.started.set_exception(exc)
        elif not self.complete:
            broken = exc if isinstance(exc, FillBroken) else FillBroken(by_origin=True)
            self.broken = broken
            self._progress()

    def _finish(self) -> None:
        self._finished = True
        self.cache.finished(self)
        if self._temp is not None:
            self._temp.drop()  # unless published
        if not self.started.done():  # a bug, not an outcome: never leave readers hanging
            self.started.set_exception(OriginError())
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        if self._readers <= 0 and self._finished and self._temp is not None:
            self._temp.close()


def _conditional(request: OriginRequest, base: CacheEntry | None) -> OriginRequest:
    """The fill's GET, conditional on `base` when revalidating a stored object."""
    if base is None or base.status != 200:
        return request
    headers = base.headers
    return dataclasses.replace(
        request, if_none_match=headers.get("ETag"), if_modified_since=headers.get("Last-Modified")
    )


async def body_chunks(response: OriginResponse) -> AsyncIterator[bytes]:
    if response.data is not None:
        yield response.data
    elif response.stream is not None:
        async for chunk in response.stream:
            yield chunk


def _content_length(headers: dict[str, str]) -> int | None:
    value = headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


def _retrieve(future: asyncio.Future[FillOutcome]) -> None:
    """A background refresh may have no reader: mark its exception as seen."""
    if not future.cancelled():
        future.exception()
