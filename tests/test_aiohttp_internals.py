"""The private aiohttp attributes keyfront relies on still exist (docs/dependencies.md,
"aiohttp internals keyfront leans on"). aiohttp is pinned to the minor release they were
checked against; this fails first, and by name, when a new release moves one, before
the behaviour tests that depend on them fail in less obvious ways."""

from __future__ import annotations

import asyncio
import inspect

import aiohttp
from aiohttp import web
from aiohttp.web_protocol import RequestHandler


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
