"""The customer page's routes: each resolves the session to an admin API `Caller`, calls
the admin routes' own actions (proxy/admin/handlers.py: listed_keys, created_key,
analytics_of, what_if_of, ...) with the JSON a customer's tool would send, and renders
the answer (pages.py). So the page shows and does exactly what the API lets that
caller: another customer's key id in a URL or a form is the API's 404.

Reads are GETs; every change is a POST checked by `_change` (session, Origin, CSRF
token; session.py).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from ..admin import handlers as h
from ..admin.http import OPERATOR, AdminContext, Caller
from ..errors import Forbidden, Invalid, Unauthorized
from ..manage import actions as act
from ..manage.usage import usage_csv
from ..ratelimit import seconds_to_month_end
from . import pages
from .session import COOKIE, PATH, Sealer, Session, SignInLimit, same_origin


@dataclass(frozen=True, slots=True)
class Portal:
    admin: AdminContext
    sealer: Sealer | None  # None: no admin.token, so the admin API and this page are off
    sign_ins: SignInLimit


PORTAL = web.AppKey("portal", Portal)
OFF = "the customer page is off: the operator has not set admin.token"
# Keys whose last use the list looks up (one usage read each): the first this many not
# revoked. A customer at admin.customer_max_keys (1,000) opens a key to see the rest.
MAX_LAST_USED = 200


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
        return _html(pages.sign_in(OFF), 503)
    if not same_origin(request.headers.get("Origin"), request.host):
        raise Forbidden("this form may be sent only from this page")
    client = request.remote or ""
    if not portal.sign_ins.allow(client, time.monotonic()):
        return _html(pages.sign_in("Too many failed attempts: wait a minute."), 429)
    token = (await _form(request)).get("token", "").strip()
    session = await _session_of(portal, token)
    if session is None:
        portal.sign_ins.failed(client, time.monotonic())
        return _html(pages.sign_in("That token is not valid."), 401)
    secure = request.secure or request.headers.get("Origin", "").startswith("https://")
    session = replace(session, https=secure)
    response = _redirect(PATH)
    _set_cookie(response, portal.sealer.seal(session), session.https)
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
    if await _visit(request) is not None:
        await _change(request)
    response = _redirect(f"{PATH}?done=signed-out")
    response.del_cookie(COOKIE, path=PATH)
    return response


# --- pages --------------------------------------------------------------------------------


async def index(request: web.Request) -> web.Response:
    visit = await _visit(request)
    if visit is None:
        return _html(pages.sign_in(done=request.query.get("done")))
    admin, caller = request.app[PORTAL].admin, visit.caller
    picker, chosen = "", caller.scope(request.query.get("customer"))
    if caller.customer_id is None:
        customers = [c.customer_id for c in await admin.store.list_customers()]
        chosen = chosen or (customers[0] if customers else None)
        picker = pages.customer_picker(customers, chosen or "")
    if chosen is None:
        return _html(pages.document("Keys", "<p>No customers yet.</p>", visit.csrf, visit.who))
    keys = await h.listed_keys(admin, caller, chosen)
    keys.sort(key=lambda k: k["status"] == "revoked")  # revoked ones last
    plan = await h.plan(admin, caller, chosen)
    looked_up = [k["key_id"] for k in keys if k["status"] != "revoked"][:MAX_LAST_USED]
    used = await asyncio.gather(*(_last_used(admin, caller, key_id) for key_id in looked_up))
    last_used = dict(zip(looked_up, used, strict=True))
    csv = f"/portal/usage.csv?customer={pages.u(chosen)}"
    body = (
        f"<h1>Keys of {pages.e(chosen)}</h1>{pages.notice(request.query.get('done'))}{picker}"
        f"{pages.plan_section(plan, time.time())}{pages.keys_section(keys, last_used)}"
        f"{pages.create_form(visit.csrf, chosen)}"
        f'<p><a href="{pages.e(csv)}&amp;by=day" download>Download usage by day (CSV)</a> · '
        f'<a href="{pages.e(csv)}&amp;by=hour" download>by hour</a></p>'
    )
    return _html(pages.document(f"Keys of {chosen}", body, visit.csrf, visit.who), visit=visit)


async def _last_used(admin: AdminContext, caller: Caller, key_id: str) -> int | None:
    """The start of the last hour the key served a request, within hourly retention."""
    since = str(int(time.time()) - 35 * 86400)
    rows = await h.usage_of(admin, caller, {"key": key_id, "by": "hour", "from": since})
    return max((r["start"] for r in rows if r["requests"]), default=None)


async def key_page(request: web.Request) -> web.Response:
    visit = await _visit(request)
    if visit is None:
        return _redirect(PATH)
    return await _key_page(request, visit)


async def _key_page(
    request: web.Request,
    visit: Visit,
    proposal: dict[str, Any] | None = None,
    answer: dict[str, Any] | None = None,
) -> web.Response:
    """One key: its traffic by hour or day, top lists, restrictions (with a what-if
    `answer` to a `proposal` when one was checked), this month, roll and revoke."""
    admin, caller = request.app[PORTAL].admin, visit.caller
    key = act.record_json(await h.key_of(admin, caller, request.match_info["key_id"]))
    by = "day" if request.query.get("by") == "day" else "hour"
    report = await h.analytics_of(admin, caller, {"key": key["key_id"], "by": by})
    month = await h.usage_of(admin, caller, {"key": key["key_id"], "by": "month"})
    last_used = await _last_used(admin, caller, key["key_id"])
    shown = pages.KeyView(key, report, _key_quota(key, month), last_used, visit.csrf,
                          {**key, **(proposal or {})}, answer)  # fmt: skip
    body = pages.key_page(shown, request.query.get("done"))
    title = key["name"] or key["key_id"]
    return _html(pages.document(title, body, visit.csrf, visit.who), visit=visit)


def _key_quota(key: dict[str, Any], month: list[dict[str, Any]]) -> str:
    now = time.time()
    this = month[-1] if month else {}
    lines = [
        pages.quota_line(name, {"limit": key[f"quota_{name}"], "used": this.get(name, 0)},
                         time.strftime("%Y-%m", time.gmtime(now)),
                         round(now + seconds_to_month_end(now)), now)
        for name in ("requests", "bytes")
    ]  # fmt: skip
    return "".join(lines)


# --- changes ----------------------------------------------------------------------------


async def create(request: web.Request) -> web.Response:
    visit, form = await _change(request)
    body: dict[str, Any] = {"name": form.get("name", ""), "customer_id": form.get("customer_id")}
    referrers = _lines(form.get("referrers", ""))
    if referrers:
        body["referrers"] = referrers
    minted = await h.created_key(request.app[PORTAL].admin, visit.caller, body)
    return _html(pages.document("New key", pages.minted(minted, None), visit.csrf, visit.who))


async def restrictions(request: web.Request) -> web.Response:
    """Check (what-if, nothing saved) or save the edited restrictions: only the fields
    that differ from the key's are sent, so only those are judged or changed."""
    visit, form = await _change(request)
    admin, key_id = request.app[PORTAL].admin, request.match_info["key_id"]
    key = act.record_json(await h.key_of(admin, visit.caller, key_id, to_change=True))
    proposal = _proposal(form)
    changed = {name: value for name, value in proposal.items() if key[name] != value}
    if form.get("go") == "save" and changed:
        await h.changed_key(admin, visit.caller, key_id, changed)
        return _redirect(f"/portal/keys/{pages.u(key['key_id'])}?done=saved")
    answer = await _what_if(admin, visit.caller, key, changed)
    return await _key_page(request, visit, proposal, answer)


