"""The aiohttp and asyncio internals the front protocol (front.py) leans on, in one
place, each checked by tests/test_aiohttp_internals.py against the pinned release
(aiohttp >=3.14,<3.15; Python 3.11's asyncio):

- `HttpRequestParser`, aiohttp's C parser (aiohttp._http_parser, private: aiohttp#3253
  gives it no stability guarantee). The front protocol parses each head with the very
  parser that aiohttp's RequestHandler, which it hands everything else to, would use:
  two parsers that disagree about where a request ends could smuggle one past the
  other; one parser cannot. Measured per head of a keyed wrk request (timeit, this
  VM), parsed and made into the BaseRequest the pipeline reads, with the six reads a
  keyed hit makes of it: aiohttp's C parser 5.6 µs, httptools 5.1 µs, a hand split
  4.6 µs (with none of the parsers' checks). httptools is public, but a new
  dependency with no header size limit; the difference is not worth a second parser.
- `web.BaseRequest` built from the parser's RawRequestMessage, with the front
  protocol in the role of its RequestHandler (`ssl_context`, `peername`, `sockname`,
  `transport`): the pipeline reads the request it always has.
- `asyncio.tasks._enter_task` / `_leave_task`: a handler driven by `coro.send(None)`
  outside any task sees its connection's task as `asyncio.current_task()`, so
  `asyncio.timeout` works before the first suspension; once the handler suspends,
  that same task runs it on (`Resumed`), so a timeout set before cancels the right
  task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any

from aiohttp import web
from aiohttp._http_parser import HttpRequestParser  # type: ignore[import-not-found]
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import RawRequestMessage
from aiohttp.http_writer import StreamWriter
from aiohttp.streams import EMPTY_PAYLOAD

enter_task = asyncio.tasks._enter_task
leave_task = asyncio.tasks._leave_task

# aiohttp's own limits for a request line and a header line, and their number.
MAX_LINE = 8190
MAX_HEADERS = 128


def head_parser(protocol: BaseProtocol, loop: asyncio.AbstractEventLoop) -> Any:
    """A parser for one connection's heads, with aiohttp's RequestHandler's limits."""
    return HttpRequestParser(
        protocol,
        loop,
        2**16,
        max_line_size=MAX_LINE,
        max_field_size=MAX_LINE,
        max_headers=MAX_HEADERS,
    )


def parse_head(parser: Any, head: bytes) -> RawRequestMessage | None:
    """The message of `head` (one whole head, blank line included), or None where the
    parser refuses it, or finds anything but exactly one message in it."""
    try:
        messages, upgraded, tail = parser.feed_data(head)
    except Exception:
        return None
    if len(messages) != 1 or upgraded or tail:
        return None
    message = messages[0][0]
    return message if isinstance(message, RawRequestMessage) else None


def make_request(
    message: RawRequestMessage,
    protocol: BaseProtocol,
    task: asyncio.Task[None],
    loop: asyncio.AbstractEventLoop,
) -> web.BaseRequest:
    """The BaseRequest the pipeline reads, answered through `protocol` (which has the
    `ssl_context`, `peername` and `sockname` of aiohttp's RequestHandler)."""
    writer = StreamWriter(protocol, loop)
    return web.BaseRequest(message, EMPTY_PAYLOAD, protocol, writer, task, loop)  # type: ignore[arg-type]


def written_bytes(response: web.StreamResponse) -> bytes:
    """A WireResponse's whole bytes (wire.py keeps them in `_data`)."""
    data: bytes = response._data  # type: ignore[attr-defined]
    return data


class Resumed:
    """Awaited by the connection's task: runs on a coroutine that was driven by
    `send(None)` outside the task and suspended, yielding `blocked_on`. Re-yields what
    the coroutine yields (a future whose `_asyncio_future_blocking` it set), sends the
    task's wake-ups in and throws its cancellation in; its value is the coroutine's."""

    __slots__ = ("_blocked_on", "_coro")

    def __init__(self, coro: Coroutine[Any, Any, Any], blocked_on: Any) -> None:
        self._coro = coro
        self._blocked_on = blocked_on

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, yielded = self._coro, self._blocked_on
        while True:
            try:
                sent = yield yielded
            except BaseException as exc:
                try:
                    yielded = coro.throw(exc)
                except StopIteration as done:
                    return done.value
                continue
            try:
                yielded = coro.send(sent)
            except StopIteration as done:
                return done.value
