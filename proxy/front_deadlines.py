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

from aiohttp.base_protocol import BaseProtocol

from .listener import PublicServer, SendRate, _outstanding, reset_client

NEVER = float("inf")


class ClientDeadlines(BaseProtocol):
    """A BaseProtocol with the head and send deadlines of the module docstring."""

    __slots__ = (
        "_busy",
        "_closing",
        "_deadline",
        "_listener",
        "_outstanding",
        "_rate",
        "_raw",
        "_send_deadline",
        "_served",
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
        self._rate = SendRate()  # min_send_rate, measured per response (its request's number)
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
        buffered, timeouts = raw.get_write_buffer_size(), self._listener.timeouts
        if self._rate.paused(self._loop.time(), buffered, self._served, timeouts):
            self._cut(raw)
            return
        self._await_client()

    def resume_writing(self) -> None:
        super().resume_writing()
        raw = self._raw
        if raw is None:
            return
        self._rate.resumed(self._loop.time(), raw.get_write_buffer_size())
        if raw.is_closing():
            self._await_client()  # progress, and more to take before the close
        else:
            self._send_deadline = 0.0

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
        self._send_deadline = 0.0
        self._closing = True
        self.unsent = reset_client(self._listener, raw)
