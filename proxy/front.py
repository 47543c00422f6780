"""The public listener's first protocol (`listener.fast_path`, issue 20): the common
request answered without aiohttp's connection machinery, everything else handed to
aiohttp's, at the exact byte where that request begins.

aiohttp's RequestHandler runs each request in a task of its own (Python 3.11 has no
eager tasks), builds its keep-alive and write machinery around it, and costs ~22 µs a
request with no handler work at all. `FrontConnection` splits heads itself (on the
blank line, the length capped first), parses each with aiohttp's own C parser
(front_aiohttp.py), and for the request it accepts — GET, HEAD or OPTIONS, HTTP/1.1,
origin-form target, no Content-Length, Transfer-Encoding, Upgrade or Expect, CRLF
line ends only, head ≤ MAX_HEAD — runs the pipeline's handler itself:

- **No task per request.** The handler's coroutine is driven with `send(None)` from
  `data_received`, under the connection's one long-lived task (entered as the current
  task, so `asyncio.timeout` works). A hit completes there. A handler that suspends (a
  record to load, a store round trip, a miss) is run on by that task (`Resumed`),
  which then serves the requests that arrived meanwhile, in order, and returns the
  connection to the synchronous path. The alternative, that task running every
  request (one wake per read), cost more on 10 KB keyed hits (interleaved wrk rounds,
  median CPU per request): 86 against 72 µs at 64 connections, 97 against 92 µs at 8.
- **Writes.** The answers (WireResponse bytes) of the requests read in a loop tick go
  out at its end, each connection's in one `writelines` (joined over TLS, where each
  write is a record), after the Python work of all of them, as wire.py's TickWrites
  does for aiohttp's connections. Everything else (a head and a sendfile, a stream,
  an aiohttp-built response) writes through `request.transport`, an `Ordered` view of
  the transport that first flushes what is held (front_transport.py), so no response
  overtakes another; aiohttp's StreamWriter works on this protocol (a BaseProtocol).
- **Backpressure.** Past MAX_BATCH held bytes the answers are written at once; while
  writing is paused no further request is started, and the task waits for the drain.
  A handler in flight when the client goes is not cancelled, as aiohttp's are not: its
  next write fails, and delivery counts only what the client took.
- **Handover.** Anything else — a method or version the fast path does not take, a
  body, an absolute target, a head the parser refuses, one over MAX_HEAD, a bare LF
  in an incomplete head — goes to the ClientConnection that the PublicServer makes
  (listener.py), as uvicorn hands a connection to its WebSocket protocol:
  `set_protocol`, `connection_made`, then the bytes from that request's first one.
  The connection stays there, with the head deadline it had; it answers malformed
  heads with the error page, bodies, HTTP/1.0, as it always has. Answers to earlier
  requests are written before.
- **Deadlines and the cap** (front_deadlines.py, front_listener.py): listener.py's,
  kept as numbers and checked by one sweep a second per listener. The connection cap
  and its counts are the PublicServer's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.http import HttpVersion11

from .front_aiohttp import (
    Resumed,
    enter_task,
    head_parser,
    leave_task,
    make_request,
    parse_head,
    written_bytes,
)
from .front_deadlines import NEVER, ClientDeadlines
from .front_transport import Ordered
from .wire import SentResponse, WireResponse

if TYPE_CHECKING:
    from .front_listener import Front

log = logging.getLogger("keyfront")

MAX_HEAD = 8 * 1024  # a longer head is handed over (aiohttp then allows up to 64 KiB)
MAX_QUEUED = 64 * 1024  # bytes read ahead while a request waits: then reading pauses
MAX_BATCH = 64 * 1024  # bytes of answers held for one write (the transport's high water)
_FAST_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))


class FrontConnection(ClientDeadlines):
    """One public connection until it is handed over; see the module docstring."""

    __slots__ = (
        "_buffer",
        "_counted",
        "_front",
        "_head_parser",
        "_held",
        "_out",
        "_out_size",
        "_task",
        "_tls",
        "_wake",
        "peername",
        "sockname",
        "ssl_context",
    )

    def __init__(self, front: Front) -> None:
        super().__init__(front.loop, front.listener)
        self._front = front
        self._buffer = b""  # bytes read and not yet served
        self._out: list[bytes] = []  # answers of this read not yet written
        self._out_size = 0  # their bytes
        self._counted = False
        self._held = False  # reading paused: MAX_QUEUED bytes wait
        self._tls = False
        self._head_parser: Any = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[Coroutine[Any, Any, None]] | None = None
        self.ssl_context: Any = None  # what BaseRequest reads of aiohttp's protocol
        self.peername: Any = None
        self.sockname: Any = None

    # --- the connection ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        front, listener = self._front, self._front.listener
        if listener.open >= listener.max_connections or front.closing:
            listener.refuse(transport)
            return
        listener.open += 1
        self._counted = True
        super().connection_made(transport)
        raw: asyncio.Transport = transport  # type: ignore[assignment]  # a stream transport
        self._raw = raw
        self.transport = Ordered(raw, self._flush)
        self.ssl_context = raw.get_extra_info("sslcontext")
        self.peername = raw.get_extra_info("peername")
        self.sockname = raw.get_extra_info("sockname")
        self._tls = self.ssl_context is not None
        self._head_parser = head_parser(self, self._loop)
        self._deadline = self._loop.time() + listener.timeouts.headers
        self._wake = self._loop.create_future()
        self._task = self._loop.create_task(self._run())
        front.opened(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._release()
        super().connection_lost(exc)
        self._closing = True
        if self._task is not None and not self._busy:
            self._task.cancel()
        # A handler in flight is not cancelled, as aiohttp's are not (its default
        # handler_cancellation=False): its next write or drain fails with
        # ConnectionError, so delivery aborts and counts only what the client took.

    def _release(self) -> None:
        """Leave the listener's counts (at close, or at handover)."""
        if self._counted:
            self._counted = False
            self._front.listener.open -= 1
            self._front.closed(self)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        self._buffer = buffer
        if self._busy:  # the task serves them in turn
            if len(buffer) > MAX_QUEUED and not self._held:
                self._held = True
                self._pause_transport_reading()
            return
        self._serve_now()

    # --- the synchronous path --------------------------------------------------------

    def _serve_now(self) -> None:
        """Serve what has arrived, answers appended to `_out`, until a handler
        suspends (the task takes over) or the bytes run out."""
        loop, task, handler = self._loop, self._task, self._front.handler
        assert task is not None
        while not self._closing:
            if self._paused:
                self._go_async(self._nothing())
                break
            request = self._next_request()
            if request is None:
                break
            coro = handler(request)
            enter_task(loop, task)
            try:
                blocked_on = coro.send(None)
            except StopIteration as done:
                response = done.value
            except Exception as exc:
                self._go_async(self._fail(request, exc))
                break
            else:
                self._go_async(self._finish_later(request, Resumed(coro, blocked_on)))
                break
            finally:
                leave_task(loop, task)
            if isinstance(response, WireResponse):
                if type(response) is WireResponse:
                    self._hold(written_bytes(response))
                self._answered()
            elif not self._respond_now(request, response):
                break
        if self._out:
            self._front.flush_later(self)

    def _respond_now(self, request: web.BaseRequest, response: web.StreamResponse) -> bool:
        """Write an aiohttp-built response; False when the connection can serve no more
        now (it suspended: the task goes on; or it closes)."""
        coro = self._write(request, response)
        try:
            blocked_on = coro.send(None)
        except StopIteration:
            return self._open()
        except Exception:  # a bug in writing it: logged, the connection cut (as in _run)
            log.exception("unexpected failure on a client connection")
            self.abort()
            return False
        self._go_async(_await(Resumed(coro, blocked_on)))
        return False

    def _go_async(self, job: Coroutine[Any, Any, None]) -> None:
        """The task takes over: `job`, then the requests after it."""
        self._flush()  # earlier answers go now, not after a store's round trip
        self._busy = True
        assert self._wake is not None
        self._wake.set_result(job)

    # --- the task --------------------------------------------------------------------

    async def _run(self) -> None:
        """The connection's task: idle until a handler suspends or writing pauses."""
        while True:
            assert self._wake is not None
            job = await self._wake
            self._wake = self._loop.create_future()
            try:
                await job
                await self._serve_later()
            except Exception:  # a bug in writing a response: logged, the connection cut
                log.exception("unexpected failure on a client connection")
                self.abort()
                return
            if not self._open():
                return
            self._busy = False
            self._flush()
            if self._held:
                self._held = False
                self._resume_transport_reading()

    async def _finish_later(self, request: web.BaseRequest, pending: Resumed) -> None:
        try:
            response = await pending
        except Exception as exc:
            await self._fail(request, exc)
            return
        await self._respond(request, response)

    async def _serve_later(self) -> None:
        """The requests that arrived meanwhile, one after the other."""
        handler = self._front.handler
        while self._open():
            if self._paused:
                await self._drain_helper()
                continue
            request = self._next_request()
            if request is None:
                return
            try:
                response = await handler(request)
            except Exception as exc:
                await self._fail(request, exc)
                return
            await self._respond(request, response)

    async def _respond(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        if type(response) is WireResponse:
            self._hold(written_bytes(response))
            self._flush()
            self._answered()
        elif type(response) is SentResponse:
            self._answered()
        else:
            await self._write(request, response)

    async def _write(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        """An aiohttp-built response, through StreamWriter; a connection it says not to
        keep (Connection: close, an error page) closes after it."""
        try:
            await response.prepare(request)
            await response.write_eof()
        except ConnectionError:
            self._close()
            return
        if response.keep_alive:
            self._answered()
        else:
            self._close()

    async def _fail(self, request: web.BaseRequest, exc: BaseException) -> None:
        """A failure that escaped the handler: a bug (the pipeline answers its own
        failures). Logged with its traceback; the error page if no byte of the
        response is out, else the connection is aborted (STYLE streaming rule)."""
        log.error("unexpected failure answering %s", request.remote, exc_info=exc)
        self._flush()
        if request.writer.output_size > 0 or not self._open():
            self.abort()
            return
        page = self._front.listener.error_page(500)
        await self._write(request, page)
        self._close()

    async def _nothing(self) -> None:
        return None

    # --- heads -----------------------------------------------------------------------

    def _next_request(self) -> web.BaseRequest | None:
        """The next whole head's request, if it is one the fast path takes; else None,
        having handed the connection over if it is not."""
        buffer = self._buffer
        if not buffer:
            return None
        end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD)
        if end < 0:
            # A bare LF may end a head for aiohttp's parser, never for this split.
            if len(buffer) >= MAX_HEAD or buffer.count(b"\n") != buffer.count(b"\r\n"):
                self._hand_over()
            else:
                self._head_started()
            return None
        end += 4
        head = buffer[:end]
        # No bare LF or CR, on which parsers differ: aiohttp's parser refuses both
        # (tests/test_aiohttp_internals.py), so a head it takes ends where this split
        # says, and no second message hides in it.
        message = parse_head(self._head_parser, head)
        if message is None or not _fast(message):
            self._hand_over()
            return None
        self._buffer = buffer[end:]
        self._served += 1
        self._deadline = NEVER
        assert self._task is not None
        return make_request(message, self, self._task, self._loop)

    def _hand_over(self) -> None:
        """The connection goes to a ClientConnection from the byte its next request
        starts at, and stays there (module docstring)."""
        raw, rest = self._raw, self._buffer
        assert raw is not None and self._task is not None
        self._flush()
        self._buffer = b""
        self._release()
        self._closing = True
        self.transport = None
        if self._task is not asyncio.current_task(self._loop):
            self._task.cancel()  # idle: the synchronous path hands over
        connection = self._front.listener()
        raw.set_protocol(connection)
        connection.connection_made(raw)
        connection.adopt_deadline(self._deadline)  # type: ignore[attr-defined]
        if self._held:
            raw.resume_reading()
        if rest:
            connection.data_received(rest)

    def _answered(self) -> None:
        """A response is out: the next head has `keepalive` (module docstring)."""
        if self._front.closing:
            self._close()
        else:
            self._deadline = self._loop.time() + self._listener.timeouts.keepalive

    # --- writing ---------------------------------------------------------------------

    def _hold(self, data: bytes) -> None:
        """Hold an answer for the batch's one write; past MAX_BATCH bytes write now,
        so that a client that does not read pauses writing (and so the serving of
        its pipelined requests) before memory grows: 5,000 pipelined 10 KB hits
        arrive in a few reads."""
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size > MAX_BATCH:
            self._flush()

    def _flush(self) -> None:
        out = self._out
        if not out:
            return
        self._out_size = 0
        raw = self._raw
        if raw is not None and not raw.is_closing():
            if len(out) == 1:
                raw.write(out[0])
            elif self._tls:
                raw.write(b"".join(out))  # one TLS record, not one per response
            else:
                raw.writelines(out)
        out.clear()

    def _open(self) -> bool:
        return not self._closing and self.transport is not None

    def _close(self) -> None:
        """Close once what is queued is out; the client has `send` to take it."""
        self._flush()
        self._closing = True
        raw = self._raw
        if raw is not None and not raw.is_closing():
            raw.close()
            if raw.get_write_buffer_size():
                self._await_client()

    def shut(self) -> None:
        """Shutdown: close now if idle, else after the response in flight."""
        if not self._busy:
            self._close()


async def _await(pending: Resumed) -> None:
    await pending


def _fast(message: Any) -> bool:
    """A request the fast path takes (module docstring)."""
    if message.method not in _FAST_METHODS or message.version is not HttpVersion11:
        return False
    if message.upgrade or message.chunked or message.path[:1] != "/":
        return False
    headers = message.headers
    return not (  # unrolled: a generator here cost ~1 µs a request
        "Content-Length" in headers
        or "Transfer-Encoding" in headers
        or "Expect" in headers
        or "Upgrade" in headers
    )
