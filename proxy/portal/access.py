"""Who is signed in to the customer page, and what a request may do: signing in and
out (session.py seals the cookie), the `Visit` of a signed-in request with its admin
API `Caller`, a change's checks (session, Origin, CSRF token), and the responses that
renew the cookie."""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass, replace

from aiohttp import web

from ..admin.http import OPERATOR, AdminContext, Caller
from ..errors import Forbidden, Unauthorized
from ..manage import actions as act
from . import pages
from .session import COOKIE, PATH, Sealer, Session, SignInLimit, same_origin


@dataclass(frozen=True, slots=True)
class Portal:
    admin: AdminContext
    sealer: Sealer | None  # None: no admin.token, so the admin API and this page are off
    sign_ins: SignInLimit


PORTAL = web.AppKey("portal", Portal)


def admin_of(request: web.Request) -> AdminContext:
    return request.app[PORTAL].admin


OFF = "the customer page is off: the operator has not set admin.token"


@dataclass(frozen=True, slots=True)
class Visit:
    """A signed-in request: its session, the admin API caller it is, and the cookie to
    send back when the session's last-seen time was renewed."""

    session: Session
    caller: Caller
    csrf: str
    renewed: str | None

    @property
    def who(self) -> str:
        return self.caller.customer_id or "operator"


# --- signing in and out -------------------------------------------------------------------


async def sign_in(request: web.Request) -> web.Response:
    portal = request.app[PORTAL]
    if portal.sealer is None:
        return html(pages.sign_in(OFF), 503)
    if not same_origin(request.headers.get("Origin"), request.host):
        raise Forbidden("this form may be sent only from this page")
    client = request.remote or ""
    if not portal.sign_ins.allow(client, time.monotonic()):
        return html(pages.sign_in("Too many failed attempts: wait a minute."), 429)
    token = (await form_of(request)).get("token", "").strip()
    session = await _session_of(portal, token)
    if session is None:
        portal.sign_ins.failed(client, time.monotonic())
        return html(pages.sign_in("That token is not valid."), 401)
    secure = request.secure or request.headers.get("Origin", "").startswith("https://")
    session = replace(session, https=secure)
    response = redirect(PATH)
    set_cookie(response, portal.sealer.seal(session), session.https)
    return response


async def _session_of(portal: Portal, token: str) -> Session | None:
    """A new session for the operator's admin token or an active customer's token."""
    assert portal.sealer is not None
    admin = portal.admin
    expected, now = admin.config.admin.token or "", time.time()
    if not token or len(token) > 256 or not token.isascii():
        return None
    if hmac.compare_digest(token.encode(), expected.encode()):
        return portal.sealer.new(None, None, now)
    holder = await act.token_holder(admin.store, token)
    if holder is None:
        return None
    customer = await admin.store.get_customer(holder.customer_id)
    if customer is None or customer.status != "active":
        return None
    return portal.sealer.new(holder.customer_id, holder.token_id, now)


async def sign_out(request: web.Request) -> web.Response:
    """Ends the session in this browser (the cookie deleted); a session that has
    already ended just goes back to the sign-in form."""
    if await visit_of(request) is not None:
        await change_of(request)
    response = redirect(f"{PATH}?done=signed-out")
    response.del_cookie(COOKIE, path=PATH)
    return response


# --- sessions, forms, responses -----------------------------------------------------------


async def visit_of(request: web.Request) -> Visit | None:
    """The signed-in caller, while the session is valid and its credential still is:
    the operator's (the key is derived from admin.token), or a customer token that is
    not revoked, of a customer not disabled."""
    portal = request.app[PORTAL]
    if portal.sealer is None:
        return None
    now = time.time()
    session = portal.sealer.open(request.cookies.get(COOKIE), now)
    if session is None:
        return None
    caller = OPERATOR
    if session.customer_id is not None:
        store = portal.admin.store
        customer = await store.get_customer(session.customer_id)
        tokens = await store.list_tokens(session.customer_id) if customer else []
        if customer is None or customer.status != "active":
            return None
        if all(t.token_id != session.token_id for t in tokens):
            return None
        caller = Caller(session.customer_id)
    renewed = portal.sealer.renewed(session, now)
    cookie = portal.sealer.seal(renewed) if renewed else None
    return Visit(session, caller, portal.sealer.csrf_token(session), cookie)


async def change_of(request: web.Request) -> tuple[Visit, dict[str, str]]:
    """A POST's visit and form, refused unless signed in, sent from this page (Origin)
    and carrying the session's CSRF token (form field `csrf` or X-CSRF-Token)."""
    visit = await visit_of(request)
    if visit is None:
        raise Unauthorized("your session has ended: sign in again")
    if not same_origin(request.headers.get("Origin"), request.host):
        raise Forbidden("this form may be sent only from this page")
    form = await form_of(request)
    given = form.get("csrf") or request.headers.get("X-CSRF-Token")
    sealer = request.app[PORTAL].sealer
    assert sealer is not None
    if not sealer.csrf_ok(visit.session, given):
        raise Forbidden("the form's CSRF token is missing or wrong: reload the page")
    return visit, form


async def form_of(request: web.Request) -> dict[str, str]:
    """The POSTed form's text fields (at most the admin listener's 64 KiB), arriving
    within client_timeouts.headers, as the admin API's bodies must."""
    timeout = request.app[PORTAL].admin.config.client_timeouts.headers
    async with asyncio.timeout(timeout):
        data = await request.post()
    return {name: value for name, value in data.items() if isinstance(value, str)}


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def html(text: str, status: int = 200, visit: Visit | None = None) -> web.Response:
    response = web.Response(text=text, status=status, content_type="text/html")
    if visit is not None and visit.renewed is not None:
        set_cookie(response, visit.renewed, visit.session.https)
    return response


def set_cookie(response: web.StreamResponse, value: str, secure: bool) -> None:
    """HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it),
    Path=/portal/ (the admin API never sees it), Secure when the page was reached over
    HTTPS; no Max-Age: it ends with the browser, and the server's limits end it sooner."""
    response.set_cookie(COOKIE, value, path=PATH, httponly=True, samesite="Strict",
                        secure=secure)  # fmt: skip
