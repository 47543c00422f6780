"""The cache's files and this process's index of them.

    objects/ab/<sha256>    published objects (entry.py's format), replaced atomically
    absent/ab/<sha256>     cached origin 404s (SPEC section 5 `negative_ttl`), same format
    tmp/<sha256>.<pid>.<n> objects being written: unique names, same filesystem
    locks/ab/<sha256>      flock'ed by the process filling that object, for as long as
                           the fill runs (locks.py)

The index (a dict) answers a hit with no syscall beyond reading the body: no stat, no
header read, no executor hop. It holds what this process has stored or read; on an
index miss the file is looked up once (another worker process may have stored it),
which costs open + pread + fstat + close on a miss only.

Small objects (<= SMALL_OBJECT) are also kept in a bounded in-memory tier: a body from
memory is the fastest hit measured (10 KB, aiohttp on one core: 11.2k req/s against
5.8k reading the file in the loop thread). The others are read from the file at each
hit: small ones with one pread in the loop thread (~6 µs page-cached), large ones by
sendfile (serve.py).

Every read of a file checks its fill id against the index entry: another process may
have replaced the object, and its bytes must never go out under this entry's headers.

Cached 404s are apart, on disk and in the index, with a bound of their own (a tenth of
`cache.max_objects`, ABSENT_SHARE): clients choose the paths they ask for, and a flood
of absent ones must only ever push out other cached 404s, never an object (review
finding 8). Their own folder lets a sweep find them without reading any file (space.py)
and costs nothing on a hit: the index answers both. A key has one of the two at most:
publishing either removes the other.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import time
from collections import OrderedDict

from .entry import (
    HEAD_READ,
    PREFIX,
    STORED_AT,
    STORED_AT_OFFSET,
    CacheEntry,
    decode_header,
    encode_header,
    file_name,
    read_whole,
    same_fill,
)

SMALL_OBJECT = 64 * 1024  # read with pread in the loop thread, kept in the memory tier
MEMORY_TIER = 64 * 1024**2  # bytes of small bodies kept in memory, per process
# The index is bounded on its own (objects another process evicted stay indexed here
# until looked up): by `cache.max_objects` entries, and by INDEX_ENTRY_BUDGET bytes an
# entry on average, where an entry counts ENTRY_BYTES (~650 B measured with a short
# key and the usual headers) plus its key and header values, which clients and the
# origin choose (issue 12: a few KiB of path each must not grow the index unbounded).
# Past either bound the least recently used tenth is dropped (they are found on disk
# again if still there).
ENTRY_BYTES = 600
INDEX_ENTRY_BUDGET = 1024
ABSENT_SHARE = 10  # cached 404s: at most max_objects / 10 of them (and at least one)
FANOUT = [f"{i:02x}" for i in range(256)]
PRIVATE_FOLDER = 0o700  # files are created 0600 (issue 12: nothing world-readable)
_READ = os.O_RDONLY | os.O_CLOEXEC
_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_temp_names = itertools.count()


class DiskStore:
    """Files under `root` and the index of them; every method runs in the loop thread
    and none blocks for long (page-cached metadata and small reads only)."""

    def __init__(self, root: str, memory_tier: int = MEMORY_TIER, max_index: int = 100_000) -> None:
        self.root = root
        self.block = 4096  # the filesystem's, from prepare(): what a file costs is whole blocks
        self.objects = os.path.join(root, "objects")
        self.tmp = os.path.join(root, "tmp")
        self.locks = os.path.join(root, "locks")
        self.absent = os.path.join(root, "absent")
        self.index: dict[str, CacheEntry] = {}  # objects (200)
        self.absent_index: OrderedDict[str, CacheEntry] = OrderedDict()  # cached 404s
        self.max_absent = absent_bound(max_index)
        self._absent_bytes = 0
        self._hot: OrderedDict[str, CacheEntry] = OrderedDict()  # entries holding `body`
        self._hot_bytes = 0
        self._memory_tier = memory_tier
        self._max_index = max_index
        self._index_bytes = 0  # ENTRY_BYTES and more per entry: see INDEX_ENTRY_BUDGET

    def prepare(self) -> None:
        """Create the folders once at start-up, so no write path ever needs a mkdir.
        The cache holds what clients fetched with their keys: its folder is its user's
        alone (issue 12), which also covers files an older version made 0644."""
        os.makedirs(self.root, mode=PRIVATE_FOLDER, exist_ok=True)
        with contextlib.suppress(PermissionError):  # another user's folder: theirs to set
            os.chmod(self.root, PRIVATE_FOLDER)
        os.makedirs(self.tmp, mode=PRIVATE_FOLDER, exist_ok=True)
        for top in (self.objects, self.absent, self.locks):
            for fan in FANOUT:
                os.makedirs(os.path.join(top, fan), mode=PRIVATE_FOLDER, exist_ok=True)
        self.block = os.statvfs(self.root).f_frsize or self.block

    def allocated(self, size: int) -> int:
        """What a file of `size` bytes takes on disk: whole blocks (issue 12: a cached
        404 of ~100 bytes takes a 4 KiB block, and max_size is the disk's bytes)."""
        return -(-size // self.block) * self.block

    def path(self, name: str) -> str:
        return f"{self.objects}/{name[:2]}/{name}"

    def absent_path(self, name: str) -> str:
        return f"{self.absent}/{name[:2]}/{name}"

    def lock_path(self, name: str) -> str:
        return f"{self.locks}/{name[:2]}/{name}"

    # --- lookups ----------------------------------------------------------------

    def lookup(self, key: str) -> CacheEntry | None:
        """The index entry for `key`, else the published file's, else None."""
        entry = self.index.get(key)
        if entry is not None:
            return entry
        entry = self.absent_index.get(key)
        return entry if entry is not None else self.load(key)

    def load(self, key: str) -> CacheEntry | None:
        """Read the published object's header, else the cached 404's (another process
        may have stored it) and index it. None if there is none or it is not a
        complete object."""
        name = file_name(key)
        try:
            fd = os.open(self.path(name), _READ)
        except OSError:
            try:
                fd = os.open(self.absent_path(name), _READ)
            except OSError:
                return None
        try:
            entry, head = _read_entry(fd, key, name)
        except OSError:
            return None
        finally:
            os.close(fd)
        if entry is None:
            return None
        self.remember(entry)
        if entry.size <= SMALL_OBJECT and len(head) >= entry.file_size:
            self.keep_body(entry, head[entry.body_offset : entry.file_size])
        return entry

    # --- reading bodies -------------------------------------------------------------

    def read_small(self, entry: CacheEntry) -> bytes | None:
        """The body of a small object, read whole in the loop thread (page-cached, a few
        µs) and kept in the memory tier; None if the file is gone or was replaced."""
        whole = read_whole(self.path(entry.name), entry)
        if whole is None:
            return None
        data, stored_at = whole
        # Another process may have revalidated it: its freshness counts here too.
        entry.stored_at = max(entry.stored_at, stored_at)
        body = data[entry.body_offset :]
        self.keep_body(entry, body)
        return body

    def open_body(self, entry: CacheEntry) -> io.FileIO | None:
        """The object's file, open for sendfile, after checking it still is the fill
        `entry` describes; None if it is gone or was replaced."""
        try:
            file = io.FileIO(self.path(entry.name), "rb")
        except OSError:
            return None
        try:
            head = os.pread(file.fileno(), PREFIX.size, 0)
        except OSError:
            head = b""
        if not self._current(head, entry):
            file.close()
            return None
        return file

    def _current(self, head: bytes, entry: CacheEntry) -> bool:
        stored_at = same_fill(head, entry)
        if stored_at is None:
            return False
        # Another process may have revalidated it: its freshness counts here too.
        entry.stored_at = max(entry.stored_at, stored_at)
        return True

    # --- the index and the memory tier -----------------------------------------------

    def remember(self, entry: CacheEntry, body: bytes | None = None) -> None:
        self.forget(entry.key)
        if entry.status != 200:
            self._remember_absent(entry)
            return
        cost = _index_cost(entry)
        if (
            len(self.index) >= self._max_index
            or self._index_bytes + cost > self._max_index * INDEX_ENTRY_BUDGET
        ):
            self._trim()
        self.index[entry.key] = entry
        self._index_bytes += cost
        entry.used = entry.used or time.time()
        if body is not None and entry.size <= SMALL_OBJECT:
            self.keep_body(entry, body)

    def _remember_absent(self, entry: CacheEntry) -> None:
        """A cached 404, in an index of its own with bounds of its own, on the same
        terms as the objects' (INDEX_ENTRY_BUDGET): the oldest leave first."""
        self.absent_index[entry.key] = entry
        self._absent_bytes += _index_cost(entry)
        entry.used = entry.used or time.time()
        budget = self.max_absent * INDEX_ENTRY_BUDGET
        while len(self.absent_index) > self.max_absent or self._absent_bytes > budget:
            _, oldest = self.absent_index.popitem(last=False)
            self._absent_bytes -= _index_cost(oldest)

    def _trim(self) -> None:
        """Drop the least recently used entries until both bounds have a tenth free."""
        by_use = sorted(self.index.values(), key=lambda e: e.used)
        entries, budget = self._max_index * 0.9, self._max_index * INDEX_ENTRY_BUDGET * 0.9
        for entry in by_use:
            if len(self.index) < entries and self._index_bytes < budget:
                break
            self.forget(entry.key)

    def keep_body(self, entry: CacheEntry, body: bytes) -> None:
        """Keep a small body in memory, least recently used ones leaving first."""
        if entry.body is None:
            entry.body = body
            self._hot[entry.key] = entry
            self._hot_bytes += len(body)
        while self._hot_bytes > self._memory_tier:
            _, old = self._hot.popitem(last=False)
            self._hot_bytes -= len(old.body or b"")
            old.body = None

    def touch(self, entry: CacheEntry, now: float) -> None:
        """A hit: for the disk LRU (space.py) and the memory tier's."""
        entry.used = now
        if entry.body is not None:
            self._hot.move_to_end(entry.key)

    def forget(self, key: str) -> CacheEntry | None:
        """Drop `key` from the index and the memory tier (not from the disk)."""
        entry = self.index.pop(key, None)
        if entry is not None:
            self._index_bytes -= _index_cost(entry)
        absent = self.absent_index.pop(key, None)
        if absent is not None:
            self._absent_bytes -= _index_cost(absent)
        hot = self._hot.pop(key, None)
        if hot is not None:
            self._hot_bytes -= len(hot.body or b"")
            hot.body = None
        return entry if entry is not None else absent

    def indexed(self) -> list[str]:
        """Every key indexed here, objects and cached 404s (a purge's candidates)."""
        return [*self.index, *self.absent_index]

    # --- changing files -------------------------------------------------------------

    def refresh(self, entry: CacheEntry, now: float) -> None:
        """Origin 304: the object is fresh again, in the index and in the file (for the
        other processes): one 8-byte pwrite into the fixed header field."""
        entry.stored_at = now
        try:
            fd = os.open(self.path(entry.name), os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return  # evicted meanwhile: the index entry still serves this process
        try:
            if same_fill(os.pread(fd, PREFIX.size, 0), entry) is not None:
                os.pwrite(fd, STORED_AT.pack(now), STORED_AT_OFFSET)
        except OSError:
            pass  # the refresh still holds in this process
        finally:
            os.close(fd)

    def remove(self, name: str) -> int:
        """Unlink a published object; the bytes freed (allocated). Its lock file is not
        this one's to touch: it exists only while a fill holds it (locks.py)."""
        return self._remove(self.path(name))

    def remove_absent(self, name: str) -> int:
        """Unlink a cached 404; the bytes freed (allocated)."""
        return self._remove(self.absent_path(name))

    def _remove(self, path: str) -> int:
        try:
            size = os.stat(path).st_size
            os.unlink(path)
        except OSError:
            return 0
        return self.allocated(size)


def absent_bound(max_objects: int) -> int:
    """How many cached 404s the folder, and each process's index, keeps at most."""
    return max(1, max_objects // ABSENT_SHARE)


def _index_cost(entry: CacheEntry) -> int:
    """The bytes an index entry is counted at: see INDEX_ENTRY_BUDGET."""
    key = len(entry.key) if entry.key.isascii() else 4 * len(entry.key)
    return ENTRY_BYTES + key + sum(len(value) for value in entry.headers.values())


def _read_entry(fd: int, key: str, name: str) -> tuple[CacheEntry | None, bytes]:
    head = os.pread(fd, HEAD_READ, 0)
    if len(head) >= PREFIX.size:
        wanted = PREFIX.size + PREFIX.unpack_from(head)[3]
        if wanted > len(head):
            head = os.pread(fd, wanted, 0)
    entry = decode_header(head, key, name)
    if entry is None or os.fstat(fd).st_size != entry.file_size:
        return None, head  # not ours, or not the complete object it claims to be
    return entry, head


class TempObject:
    """An object being written: a uniquely named file in tmp/ (two processes never
    write one file), on the same filesystem as objects/ so that `publish` is one atomic
    os.replace. Writes go to the page cache from the loop thread: a few µs a chunk, and
    a full disk fails at once (ENOSPC) instead of blocking."""

    def __init__(self, store: DiskStore, entry: CacheEntry) -> None:
        self.path = f"{store.tmp}/{entry.name}.{os.getpid()}.{next(_temp_names)}"
        absent = entry.status != 200
        self._final = store.absent_path(entry.name) if absent else store.path(entry.name)
        self._store = store
        self.fd = os.open(self.path, _CREATE, 0o600)
        try:
            self.write(encode_header(entry))
        except OSError:
            self.drop()
            self.close()
            raise

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def publish(self) -> int:
        """Put the object in place; the bytes allocated to the one it replaced (0:
        none), of the same kind (an object, or a cached 404)."""
        try:
            replaced = self._store.allocated(os.stat(self._final).st_size)
        except OSError:
            replaced = 0
        os.replace(self.path, self._final)
        self.path = ""
        return replaced

    def drop(self) -> None:
        """Unlink it unless published. Readers with the descriptor can still read."""
        if self.path:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self.path = ""

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
