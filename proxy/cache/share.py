"""Streaming a fill across worker processes (SPEC section 5: waiters are served from the
object as it fills, "including across worker processes of one host").

The process that fills an object holds its lock file (locks.py) and writes into the
lock file the address of its `FillSharing` socket: a Unix socket in Linux's abstract
namespace, so there is no socket file to clean up after a crash, and no path length
limit from a deep cache folder. Another process that misses the same object connects
there and asks for it by file name. The filler answers once its origin answer is known:

    TEMP <path of the temp file>\n      a body is being written there
    AT <body bytes in the file>\n       as it grows, one line per chunk written
    DONE\n                              every byte is in the file
    BROKEN\n (or the connection ends)   nothing more will come

or `NONE\n` when it is not writing a body (a 304, a 404, an object too big), or
`UNKNOWN\n` when it has no fill of that name (a stale address). The follower opens the
temp file itself and preads it as the lines arrive, just as the filler's own readers do.
Bytes are never polled for: each side waits on a socket. `FollowedFill` holds the
descriptor. Linux keeps an unlinked file's bytes for as long as a descriptor is open,
so the temp file can be published (renamed) or dropped while the follower reads it.

Both ends check who is at the other (issue 12). An abstract socket has no file mode:
any local process can connect to one, or bind a name a dead process left in a lock
file. So each side asks the kernel for its peer's user (SO_PEERCRED) and talks only to
its own, and the follower opens only a temp file of the object it asked for, in its
own cache's tmp/ (the name `<file name>.<pid>.<n>`, opened without following a
symlink): never a path of the peer's choosing elsewhere.

Every failure of this path (a dead address, a temp file already published or dropped,
NONE, an address still UNKNOWN after a few re-reads) sends the follower back to what it
did before sharing existed: wait for the lock's release, then load the published
object. The cost is a later first byte. It never yields wrong bytes, because the
follower decodes the temp file's own header (key, size, fill id) before it reads any
body byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import struct
import sys
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from .entry import HEAD_READ, PREFIX, CacheEntry, decode_header
from .fill_outcome import FillBroken

log = logging.getLogger("keyfront.cache")
MAX_LINE = 4096
ADVERTISE_TRIES = 20
ADVERTISE_WAIT = 0.001  # seconds
UNKNOWN = object()  # the asked process has no such fill
_CREDENTIALS = struct.Struct("3i")  # SO_PEERCRED: pid, uid, gid
_OPEN_TEMP = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


class SharedFill(Protocol):
    """What this module needs of a fill of this process to share it (fill.Fill is
    one): named structurally, so that share.py never imports fill.py, which imports it."""

    entry: CacheEntry | None

    @property
    def temp_path(self) -> str: ...

    async def readable(self, position: int) -> int: ...

    async def storing(self) -> bool: ...


class FillSharing:
    """This process's socket, where other processes follow its fills."""

    def __init__(
        self, root: str, temp_folder: str, fill_named: Callable[[str], SharedFill | None]
    ) -> None:
        digest = hashlib.sha256(os.path.abspath(root).encode()).hexdigest()[:16]
        self.address = f"\0keyfront-fills-{digest}-{os.getpid()}"
        self.temp_folder = temp_folder  # the only folder a follower opens files in
        self._fill_named = fill_named
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen; on a platform without abstract sockets, fills are not shared (the
        other processes wait for the published object instead)."""
        if not sys.platform.startswith("linux"):
            return
        try:
            self._server = await asyncio.start_unix_server(self._serve, sock=_bound(self.address))
        except OSError as exc:
            log.warning("cache fills are not shared across processes: %s", exc)

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()

    async def follow(self, holder: Callable[[], str], key: str, name: str) -> FollowedFill | None:
        """Follow the fill of `name` in the process that holds its lock (`holder()`
        reads the address it advertised); None when there is nothing to follow (see the
        module docstring). Processes racing for one object lock it microseconds apart,
        so the lock's new holder may not have written its address yet: an empty, stale
        or own address is read again, briefly (ADVERTISE_TRIES times ADVERTISE_WAIT)."""
        own = self.address if self.listening else ""
        for _ in range(ADVERTISE_TRIES):
            address = holder()
            if address and address != own:
                answer = await _ask(address, key, name, self.temp_folder)
                if answer is not UNKNOWN:
                    return answer if isinstance(answer, FollowedFill) else None
            await asyncio.sleep(ADVERTISE_WAIT)
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            if not _same_user(writer.get_extra_info("socket")):
                return  # another user's process: not a word of this user's fills
            name = (await reader.readline())[:MAX_LINE].strip().decode("ascii", "replace")
            fill = self._fill_named(name)
            if fill is None:
                writer.write(b"UNKNOWN\n")
            elif not await fill.storing():
                writer.write(b"NONE\n")
            else:
                await _stream_progress(fill, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass  # the follower left, or this process is closing: it falls back
        finally:
            writer.close()
            if task is not None:
                self._connections.discard(task)


async def _stream_progress(fill: SharedFill, writer: asyncio.StreamWriter) -> None:
    assert fill.entry is not None
    writer.write(b"TEMP %s\n" % fill.temp_path.encode())
    position, size = 0, fill.entry.size
    try:
        while position < size:
            position = await fill.readable(position)
            writer.write(b"AT %d\n" % position)
            await writer.drain()
    except FillBroken:
        writer.write(b"BROKEN\n")
        return
    writer.write(b"DONE\n")
    await writer.drain()


class FollowedFill:
    """Another process's fill, followed: its temp file open here, and its progress."""

    def __init__(
        self,
        entry: CacheEntry,
        fd: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.entry = entry
        self.fd = fd
        self._reader = reader
        self._writer = writer

    async def progress(self) -> AsyncIterator[int]:
        """The body bytes in the file, as they grow; ends when all are there. Raises
        ConnectionError when the filler stops short (broken, or the process died)."""
        while True:
            line = await self._reader.readline()
            if line.startswith(b"AT "):
                yield int(line[3:])
            elif line == b"DONE\n":
                return
            else:
                raise ConnectionError("the filling process stopped before the end")

    def drop(self) -> None:
        """The temp file is the filler's to drop: nothing to do here."""

    def close(self) -> None:
        self._writer.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _head(fd: int) -> bytes:
    """The header of an object file: one pread, two for a long header."""
    head = os.pread(fd, HEAD_READ, 0)
    if len(head) >= PREFIX.size:
        wanted = PREFIX.size + PREFIX.unpack_from(head)[3]
        if wanted > len(head):
            head = os.pread(fd, wanted, 0)
    return head


def _same_user(sock: socket.socket | None) -> bool:
    """Whether the process at the other end of a Unix socket runs as this one's user."""
    if sock is None:
        return False
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
    except OSError:
        return False
    return bool(_CREDENTIALS.unpack(raw)[1] == os.geteuid())


def _temp_file(line: bytes, temp_folder: str, name: str) -> str | None:
    """The path in a `TEMP <path>` answer if it is a temp file of object `name` in this
    cache's `temp_folder` (`<name>.<pid>.<n>`, store.TempObject), else None."""
    path = os.fsdecode(line)
    folder, base = os.path.split(path)
    stem, _, rest = base.partition(".")
    pid, _, number = rest.partition(".")
    if stem != name or not (pid + number).isascii() or not (pid.isdigit() and number.isdigit()):
        return None
    if folder != temp_folder and os.path.realpath(folder) != os.path.realpath(temp_folder):
        return None  # the same string (one config) costs no syscall; else resolve both
    return path


async def _ask(address: str, key: str, name: str, temp_folder: str) -> FollowedFill | object | None:
    """The fill of `name` at `address`, None (nothing to follow there) or UNKNOWN (that
    process has no such fill, is gone, or is not this user's)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, address)
        if not _same_user(sock):
            sock.close()
            return UNKNOWN  # a name squatted by another user: as if nobody were there
        reader, writer = await asyncio.open_unix_connection(sock=sock)
    except OSError:
        sock.close()
        return UNKNOWN  # that process has exited, or shares no fills
    except BaseException:  # cancelled: the socket is nobody's yet
        sock.close()
        raise
    fd = -1
    answer: object | None = None
    try:
        writer.write(name.encode() + b"\n")
        line = await reader.readline()
        path = _temp_file(line[5:-1], temp_folder, name) if line.startswith(b"TEMP ") else None
        if path is not None:
            fd = os.open(path, _OPEN_TEMP)
            entry = decode_header(_head(fd), key, name)
            if entry is not None and entry.status == 200:
                return FollowedFill(entry, fd, reader, writer)
        elif line == b"UNKNOWN\n":
            answer = UNKNOWN
    except (OSError, ValueError):
        pass  # published or dropped before we opened it: it is on disk, or it never will be
    if fd >= 0:
        os.close(fd)
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return answer


def _bound(address: str) -> socket.socket:
    """A listening socket on an abstract address. Made here, not by asyncio from the
    path: uvloop refuses abstract paths (EINVAL) but serves a socket bound to one."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(address)
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
