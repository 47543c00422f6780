"""The deadlines of a front-protocol connection (front.py), as listener.py keeps them
for aiohttp's (README "Limits and timeouts"; issue 12 items 4 and 5), but held as
numbers that the listener's one sweep a second checks (front_listener.py) rather than
a timer per connection or per request:

- **head**: the next head must arrive within `headers` of the connection's opening,
  and within `keepalive` of a response's end (within `headers` of its first byte,
  never later); bytes trickling in never move it on.
- **send**: a client that takes none of its response for `send` while writing is
  paused (or while a closing connection still holds bytes for it) is reset, and so is
  one that takes less than `min_send_rate` on average over the time keyfront waited on
  it; what it never got is remembered (`unsent`) for the usage count.
"""

from __future__ import annotations

import asyncio
import socket

from aiohttp.base_protocol import BaseProtocol

from .listener import _RESET, PublicServer, _kernel_queue, _outstanding

NEVER = float("inf")


class ClientDeadlines(BaseProtocol):
    """A BaseProtocol with the head and send deadlines of the module docstring."""

    __slots__ = (
        "_busy",
        "_closing",
        "_deadline",
        "_listener",
        "_measured",
        "_outstanding",
        "_paused_at",
        "_queued",
        "_raw",
        "_send_deadline",
        "_served",
        "_taken",
        "_waited",
        "unsent",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, listener: PublicServer) -> None:
        super().__init__(loop)
        self._listener = listener
        self._raw: asyncio.Transport | None = None
        self._busy = False  # a request is in the connection's task: no head deadline
        self._closing = False
        self._deadline = NEVER  # for the next head to arrive whole
        self._served = 0  # requests taken so far
        self._send_deadline = 0.0  # 0: not waiting on the client to take bytes
        self._measured = 0  # the request whose response min_send_rate measures
        self._taken = 0  # bytes it took while writing was paused
        self._waited = 0.0  # seconds writing was paused
        self._paused_at = 0.0
        self._queued = 0
        self._outstanding = 0
        self.unsent = 0  # bytes queued for the client when it was cut (usage)

    def _head_started(self) -> None:
        """Part of a head is here: the whole must be within `headers` of now, or
        sooner if a deadline already runs."""
        deadline = self._loop.time() + self._listener.timeouts.headers
        self._deadline = min(self._deadline, deadline)

    def abort(self) -> None:
        self._closing = True
        if self._raw is not None:
            self._raw.abort()

    def sweep(self, now: float) -> None:
        """The deadlines, checked by the listener's sweep."""
        raw = self._raw
        if raw is None:
            return
        if self._send_deadline:
            if now >= self._send_deadline:
                self._check_send(raw, now)
        elif now >= self._deadline and not self._busy and not raw.is_closing():
            raw.close()  # no head in time: nothing to answer, as aiohttp does

    def pause_writing(self) -> None:
        super().pause_writing()
        raw = self._raw
        if raw is None:
            return
        self._paused_at = self._loop.time()
        self._queued = raw.get_write_buffer_size()
        if self._served != self._measured:  # a new response: measured afresh
            self._measured = self._served
            self._taken, self._waited = 0, 0.0
        elif self._too_slow():
            self._cut(raw)
            return
        self._await_client()

    def resume_writing(self) -> None:
        super().resume_writing()
        raw = self._raw
        if raw is None:
            return
        if self._paused_at:  # it took at least what left the buffer
            self._waited += self._loop.time() - self._paused_at
            self._taken += self._queued - raw.get_write_buffer_size()
            self._paused_at = 0.0
        if raw.is_closing():
            self._await_client()  # progress, and more to take before the close
        else:
            self._send_deadline = 0.0

    def _too_slow(self) -> bool:
        timeouts = self._listener.timeouts
        return self._waited > timeouts.send and self._taken < timeouts.min_send_rate * self._waited

    def _await_client(self) -> None:
        """Start the send deadline: the client must take some of its bytes by then."""
        assert self._raw is not None
        self._send_deadline = self._loop.time() + self._listener.timeouts.send
        self._outstanding = _outstanding(self._raw)

    def _check_send(self, raw: asyncio.Transport, now: float) -> None:
        waiting = raw.get_write_buffer_size() > 0 if raw.is_closing() else self._paused
        if not waiting:
            self._send_deadline = 0.0
            return
        # Progress is what the client took, from keyfront's buffer or the kernel's
        # (listener.py `_check_send` says why the kernel's counts).
        outstanding = _outstanding(raw)
        if outstanding < self._outstanding:
            self._outstanding = outstanding
            self._send_deadline = now + self._listener.timeouts.send
            return
        self._cut(raw)

    def _cut(self, raw: asyncio.Transport) -> None:
        """Reset a client that took nothing for `send`, or too little for
        `min_send_rate` (RST: the kernel drops what it holds for it too)."""
        self._listener.cut += 1
        self._send_deadline = 0.0
        self.unsent = raw.get_write_buffer_size()
        sock = raw.get_extra_info("socket")
        if sock is not None:
            try:
                self.unsent += _kernel_queue(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            except OSError:
                pass
        self.abort()
