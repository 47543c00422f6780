"""The admin API (SPEC section 9): `/admin/v1/...` on the admin listener.

    http.py      the caller, the Endpoint type, JSON in and out, error responses
    auth.py      bearer tokens: the operator's admin.token, customer tokens
    handlers.py  customers and their tokens, keys, usage, analytics and what-if, purge,
                 invalidation, /me
    openapi.py   the OpenAPI 3.1 document, built from ENDPOINTS
    listener.py  the admin listener: /healthz, /readyz, /metrics and this API

It owns the HTTP side of management: routes, access checks, reading requests and
writing JSON answers. `ENDPOINTS` below is the one route table: `admin_app` registers
each entry behind its access check, and the OpenAPI document describes the same
entries. Every response is JSON, errors included, shaped as the proxy's by the one
renderer (errors.error_body): {"error": {code, message, request_id}} (400s add
`field`); `_errors_as_json` is the one place errors become responses, a bug included
(500 internal_error, logged with its traceback and counted).

What it must not import (directly; tests/test_layers.py checks): the request path
(proxy.pipeline, proxy.delivery), which it shares nothing with but the request ids
(proxy.request_ids), the error model (proxy.errors) and the listeners' connection
classes (proxy.listener: deadlines, caps, error pages); proxy.cli, its sibling front
end; proxy.app, which mounts it. The domain logic lives in proxy.manage,
shared with the CLI: a handler reads its input, calls manage, and answers.
"""

from __future__ import annotations

import functools
import logging

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ..errors import HttpError, KeyfrontError, Missing, Refusal, StoreError, WrongMethod
from ..keys import KeySigner
from ..request_ids import RequestIds
from . import handlers as h
from .auth import authenticate
from .http import (
    ADMIN,
    NOBODY,
    AdminContext,
    AdminRuntime,
    Caller,
    Endpoint,
    error_response,
    reply,
)
from .openapi import document

log = logging.getLogger(__name__)

PREFIX = "/admin/v1"
CUSTOMER, KEY = "/customers/{customer_id}", "/keys/{key_id}"


async def openapi(request: web.Request, caller: Caller) -> web.Response:
    return reply(document(ENDPOINTS, PREFIX))


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/openapi.json", openapi, "public", "this document", "OpenAPI"),
    Endpoint("GET", "/customers", h.list_customers, "operator", "list customers", "[Customer]"),
    Endpoint("POST", "/customers", h.create_customer, "operator", "add a customer", "Customer",
             201, "CustomerCreate"),
    Endpoint("GET", CUSTOMER, h.get_customer, "operator", "show a customer", "Customer"),
    Endpoint("PATCH", CUSTOMER, h.patch_customer, "operator", "change a customer's name, "
             "status or plan caps (null clears a cap)", "Customer", body="CustomerPatch"),
    Endpoint("POST", f"{CUSTOMER}/disable", h.disable_customer, "operator",
             "disable a customer: its keys stop working", "Customer"),
    Endpoint("GET", f"{CUSTOMER}/tokens", h.list_tokens, "operator",
             "list the customer's admin API tokens (never the token)", "[Token]"),
    Endpoint("POST", f"{CUSTOMER}/tokens", h.create_token, "operator",
             "mint a customer token (shown in this response only)", "MintedToken", 201,
             "TokenCreate"),
    Endpoint("DELETE", f"{CUSTOMER}/tokens/{{token_id}}", h.delete_token, "operator",
             "revoke a customer token", "Token"),
    # Before KEY, whose {key_id} would take "invalidate" (and answer POST with 405).
    Endpoint("POST", "/keys/invalidate", h.invalidate_keys, "operator", "drop cached answers "
             "of the key API (SPEC section 13) for these keys, key ids or customers on every "
             "instance within a second", "Invalidated", body="Invalidate"),
    Endpoint("GET", "/me", h.me, "customer", "a customer token's own plan: its caps, its live "
             "keys against max_keys, and its pooled monthly quota used and left (UTC month); "
             "400 for the operator's token", "Plan"),
    Endpoint("GET", "/keys", h.list_keys, "customer", "list keys", "[Key]",
             query=h.KEYS_QUERY),
    Endpoint("POST", "/keys", h.create_key, "customer",
             "mint a key (the full key is in this response only)", "MintedKey", 201, "KeyCreate"),
    Endpoint("POST", "/keys/import", h.import_keys, "operator", "import keys from an existing "
             "key system: the body is a CSV file with a header row, or JSON lines; a bad row "
             "is reported by line and the others imported", "ImportReport", body="KeyImport",
             query=h.IMPORT_QUERY),
    Endpoint("GET", KEY, h.get_key, "customer", "show a key's record", "Key"),
    Endpoint("PATCH", KEY, h.patch_key, "customer", "change a key (a list given replaces the "
             "old one; null unsets)", "Key", body="KeyPatch"),
    Endpoint("POST", f"{KEY}/revoke", h.revoke_key, "customer", "revoke a key (final)", "Key"),
    Endpoint("POST", f"{KEY}/roll", h.roll_key, "customer", "replace a key by a new one with "
             "the same settings; the old one expires after the grace period", "MintedKey", 201,
             "Roll"),
    Endpoint("GET", "/usage", h.usage, "customer", "usage by hour, day or month "
             "(the filters of `keyfront usage`)", "[UsageRow]", query=h.USAGE_QUERY),
    Endpoint("GET", "/analytics", h.analytics, "customer", "a key's or a customer's top "
             "referrer hosts, objects and client addresses (served and refused) with the exact "
             "counters, by hour or day (SPEC section 15)", "Analytics", query=h.ANALYTICS_QUERY),
    Endpoint("POST", f"{KEY}/what-if", h.key_what_if, "customer", "judge proposed referrers, "
             "allow_no_referrer, ips or paths against the key's last 7 days of traffic: what "
             "would be refused and what would pass (changes nothing)", "WhatIfAnswer",
             body="WhatIf"),
    Endpoint("POST", "/purge", h.purge, "operator", "purge cached objects by path or prefix",
             "Purged", body="Purge"),
    Endpoint("GET", "/export", h.export_status, "operator", "the usage export per sink: last "
             "period delivered, events waiting, last error (SPEC section 16)", "[ExportSink]"),
)  # fmt: skip


