"""The usage spool: each process's unflushed usage counts in a MAP_SHARED file, so that
a SIGKILL (the kernel's OOM killer) does not take them (issue 19). Before it, a worker
killed under load lost up to one flush interval of counts: 8 of 4,915 requests with
`--workers 2`.

Counting stays a memory write (SPEC section 12): the hot path adds to int64 words of a
shared mapping, no syscall, no msync. The words sit in the page cache, which outlives
the process; another process maps the file after the death and flushes what it holds.
The page cache does not outlive the machine: a file from an earlier boot is refused
(its pages may have reached the disk in any order), so a host crash loses the counts of
its last flush interval, as before, but never counts one twice.

Why slots and two areas, not a journal. A journal appends a record per request: a
write that grows with traffic and needs a compaction. Here a row is a fixed slot per
(key, customer, hour), and the file has two areas of slots: the hot path writes the
*live* one; a flush *seals* it as batch n (one word store switches the hot path to the
other area) and sends it; the store's answer *releases* it. Every step of that cycle is
one aligned 8-byte store, which a death cannot tear, so a reader finds one of a few
consistent states:

    state word   sealed batch n (0: none) << 1 | live area
    rows[a]      the slots of area a in use: slot i is read only if i < rows[a]

- the live area's rows: counts no batch has carried; a claimer sends them as a new
  batch, numbered after `last` (the highest number this file ever sealed);
- the sealed area's rows: batch n, which the store may or may not have applied; a
  claimer sends it again with its id, `<prefix>-<n>`, and the store's at-most-once batch
  application (SQLite: the batch id in the same transaction; Redis: a marker per row)
  makes the repeat harmless. Sealed rows are never written again, so the repeat
  carries exactly the rows of the first send;
- the other area is ignored: a release first unseals (state word), then empties it.

One request adds to several counters (requests, bytes, hits, ...), and a death between
two stores would count half a request. So a served request adds to one *cell* chosen by
its outcome (cache hit/miss/other, 304 or not, with or without a referrer): a count and
a byte sum, kept twice. The write goes to the copy with the lower count, bytes first,
then the count, which commits it; a reader takes the copy with the higher count (the
first on a tie). A death between the two stores leaves the older copy in charge. A
refusal adds 1 to one word (its code, with or without a referrer).

Claiming: each file is flock()ed by its process for its life; a file whose lock can be
taken belongs to a dead process. A claimer holds the lock until it has flushed the file
and unlinked it, so two claimers (workers, instances on one host) never both flush one;
it checks after locking that the path still names the file it locked (another claimer
may have unlinked it meanwhile). A file is created under a temporary name, locked and
written, then renamed: a claimer never sees one half-made. Files of another store
(instances of two stores on one host) are left alone. A file that fails any check
(magic, sizes, checksum, counters, boot) is renamed `*.refused`, logged and counted,
and nothing of it is sent.

Sketches (SPEC section 15) are not spooled: billing needs the exact counters, and the
top lists are approximate anyway. A dead process's last interval of sketches is lost;
its exact counters (no_referrer included) are not.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import re
import time
import uuid
import zlib
from collections.abc import Iterator
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

from .xcache import HIT_STATES, XCache

MAGIC = b"KFSPOOL\x01"
VERSION = 1
WORD = 8
HEADER_WORDS = 512  # 4 KiB
# Header words
H_MAGIC, H_VERSION, H_CAPACITY, H_ROW_WORDS, H_STORE, H_BOOT, H_CREATED = 0, 1, 2, 3, 4, 5, 7
H_CHECK = 8  # crc32 of the words above and the prefix: written once, at creation
H_STATE, H_LAST, H_ROWS, H_SEALED_AT, H_CODES = 9, 10, 11, 13, 14  # H_ROWS: 2 words
H_PREFIX, PREFIX_WORDS = 16, 4  # the batch ids' prefix, 32 bytes of ASCII
H_CODE_TABLE, CODE_WORDS, MAX_CODES = 32, 4, 32  # refusal codes, 32 bytes each
# Row words
R_HOUR, R_LENGTHS, R_KEY, R_CUSTOMER, ID_WORDS = 0, 1, 2, 10, 8  # ids: 64 bytes
R_SERVED = 18  # 3 cache outcomes x (304 or not) x (referrer or not) cells of 4 words
R_DENIED = R_SERVED + 12 * 4  # MAX_CODES x (referrer or not) words
ROW_WORDS = R_DENIED + 2 * MAX_CODES
ROW_BYTES = ROW_WORDS * WORD
RESERVE_ROWS = 64  # disk blocks are reserved this many rows at a time (posix_fallocate)
MAX_ID = 64  # customer and key ids: 1-64 of A-Z a-z 0-9 _ . - (proxy/manage/settings.py)
MAX_COUNT = 1 << 53
SEALED_AGE = 6 * 86400  # the stores remember batch ids 7 days: a repeat older is refused
SUFFIX, TEMP_SUFFIX, REFUSED_SUFFIX = ".spool", ".tmp", ".refused"
# A served request's cell, by X-Cache: hits, misses, neither (SPEC section 4's fields).
CACHE_CELL = {state: R_SERVED for state in HIT_STATES} | {XCache.MISS: R_SERVED + 16}
OTHER_CELL = R_SERVED + 32
NOT_MODIFIED_CELL, NO_REFERRER_CELL = 8, 4  # added to the cell's offset
_ID = re.compile(rb"[A-Za-z0-9_.-]{1,64}")
_CODE = re.compile(rb"[a-z0-9_]{1,32}")
_PREFIX = re.compile(rb"[0-9a-f-]{1,32}")

Row = tuple[str, str, int]  # key, customer, hour


class SpoolRefused(Exception):
    """A file that is not a usage spool this version can trust; nothing of it is sent."""


class Batch(NamedTuple):
    """Key rows to send under one batch id."""

    batch_id: str
    rows: list[tuple[Row, dict[str, int]]]


def store_identity(url: str) -> int:
    """Which store a file's counts belong to: the store URL without its credentials
    (a changed password is the same store), as a 63-bit number."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    plain = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    return int.from_bytes(hashlib.sha256(plain.encode()).digest()[:8], "big") >> 1


