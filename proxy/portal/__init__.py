"""The customer page (SPEC section 15): `/portal/` on the admin listener.

    session.py  sealed session cookies, CSRF tokens, the bound on failed sign-ins
    access.py   signing in and out; a request's visit (its admin API caller); the
                checks of a change (session, Origin, CSRF token)
    views.py    the routes: keys, one key, changes, CSV downloads
    pages.py    the HTML of the keys, sign-in and error pages, every value escaped
    key_page.py the HTML of one key's page, and of a key just created or rolled
    charts.py   bar charts as inline SVG, drawn on the server
    static/     portal.css and portal.js, the page's only style and script

A front end of the admin API, as the command line is: its views call the admin routes'
own actions (proxy/admin/handlers.py) with the signed-in caller, so the page shows and
changes nothing the API would not answer that caller. Server-rendered HTML with a
little vanilla JavaScript (the what-if answer while the restrictions are edited, a
confirm before revoking); no build step, no third-party
script, font or stylesheet.

What it must not import (tests/test_layers.py checks): proxy.cli, proxy.app and the
request path (proxy.pipeline, proxy.delivery).
"""

from __future__ import annotations

import logging
from importlib import resources

from aiohttp import web
from aiohttp.typedefs import Handler

from ..admin.http import AdminContext, AdminRuntime
from ..errors import KeyfrontError
from ..keys import KeySigner
from . import access, pages, views
from .session import Sealer, SignInLimit

log = logging.getLogger(__name__)

# The page's own files only: no inline script or style ('unsafe-inline' is never
# allowed, so no nonce is needed either), no other host, no framing (clickjacking).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: with no-referrer Chromium sends `Origin: null` on
    # the page's POSTs, and the Origin check needs the real one (session.same_origin).
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",  # a minted key is in a page: never in a cache
    "Cross-Origin-Opener-Policy": "same-origin",
}
STATIC = {
    "portal.css": "text/css",
    "portal.js": "text/javascript",
}


def portal_app(runtime: AdminRuntime) -> web.Application:
    """The customer page, to mount at /portal on the admin listener."""
    app = web.Application(middlewares=[_headers_and_errors])
    token = runtime.config.admin.token
    admin = AdminContext(runtime, KeySigner(runtime.config.keys.prefix,
                                            runtime.config.keys.secrets))  # fmt: skip
    app[access.PORTAL] = access.Portal(admin, Sealer(token) if token else None, SignInLimit())
    key = "/keys/{key_id}"
    app.router.add_get("/", views.index)
    app.router.add_post("/sign-in", access.sign_in)
    app.router.add_post("/sign-out", access.sign_out)
    app.router.add_post("/keys", views.create)
    app.router.add_post("/customer", views.change_customer)
    app.router.add_get(key, views.show_key)
    app.router.add_post(f"{key}/restrictions", views.restrictions)
    app.router.add_post(f"{key}/what-if", views.what_if)
    app.router.add_post(f"{key}/allow", views.allow_referrer)
    app.router.add_post(f"{key}/roll", views.roll)
    app.router.add_post(f"{key}/revoke", views.revoke)
    app.router.add_get(f"{key}/usage.csv", views.key_csv)
    app.router.add_get("/usage.csv", views.customer_csv)
    app.router.add_get("/static/{name}", _static)
    return app


async def _static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound()
    body = resources.files(__package__).joinpath("static", name).read_bytes()
    return web.Response(body=body, content_type=STATIC[name])


@web.middleware
async def _headers_and_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer with the page's security headers; keyfront's errors (the admin
    API's 400, 403, 404, 409, ...) as a page saying what the API said."""
    try:
        response = await handler(request)
    except KeyfrontError as exc:
        if exc.status >= 500:
            log.warning("customer page: %s", exc)
        response = _error(exc.status, exc.message)
    except web.HTTPException as exc:  # aiohttp's own: 404, 405, 413
        response = _error(exc.status, exc.reason)
    response.headers.update(HEADERS)
    return response


def _error(status: int, message: str) -> web.Response:
    return web.Response(text=pages.error(status, message), status=status, content_type="text/html")
