"""The `file:///dir/` origin: objects are the regular files below one folder.

Nothing outside the folder is ever served: `..` segments are refused outright, and
the file actually opened is checked to lie inside the folder's real path, so a
symlink may point within the folder but not out of it.

Files are served as they are now, never from a copy in the disk cache (SPEC section 5:
an edit shows within 1 s; issue 14 item 3). Cost per request matters: a small body is
read in the event-loop thread with open + fstat + pread + close (~6 µs on a
page-cached file, cheaper than one thread-pool hop); only bodies above SMALL_BODY are
read in the executor, chunk by chunk, so that a cold disk cannot stall the loop.

Small files (up to HELD_FILE) unchanged for a second are also held in a bounded memory
tier (`HeldFiles`), checked on every request by one `os.stat` of the path against the
identity the file had when it was read: device, inode, size, mtime_ns and ctime_ns.
An edit in place changes mtime and ctime; a rename over it changes the inode; a chmod
or a utime changes ctime: each is a miss, and the file is read again. A file whose
inode changed within the last second (ctime) is never held: timestamps are coarser
than two writes can be apart (1 s on some filesystems; git's "racy" rule), so a write
in the same clock tick as the read cannot go unseen.
"""

from __future__ import annotations

import asyncio
import errno
import mimetypes
import os
import stat
import threading
import time
from collections import OrderedDict

from ..conditional import ByteRange, Validators, http_date, plan, unsatisfied_range
from ..config import Route
from ..errors import NotFound, OriginError
from .base import Origin, OriginRequest, OriginResponse

SMALL_BODY = 256 * 1024  # read whole in the loop thread; larger bodies stream
HELD_FILE = 64 * 1024  # files up to this size may be held in memory (HeldFiles)
HELD_BYTES = 8 * 1024 * 1024  # all held files together, per route, per process
SETTLED = 1.0  # seconds since a file's last change (ctime) before it may be held
CHUNK = 256 * 1024

# O_NONBLOCK: opening a FIFO placed in the folder must not hang the loop (it is then
# refused as not a regular file); on regular files the flag changes nothing.
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)
# The name a path has no business resolving to: answered 404, like a missing file.
_NOT_THERE = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.ENAMETOOLONG}
_NOT_THERE |= {errno.EACCES, errno.EPERM}  # don't reveal that an unreadable file exists

# Python's built-in table (not /etc/mime.types, so every host answers alike) plus
# the types it lacks or gets dated (RFC 9239 made JavaScript text/javascript).
_TYPES = mimetypes.MimeTypes(strict=True).types_map[True] | {
    ".avif": "image/avif",
    ".geojson": "application/geo+json",
    ".gz": "application/gzip",
    ".js": "text/javascript",
    ".jxl": "image/jxl",
    ".md": "text/markdown",
    ".mjs": "text/javascript",
    ".otf": "font/otf",
    ".svg": "image/svg+xml",
    ".ttf": "font/ttf",
    ".webp": "image/webp",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
}
DEFAULT_TYPE = "application/octet-stream"


def content_type(path: str) -> str:
    """The Content-Type for a file name, by its last extension (case-insensitive)."""
    name = path.rpartition("/")[2]
    dot = name.rfind(".")
    return _TYPES.get(name[dot:].lower(), DEFAULT_TYPE) if dot > 0 else DEFAULT_TYPE


class FileOrigin(Origin):
    """Serves `route.origin` (`file:///abs/dir/`) with the validators nginx would use:
    a strong ETag `"<mtime_ns hex>-<size hex>"` and Last-Modified = mtime."""

    local = True  # never copied into the disk cache (SPEC section 5)

    def __init__(self, route: Route) -> None:
        folder = route.origin.removeprefix("file://")
        self.root = os.path.realpath(folder)
        self._prefix = self.root.rstrip("/") + "/"  # "/" itself stays "/"
        self._held = HeldFiles(self._prefix)

    async def ping(self) -> None:
        if not os.path.isdir(self.root):
            raise OriginError(f"the origin folder {self.root} is gone")

    async def fetch(self, request: OriginRequest) -> OriginResponse:
        held = self._held.get(request.path)
        if held is not None:
            return _from_memory(request, *held)
        fd = self._open(request.path)
        body: FileBody | None = None
        try:
            st = _regular_file(fd)
            status, headers, part = _select(request, st)
            if part is None or request.method == "HEAD":
                return OriginResponse(status, headers)
            if part.length <= SMALL_BODY:
                data = _read(fd, part)
                if part.length == st.st_size:
                    self._held.keep(request.path, st, data)
                return OriginResponse(status, headers, data=data)
            body = FileBody(fd, part)  # the body owns the descriptor from here on
            return OriginResponse(status, headers, stream=body, release=body.close)
        finally:
            if body is None:
                os.close(fd)

    def _open(self, path: str) -> int:
        """A descriptor of the file at `path` below the root; NotFound if there is none
        or it resolves outside the root."""
        if "\0" in path or ".." in path.split("/"):
            raise NotFound()  # refused before any syscall: never open outside the root
        full = self._prefix + path
        try:
            fd = os.open(full, _OPEN_FLAGS)
        except OSError as exc:
            raise _translate(exc) from exc
        if not _resolved(fd, full).startswith(self._prefix):
            os.close(fd)
            raise NotFound()  # a symlink that leads out of the folder
        return fd


def _from_memory(request: OriginRequest, st: os.stat_result, data: bytes) -> OriginResponse:
    status, headers, part = _select(request, st)
    if part is None or request.method == "HEAD":
        return OriginResponse(status, headers)
    return OriginResponse(status, headers, data=data[part.start : part.end + 1])


class HeldFiles:
    """Small settled files in memory, least recently used first out, HELD_BYTES in
    all; see the module docstring. A path is held only after a read below the root
    succeeded for it (containment was checked then, on the opened descriptor); the
    identity check means the path still names that very file, unchanged."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._files: OrderedDict[str, tuple[os.stat_result, bytes]] = OrderedDict()
        self._bytes = 0

    def get(self, path: str) -> tuple[os.stat_result, bytes] | None:
        held = self._files.get(path)
        if held is None:
            return None
        try:
            st = os.stat(self._prefix + path)
        except OSError:
            st = None
        if st is None or _identity(st) != _identity(held[0]):
            self._drop(path)
            return None
        self._files.move_to_end(path)
        return held

    def keep(self, path: str, st: os.stat_result, data: bytes) -> None:
        if len(data) > HELD_FILE or time.time() - st.st_ctime < SETTLED:
            return
        self._drop(path)
        self._files[path] = (st, data)
        self._bytes += _cost(data)
        while self._bytes > HELD_BYTES:
            self._drop(next(iter(self._files)))

    def _drop(self, path: str) -> None:
        held = self._files.pop(path, None)
        if held is not None:
            self._bytes -= _cost(held[1])


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _cost(data: bytes) -> int:
    return len(data) + 256  # an entry's own overhead: empty files are not free


def _resolved(fd: int, full: str) -> str:
    """The real path of the file `fd` has open. On Linux read from /proc: one syscall
    (~1 µs) against ~8 µs for realpath's lstat per component, and it names the file
    actually opened, so a symlink swapped in meanwhile cannot slip through."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no procfs (macOS, some sandboxes)
        return os.path.realpath(full)


def _select(
    request: OriginRequest, st: os.stat_result
) -> tuple[int, dict[str, str], ByteRange | None]:
    """Status, headers and the bytes a GET would send (None for 304, 412 and 416), as
    conditional.plan decides for every path."""
    size = st.st_size
    etag = f'"{st.st_mtime_ns:x}-{size:x}"'  # strong, as nginx makes it
    # RFC 9110 section 8.8.2.1: a modification time in the future (a skewed clock, a
    # touched file) is sent as now, never later than the response's Date.
    modified = min(st.st_mtime, time.time())
    headers = {"ETag": etag, "Last-Modified": http_date(modified)}
    status, part = plan(request.conditionals(), Validators(size, etag, modified))
    if part is None:
        if status == 416:
            return 416, {"Content-Range": unsatisfied_range(size)}, None
        return status, headers, None
    headers["Content-Type"] = content_type(request.path)
    headers["Content-Length"] = str(part.length)
    if status == 206:
        headers["Content-Range"] = part.content_range(size)
    return status, headers, part


def _regular_file(fd: int) -> os.stat_result:
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise _translate(exc) from exc
    if not stat.S_ISREG(st.st_mode):
        raise NotFound()  # directories, FIFOs, devices
    return st


def _translate(exc: OSError) -> NotFound | OriginError:
    """The one place an OS error becomes a keyfront error."""
    if exc.errno in _NOT_THERE:
        return NotFound()
    return OriginError(f"cannot read the object: {os.strerror(exc.errno or 0)}")


def _read(fd: int, part: ByteRange) -> bytes:
    try:
        data = os.pread(fd, part.length, part.start) if part.length else b""
    except OSError as exc:
        raise _translate(exc) from exc
    if len(data) != part.length:  # truncated since fstat: never send a short "200"
        raise OriginError("the file changed while it was read")
    return data


class FileBody:
    """The bytes of `part`, read from `fd` in CHUNK pieces in the default executor, so
    memory stays bounded and a slow disk blocks a worker thread, not the loop.

    `close()` may come while a read is still running in its thread (the request was
    cancelled): the descriptor is then closed by that thread once its pread returns,
    never under it, where the number could be reused for another file meanwhile."""

    def __init__(self, fd: int, part: ByteRange) -> None:
        self._fd = fd
        self._offset = part.start
        self._left = part.length
        self._lock = threading.Lock()  # orders pread against close across threads

    def __aiter__(self) -> FileBody:
        return self

    async def __anext__(self) -> bytes:
        if self._left <= 0:
            raise StopAsyncIteration
        size = min(CHUNK, self._left)
        loop = asyncio.get_running_loop()
        try:
            chunk = await loop.run_in_executor(None, self._pread, size, self._offset)
        except OSError as exc:
            raise _translate(exc) from exc
        if len(chunk) != size:
            raise OriginError("the file changed while it was read")
        self._offset += size
        self._left -= size
        return chunk

    async def close(self) -> None:
        # A thread hop, but only for bodies over SMALL_BODY, where it is noise; it lets
        # close wait for an in-flight pread without blocking the loop.
        await asyncio.get_running_loop().run_in_executor(None, self._close)

    def _pread(self, size: int, offset: int) -> bytes:
        with self._lock:
            if self._fd < 0:
                raise OSError(errno.EBADF, "the body was closed")
            return os.pread(self._fd, size, offset)

    def _close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
