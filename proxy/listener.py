"""The listeners' connections: keyfront's own error pages, deadlines for what a client
sends and takes, and a cap on how many one worker holds (issue 12 items 4, 5 and 9;
README "Security model"). The admin listener has the same (`AdminServer`, review
finding 5) with a cap of its own: it shares the process, its event loop and its file
descriptors with the public one, and customer tokens use it.

**Error pages.** aiohttp refuses a malformed request (bad request line, invalid header,
a line over 8 KiB) in its protocol handler, before keyfront's handler is called, and
answers with a text page that names aiohttp's and Python's versions in `Server` and
echoes the request line, a key in its query included. `KeyfrontServer` makes every
connection answer those with the `error_page` it is given (`error_page` below, for
both listeners: the SPEC JSON body, `Server: keyfront`), with no traceback in the log
for a client's malformed bytes.

aiohttp's defaults leave a public port open to slowloris: its RequestHandler has no
deadline for a request's headers, and keeps an idle connection 3,630 s. Nor do its
writes have a deadline, so a client that stops reading holds its handler, and with it
a pass-through's origin connection (aiohttp's client drops its read timer while its
reading is paused), for ever. Here, with next to nothing added to a request's path
(the head-size count below, ~0.1 µs a read):

- **headers**: aiohttp already keeps one timer per connection, its keep-alive handle,
  re-armed lazily at the end of each response (a float store; the timer reschedules
  itself when it fires early) and closing the connection only while it waits for a
  request. It counts from a fixed point and is never moved by bytes arriving. Seeded
  at `headers` from the connection's opening, it is the first request's header
  deadline; after each response it is `keepalive`, which closes an idle connection.
  The first bytes of a head that does not arrive whole in one read bring it forward to
  `headers` from then (never further), so a trickled head gets `headers` at most,
  whatever came before it. A head that arrives in one read (every ordinary request)
  costs an add and a compare.
- **send**: a second timer per connection, armed when the transport's buffer passes
  its high-water mark (`pause_writing`, 64 KiB) and lapsed when the client drains it to
  the low one. A client that drains nothing for `send` is reset (RST: the kernel drops
  what it holds for it too), which wakes the handler's `drain()`: its next write fails,
  and the send path aborts and closes the origin response. So does a connection closing
  with bytes the client never takes. Small responses never reach the mark, so a hit
  pays nothing for it.
- **min_send_rate**: `send` alone is a progress deadline: a client taking ~50 KB every
  29 s is never cut, and holds a pass-through's origin connection for days (review
  finding 3). So each pause also checks the average rate at which the client took this
  response while writing was paused (what left the buffer over the time paused, summed
  from each resume), once that time passes `send`: below `min_send_rate` it is reset as
  above. Only the paused time counts, so neither idle keep-alive time nor keyfront's
  own waits on the origin lower the rate.
- **head size**: a request head is held in memory until complete; past MAX_HEAD the
  connection is closed (see `data_received`), the part of a pipelined head that came
  in the read completing the request before it included (review finding 4).
- **max_connections**: a connection past the cap is closed as soon as it is accepted,
  before any of its bytes are read, so a flood of idle connections cannot take the
  file descriptors real clients need; the deadlines above free the slots.

This leans on a few of RequestHandler's internals (`_keepalive_handle`,
`_next_keepalive_close_time`, `_process_keepalive`, `_request_count`, `_messages`,
`_current_request`, `_manager`, and `web.Server._kwargs`), as of aiohttp 3.14, the
release pinned in pyproject.toml (docs/dependencies.md lists each and why);
tests/test_aiohttp_internals.py fails first if one moves, tests/test_e2e_listener.py
if its behaviour changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import resource
import socket
import struct
import termios
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler

from .config import ClientTimeouts
from .errors import BadRequest, Refusal, error_body
from .exchange import SERVER
from .metrics import Metrics
from .request_ids import RequestIds

log = logging.getLogger("keyfront")

MAX_HEAD = 64 * 1024  # bytes a request head may take (nginx's default allows ~33 KiB)
FD_RESERVE = 1024  # descriptors kept for everything but clients (connection_cap)
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, drops the queue
WARN_EVERY = 60.0  # seconds between two "cap reached" warnings


ErrorPage = Callable[[int], web.StreamResponse]  # HTTP status -> the whole answer


class KeyfrontServer(web.Server):
    """aiohttp's low-level server whose connections answer with `error_page`."""

    def __init__(self, handler: Any, *, error_page: ErrorPage, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.error_page = error_page

    def __call__(self) -> RequestHandler:
        return Connection(self, loop=self._loop, **self._kwargs)


class Connection(RequestHandler):
    """aiohttp's connection handler, with `KeyfrontServer.error_page` for its errors."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:  # a failure that escaped a handler: a bug, with its traceback
            log.error("unexpected failure answering %s", request.remote, exc_info=exc)
        else:  # a client's malformed bytes: no traceback, and not above debug
            log.debug("refused a malformed request from %s: %s", request.remote, exc)
        if request.writer.output_size > 0:
            raise ConnectionError("the response had begun: the connection is dropped")
        server = self._manager
        assert isinstance(server, KeyfrontServer)
        return server.error_page(status)


class KeyfrontAppRunner(web.AppRunner):
    """An AppRunner (the admin listener) on an AdminServer, whose responses all say
    `Server: keyfront`: the public listener's deadlines, head cap and a connection cap
    of its own (review finding 5), for it shares the process, its event loop and its
    descriptors with the public listener, and customer tokens use it."""

    def __init__(
        self,
        app: web.Application,
        *,
        error_page: ErrorPage,
        timeouts: ClientTimeouts,
        max_connections: int,
        **kwargs: Any,
    ) -> None:
        app.on_response_prepare.append(_server_header)
        super().__init__(app, **kwargs)
        self._error_page = error_page
        self._timeouts = timeouts
        self._max_connections = max_connections

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        kwargs: dict[str, Any] = made._kwargs
        return AdminServer(
            made.request_handler,
            error_page=self._error_page,
            timeouts=self._timeouts,
            max_connections=self._max_connections,
            request_factory=made.request_factory,
            **kwargs,
        )


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER


class PublicServer(KeyfrontServer):
    """The public listener: makes `ClientConnection`s, and counts them."""

    what = "client"  # for the log

    def __init__(
        self,
        handler: Any,
        *,
        error_page: ErrorPage,
        timeouts: ClientTimeouts,
        max_connections: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            handler, error_page=error_page, keepalive_timeout=timeouts.keepalive, **kwargs
        )
        self.timeouts = timeouts
        self.max_connections = max_connections
        self.open = 0  # connections accepted and not yet lost
        self.refused = 0  # connections closed at once: the cap was reached
        self.oversized = 0  # connections closed for a request head over MAX_HEAD
        self.cut = 0  # clients reset for taking none of their response for `send`
        self._warned = -WARN_EVERY

    def __call__(self) -> RequestHandler:
        return ClientConnection(self, loop=self._loop, **self._kwargs)

    def count_into(self, metrics: Metrics) -> None:
        """Copy the counts into the metrics (a Metrics source, run before a scrape)."""
        metrics.gauges["client_connections"] = self.open
        metrics.counters["client_connections_refused"] = {"": self.refused}
        metrics.counters["client_send_timeouts"] = {"": self.cut}
        metrics.counters["client_heads_too_large"] = {"": self.oversized}

    def refuse(self, transport: asyncio.BaseTransport) -> None:
        self.refused += 1
        transport.close()  # nothing read, nothing queued: gone at once
        now = self._loop.time()
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            log.warning(
                "%d %s connections open, the cap: refusing new ones (%d so far)",
                self.open,
                self.what,
                self.refused,
            )


class AdminServer(PublicServer):
    """The admin listener: `AdminConnection`s, with the public deadlines."""

    what = "admin"

    def __call__(self) -> RequestHandler:
        return AdminConnection(self, loop=self._loop, **self._kwargs)


class SendRate:
    """`min_send_rate` for one connection (review finding 3): what the client took of
    the response being measured while keyfront waited on it (writing paused), and for
    how long. Only paused time counts, so neither idle keep-alive time nor keyfront's
    own waits on the origin lower the rate. Shared by ClientConnection and the front
    protocol's deadlines (front_deadlines.py)."""

    __slots__ = ("measured", "paused_at", "queued", "taken", "waited")

    def __init__(self) -> None:
        self.measured: object = None  # the response measured (its request)
        self.taken = 0  # bytes it took while writing was paused
        self.waited = 0.0  # seconds writing was paused
        self.paused_at = 0.0  # 0: writing is not paused
        self.queued = 0  # bytes in the transport's buffer when writing paused

    def paused(self, now: float, buffered: int, response: object, timeouts: ClientTimeouts) -> bool:
        """Writing paused with `buffered` bytes queued: whether the client took this
        response below `min_send_rate` on average over the time keyfront waited on it,
        once that passed `send` (then it is to be cut). Checked as writing pauses
        again: a response that fits in the buffers never gets here. `send` alone is a
        progress deadline, which a client taking a little every `send` never trips."""
        self.paused_at, self.queued = now, buffered
        if response is not self.measured:  # a new response: measured afresh
            self.measured, self.taken, self.waited = response, 0, 0.0
            return False
        return self.waited > timeouts.send and self.taken < timeouts.min_send_rate * self.waited

    def resumed(self, now: float, buffered: int) -> None:
        """It took at least what left the buffer (writes only add to it)."""
        if self.paused_at:
            self.waited += now - self.paused_at
            self.taken += self.queued - buffered
            self.paused_at = 0.0


def reset_client(listener: PublicServer, client: asyncio.Transport) -> int:
    """Reset a client that took nothing for `send`, or too little for `min_send_rate`
    (RST: the kernel drops what it holds for it too), counted in `listener.cut`; the
    bytes it never got (keyfront's buffer and the kernel's queue), for usage."""
    listener.cut += 1
    unsent = client.get_write_buffer_size()
    sock = client.get_extra_info("socket")
    if sock is not None:
        try:
            unsent += _kernel_queue(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        except OSError:
            pass
    client.abort()
    return unsent


_PARSE = RequestHandler.data_received  # called directly: super() costs ~25 ns a read


class ClientConnection(Connection):
    """One public client connection: aiohttp's handler with the deadlines of the
    module docstring."""

    __slots__ = (
        "_client",
        "_counted",
        "_listener",
        "_outstanding",
        "_rate",
        "_send_deadline",
        "_send_timer",
        "_unparsed",
        "unsent",
    )

    def __init__(self, listener: PublicServer, **kwargs: Any) -> None:
        super().__init__(listener, **kwargs)
        self._listener = listener
        self._client: asyncio.Transport | None = None  # kept while closing, unlike .transport
        self._send_deadline = 0.0  # 0: not waiting on the client to take bytes
        self._send_timer: asyncio.TimerHandle | None = None
        self._counted = False
        self._unparsed = 0  # bytes received of a request head not yet complete
        self._rate = SendRate()  # min_send_rate, measured per response (its request)
        self._outstanding = 0  # bytes queued for the client when the send deadline was set
        self.unsent = 0  # bytes queued for the client when it was cut (usage, item 5)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        listener = self._listener
        if listener.open >= listener.max_connections:
            listener.refuse(transport)
            return
        listener.open += 1
        self._counted = True
        self._client = transport  # type: ignore[assignment]  # a TCP transport
        super().connection_made(transport)
        # aiohttp armed its keep-alive timer at open + keepalive: the first request's
        # headers get `headers` instead.
        loop = self._loop
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
        self._next_keepalive_close_time = loop.time() + listener.timeouts.headers
        self._keepalive_handle = loop.call_at(
            self._next_keepalive_close_time, self._process_keepalive
        )

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted:
            self._counted = False
            self._listener.open -= 1
        self._client = None
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # aiohttp holds a request head in memory until it is complete, bounding its
        # lines (8,190 bytes) and their number (128) but not their total: ~1 MiB a
        # connection, 10 GiB for 10,000 trickling ones. Past MAX_HEAD without a
        # complete head (or with a body, which GET, HEAD and OPTIONS do not carry),
        # the connection is closed. One add and compare a read.
        requests = self._request_count
        _PARSE(self, data)
        if self._request_count != requests and data.endswith(b"\r\n\r\n"):
            self._unparsed = 0  # every ordinary request: a read ending at a head's end
            return
        self._count_head(data, requests)

    def _count_head(self, data: bytes, requests: int) -> None:
        """Count the bytes of `data` that are part of an incomplete head (rare)."""
        if self._request_count != requests:
            # A read that completes a request may carry the start of the next head (a
            # pipelining client): the bytes after the last head's blank line count
            # (review finding 4). A head has no blank line but its last, so none is in
            # them; if the read holds none at all (the blank line began in the
            # previous read), all of it counts.
            end = data.rfind(b"\r\n\r\n")
            self._unparsed = len(data) - end - 4 if end >= 0 else len(data)
            if not self._unparsed:
                return
        else:
            self._unparsed += len(data)
        self._head_started()
        if self._unparsed > MAX_HEAD:
            self._listener.oversized += 1
            self.force_close()

    def _head_started(self) -> None:
        """A head must be complete within `headers` of its first byte, on a keep-alive
        connection too: the deadline moves closer, never further. (Called for each read
        of an incomplete head: the end of a response moves the deadline to `keepalive`
        on, and the next read of a pipelined head brings it back.)"""
        self.adopt_deadline(self._loop.time() + self._listener.timeouts.headers)

    def adopt_deadline(self, deadline: float) -> None:
        """Bring the head deadline forward to `deadline` (never further); also for a
        connection the front protocol hands over (front.py), which keeps its own."""
        if deadline < self._next_keepalive_close_time:
            self._next_keepalive_close_time = deadline
            if self._keepalive_handle is not None:
                self._keepalive_handle.cancel()
            self._keepalive_handle = self._loop.call_at(deadline, self._process_keepalive)

    async def start(self) -> None:
        try:
            await super().start()
        finally:
            # The connection is closing. Bytes the client has not taken yet keep it
            # open until it does: give it `send` for them.
            client = self._client
            if client is not None and client.get_write_buffer_size():
                self._await_client()

    def pause_writing(self) -> None:
        super().pause_writing()
        client = self._client
        if client is None:
            return
        buffered, timeouts = client.get_write_buffer_size(), self._listener.timeouts
        if self._rate.paused(self._loop.time(), buffered, self._current_request, timeouts):
            self._cut(client)
            return
        self._await_client()

    def resume_writing(self) -> None:
        super().resume_writing()
        client = self._client
        if client is not None:
            self._rate.resumed(self._loop.time(), client.get_write_buffer_size())
        if client is not None and client.is_closing():
            self._await_client()  # progress, and more to take before the close
        else:
            self._send_deadline = 0.0  # progress; the timer lapses when it fires

    def _await_client(self) -> None:
        """Start the send deadline: the client must take some of its bytes by then."""
        self._send_deadline = self._loop.time() + self._listener.timeouts.send
        if self._client is not None:
            self._outstanding = _outstanding(self._client)
        if self._send_timer is None:
            self._send_timer = self._loop.call_at(self._send_deadline, self._check_send)

    def _check_send(self) -> None:
        self._send_timer = None
        client = self._client
        if client is None:
            return
        if client.is_closing():
            waiting = client.get_write_buffer_size() > 0
        else:
            waiting = self._send_deadline > 0  # writing is paused
        if not waiting:
            return
        if self._loop.time() < self._send_deadline:
            self._send_timer = self._loop.call_at(self._send_deadline, self._check_send)
            return
        # Progress is what the client took, in keyfront's buffer or the kernel's. Writing
        # resumes only once the kernel frees about half its send queue (up to 4 MiB),
        # so `resume_writing` alone made a steady reader of ~1 MB/s look stalled on
        # loopback (review finding 4): a client that took anything gets `send` more.
        outstanding = _outstanding(client)
        if outstanding < self._outstanding:
            self._outstanding = outstanding
            self._send_deadline = self._loop.time() + self._listener.timeouts.send
            self._send_timer = self._loop.call_at(self._send_deadline, self._check_send)
            return
        self._cut(client)

    def _cut(self, client: asyncio.Transport) -> None:
        self.unsent = reset_client(self._listener, client)


class AdminConnection(ClientConnection):
    """An admin API connection: a ClientConnection whose requests may carry a body (a
    JSON object, at most ADMIN_MAX_BODY), which is not head bytes. aiohttp feeds a
    body to its own buffer, which pauses reading past 128 KiB; proxy/admin/http.py
    `read_body` reads it within `headers`."""

    __slots__ = ("_body",)

    def __init__(self, listener: PublicServer, **kwargs: Any) -> None:
        super().__init__(listener, **kwargs)
        self._body: Any = None  # the payload of the last request, while it is read

    def data_received(self, data: bytes) -> None:
        body = self._body
        if body is not None and not body.is_eof():
            # Bytes of a body. A head that follows the body's end in this read is
            # counted from the next read: at most one read (256 KiB) more, on a
            # listener of a few hundred connections.
            _PARSE(self, data)
            return
        self._body = None
        requests = self._request_count
        _PARSE(self, data)
        if self._request_count != requests and self._messages:
            payload = self._messages[-1][1]
            if payload is not EMPTY_PAYLOAD:  # what follows its head in this read is body
                self._body = payload
                self._unparsed = 0
                return
        self._count_head(data, requests)


def _outstanding(client: asyncio.Transport) -> int:
    """Bytes queued for the client: in the transport's buffer, and in the kernel's send
    queue not yet acknowledged. Only read when a send deadline is set or lapses."""
    queued = client.get_write_buffer_size()
    sock = client.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            queued += _kernel_queue(sock)
    return queued


def _kernel_queue(sock: socket.socket) -> int:
    """Bytes in the socket's send queue that the peer has not acknowledged (SIOCOUTQ)."""
    answer = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return int(struct.unpack("i", answer)[0])


def unsent(request: web.BaseRequest) -> int:
    """What keyfront had queued for this request's client when it cut it for not
    reading (0 if it did not): a send path takes it off the bytes it counts as sent."""
    protocol = request.protocol
    if isinstance(protocol, ClientConnection):
        return protocol.unsent
    cut = getattr(protocol, "unsent", 0)  # the front protocol's (front.py)
    return cut if isinstance(cut, int) else 0


def raise_open_files_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (logged): every client
    connection is a descriptor. The soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        with open("/proc/sys/fs/nr_open") as nr_open:  # the kernel's own ceiling
            target = int(nr_open.read())
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("open files limit raised from %d to %d", soft, target)
            soft = target
        except (OSError, ValueError) as exc:
            log.warning("open files limit stays %d: cannot raise it to %d: %s", soft, target, exc)
    return target if soft == resource.RLIM_INFINITY else soft


def connection_cap(configured: int, open_files: int) -> int:
    """`max_connections`, lowered (with a warning) where the open files limit could not
    hold that many clients and keep FD_RESERVE descriptors (half the limit, if smaller)
    for what serving them opens: origin connections (up to 256 per origin), cache
    files, the store, the logs. Beyond the limit, accept() fails with EMFILE and
    asyncio stops accepting for a second: everyone waits."""
    fits = open_files - min(FD_RESERVE, open_files // 2)
    if configured > fits:
        log.warning(
            "max_connections %d is more than the open files limit %d leaves for clients: "
            "%d client connections per worker",
            configured,
            open_files,
            fits,
        )
        return fits
    return configured


def error_page(status: int) -> web.Response:
    """The answer to what aiohttp refuses before any handler runs (a malformed request
    line or header, one too long) or to a failure escaping a handler, on either
    listener: the SPEC error body and `Server: keyfront`, in place of aiohttp's text
    page, which names its and Python's versions and echoes the request line, key and
    all (issue 12 item 9). Its connection is closed after it."""
    refusal = BadRequest() if status < 500 else Refusal()
    request_id = _page_ids(None)
    headers = {"Server": SERVER, "X-Request-Id": request_id, "Content-Type": "application/json"}
    response = web.Response(
        status=refusal.status, body=error_body(refusal, request_id), headers=headers
    )
    response.force_close()
    return response


_page_ids = RequestIds()  # error pages have no Exchange, nor a request id of their own