async def what_if(request: web.Request) -> web.Response:
    """The what-if panel alone, for portal.js to show while the customer edits the
    restrictions form (the same form fields, the same answer as "Check")."""
    visit, form = await _change(request)
    admin, key_id = request.app[PORTAL].admin, request.match_info["key_id"]
    key = act.record_json(await h.key_of(admin, visit.caller, key_id, to_change=True))
    changed = {name: value for name, value in _proposal(form).items() if key[name] != value}
    try:
        answer = await _what_if(admin, visit.caller, key, changed)
    except Invalid as exc:  # a pattern still being typed: say what is wrong with it
        return _html(pages.what_if_problem(exc.message), 400, visit)
    return _html(pages.what_if_panel(answer), visit=visit)


async def _what_if(
    admin: AdminContext, caller: Caller, key: dict[str, Any], changed: dict[str, Any]
) -> dict[str, Any]:
    """POST /keys/{key_id}/what-if's answer to the changed fields (none: nothing)."""
    if not changed:
        return {"served": 0, "would_refuse": 0, "would_allow": 0, "unchanged": True,
                "behind": {"would_refuse": {}, "would_allow": {}}}  # fmt: skip
    return await h.what_if_of(admin, caller, key["key_id"], changed)


def _proposal(form: dict[str, str]) -> dict[str, Any]:
    allow = {"": None, "true": True, "false": False}.get(form.get("allow_no_referrer", ""))
    return {"referrers": _lines(form.get("referrers", "")), "allow_no_referrer": allow,
            "ips": _lines(form.get("ips", "")), "paths": _lines(form.get("paths", ""))}  # fmt: skip


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


