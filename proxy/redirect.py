"""`redirect_http_listen` (SPEC section 14): a plain HTTP listener that answers every
request 308 to the same path and query on https://, so a page or link written with
http:// reaches the HTTPS listener. 308 keeps the method (RFC 9110 section 15.4.9).

The host comes from the client's Host header, so it is checked before it is echoed: a
DNS name or an IP literal of at most 253 characters, an optional port dropped (the
HTTPS listener's own port is written when it is not 443). Without a valid Host there
is nowhere to send the client: 400, as RFC 9112 section 3.2 asks.
"""

from __future__ import annotations

import re

from aiohttp import web

from .errors import BadRequest, error_body
from .exchange import SERVER
from .request_ids import RequestIds
from .wire import wire_response

# a DNS name, IPv4 literal or bracketed IPv6 literal, then an optional port
_HOST = re.compile(r"([A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")
MAX_HOST = 260  # the longest Host value `_HOST` can accept, checked before it runs


def redirect_host(header: str) -> str | None:
    """The host to redirect to, lowercased and without its port, from a client's Host
    header; None when it is not a DNS name or an IP literal. Linear: the length is
    capped before the pattern (one bounded class, then a port after a ':' it cannot
    hold) runs (tests/test_untrusted_input.py times it on adversarial input)."""
    match = _HOST.fullmatch(header) if len(header) <= MAX_HOST else None
    return None if match is None else match.group(1).lower()


class Redirector:
    """The redirect listener's handler."""

    def __init__(self, https_port: int) -> None:
        self._port = "" if https_port == 443 else f":{https_port}"
        self._ids = RequestIds()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        request_id = self._ids(request.headers.get("X-Request-Id"))
        host = redirect_host(request.headers.get("Host", ""))
        path = request.raw_path
        if host is None or not path.startswith("/"):
            refusal = BadRequest()
            body = error_body(refusal, request_id)
            headers = {"Server": SERVER, "X-Request-Id": request_id}
            headers["Content-Type"] = "application/json"
            answer = web.Response(status=refusal.status, body=body, headers=headers)
            answer.force_close()
            return answer
        location = f"https://{host}{self._port}{path}"
        headers = {"Server": SERVER, "X-Request-Id": request_id, "Location": location}
        return wire_response(request, 308, headers, b"") or web.Response(
            status=308, headers=headers
        )
