"""The `cache.max_size` and `cache.max_objects` bounds (SPEC section 5; issue 12): a
shared count of bytes and objects, and an LRU sweep.

The count lives in `<dir>/size`: the bytes, the number of published objects and the
number of cached 404s (8 bytes each), updated under flock by every process sharing the
folder, so N worker processes enforce one bound, not N, and /metrics reports the folder
once, not N times.
Bytes are what the filesystem allocates: whole blocks (`DiskStore.allocated`), so a
cached 404 of ~100 bytes counts the 4 KiB it takes, and lock files count while their
fill holds them (they are removed as it ends, locks.py). Clients choose the paths, so
the number of objects is bounded too: each one costs an inode and an index entry in
every worker (files.py).

Cached 404s have a bound of their own, `max_objects` / 10 (store.ABSENT_SHARE), and
leave among themselves, oldest first (review finding 8): any client can make one per
request by asking for absent paths, and counted as objects, a flood of them would make
the LRU sweep evict every object not hit meanwhile, i.e. empty the cache. A tenth keeps
what they cost (an inode, a 4 KiB block, an index entry per worker) small beside the
objects' while holding a flood's worth of misses for `negative_ttl`. They take blocks,
so they count towards `max_size` too; a sweep for bytes evicts them before any object
(a cached 404 saves one origin 404, an object a whole body), so they never push objects
below LOW_WATER of `max_size`, where any sweep leaves them.

A fill *reserves* its object's size before writing the first byte (from
Content-Length), and only publishes once any sweep under way has finished, so published
objects stay within `max_size` and the excess is the objects being written, as SPEC
section 5 allows. (Only when more fills than the bound holds finish during one sweep do
they publish over it, until the sweep that their publication starts.)

A sweep (one process at a time, `<dir>/sweep.lock`) lists the object files in a worker
thread and unlinks the least recently used until both counts are under LOW_WATER of
their bounds, so sweeps come once per ~10% of a bound written, not once per object.
"Used" is this process's last hit when it has one, else the file's mtime (its store or
revalidation time): approximate LRU, which SPEC allows. Worker processes behind one
SO_REUSEPORT port see much the same traffic, so each one's hits are a fair sample.

The counter can drift (a process killed mid-fill leaves its reservation counted):
always upwards, which only evicts a little early, and a start-up recounts the folder.
Only the first process to start on it does (an exclusive flock on `<dir>/users`, which
every server process then holds shared): workers started beside a running one, or
together, would otherwise add their recount to the live count, which the others keep
changing meanwhile, and count the folder twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import os
import struct
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

from ..periodic import stop_tasks
from .entry import MAX_META, PREFIX, header_key
from .files import FANOUT, DiskStore, absent_bound
from .locks import still_linked

log = logging.getLogger("keyfront.cache")
LOW_WATER = 0.9  # a sweep evicts down to this fraction of max_size and max_objects
SWEEP_RETRY = 0.1  # seconds: while another process sweeps, look again after this
LEFTOVER_LOCK_AGE = 60.0  # seconds: an unheld lock file this old was left by a crash
_OPEN_CREATE = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
_COUNTERS = struct.Struct("<qqq")  # bytes (published and reserved), objects, cached 404s
Counts = tuple[int, int, int]


class Space:
    def __init__(self, store: DiskStore, max_size: int, max_objects: int = 100_000) -> None:
        self.store = store
        self.max_size = max_size
        self.max_objects = max_objects
        self.max_absent = absent_bound(max_objects)
        self.evictions = 0  # objects and cached 404s evicted by this process's sweeps
        self._fd = os.open(os.path.join(store.root, "size"), _OPEN_CREATE, 0o600)
        if os.fstat(self._fd).st_size == 0:
            self._add(0, write=True)  # its block exists before any recount counts it
        self._sweep_lock = os.path.join(store.root, "sweep.lock")
        self._sweep: asyncio.Task[None] | None = None
        self._inflight = 0  # bytes this process has reserved and not yet settled
        self._users: int | None = None  # `users`, flocked from rescan() on

    async def close(self) -> None:
        if self._sweep is not None:  # a sweep is started on demand, not every interval
            await stop_tasks([self._sweep])
        os.close(self._fd)
        if self._users is not None:
            os.close(self._users)  # and with it the flock

    @property
    def total(self) -> int:
        return self._add(0)[0]

    def counts(self) -> Counts:
        """(bytes, published objects, cached 404s) in the folder, every process's."""
        return self._add(0)

    def reserve(self, size: int) -> None:
        """Count an object about to be written (`size`: the bytes it will take on disk,
        store.allocated); sweep if that passes a bound, or its publication would."""
        self._inflight += size
        total, count, _ = self._add(size)
        if total > self.max_size or count >= self.max_objects:
            self.sweep_soon()

    def settle(self, size: int, kept: bool) -> None:
        """A reserved object is published (kept) or abandoned. Fills that waited for one
        sweep together can still leave the count over the bound: sweep again."""
        self._inflight -= size
        if not kept:
            self._add(-size)
        elif self._over(*self._add(0, objects=1)):
            self.sweep_soon()

    def stored_absent(self, size: int) -> None:
        """A cached 404 was published (unreserved: header only): count it."""
        if self._over(*self._add(size, absent=1)):
            self.sweep_soon()

    def charge(self, size: int) -> None:
        """Count a file that is no object (a lock file, while its fill runs)."""
        if size and self._add(size)[0] > self.max_size:
            self.sweep_soon()

    def freed(self, size: int, objects: int | None = None, absent: int = 0) -> None:
        """Files left the folder (objects replaced or purged, a lock file): `size`
        bytes, `objects` objects (one, if `size` says something was there and no
        `absent` is given), `absent` cached 404s."""
        if size:
            objects = (0 if absent else 1) if objects is None else objects
            self._add(-size, -objects, -absent)

    def _over(self, total: int, count: int, absent: int) -> bool:
        return total > self.max_size or count > self.max_objects or absent > self.max_absent

    async def settled(self) -> None:
        """Wait for a running sweep, so that a publish never lands on a full cache."""
        if self._sweep is not None:
            await asyncio.shield(self._sweep)

    def sweep_soon(self) -> None:
        if self._sweep is None or self._sweep.done():
            self._sweep = asyncio.create_task(self._run_sweep())

    async def _run_sweep(self) -> None:
        """Evict down to LOW_WATER of both bounds; again while objects reserved
        meanwhile keep the count over a bound (a publish waits for this, so the bound
        holds). When another process is sweeping, look again after a while: it may
        have ended just before this process's publish passed the bound."""
        while True:
            with _try_lock(self._sweep_lock) as locked:
                if locked:
                    await self._sweep_down()
                    return
            await asyncio.sleep(SWEEP_RETRY)
            if not self._over(*self.counts()):
                return

    async def _sweep_down(self) -> None:
        counts = self.counts()
        while self._over(*counts):
            total, count, absent = counts
            excess = Excess(
                max(0, total - int(self.max_size * LOW_WATER)),
                max(0, count - int(self.max_objects * LOW_WATER)),
                max(0, absent - int(self.max_absent * LOW_WATER)),
            )
            if not await self._evict(excess):
                return
            counts = self.counts()

    async def _evict(self, excess: Excess) -> bool:
        """One pass: evict cached 404s, oldest first, then the least recently used
        objects, until `excess` is gone; False if nothing could be. Lock files that
        crashed processes left behind go too."""
        known = {e.name: e.used for e in self.store.index.values() if e.used}
        loop = asyncio.get_running_loop()
        try:
            evicted = await loop.run_in_executor(None, _evict, self.store, known, excess)
            leftovers = await loop.run_in_executor(None, _drop_leftover_locks, self.store)
        except OSError as exc:
            log.warning("cache sweep failed: %s", exc)
            return False
        self._add(-evicted.size - leftovers, -len(evicted.objects), -len(evicted.absent))
        self.evictions += len(evicted.objects) + len(evicted.absent)
        gone, absent = set(evicted.objects), set(evicted.absent)
        for key in [k for k, e in self.store.index.items() if e.name in gone]:
            self.store.forget(key)
        for key in [k for k, e in self.store.absent_index.items() if e.name in absent]:
            self.store.forget(key)
        return bool(evicted.objects or evicted.absent)

    async def rescan(self) -> None:
        """At a server's start-up: recount the folder if no other process uses it, then
        hold `users` shared for as long as this process runs."""
        self._users = os.open(
            os.path.join(self.store.root, "users"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(self._users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # others run here and keep the count live
            await _hold_shared(self._users)
            return
        try:
            await self._recount()
        finally:
            # Linux converts a flock by dropping it first: another process can take it
            # exclusively in between, and a blocking wait would stall the event loop.
            await _hold_shared(self._users)

    async def _recount(self) -> None:
        """In a worker thread: count what is on disk (correcting any drift) and remove
        what crashed processes left behind. What changed during the scan is kept: the
        count becomes the scan plus the changes since it began."""
        before = self.counts()
        loop = asyncio.get_running_loop()
        try:
            scanned = await loop.run_in_executor(None, _scan, self.store)
        except OSError as exc:
            log.warning("cache scan failed: %s", exc)
            return
        (size, objects, absent), (was, was_objects, was_absent) = scanned, before
        if self._over(*self._add(size - was, objects - was_objects, absent - was_absent)):
            self.sweep_soon()

    def _add(self, delta: int, objects: int = 0, absent: int = 0, write: bool = False) -> Counts:
        """Add to the shared counts under flock: a few µs, held by nobody for longer.
        (A file of an older format, 8 bytes (bytes only) or 16 (no cached 404s), reads
        as far as it goes; the rescan fixes it.)"""
        with _locked(self._fd):
            raw = os.pread(self._fd, _COUNTERS.size, 0).ljust(_COUNTERS.size, b"\0")
            total, count, cached_404s = _COUNTERS.unpack(raw)
            counts = max(0, total + delta), max(0, count + objects), max(0, cached_404s + absent)
            if delta or objects or absent or write:
                os.pwrite(self._fd, _COUNTERS.pack(*counts), 0)
        return counts


@contextlib.contextmanager
def _locked(fd: int) -> Iterator[None]:
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


async def _hold_shared(fd: int) -> None:
    """Take a shared flock on `fd`, polling while a recount holds it exclusively."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            await asyncio.sleep(0.2)


@contextlib.contextmanager
def _try_lock(path: str) -> Iterator[bool]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


class Excess(NamedTuple):
    """What a sweep pass is to remove: bytes, objects, cached 404s."""

    size: int
    objects: int
    absent: int


class Evicted(NamedTuple):
    """What a sweep pass removed: the file names of objects and of cached 404s, and
    the bytes freed."""

    objects: list[str]
    absent: list[str]
    size: int


def _files(top: str) -> Iterator[os.DirEntry[str]]:
    """The files of `store.objects` or `store.absent`, over their fan-out folders."""
    for fan in FANOUT:
        with os.scandir(os.path.join(top, fan)) as entries:
            yield from (e for e in entries if e.is_file(follow_symlinks=False))


def _evict(store: DiskStore, known: dict[str, float], excess: Excess) -> Evicted:
    """In a worker thread: unlink the oldest cached 404s until `excess.absent` of them
    and, before any object, as many of `excess.size` bytes as they hold are gone; then
    the least recently used objects until `excess.size` and `excess.objects` are. A
    pass that only 404s are over never lists the objects."""
    absent: list[str] = []
    size = 0
    if excess.absent or excess.size:
        for name in _oldest_first(store.absent, {}):
            if size >= excess.size and len(absent) >= excess.absent:
                break
            freed = store.remove_absent(name)
            if freed:
                absent.append(name)
                size += freed
    objects: list[str] = []
    if size < excess.size or excess.objects:
        for name in _oldest_first(store.objects, known):
            if size >= excess.size and len(objects) >= excess.objects:
                break
            freed = store.remove(name)
            if freed:
                objects.append(name)
                size += freed
    return Evicted(objects, absent, size)


def _oldest_first(top: str, known: dict[str, float]) -> list[str]:
    """The names of the files in `top`, least recently used first: by this process's
    last hit when `known` has one, else by mtime (stored or revalidated)."""
    candidates = []
    for entry in _files(top):
        st = entry.stat(follow_symlinks=False)
        candidates.append((max(known.get(entry.name, 0.0), st.st_mtime), entry.name))
    candidates.sort()
    return [name for _, name in candidates]


def remove_matching(store: DiskStore, matches: Callable[[str], bool]) -> tuple[int, int, int]:
    """In a worker thread: unlink every object and cached 404 whose key `matches`
    (files of any key format: `matches` decides); the numbers of objects and of cached
    404s removed, and the bytes freed."""
    counts = [0, 0]
    size = 0
    for kind, (top, remove) in enumerate(
        ((store.objects, store.remove), (store.absent, store.remove_absent))
    ):
        for entry in _files(top):
            try:
                with open(entry.path, "rb") as file:
                    key = header_key(file.read(PREFIX.size + MAX_META))
            except OSError:
                continue
            if key is not None and matches(key):
                freed = remove(entry.name)
                counts[kind] += 1 if freed else 0
                size += freed
    return counts[0], counts[1], size


def _scan(store: DiskStore) -> Counts:
    """In a worker thread: the bytes allocated to published objects and cached 404s, to
    objects being written, to held lock files and to the folder's own files (`size`...),
    and the numbers of published objects and of cached 404s; removes temp files of dead
    processes and lock files nobody holds."""
    sizes = [store.allocated(e.stat(follow_symlinks=False).st_size) for e in _files(store.objects)]
    absent = [store.allocated(e.stat(follow_symlinks=False).st_size) for e in _files(store.absent)]
    size, objects = sum(sizes) + sum(absent), len(sizes)
    with os.scandir(store.root) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                size += store.allocated(entry.stat(follow_symlinks=False).st_size)
    with os.scandir(store.tmp) as entries:
        for entry in entries:
            if _alive(entry.name):
                size += store.allocated(entry.stat(follow_symlinks=False).st_size)
                continue
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
    for entry in _locks(store):
        removed, lock_size = _drop_unheld_lock(entry.path)
        size += 0 if removed else store.allocated(lock_size)  # held: a fill is running
    return size, objects, len(absent)


def _locks(store: DiskStore) -> Iterator[os.DirEntry[str]]:
    for fan in FANOUT:
        with os.scandir(os.path.join(store.locks, fan)) as entries:
            yield from entries


def _drop_leftover_locks(store: DiskStore) -> int:
    """In a worker thread, at a sweep: remove the lock files that nobody holds and that
    are older than LEFTOVER_LOCK_AGE (a fill unlinks its own as it ends, locks.py, so
    these are a crashed process's); the bytes they took, which that process counted."""
    freed = 0
    too_old = time.time() - LEFTOVER_LOCK_AGE
    for entry in _locks(store):
        with contextlib.suppress(OSError):
            if entry.stat(follow_symlinks=False).st_mtime < too_old:  # else: not opened
                removed, size = _drop_unheld_lock(entry.path, too_old)
                freed += store.allocated(size) if removed else 0
    return freed


def _alive(temp_name: str) -> bool:
    """Whether the process that named a temp file `<sha256>.<pid>.<n>` still runs."""
    try:
        pid = int(temp_name.split(".")[1])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _drop_unheld_lock(path: str, written_before: float = math.inf) -> tuple[bool, int]:
    """Unlink the lock file at `path` if no process holds it and it was last written
    before `written_before`: (whether it was removed, the bytes in it); (False, 0) if
    there is none. Safe across processes (locks.py): it is unlinked only while this
    thread holds its flock and the path still names the file flocked. A file whose
    holder released (and unlinked) it after this thread opened it is left alone, and so
    is the next holder's file at the same path (review finding 1); its bytes were freed
    by its holder and are not counted here."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # never O_CREAT: gone is gone
    except OSError:
        return False, 0
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False, os.fstat(fd).st_size  # held: a fill is running
        if not still_linked(fd, path):
            return False, 0
        st = os.fstat(fd)
        if st.st_mtime >= written_before:
            return False, st.st_size
        os.unlink(path)
    except OSError:
        return False, 0
    finally:
        os.close(fd)
    return True, st.st_size
