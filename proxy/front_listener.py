"""The public listener with the fast path on (`listener.fast_path`, issue 20): the
protocol factory that `loop.create_server` gets, making a FrontConnection (front.py)
per accepted connection. Shared by its connections: one sweep over their deadlines
(front_deadlines.py), the end-of-tick write of their answers, and their shutdown.
The PublicServer (listener.py) makes the ClientConnections they hand over to, holds
the connection cap, and counts both kinds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from .front import FrontConnection
from .listener import PublicServer

Handler = Callable[[web.BaseRequest], Coroutine[Any, Any, web.StreamResponse]]


class Front:
    """The public listener's protocol factory with the fast path on: a FrontConnection
    per accepted connection, one deadline sweep for all of them, and their shutdown.
    `listener` makes the ClientConnections they hand over to, and counts both."""

    def __init__(self, listener: PublicServer, handler: Handler) -> None:
        self.listener = listener
        self.handler = handler
        self.loop = asyncio.get_running_loop()
        timeouts = listener.timeouts
        # One sweep a second; more often where a deadline is shorter (tests).
        self.sweep_every = min(1.0, timeouts.headers / 4, timeouts.keepalive / 4, timeouts.send / 4)
        self.connections: set[FrontConnection] = set()
        self.closing = False
        self._sweeper: asyncio.TimerHandle | None = None
        self._drained: asyncio.Future[None] | None = None  # set in shutdown
        self._unflushed: list[FrontConnection] = []  # answers to write at the tick's end

    def __call__(self) -> FrontConnection:
        return FrontConnection(self)

    def flush_later(self, connection: FrontConnection) -> None:
        """Write `connection`'s answers at the end of this loop tick, with every other
        connection's: the Python work of all requests read in the tick first, then
        their sends back to back (wire.py TickWrites measured 31 against 36.6 µs a
        10 KB hit at c64 for it)."""
        if not self._unflushed:
            self.loop.call_soon(self._flush_all)
        self._unflushed.append(connection)

    def _flush_all(self) -> None:
        unflushed, self._unflushed = self._unflushed, []
        for connection in unflushed:
            connection._flush()

    def opened(self, connection: FrontConnection) -> None:
        self.connections.add(connection)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.sweep_every, self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        for connection in list(self.connections):
            connection.sweep(now)
        self._sweeper = None
        if self.connections:
            self._sweeper = self.loop.call_later(self.sweep_every, self._sweep)

    def pre_shutdown(self) -> None:
        """Close idle connections; busy ones close after their response."""
        self.closing = True
        for connection in list(self.connections):
            connection.shut()

    def closed(self, connection: FrontConnection) -> None:
        self.connections.discard(connection)
        if not self.connections and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def shutdown(self, grace: float) -> None:
        """Wait up to `grace` seconds for the busy connections, then abort the rest."""
        if self.connections:
            self._drained = self.loop.create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained, grace)
        for connection in list(self.connections):
            connection.abort()
