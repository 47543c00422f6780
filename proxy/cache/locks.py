"""Cross-process coalescing: one flock(2)'ed lock file per object being filled.

Worker processes of one host share the cache folder (SPEC section 5). The process that
fills an object holds an exclusive flock on `locks/ab/<sha256>` from before its origin
request until after its `os.replace`. Another process that misses the same object
finds the lock taken, waits for its release, then reads the published object from disk
instead of asking the origin: N processes, one origin fetch.

The wait is a blocking flock in a daemon thread that wakes the loop when the lock is
released: no polling delay, nothing blocking the loop, and a process exiting meanwhile
is not held up by the thread. Only a process that lost the race for a lock starts one
(one thread per object being filled elsewhere).

While it holds the lock, the filler keeps in the lock file the address where other
processes can follow its fill as it grows (share.py); the wait for the release is the
fallback when there is nothing to follow. The kernel releases a flock when its holder
dies, so a crashed filler never leaves a key locked.

A lock file lives only as long as its fill (issue 12: clients choose paths, and one
left behind per 404 or passed-through object grew the folder without bound). The
rule that makes removing it safe across processes: a lock file is unlinked only by a
process that holds its flock, the filler as it ends or a sweep that took the flock of
a crashed filler's file (space.py), and only while the path still names that file
(`still_linked`). Holding the flock of a file still linked at the path means nobody
else can remove or replace it before the unlink. Without the second condition, one
that got the flock of a file already released and unlinked would remove the next
holder's file instead, and two fills of one object would run (review finding 1). A
process that opened the file before the unlink and gets the flock after it finds, by
the same comparison, that its file is no longer the one at the path, and opens the
path afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import threading

ATTEMPTS = 3  # a lock file unlinked (evicted) under us: open it afresh, a few times


class KeyLock:
    """The lock of one object; `acquire()` never blocks, `released()` waits."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1

    def acquire(self) -> bool:
        """True if this process now holds the lock (or could not lock at all, in which
        case it fills unlocked: a duplicate fetch at worst, never a corrupt object:
        every writer has its own temp file). False if another process holds it."""
        for _ in range(ATTEMPTS):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                return True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except OSError:
                os.close(fd)
                return True
            if still_linked(fd, self.path):
                self._fd = fd
                return True
            os.close(fd)  # evicted between open and flock: that lock guards nothing
        return True

    def advertise(self, address: str) -> int:
        """Write where this fill can be followed (share.py) into the held lock file;
        the bytes written (what the lock file holds: space.py counts it)."""
        if self._fd >= 0 and address:
            with contextlib.suppress(OSError):  # then nobody follows: they wait instead
                data = address.encode()
                os.pwrite(self._fd, data, 0)
                os.ftruncate(self._fd, len(data))
                return len(data)
        return 0

    def holder(self) -> str:
        """The address the holder advertised; "" if none (yet). A stale one, left by an
        earlier holder, only makes the follower fall back to waiting."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return ""
        try:
            return os.pread(fd, 256, 0).decode(errors="replace")
        except OSError:
            return ""
        finally:
            os.close(fd)

    def release(self) -> bool:
        """Remove the lock file and let go of it; True if this process held it and the
        file is now gone, so that the bytes it was counted at are freed (space.py).
        See the module docstring: the file is unlinked only if the path still names it;
        if it does not, someone removed it by hand, and another process's file there
        is not this one's to remove."""
        if self._fd < 0:
            return False
        gone = True
        if still_linked(self._fd, self.path):
            try:
                os.unlink(self.path)
            except OSError:
                gone = False  # still there, unheld: a sweep removes it and frees it later
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = -1
        return gone

    async def released(self) -> None:
        """Return once the process holding the lock has let go of it."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return  # gone: nobody holds it any more
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        threading.Thread(target=_wait, args=(fd, loop, done), daemon=True).start()
        await asyncio.shield(done)


def still_linked(fd: int, path: str) -> bool:
    """Whether `path` names the file open at `fd` (not an unlinked one, nor another
    file created at the path since)."""
    try:
        linked, held = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (linked.st_dev, linked.st_ino) == (held.st_dev, held.st_ino)


def _wait(fd: int, loop: asyncio.AbstractEventLoop, done: asyncio.Future[None]) -> None:
    """In a daemon thread: block until the lock is free, then wake the loop."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        pass
    finally:
        os.close(fd)
    with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
        loop.call_soon_threadsafe(_resolve, done)


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)