def boot_identity() -> int:
    """This boot of the machine (Linux's boot_id); 0 where the system has none."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return uuid.UUID(f.read().strip()).int >> 65
    except (OSError, ValueError):
        return 0


class Spool:
    """Two areas of `capacity` row slots in a shared mapping of a file (or of anonymous
    memory, when no file can be had: counted the same way, not durable). `words` is the
    mapping as int64s, which the meter's hot path writes (proxy/usage.py)."""

    def __init__(self, mapping: mmap.mmap, fd: int | None, path: str | None) -> None:
        self._map = mapping
        self.words = memoryview(mapping).cast("q")
        self.fd = fd
        self.path = path
        self.capacity = self.words[H_CAPACITY]
        self.prefix = self.words[H_PREFIX : H_PREFIX + PREFIX_WORDS].tobytes().rstrip(b"\0")
        self._reserved = [0, 0]  # rows of each area with disk blocks (posix_fallocate)
        self.codes: dict[str, int] = {}  # refusal code -> its word in a row (checked first)

    # --- opening ------------------------------------------------------------------

    @classmethod
    def create(cls, folder: str, store: int, prefix: str, capacity: int) -> Spool:
        """A new file of this process's in `folder`, locked for the process's life."""
        os.makedirs(folder, mode=0o700, exist_ok=True)
        temp = os.path.join(folder, f".usage-{prefix}{TEMP_SUFFIX}")
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            size = (HEADER_WORDS + 2 * capacity * ROW_WORDS) * WORD
            os.ftruncate(fd, size)  # sparse: blocks are reserved as rows are used
            os.posix_fallocate(fd, 0, HEADER_WORDS * WORD)
            mapping = mmap.mmap(fd, size, mmap.MAP_SHARED)
            _write_header(mapping, store, prefix, capacity)
            path = os.path.join(folder, f"usage-{prefix}{SUFFIX}")
            os.rename(temp, path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        return cls(mapping, fd, path)

    @classmethod
    def in_memory(cls, prefix: str, capacity: int) -> Spool:
        """Anonymous memory: the same counting, gone with the process."""
        size = (HEADER_WORDS + 2 * capacity * ROW_WORDS) * WORD
        mapping = mmap.mmap(-1, size)
        _write_header(mapping, 0, prefix, capacity)
        spool = cls(mapping, None, None)
        spool._reserved = [capacity, capacity]
        return spool

    @classmethod
    def claim(cls, path: str, store: int) -> Spool | None:
        """A dead process's file, locked for this one; None if it is alive, gone, or
        another store's. Raises SpoolRefused (after renaming it) if it fails a check."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                raise FileNotFoundError(path)  # unlinked by the claimer before us
        except OSError:
            os.close(fd)
            return None
        try:
            spool = cls._checked(fd, path, store)
        except SpoolRefused:
            with contextlib.suppress(OSError):
                os.rename(path, path + REFUSED_SUFFIX)
            os.close(fd)
            raise
        except BaseException:
            os.close(fd)  # unlocked: tried again at the next look
            raise
        if spool is None:
            os.close(fd)
        return spool

    @classmethod
    def _checked(cls, fd: int, path: str, store: int) -> Spool | None:
        size = os.fstat(fd).st_size
        if size < HEADER_WORDS * WORD or size % WORD:
            raise SpoolRefused(f"{size} bytes: not a usage spool")
        spool = cls(mmap.mmap(fd, size, mmap.MAP_SHARED), fd, path)
        try:
            _check_header(spool.words, size)
            if spool.words[H_STORE] != store:
                spool.close(unlink=False, keep_fd=True)
                return None
            if spool.words[H_BOOT] != boot_identity():
                raise SpoolRefused("written before the machine restarted: pages may be torn")
            spool._reserved = [spool.capacity, spool.capacity]
            for i in range(spool.words[H_CODES]):
                spool.codes[_code_at(spool.words, i).decode()] = R_DENIED + 2 * i
            for _ in spool.unsent():  # every row parses, or nothing is sent
                pass
        except SpoolRefused:
            spool.close(unlink=False, keep_fd=True)
            raise
        return spool

    def close(self, unlink: bool, keep_fd: bool = False) -> None:
        """Unmap; with `unlink`, remove the file first (while still locked)."""
        if unlink and self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self.words.release()
        self._map.close()
        if self.fd is not None and not keep_fd:
            os.close(self.fd)
            self.fd = None

    def detach(self) -> Spool:
        """The same counts in anonymous memory, the file unlinked and closed: for when
        the disk has no room for more rows (a write to a mapped page the file system
        cannot back would kill the process with SIGBUS)."""
        size = len(self._map)
        mapping = mmap.mmap(-1, size)
        mapping[:] = self._map[:]
        self.close(unlink=True)
        spool = Spool(mapping, None, None)
        spool._reserved = [self.capacity, self.capacity]
        return spool

    # --- the live area -----------------------------------------------------------

    @property
    def live(self) -> int:
        return self.words[H_STATE] & 1

    @property
    def live_rows(self) -> int:
        return self.words[H_ROWS + self.live]

    def allocate(self, row: Row) -> int:
        """The word where `row`'s slot starts, in the live area. Raises ValueError when
        the area is full or an id does not fit, OSError when the disk has no room for
        the slot (then detach())."""
        words, area = self.words, self.live
        i = words[H_ROWS + area]
        key, customer = row[0].encode(), row[1].encode()
        if i >= self.capacity or not (0 < len(key) <= MAX_ID and 0 < len(customer) <= MAX_ID):
            raise ValueError("the live area is full, or an id is longer than a slot holds")
        if i >= self._reserved[area]:
            rows = min(RESERVE_ROWS, self.capacity - i)
            assert self.fd is not None
            os.posix_fallocate(self.fd, self._slot(area, i) * WORD, rows * ROW_BYTES)
            self._reserved[area] = i + rows
        base = self._slot(area, i)
        _put(words, base + R_KEY, key)
        _put(words, base + R_CUSTOMER, customer)
        words[base + R_LENGTHS] = len(key) | len(customer) << 16
        words[base + R_HOUR] = row[2]
        words[H_ROWS + area] = i + 1  # the slot exists from here on
        return base

    def code_word(self, code: str) -> int | None:
        """The word a refusal `code` counts in, within a row (registered on first use);
        None when the table is full or the code is not a SPEC code's shape."""
        found = self.codes.get(code)
        if found is not None:
            return found
        raw = code.encode()
        n = self.words[H_CODES]
        if n >= MAX_CODES or not _CODE.fullmatch(raw):
            return None
        _put(self.words, H_CODE_TABLE + n * CODE_WORDS, raw)
        self.words[H_CODES] = n + 1
        self.codes[code] = R_DENIED + 2 * n
        return self.codes[code]

    # --- the cycle: seal, send, release ------------------------------------------------

    def sealed(self) -> Batch | None:
        """The batch sealed and not yet released: sent, maybe applied, to be sent again."""
        n = self.words[H_STATE] >> 1
        if n == 0:
            return None
        return Batch(self.batch_id(n), list(self._rows(1 - self.live)))

    def seal(self) -> Batch:
        """Seal the live area as the next batch; the other area becomes the live one.
        Call only with no sealed batch."""
        words = self.words
        assert words[H_STATE] >> 1 == 0, "a sealed batch is still out"
        live = words[H_STATE] & 1
        words[H_ROWS + 1 - live] = 0  # before the switch: a stale area never turns live
        n = words[H_LAST] + 1
        words[H_LAST] = n
        words[H_SEALED_AT] = int(time.time())
        words[H_STATE] = n << 1 | (1 - live)  # the switch: one store
        return Batch(self.batch_id(n), list(self._rows(live)))

    def release(self) -> None:
        """The store has the sealed batch: forget it and empty its area for reuse."""
        words = self.words
        live = words[H_STATE] & 1
        words[H_STATE] = live  # unsealed: from here on the area is ignored
        area = 1 - live
        used = words[H_ROWS + area]
        words[H_ROWS + area] = 0
        start = self._slot(area, 0) * WORD
        self._map[start : start + used * ROW_BYTES] = bytes(used * ROW_BYTES)

    def batch_id(self, n: int) -> str:
        return f"{self.prefix.decode()}-{n}"

    def unsent(self) -> Iterator[tuple[Row, dict[str, int]]]:
        """Every row not known to be in the store: the sealed batch's and the live area's."""
        if self.words[H_STATE] >> 1:
            yield from self._rows(1 - self.live)
        yield from self._rows(self.live)

    def _slot(self, area: int, i: int) -> int:
        return HEADER_WORDS + (area * self.capacity + i) * ROW_WORDS

    def _rows(self, area: int) -> Iterator[tuple[Row, dict[str, int]]]:
        words = self.words
        codes = [_code_at(words, i).decode() for i in range(words[H_CODES])]
        used = words[H_ROWS + area]
        if not 0 <= used <= self.capacity:
            raise SpoolRefused(f"{used} rows in an area of {self.capacity}")
        for i in range(used):
            yield _row(words, self._slot(area, i), codes)


def _write_header(mapping: mmap.mmap, store: int, prefix: str, capacity: int) -> None:
    words = memoryview(mapping).cast("q")
    words[H_VERSION], words[H_CAPACITY], words[H_ROW_WORDS] = VERSION, capacity, ROW_WORDS
    words[H_STORE], words[H_BOOT], words[H_CREATED] = store, boot_identity(), int(time.time())
    _put(words, H_PREFIX, prefix.encode())
    mapping[:WORD] = MAGIC
    words[H_CHECK] = _checksum(words)
    words.release()


def _checksum(words: memoryview) -> int:
    prefix = words[H_PREFIX : H_PREFIX + PREFIX_WORDS].tobytes()
    return zlib.crc32(words[:H_CHECK].tobytes() + prefix)


def _check_header(words: memoryview, size: int) -> None:
    if words[:1].tobytes() != MAGIC or words[H_VERSION] != VERSION:
        raise SpoolRefused("not a usage spool of this version")
    if words[H_CHECK] != _checksum(words):
        raise SpoolRefused("header checksum does not match")
    capacity = words[H_CAPACITY]
    if words[H_ROW_WORDS] != ROW_WORDS or capacity < 1:
        raise SpoolRefused("row layout of another version")
    if size != (HEADER_WORDS + 2 * capacity * ROW_WORDS) * WORD:
        raise SpoolRefused(f"{size} bytes, not the {capacity} rows it says (truncated?)")
    prefix = words[H_PREFIX : H_PREFIX + PREFIX_WORDS].tobytes().rstrip(b"\0")
    if not _PREFIX.fullmatch(prefix):
        raise SpoolRefused("batch id prefix is not valid")
    state, last = words[H_STATE], words[H_LAST]
    if state < 0 or last < state >> 1 or not 0 <= words[H_CODES] <= MAX_CODES:
        raise SpoolRefused(f"state {state} with last batch {last}: not a state it can be in")
    if any(not _CODE.fullmatch(_code_at(words, i)) for i in range(words[H_CODES])):
        raise SpoolRefused("a refusal code is not valid")
    if state >> 1 and time.time() - words[H_SEALED_AT] > SEALED_AGE:
        raise SpoolRefused("its sealed batch is older than the stores remember batch ids")


# A served cell's fields, by kind: (cache outcome x2 + 304) x2 + no referrer
_KIND_FIELDS = [
    ("requests", *(f for f in (cache, "not_modified" * nm, "no_referrer" * nr) if f))
    for cache in ("hits", "misses", "")
    for nm in (0, 1)
    for nr in (0, 1)
]


def _row(words: memoryview, base: int, codes: list[str]) -> tuple[Row, dict[str, int]]:
    """A slot's row and its counts, SPEC section 4's fields (zeros left out, but
    `bytes` beside `requests`, as the in-process counting always gave them). The slot
    is read in one copy: ~1 µs a row."""
    slot = words[base : base + ROW_WORDS].tolist()
    hour, lengths = slot[R_HOUR], slot[R_LENGTHS]
    key = _id(words, base + R_KEY, lengths & 0xFFFF)
    customer = _id(words, base + R_CUSTOMER, lengths >> 16)
    now = time.time()
    if hour % 3600 or not now - 400 * 86400 < hour < now + 86400:
        raise SpoolRefused(f"hour {hour} of key {key} is not a recent hour")
    counters = slot[R_SERVED:]
    if min(counters) < 0 or max(counters) >= MAX_COUNT:
        raise SpoolRefused(f"a counter of key {key} is out of range")
    counts: dict[str, int] = {}
    for kind, fields in enumerate(_KIND_FIELDS):
        at = R_SERVED + 4 * kind
        a, b = slot[at], slot[at + 2]
        if a or b:
            if abs(a - b) > 1:
                raise SpoolRefused(f"a cell's copies count {a} and {b}: torn or overwritten")
            count, sent = (a, slot[at + 1]) if a >= b else (b, slot[at + 3])
            for field in fields:
                counts[field] = counts.get(field, 0) + count
            counts["bytes"] = counts.get("bytes", 0) + sent
    denied = slot[R_DENIED:]
    if any(denied):
        for i, code in enumerate(codes):
            plain, no_referrer = denied[2 * i], denied[2 * i + 1]
            if plain + no_referrer:
                counts[f"denied_{code}"] = plain + no_referrer
            if no_referrer:
                counts["refused_no_referrer"] = counts.get("refused_no_referrer", 0) + no_referrer
    return (key, customer, hour), counts


def _id(words: memoryview, at: int, length: int) -> str:
    raw = words[at : at + ID_WORDS].tobytes()[:length] if 0 < length <= MAX_ID else b""
    if not _ID.fullmatch(raw):
        raise SpoolRefused("a row's id is not valid")
    return raw.decode()


def _code_at(words: memoryview, i: int) -> bytes:
    at = H_CODE_TABLE + i * CODE_WORDS
    return words[at : at + CODE_WORDS].tobytes().rstrip(b"\0")


def _put(words: memoryview, at: int, raw: bytes) -> None:
    padded = raw.ljust((len(raw) + WORD - 1) // WORD * WORD, b"\0")
    words[at : at + len(padded) // WORD] = memoryview(padded).cast("q")


def spool_files(folder: str) -> list[str]:
    """The spool files in `folder` (any process's, live or dead); leftover temporary
    files of dead processes are removed (they never held counts)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    for name in names:
        if name.endswith(TEMP_SUFFIX):
            _remove_unlocked(os.path.join(folder, name))
    return [os.path.join(folder, n) for n in sorted(names) if n.endswith(SUFFIX)]


def _remove_unlocked(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.unlink(path)
    except OSError:
        pass  # a live process is making it
    finally:
        os.close(fd)
