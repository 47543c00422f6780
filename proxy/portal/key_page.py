"""The page of one key (pages.py has the rest): its traffic charts, top referrer hosts
and objects, restrictions with the what-if answer, this month's quota, roll and revoke;
and the page that shows a key just created or rolled. Every value escaped (`e`, `u`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..analytics import UNPARSABLE
from .charts import chart
from .pages import badge, count, e, hidden, last_seen, notice, restrictions_summary, size, u, when

GRACES = (("1h", "1 hour"), ("24h", "24 hours"), ("168h", "7 days"), ("0", "no grace"))
ALLOW_CHOICES = (("", None, "when no referrers are set"), ("true", True, "always"),
                 ("false", False, "never"))  # fmt: skip
EMPTY = {
    "Cache hit ratio": "no cache lookups in this range (a route may bypass the cache)",
    "Refusals by code": "no refusals in this range",
}


@dataclass(frozen=True, slots=True)
class KeyView:
    """What the key's page shows, from the admin API's answers."""

    key: dict[str, Any]  # GET /keys/{key_id}
    report: dict[str, Any]  # GET /analytics?key=&by=
    quota: str  # this month's quota lines (quota_line)
    last_used: int | None
    csrf: str
    edited: dict[str, Any]  # the restrictions in the form: the key's, or a proposal
    answer: dict[str, Any] | None  # POST /keys/{key_id}/what-if's, once checked


def key_page(view: KeyView, done: str | None) -> str:
    key, report, csrf = view.key, view.report, view.csrf
    key_id, by = key["key_id"], report["by"]
    other = "day" if by == "hour" else "hour"
    share = report["no_referrer_share"]
    csv = f"/portal/keys/{u(key_id)}/usage.csv?by="
    what_if = what_if_panel(view.answer) if view.answer is not None else ""
    return (
        f'<p><a href="/portal/?customer={e(u(key["customer_id"]))}">'
        f"← Keys of {e(key['customer_id'])}</a></p>"
        f"<h1>{e(key['name'] or '(no name)')} {badge(key)}</h1>"
        f"<p><code>{e(key_id)}</code> · created {e(when(key['created_at']))} · last used "
        f"{e(last_seen(view.last_used))}</p>{notice(done)}"
        f'<section id="traffic"><h2>Traffic by {by}</h2><p><a href="?by={other}">'
        f"Show by {other}</a></p>{charts(report)}</section>"
        f'<section id="top"><h2>Top referrer hosts</h2>'
        f'<p class="muted">No referrer: {e("-" if share is None else f"{share:.0%}")} '
        f"of requests.</p>{referrers_table(report['referrers'], key_id, csrf, key['referrers'])}"
        f"<h2>Top objects</h2>{objects_table(report['objects'])}</section>"
        f'<section class="card" id="restrictions"><h2>Restrictions</h2>'
        f"{restrictions_summary(key)}{what_if}"
        f"{restrictions_form(view.edited, csrf, view.answer is not None)}</section>"
        f'<section class="card" id="quota"><h2>This month</h2>{view.quota}</section>'
        f'<p><a href="{e(csv)}day" download>Download usage by day (CSV)</a> · '
        f'<a href="{e(csv)}hour" download>by hour</a></p>{key_actions(key, csrf)}'
    )


def restrictions_form(key: dict[str, Any], csrf: str, checked: bool) -> str:
    """The key's restrictions (or a proposal) to edit. "Check" asks the what-if first;
    "Save" appears once its answer is shown (`checked`)."""
    allow = key["allow_no_referrer"]
    options = "".join(
        f'<option value="{v}"{" selected" if allow is k else ""}>{label}</option>'
        for v, k, label in ALLOW_CHOICES
    )
    base = f"/portal/keys/{u(key['key_id'])}"
    hide = "" if checked else " hidden"  # portal.js shows it once it has an answer
    save = f'<button type="submit" name="go" value="save" class="primary"{hide}>Save</button>'
    return (
        f'<form method="post" action="{e(base)}/restrictions#restrictions" '
        f'id="restrictions-form" data-what-if="{e(base)}/what-if">{hidden("csrf", csrf)}'
        + _lines("referrers", "Allowed referrers, one per line (empty: any site)", key)
        + '<label for="allow_no_referrer">Requests with no referrer allowed</label>'
        f'<select id="allow_no_referrer" name="allow_no_referrer">{options}</select>'
        + _lines("ips", "Allowed client IPs (CIDRs), one per line (empty: any)", key)
        + _lines("paths", "Allowed path prefixes, one per line (empty: any)", key)
        + '<div class="buttons"><button type="submit" name="go" value="check">'
        f"Check what would change</button>{save}</div></form>"
    )


def key_actions(key: dict[str, Any], csrf: str) -> str:
    """Roll and revoke, for a key that is not revoked."""
    if key["status"] == "revoked":
        return ""
    base = f"/portal/keys/{u(key['key_id'])}"
    graces = "".join(f'<option value="{v}"{" selected" if v == "24h" else ""}>{label}</option>'
                     for v, label in GRACES)  # fmt: skip
    return (
        '<section class="card" id="actions"><h2>Roll or revoke</h2>'
        f'<form method="post" action="{e(base)}/roll">{hidden("csrf", csrf)}'
        '<label for="grace">A new key with the same settings; the old one keeps working for'
        f'</label><select id="grace" name="grace">{graces}</select>'
        '<button type="submit">Roll key</button></form>'
        f'<form method="post" action="{e(base)}/revoke" data-confirm="Revoke this key for good? '
        f'Requests with it will be refused at once.">{hidden("csrf", csrf)}'
        '<button type="submit" class="danger">Revoke key</button></form></section>'
    )


def minted(answer: dict[str, Any], old: dict[str, Any] | None) -> str:
    """A key just created or rolled: the full key, shown this once; after a roll, the
    old key's expiry and its traffic by hour, to watch clients move over."""
    warnings = "".join(f'<p class="warning">{e(w)}</p>' for w in answer.get("warnings", []))
    link = f"/portal/keys/{u(answer['key_id'])}"
    rolled = ""
    if old is not None:
        expires = answer["replaced_expires_at"]
        until = when(expires) if expires else "now"
        rolled = (
            f'<section id="old-key"><h2>The old key</h2><p><a href="/portal/keys/'
            f'{e(u(answer["replaces"]))}"><code>{e(answer["replaces"])}</code></a> keeps working '
            f"until {e(until)}. Its traffic while your clients move to the new key:</p>"
            + charts(old, only=("Requests served",))
            + "</section>"
        )
    return (
        f"<h1>{'Key rolled' if old is not None else 'Key created'}</h1>"
        '<section class="card minted"><p><strong>Copy the key now: it is shown this once.'
        f'</strong></p><p><code id="minted-key" class="key">{e(answer["key"])}</code></p>'
        f'{warnings}<p><a href="{e(link)}">Go to the key</a></p></section>{rolled}'
    )


