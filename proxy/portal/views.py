"""The customer page's routes: each resolves the session to an admin API `Caller`, calls
the admin routes' own actions (proxy/admin/handlers.py: listed_keys, created_key,
analytics_of, what_if_of, ...) with the JSON a customer's tool would send, and renders
the answer (pages.py, key_page.py). So the page shows and does exactly what the API
lets that caller: another customer's key id in a URL or a form is the API's 404.

Reads are GETs; every change is a POST checked by `access.change_of` (session, Origin,
CSRF token).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from ..admin import handlers as h
from ..admin.http import AdminContext, Caller
from ..errors import Invalid, Unauthorized
from ..manage import actions as act
from ..manage.usage import usage_csv
from ..ratelimit import seconds_to_month_end
from ..records import KeyRecord
from . import access, key_page, pages
from .access import Visit
from .session import PATH

# Keys whose last use the list looks up (one usage read each): the first this many not
# revoked. A customer at admin.customer_max_keys (1,000) opens a key to see the rest.
MAX_LAST_USED = 200
CUSTOMER_FIELDS = ("billing_id", "alert_webhook")  # what the page edits of a customer

# --- pages --------------------------------------------------------------------------------


async def index(request: web.Request) -> web.Response:
    if request.app[access.PORTAL].sealer is None:
        return access.html(pages.sign_in(access.OFF), 503)
    visit = await access.visit_of(request)
    if visit is None:
        return access.html(pages.sign_in(done=request.query.get("done")))
    admin, caller = access.admin_of(request), visit.caller
    picker, chosen = "", caller.scope(request.query.get("customer"))
    if caller.customer_id is None:
        customers = [c.customer_id for c in await admin.store.list_customers()]
        chosen = chosen or (customers[0] if customers else None)
        picker = pages.customer_picker(customers, chosen or "")
    if chosen is None:
        return access.html(
            pages.document("Keys", "<p>No customers yet.</p>", visit.csrf, visit.who)
        )
    keys = await h.listed_keys(admin, caller, chosen)
    keys.sort(key=lambda k: k["status"] == "revoked")  # revoked ones last
    plan = await h.plan(admin, caller, chosen)
    looked_up = [k["key_id"] for k in keys if k["status"] != "revoked"][:MAX_LAST_USED]
    used = await asyncio.gather(*(_last_used(admin, caller, key_id) for key_id in looked_up))
    last_used = dict(zip(looked_up, used, strict=True))
    csv = f"/portal/usage.csv?customer={pages.u(chosen)}"
    body = (
        f"<h1>Keys of {pages.e(chosen)}</h1>{pages.notice(request.query.get('done'))}{picker}"
        f"{pages.plan_section(plan, time.time())}"
        f"{pages.billing_section(plan, visit.csrf, editable=caller.customer_id is None)}"
        f"{pages.keys_section(keys, last_used)}"
        f"{pages.create_form(visit.csrf, chosen)}"
        f'<p><a href="{pages.e(csv)}&amp;by=day" download>Download usage by day (CSV)</a> · '
        f'<a href="{pages.e(csv)}&amp;by=hour" download>by hour</a></p>'
    )
    return access.html(
        pages.document(f"Keys of {chosen}", body, visit.csrf, visit.who), visit=visit
    )


async def _last_used(admin: AdminContext, caller: Caller, key_id: str) -> int | None:
    """The start of the last hour the key served a request, within hourly retention."""
    since = str(int(time.time()) - 35 * 86400)
    rows = await h.usage_of(admin, caller, {"key": key_id, "by": "hour", "from": since})
    return max((r["start"] for r in rows if r["requests"]), default=None)


async def show_key(request: web.Request) -> web.Response:
    visit = await access.visit_of(request)
    if visit is None:
        return access.redirect(PATH)
    return await _key_page(request, visit)


async def _key_page(
    request: web.Request,
    visit: Visit,
    proposal: dict[str, Any] | None = None,
    answer: dict[str, Any] | None = None,
) -> web.Response:
    """One key: its traffic by hour or day, top lists, restrictions (with a what-if
    `answer` to a `proposal` when one was checked), this month, roll and revoke."""
    admin, caller = access.admin_of(request), visit.caller
    key = act.record_json(await h.key_of(admin, caller, request.match_info["key_id"]))
    by = "day" if request.query.get("by") == "day" else "hour"
    report = await h.analytics_of(admin, caller, {"key": key["key_id"], "by": by})
    month = await h.usage_of(admin, caller, {"key": key["key_id"], "by": "month"})
    last_used = await _last_used(admin, caller, key["key_id"])
    shown = key_page.KeyView(key, report, _key_quota(key, month), last_used, visit.csrf,
                          {**key, **(proposal or {})}, answer)  # fmt: skip
    body = key_page.key_page(shown, request.query.get("done"))
    title = key["name"] or key["key_id"]
    return access.html(pages.document(title, body, visit.csrf, visit.who), visit=visit)


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


async def change_customer(request: web.Request) -> web.Response:
    """The operator sets a customer's billing id and alert webhook through PATCH
    /customers/{customer_id}'s own action (an emptied field clears it); a customer
    token gets that action's 403, as in the API."""
    visit, form = await access.change_of(request)
    customer_id = form.get("customer_id", "")
    changes = {name: form.get(name, "").strip() or None for name in CUSTOMER_FIELDS}
    await h.changed_customer(access.admin_of(request), visit.caller, customer_id, changes)
    return access.redirect(f"/portal/?customer={pages.u(customer_id)}&done=customer-saved")


async def create(request: web.Request) -> web.Response:
    visit, form = await access.change_of(request)
    body: dict[str, Any] = {"name": form.get("name", ""), "customer_id": form.get("customer_id")}
    referrers = _lines(form.get("referrers", ""))
    if referrers:
        body["referrers"] = referrers
    minted = await h.created_key(access.admin_of(request), visit.caller, body)
    return access.html(
        pages.document("New key", key_page.minted(minted, None), visit.csrf, visit.who)
    )


async def restrictions(request: web.Request) -> web.Response:
    """Check (what-if, nothing saved) or save the edited restrictions: only the fields
    that differ from the key's are sent, so only those are judged or changed."""
    visit, form = await access.change_of(request)
    admin = access.admin_of(request)
    record = await h.key_of(admin, visit.caller, request.match_info["key_id"], to_change=True)
    proposal = _proposal(form)
    changed = _changed(record, proposal)
    if form.get("go") == "save" and changed:
        await h.changed_key(admin, visit.caller, record, changed)
        return access.redirect(f"/portal/keys/{pages.u(record.key_id)}?done=saved")
    answer = await _what_if(admin, record, changed)
    return await _key_page(request, visit, proposal, answer)


async def what_if(request: web.Request) -> web.Response:
    """The what-if panel alone, for portal.js to show while the customer edits the
    restrictions form (the same form fields, the same answer as "Check")."""
    visit, form = await access.change_of(request)
    admin = access.admin_of(request)
    record = await h.key_of(admin, visit.caller, request.match_info["key_id"], to_change=True)
    try:
        answer = await _what_if(admin, record, _changed(record, _proposal(form)))
    except Invalid as exc:  # a pattern still being typed: say what is wrong with it
        return access.html(key_page.what_if_problem(exc.message), 400, visit)
    return access.html(key_page.what_if_panel(answer), visit=visit)


def _changed(record: KeyRecord, proposal: dict[str, Any]) -> dict[str, Any]:
    key = act.record_json(record)
    return {name: value for name, value in proposal.items() if key[name] != value}


async def _what_if(
    admin: AdminContext, record: KeyRecord, changed: dict[str, Any]
) -> dict[str, Any]:
    """POST /keys/{key_id}/what-if's answer to the changed fields (none: nothing)."""
    if not changed:
        return {"served": 0, "would_refuse": 0, "would_allow": 0, "unchanged": True,
                "behind": {"would_refuse": {}, "would_allow": {}}}  # fmt: skip
    return await h.what_if_of(admin, record, changed)


def _proposal(form: dict[str, str]) -> dict[str, Any]:
    allow = {"": None, "true": True, "false": False}.get(form.get("allow_no_referrer", ""))
    return {"referrers": _lines(form.get("referrers", "")), "allow_no_referrer": allow,
            "ips": _lines(form.get("ips", "")), "paths": _lines(form.get("paths", ""))}  # fmt: skip


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


async def allow_referrer(request: web.Request) -> web.Response:
    """One click: add a refused referrer host to the key's allowed referrers."""
    visit, form = await access.change_of(request)
    admin, key_id = access.admin_of(request), request.match_info["key_id"]
    key = await h.key_of(admin, visit.caller, key_id, to_change=True)
    host = form.get("host", "")
    if not host:
        raise Invalid("host", "required")
    if host not in key.referrers:
        await h.changed_key(admin, visit.caller, key, {"referrers": [*key.referrers, host]})
    return access.redirect(f"/portal/keys/{pages.u(key.key_id)}?done=allowed")


async def roll(request: web.Request) -> web.Response:
    visit, form = await access.change_of(request)
    admin = access.admin_of(request)
    minted = await h.rolled_key(admin, visit.caller, request.match_info["key_id"],
                                {"grace": form.get("grace", "24h")})  # fmt: skip
    old = minted["replaces"]
    report = await h.analytics_of(admin, visit.caller, {"key": old, "by": "hour"})
    body = key_page.minted(minted, report)
    return access.html(pages.document("Rolled key", body, visit.csrf, visit.who))


async def revoke(request: web.Request) -> web.Response:
    visit, _ = await access.change_of(request)
    admin = access.admin_of(request)
    revoked = await h.revoked_key(admin, visit.caller, request.match_info["key_id"])
    return access.redirect(f"/portal/keys/{pages.u(revoked['key_id'])}?done=revoked")


# --- CSV ---------------------------------------------------------------------------------


async def key_csv(request: web.Request) -> web.Response:
    return await _csv(request, {"key": request.match_info["key_id"]})


async def customer_csv(request: web.Request) -> web.Response:
    return await _csv(request, {"customer": request.query.get("customer", "")})


async def _csv(request: web.Request, query: dict[str, str]) -> web.Response:
    """GET /usage?format=csv's file, for this month by day or hour."""
    visit = await access.visit_of(request)
    if visit is None:
        raise Unauthorized("sign in first")
    by = "hour" if request.query.get("by") == "hour" else "day"
    query = {k: v for k, v in query.items() if v}
    rows = await h.usage_of(access.admin_of(request), visit.caller, {**query, "by": by})
    name = "-".join(["usage", *query.values(), by])
    return web.Response(
        text=usage_csv(rows),
        content_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
    )