async def allow_referrer(request: web.Request) -> web.Response:
    """One click: add a refused referrer host to the key's allowed referrers."""
    visit, form = await _change(request)
    admin, key_id = request.app[PORTAL].admin, request.match_info["key_id"]
    key = await h.key_of(admin, visit.caller, key_id, to_change=True)
    host = form.get("host", "")
    if not host:
        raise Invalid("host", "required")
    if host not in key.referrers:
        await h.changed_key(admin, visit.caller, key_id, {"referrers": [*key.referrers, host]})
    return _redirect(f"/portal/keys/{pages.u(key.key_id)}?done=allowed")


async def roll(request: web.Request) -> web.Response:
    visit, form = await _change(request)
    admin = request.app[PORTAL].admin
    minted = await h.rolled_key(admin, visit.caller, request.match_info["key_id"],
                                {"grace": form.get("grace", "24h")})  # fmt: skip
    old = minted["replaces"]
    report = await h.analytics_of(admin, visit.caller, {"key": old, "by": "hour"})
    body = pages.minted(minted, report)
    return _html(pages.document("Rolled key", body, visit.csrf, visit.who))


async def revoke(request: web.Request) -> web.Response:
    visit, _ = await _change(request)
    admin = request.app[PORTAL].admin
    revoked = await h.revoked_key(admin, visit.caller, request.match_info["key_id"])
    return _redirect(f"/portal/keys/{pages.u(revoked['key_id'])}?done=revoked")


# --- CSV ---------------------------------------------------------------------------------


async def key_csv(request: web.Request) -> web.Response:
    return await _csv(request, {"key": request.match_info["key_id"]})


async def customer_csv(request: web.Request) -> web.Response:
    return await _csv(request, {"customer": request.query.get("customer", "")})


async def _csv(request: web.Request, query: dict[str, str]) -> web.Response:
    """GET /usage?format=csv's file, for this month by day or hour."""
    visit = await _visit(request)
    if visit is None:
        raise Unauthorized("sign in first")
    by = "hour" if request.query.get("by") == "hour" else "day"
    query = {k: v for k, v in query.items() if v}
    rows = await h.usage_of(request.app[PORTAL].admin, visit.caller, {**query, "by": by})
    name = "-".join(["usage", *query.values(), by])
    return web.Response(
        text=usage_csv(rows),
        content_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
    )


# --- sessions, forms, responses -----------------------------------------------------------


async def _visit(request: web.Request) -> Visit | None:
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


async def _change(request: web.Request) -> tuple[Visit, dict[str, str]]:
    """A POST's visit and form, refused unless signed in, sent from this page (Origin)
    and carrying the session's CSRF token (form field `csrf` or X-CSRF-Token)."""
    visit = await _visit(request)
    if visit is None:
        raise Unauthorized("your session has ended: sign in again")
    if not same_origin(request.headers.get("Origin"), request.host):
        raise Forbidden("this form may be sent only from this page")
    form = await _form(request)
    given = form.get("csrf") or request.headers.get("X-CSRF-Token")
    sealer = request.app[PORTAL].sealer
    assert sealer is not None
    if not sealer.csrf_ok(visit.session, given):
        raise Forbidden("the form's CSRF token is missing or wrong: reload the page")
    return visit, form


async def _form(request: web.Request) -> dict[str, str]:
    """The POSTed form's text fields (at most the admin listener's 64 KiB), arriving
    within client_timeouts.headers, as the admin API's bodies must."""
    timeout = request.app[PORTAL].admin.config.client_timeouts.headers
    async with asyncio.timeout(timeout):
        data = await request.post()
    return {name: value for name, value in data.items() if isinstance(value, str)}


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _html(text: str, status: int = 200, visit: Visit | None = None) -> web.Response:
    response = web.Response(text=text, status=status, content_type="text/html")
    if visit is not None and visit.renewed is not None:
        _set_cookie(response, visit.renewed, visit.session.https)
    return response


def _set_cookie(response: web.StreamResponse, value: str, secure: bool) -> None:
    """HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it),
    Path=/portal/ (the admin API never sees it), Secure when the page was reached over
    HTTPS; no Max-Age: it ends with the browser, and the server's limits end it sooner."""
    response.set_cookie(COOKIE, value, path=PATH, httponly=True, samesite="Strict",
                        secure=secure)  # fmt: skip