def admin_app(runtime: AdminRuntime) -> web.Application:
    """The admin API, to mount at PREFIX on the admin listener."""
    app = web.Application(middlewares=[_errors_as_json(RequestIds())])
    app[ADMIN] = AdminContext(runtime, KeySigner(runtime.config.keys.prefix,
                                                 runtime.config.keys.secrets))  # fmt: skip
    resources: dict[str, web.Resource] = {}
    for endpoint in ENDPOINTS:
        resource = resources.get(endpoint.path) or app.router.add_resource(endpoint.path)
        resources[endpoint.path] = resource
        resource.add_route(endpoint.method, functools.partial(_checked, endpoint))
    for path, resource in resources.items():  # other methods: 405 naming the allowed ones
        allowed = ", ".join(e.method for e in ENDPOINTS if e.path == path)
        resource.add_route("*", functools.partial(_not_allowed, allowed))
    app.router.add_route("*", "/{tail:.*}", _no_route)
    return app


async def _checked(endpoint: Endpoint, request: web.Request) -> web.Response:
    """The endpoint's access check, then its handler."""
    public = endpoint.access == "public"
    caller = NOBODY if public else await authenticate(request, endpoint.access)
    return await endpoint.handler(request, caller)


async def _not_allowed(allowed: str, request: web.Request) -> web.Response:
    raise WrongMethod(f"allowed: {allowed}", {"Allow": allowed})


async def _no_route(request: web.Request) -> web.Response:
    raise Missing(f"no admin route {request.path} (see {PREFIX}/openapi.json)")


def _errors_as_json(request_ids: RequestIds) -> Middleware:
    """The one place the admin API's errors become responses, each with the request's
    X-Request-Id: keyfront's own errors by their status and code (errors.py), aiohttp's
    HTTP errors mapped to one, and any other exception, a bug, as the proxy's 500."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = request_ids(request.headers.get("X-Request-Id"))
        try:
            response = await handler(request)
        except KeyfrontError as exc:
            if isinstance(exc, StoreError):  # its detail is for the log, not the caller
                log.warning("%s admin API: %s", request_id, exc)
            response = error_response(exc, request_id)
        except web.HTTPException as exc:  # e.g. 413 from reading a body over client_max_size
            code = exc.reason.lower().replace(" ", "_")
            response = error_response(HttpError(exc.status, code, exc.text or ""), request_id)
        except Exception:  # a bug (SPEC section 1): 500 internal_error, as the proxy's
            log.exception("%s admin API internal_error", request_id)
            request.app[ADMIN].runtime.metrics.count("internal_errors", "admin")
            response = error_response(Refusal(), request_id)
        response.headers["X-Request-Id"] = request_id
        return response

    return middleware
