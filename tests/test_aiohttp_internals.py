"""The private aiohttp attributes keyfront relies on still exist (docs/dependencies.md,
"aiohttp internals keyfront leans on"). aiohttp is pinned to the minor release they were
checked against; this fails first, and by name, when a new release moves one, before
the behaviour tests that depend on them fail in less obvious ways."""

from __future__ import annotations

import asyncio
import inspect

import aiohttp
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.web_protocol import RequestHandler

from proxy.front_aiohttp import (
    Resumed,
    enter_task,
    head_parser,
    leave_task,
    make_request,
    parse_head,
    written_bytes,
)
from proxy.wire import WireResponse


def test_the_pinned_aiohttp_release_is_installed() -> None:
    major, minor = (int(part) for part in aiohttp.__version__.split(".")[:2])
    assert (major, minor) == (3, 14), aiohttp.__version__


def test_stream_response_keeps_the_flags_wire_py_sets() -> None:
    response = web.StreamResponse()
    # wire.py sets both before writing its own bytes; aiohttp reads them afterwards.
    assert response._eof_sent is False
    assert hasattr(response, "_keep_alive")


async def test_request_handler_has_the_attributes_listener_py_uses() -> None:
    server = web.Server(_answer)
    assert isinstance(server._kwargs, dict)
    assert server._loop is asyncio.get_running_loop()
    handler = RequestHandler(server, loop=server._loop)
    for name in (
        "_keepalive_handle",
        "_next_keepalive_close_time",
        "_request_count",
        "_messages",
        "_current_request",
        "_manager",
    ):
        assert hasattr(handler, name), name
    assert callable(handler._process_keepalive)


async def _answer(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response()


def test_app_runner_builds_its_server_in_make_server() -> None:
    assert inspect.iscoroutinefunction(web.AppRunner._make_server)


# --- proxy/front_aiohttp.py: the front protocol's adapter (issue 20) -------------------


class _Peer(BaseProtocol):
    ssl_context = None
    peername = ("192.0.2.7", 5555)
    sockname = ("127.0.0.1", 8080)


async def test_the_c_parser_makes_one_message_of_one_head() -> None:
    loop = asyncio.get_running_loop()
    parser = head_parser(_Peer(loop), loop)
    head = b"GET /a/b%20c?key=k1&x=2 HTTP/1.1\r\nHost: h\r\nX-Api-Key: k2\r\n\r\n"
    message = parse_head(parser, head)
    assert message is not None
    assert (message.method, message.path, message.version) == ("GET", "/a/b%20c?key=k1&x=2", (1, 1))
    assert message.headers["x-api-key"] == "k2" and not message.should_close
    assert parse_head(parser, head) is not None  # the parser is ready for the next head
    request = make_request(message, _Peer(loop), asyncio.current_task(), loop)  # type: ignore[arg-type]
    assert request.raw_path == "/a/b%20c?key=k1&x=2" and request.query["key"] == "k1"
    assert request.remote == "192.0.2.7" and request.keep_alive and request.method == "GET"
    assert request.writer.output_size == 0


async def test_the_c_parser_refuses_what_aiohttp_refuses() -> None:
    loop = asyncio.get_running_loop()
    for head in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n"):
        assert parse_head(head_parser(_Peer(loop), loop), head) is None
    # front.py splits heads on CRLF CRLF and relies on the parser refusing a bare LF or
    # CR, so that no message can end (and another begin) inside what it split.
    for head in (
        b"GET / HTTP/1.1\nHost: h\n\n",
        b"GET / HTTP/1.1\r\nX: y\n\nGET /b HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
    ):
        assert parse_head(head_parser(_Peer(loop), loop), head) is None
    two = b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"
    assert parse_head(head_parser(_Peer(loop), loop), two) is None


async def test_a_coroutine_driven_outside_a_task_runs_on_in_that_task() -> None:
    # As front.py does: the connection's task idles on `wake`; a handler is driven in
    # its name from a callback, and when it suspends, the task runs it on.
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[int] = loop.create_future()
    wake: asyncio.Future[Resumed] = loop.create_future()

    async def handler() -> tuple[int, bool]:
        seen = asyncio.current_task()
        async with asyncio.timeout(5):  # needs a current task before it suspends
            value = await gate
        return value, asyncio.current_task() is seen

    async def host() -> tuple[int, bool]:
        return await (await wake)  # type: ignore[no-any-return]

    task = loop.create_task(host())
    await asyncio.sleep(0)  # the task idles on `wake`
    done: list[tuple[int, bool]] = []

    def callback() -> None:  # data_received's place: no task is current
        coro = handler()
        enter_task(loop, task)
        try:
            blocked_on = coro.send(None)
        finally:
            leave_task(loop, task)
        wake.set_result(Resumed(coro, blocked_on))

    loop.call_soon(callback)
    await asyncio.sleep(0.01)
    gate.set_result(7)
    done.append(await task)
    assert done == [(7, True)]


def test_a_wire_response_keeps_its_bytes_where_front_reads_them() -> None:
    assert (
        written_bytes(WireResponse(200, b"HTTP/1.1 200 OK\r\n\r\n")) == b"HTTP/1.1 200 OK\r\n\r\n"
    )
