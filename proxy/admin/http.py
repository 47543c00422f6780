"""What every admin endpoint shares: the caller, the route table's entry type, JSON in
and out, and errors as the proxy renders them (SPEC section 1's error body, rendered by
errors.error_body for both listeners)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from aiohttp import web

from ..cache import Cache
from ..config import Config
from ..errors import BodyTimeout, Invalid, KeyfrontError, Missing, error_body
from ..keys import KeySigner
from ..metrics import Metrics
from ..ratelimit import Limiter
from ..store import Store

Access = Literal["public", "operator", "customer"]  # customer: a customer token may call it


class AdminRuntime(Protocol):
    """What the admin API uses of the running process (app.Runtime)."""

    config: Config
    store: Store
    cache: Cache | None  # None: no cache to purge
    metrics: Metrics  # counts the admin API's internal errors
    limiter: Limiter  # reads a customer's quota counters (GET /me)


@dataclass(frozen=True, slots=True)
class AdminContext:
    runtime: AdminRuntime
    signer: KeySigner

    @property
    def store(self) -> Store:
        return self.runtime.store

    @property
    def config(self) -> Config:
        return self.runtime.config


ADMIN = web.AppKey("admin", AdminContext)


def context(request: web.Request) -> AdminContext:
    return request.app[ADMIN]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the operator (`customer_id` None) or one customer's token."""

    customer_id: str | None = None

    def scope(self, requested: str | None) -> str | None:
        """The customer a call is about: whichever the operator asks for (or None); a
        customer token's own (another's is answered as if it did not exist)."""
        if self.customer_id is None:
            return requested
        if requested not in (None, self.customer_id):
            raise Missing(f"no such customer: {requested}")
        return self.customer_id


OPERATOR = Caller()
NOBODY = Caller("")  # on public routes: neither the operator nor any customer
Handler = Callable[[web.Request, Caller], Awaitable[web.Response]]


@dataclass(frozen=True, slots=True)
class Param:
    """A query parameter, for the OpenAPI document."""

    name: str
    schema: dict[str, Any]
    description: str = ""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One admin route: registered on the router and described in the OpenAPI
    document from this one entry, so the two cannot disagree."""

    method: str
    path: str  # below /admin/v1, with {name} path parameters
    handler: Handler
    access: Access
    summary: str
    response: str  # a schema name in the document's components, or "[Name]" for a list
    status: int = 200
    body: str | None = None  # the request body's schema name
    query: tuple[Param, ...] = field(default=())


def error_response(error: KeyfrontError, request_id: str) -> web.Response:
    """An error as the proxy renders it (errors.error_body), with its headers."""
    return web.Response(
        status=error.status,
        body=error_body(error, request_id),
        content_type="application/json",
        headers=error.headers,
    )


def reply(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(data, separators=(",", ":")).encode(),
        content_type="application/json",
        headers=headers,
    )


async def read_body(request: web.Request, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object (an empty one when `optional` and there is no body).
    It must arrive within `client_timeouts.headers` (review finding 5): a body trickled
    a byte at a time would hold the connection and its handler for ever (at most
    ADMIN_MAX_BODY, 64 KiB, a few seconds on the slowest link)."""
    try:
        async with asyncio.timeout(context(request).config.client_timeouts.headers):
            raw = await request.read()
    except TimeoutError:
        raise BodyTimeout("the request body did not arrive in time") from None
    if optional and not raw.strip():
        return {}
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except ValueError:  # UnicodeDecodeError included
        raise Invalid("body", "not valid JSON") from None
    except RecursionError:  # [[[[...: nesting deeper than the interpreter's stack
        raise Invalid("body", "nested too deeply") from None
    if not isinstance(body, dict):
        raise Invalid("body", "must be a JSON object")
    return body


def _no_constant(name: str) -> Any:
    """NaN and Infinity are Python's extensions to JSON (RFC 8259 has no such numbers)."""
    raise ValueError(f"{name} is not a JSON number")