def _lines(name: str, label: str, key: dict[str, Any]) -> str:
    text = "\n".join(key[name])
    return (
        f'<label for="{name}">{e(label)}</label>'
        f'<textarea id="{name}" name="{name}" rows="3">{e(text)}</textarea>'
    )


def what_if_panel(answer: dict[str, Any]) -> str:
    """The what-if answer: what the proposal would have done to the last 7 days."""
    if answer.get("unchanged"):
        return (
            '<div class="what-if" id="what-if" role="status"><p>No change from the key\'s '
            "restrictions.</p></div>"
        )
    refuse, allow = answer["behind"]["would_refuse"], answer["behind"]["would_allow"]
    return (
        '<div class="what-if" id="what-if" role="status"><h3>Over the last 7 days</h3>'
        f'<p><strong class="would-refuse">{e(answer["would_refuse"])}</strong> of '
        f"{e(answer['served'])} served requests would have been refused"
        f"{_behind(refuse)}.</p>"
        f'<p><strong class="would-allow">{e(answer["would_allow"])}</strong> refused requests '
        f"would have passed{_behind(allow)}.</p></div>"
    )


def what_if_problem(message: str) -> str:
    return (
        f'<div class="what-if" id="what-if" role="status"><p class="error">{e(message)}</p></div>'
    )


