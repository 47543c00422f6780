"""What both listeners answer before a handler runs, and when one fails outright.

aiohttp refuses a malformed request (bad request line, invalid header, a line over
8 KiB) in its protocol handler, before keyfront's handler is called, and answers with
a text page that names aiohttp's and Python's versions in `Server` and echoes the
request line, a key in its query included (issue 12 item 9). `KeyfrontServer` makes
every connection's handler render those with `pipeline.error_page` instead: the SPEC
JSON body, `Server: keyfront`, no traceback in the log for a client's malformed bytes.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .exchange import SERVER
from .pipeline import RequestIds, error_page

log = logging.getLogger("keyfront")
_request_ids = RequestIds()


class _RequestHandler(RequestHandler):
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
        return error_page(status, _request_ids(None))


class KeyfrontServer(web.Server):
    """aiohttp's low-level server whose connections answer with `error_page`."""

    def __call__(self) -> RequestHandler:
        return _RequestHandler(self, loop=self._loop, **self._kwargs)


class KeyfrontAppRunner(web.AppRunner):
    """An AppRunner (the admin listener) on a KeyfrontServer, whose responses all say
    `Server: keyfront`."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        app.on_response_prepare.append(_server_header)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        kwargs: dict[str, Any] = made._kwargs
        return KeyfrontServer(made.request_handler, request_factory=made.request_factory, **kwargs)


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER
