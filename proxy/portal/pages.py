"""The customer page's HTML: small functions over the admin API's JSON answers.

Every value that reaches the page passes through `e` (html.escape, quotes included)
or `u` (a URL path segment): key names, referrer hosts, object paths and codes are
text a customer or any client on the internet chose. Nothing is rendered from a
source the admin API does not answer with (the views pass its answers in).

The page loads /portal/static/portal.css and portal.js only: no inline script or
style (the Content-Security-Policy forbids both), no other host.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any
from urllib.parse import quote

from ..usage import month_start

NO_REFERRER = {None: "allowed when no referrers are set", True: "allowed", False: "refused"}
NOTICES = {
    "saved": "Restrictions saved.",
    "revoked": "Key revoked.",
    "allowed": "Referrer allowed.",
    "signed-out": "Signed out.",
    "customer-saved": "Billing id and alert webhook saved.",
}


def e(value: Any) -> str:
    return escape(str(value), quote=True)


def u(value: str) -> str:
    return quote(value, safe="")


def document(title: str, body: str, csrf: str = "", signed_in: str = "") -> str:
    """A whole page. `signed_in`: who, shown with the sign-out button (which needs the
    session's CSRF token)."""
    head = ""
    if signed_in:
        head = (
            f'<header><a href="/portal/" class="brand">keyfront</a>'
            f'<span class="who">{e(signed_in)}</span>'
            f'<form method="post" action="/portal/sign-out">{hidden("csrf", csrf)}'
            '<button type="submit" class="link">Sign out</button></form></header>'
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="csrf-token" content="{e(csrf)}">'
        f"<title>{e(title)} · keyfront</title>"
        '<link rel="stylesheet" href="/portal/static/portal.css">'
        '<script src="/portal/static/portal.js" defer></script></head>'
        f"<body>{head}<main>{body}</main></body></html>"
    )


def hidden(name: str, value: str) -> str:
    return f'<input type="hidden" name="{e(name)}" value="{e(value)}">'


def sign_in(message: str = "", done: str | None = None) -> str:
    note = f'<p class="error" role="alert">{e(message)}</p>' if message else notice(done)
    return document(
        "Sign in",
        f"<h1>Sign in</h1>{note}"
        '<form method="post" action="/portal/sign-in" class="card">'
        '<label for="token">Your customer token (or the operator\'s admin token)</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" '
        'required maxlength="256">'
        '<button type="submit">Sign in</button></form>'
        '<p class="muted">The token is sent once, in this form; the page then keeps a '
        "session cookie, never the token.</p>",
    )


def error(status: int, message: str) -> str:
    return document(
        f"Error {status}",
        f'<h1>Error {status}</h1><p class="error" role="alert">{e(message)}</p>'
        '<p><a href="/portal/">Back to your keys</a></p>',
    )


def notice(done: str | None) -> str:
    text = NOTICES.get(done or "")
    return f'<p class="notice" role="status">{e(text)}</p>' if text else ""


# --- the customer's keys ---------------------------------------------------------------


def customer_picker(customers: Sequence[str], chosen: str) -> str:
    options = "".join(
        f'<option value="{e(c)}"{" selected" if c == chosen else ""}>{e(c)}</option>'
        for c in customers
    )
    return (
        '<form method="get" action="/portal/" class="picker"><label for="customer">Customer'
        f'</label><select id="customer" name="customer">{options}</select>'
        '<button type="submit">Show</button></form>'
    )


def billing_section(customer: dict[str, Any], csrf: str, editable: bool) -> str:
    """The customer record's billing id and alert webhook (SPEC section 16), with the
    secret its alert endpoint verifies signatures with when alerts are signed. Only the
    operator may change them (PATCH /customers/{customer_id}); a customer reads them."""
    billing, webhook = customer.get("billing_id") or "", customer.get("alert_webhook") or ""
    rows = [("Billing id", billing or "not set"), ("Alert webhook", webhook or "not set")]
    if "alert_secret" in customer:
        rows.append(("Alert secret", customer["alert_secret"]))
    shown = "".join(
        f'<dt>{e(k)}</dt><dd><code id="{e(k.lower().replace(" ", "-"))}">{e(v)}</code></dd>'
        for k, v in rows
    )
    form = ""
    if editable:
        form = (
            f'<form method="post" action="/portal/customer">{hidden("csrf", csrf)}'
            f"{hidden('customer_id', customer['customer_id'])}"
            '<label for="billing_id">Billing id (the customer\'s id in your billing system)'
            f'</label><input id="billing_id" name="billing_id" value="{e(billing)}" '
            'maxlength="255" placeholder="cus_NffrFeUfNV2Hib">'
            '<label for="alert_webhook">Alert webhook (https to a public host; empty: none)'
            f'</label><input id="alert_webhook" name="alert_webhook" value="{e(webhook)}" '
            'maxlength="2048" placeholder="https://hooks.example.com/keyfront">'
            '<button type="submit">Save</button></form>'
        )
    return (
        '<section class="card" id="billing"><h2>Billing and alerts</h2>'
        f'<dl class="restrictions">{shown}</dl>{form}</section>'
    )


def plan_section(plan: dict[str, Any], now: float) -> str:
    quota = plan["quota"]
    rows = [quota_line(name, quota[name], quota["month"], quota["resets_at"], now)
            for name in ("requests", "bytes")]  # fmt: skip
    keys = plan["keys"]
    cap = f" of at most {count(keys['max'])}" if keys["max"] is not None else ""
    return (
        f'<section class="card" id="plan"><h2>Plan</h2><p>{e(keys["live"])} live keys{e(cap)}.'
        f"</p>{''.join(rows)}</section>"
    )


def quota_line(name: str, quota: dict[str, Any], month: str, resets_at: int, now: float) -> str:
    """Used and left of a monthly quota, and when it runs out at this month's pace."""
    limit, used = quota.get("limit"), quota.get("used") or 0
    if limit is None:
        return f'<p class="quota">{e(name.capitalize())}: no monthly quota.</p>'
    shown = size if name == "bytes" else count
    left = max(0, limit - used)
    elapsed = max(1.0, now - month_start(int(now)))
    pace = used / elapsed  # per second, this month so far
    if left == 0:
        forecast = "The quota is used up until the month ends."
    elif pace <= 0:
        forecast = "Nothing used yet this month."
    elif now + left / pace >= resets_at:
        forecast = "At this month's pace it lasts until the month ends."
    else:
        forecast = f"At this month's pace it runs out {when(now + left / pace)}."
    share = min(100, round(100 * used / limit)) if limit else 100
    return (
        f'<div class="quota"><p><strong>{e(name.capitalize())}</strong> ({e(month)}): '
        f"{e(shown(used))} used of {e(shown(limit))}, <strong>{e(shown(left))} left</strong>.</p>"
        f'<svg viewBox="0 0 100 6" preserveAspectRatio="none" class="meter" role="img" '
        f'aria-label="{share}% used">'
        f'<rect width="100" height="6" fill="#e5e7eb"/><rect width="{share}" height="6" '
        f'fill="{"#dc2626" if share >= 90 else "#2563eb"}"/></svg>'
        f'<p class="forecast">{e(forecast)}</p></div>'
    )


def keys_section(keys: Iterable[dict[str, Any]], last_used: dict[str, int | None]) -> str:
    cards = []
    for key in keys:
        url = f"/portal/keys/{u(key['key_id'])}"
        cards.append(
            f'<li class="key card" data-key-id="{e(key["key_id"])}">'
            f'<a href="{e(url)}" class="name">{e(key["name"] or "(no name)")}</a> '
            f"{badge(key)}<code>{e(key['key_id'])}</code>{restrictions_summary(key)}"
            f'<p class="muted">Last used: {e(_last(key, last_used))}</p></li>'
        )
    listed = "".join(cards) or '<li class="muted">No keys yet.</li>'
    return f'<section id="keys"><h2>Keys</h2><ul class="keys">{listed}</ul></section>'


def _last(key: dict[str, Any], last_used: dict[str, int | None]) -> str:
    if key["key_id"] not in last_used:
        return "-" if key["status"] == "revoked" else "open the key to see it"
    return last_seen(last_used[key["key_id"]])


def create_form(csrf: str, customer_id: str) -> str:
    return (
        '<section class="card" id="create"><h2>New key</h2>'
        f'<form method="post" action="/portal/keys">{hidden("csrf", csrf)}'
        f"{hidden('customer_id', customer_id)}"
        '<label for="new-name">Name</label><input id="new-name" name="name" maxlength="1024">'
        '<label for="new-referrers">Allowed referrers, one per line (empty: any site)</label>'
        '<textarea id="new-referrers" name="referrers" rows="2" '
        'placeholder="example.com&#10;*.example.com"></textarea>'
        '<button type="submit">Create key</button></form></section>'
    )


def badge(key: dict[str, Any]) -> str:
    state = key["status"]
    if state == "active" and key.get("expires_at") and key["expires_at"] <= time.time():
        state = "expired"
    return f'<span class="badge {e(state)}">{e(state)}</span>'


def restrictions_summary(key: dict[str, Any]) -> str:
    parts = [
        ("Referrers", ", ".join(key["referrers"]) or "any site"),
        ("No referrer", NO_REFERRER[key["allow_no_referrer"]]),
        ("IPs", ", ".join(key["ips"]) or "any"),
        ("Paths", ", ".join(key["paths"]) or "any"),
        ("Rate", f"{key['rate']} (burst {key['burst']})" if key.get("rate") else "default"),
    ]
    if key.get("expires_at"):
        parts.append(("Expires", when(key["expires_at"])))
    rows = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in parts)
    return f'<dl class="restrictions">{rows}</dl>'


# --- values ------------------------------------------------------------------------------


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def last_seen(ts: int | None) -> str:
    return "not in the last 35 days" if ts is None else f"in the hour from {when(ts)}"


def count(n: float) -> str:
    return f"{n:,.0f}"


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"