def _behind(found: dict[str, list[dict[str, Any]]]) -> str:
    names = [f"{item.get('host') or item.get('ip') or item.get('path')} ({item['requests']})"
             for items in found.values() for item in items[:5]]  # fmt: skip
    return f": {e(', '.join(names))}" if names else ""


def referrers_table(
    items: list[dict[str, Any]], key_id: str, csrf: str, allowed: Sequence[str]
) -> str:
    """Served and refused referrer hosts; a refused one the key's rules do not name yet
    gets a one-click "Allow" (added to the key's referrers)."""
    rows = []
    for item in items:
        host, code = item["host"], item.get("code")
        action = ""
        if code == "referrer_not_allowed" and host not in (None, UNPARSABLE, *allowed):
            target = f"/portal/keys/{u(key_id)}/allow"
            action = (
                f'<form method="post" action="{e(target)}">{hidden("csrf", csrf)}'
                f'{hidden("host", host)}<button type="submit" class="small">Allow</button></form>'
            )
        rows.append(_row(host, code, item, action))
    return _table("top-referrers", ("Referrer host", "Requests", "Bytes", ""), rows)


def objects_table(items: list[dict[str, Any]]) -> str:
    rows = [_row(item["path"], item.get("code"), item) for item in items]
    return _table("top-objects", ("Object", "Requests", "Bytes"), rows)


def _row(value: str, code: str | None, item: dict[str, Any], action: str | None = None) -> str:
    """A top-list row: the value with its refusal code under it, requests, bytes."""
    shown = f'{e(value)}<span class="code">{e(code)}</span>' if code else e(value)
    cells = f'<td class="text">{shown}</td><td>{e(count(item["requests"]))}</td>'
    cells += f"<td>{e(size(item['bytes']))}</td>"
    if action is not None:
        cells += f"<td>{action}</td>"
    return f'<tr class="{"refused" if code else "served"}">{cells}</tr>'


def _table(name: str, heads: Sequence[str], rows: list[str]) -> str:
    if not rows:
        return f'<p class="muted" id="{name}">Nothing recorded in this range.</p>'
    head = "".join(f"<th>{e(h)}</th>" for h in heads)
    return (
        f'<div class="scroll"><table id="{name}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def charts(report: dict[str, Any], only: Sequence[str] = ()) -> str:
    """Requests, bytes, hit ratio and refusals by code per period of the report (or
    `only` those titled so)."""
    grain = report["by"]
    step = 3600 if grain == "hour" else 86400
    first = report["from"] // step * step
    starts = list(range(first, report["to"], step))
    rows = {p["start"]: p for p in report["periods"]}
    at = [rows.get(s, {}) for s in starts]
    labels = [time.strftime("%d %H:00" if grain == "hour" else "%m-%d", time.gmtime(s))
              for s in starts]  # fmt: skip
    codes = sorted({k for p in report["periods"] for k in p if k.startswith("denied_")})
    hits = [p.get("hits", 0) for p in at]
    looked = [p.get("hits", 0) + p.get("misses", 0) for p in at]
    drawn: dict[str, tuple[dict[str, list[float]], Callable[[float], str], float | None]] = {
        "Requests served": ({"requests": [p.get("requests", 0) for p in at]}, count, None),
        "Bytes sent": ({"bytes": [p.get("bytes", 0) for p in at]}, lambda v: size(int(v)), None),
        "Cache hit ratio": (
            {"hit ratio": [h / n if n else 0 for h, n in zip(hits, looked, strict=True)]},
            lambda v: f"{v:.0%}", 1.0),
        "Refusals by code": (
            {c.removeprefix("denied_"): [p.get(c, 0) for p in at] for c in codes}, count, None),
    }  # fmt: skip
    return "".join(
        chart(
            title,
            labels,
            series,
            shown,
            ceiling=top,
            legend=title.startswith("Refusals"),
            empty=EMPTY.get(title, "nothing in this range"),
        )
        for title, (series, shown, top) in drawn.items()
        if not only or title in only
    )
