"""Per-key analytics and what-if answers (SPEC section 15), for the admin API.

`analytics_report`: one key's (or one customer's) traffic over [from, to): section 4's
exact counters summed, the share of requests with no referrer, and the top referrer
origins, objects and client addresses merged from the stored sketches of every period
(hours, or days) that starts in the range. Each listed count is an upper bound with
its `error`: count - error <= true count <= count (proxy/sketch.py); `error` is 0
whenever the key saw fewer than 64 distinct values in a period.

`what_if`: the key's last 7 days of recorded traffic judged by proposed rules, with
the key's real matchers (policy.KeyPolicy, compiled from the record as changed), never
a second spelling of them. Each dimension is judged on its own: a served referrer
origin, address or object the proposal would refuse counts in `would_refuse`; one
refused for that dimension's code (referrer_not_allowed, ip_not_allowed,
path_not_allowed) that the proposal lets through counts in `would_allow` (the checks
after it were never run for that request, so it may still fail them). Totals are
summed over the changed dimensions and capped at the exact number of requests served
(refused with those codes). A referrer is judged by its page origin, which is what
browsers send cross-origin: a path pattern is judged against "<origin>/".
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from ..analytics import NO_REFERRER, UNPARSABLE, merged_sketches, split_item
from ..errors import Invalid
from ..policy import KeyPolicy
from ..records import KeyRecord
from ..sketch import Sketch
from ..store import Grain, Scope, Store
from ..usage import FIELDS, period_start
from .actions import find_customer, find_key
from .usage import KEPT

TOP = 20  # SPEC section 15: the top 20 of each list
MAX_PERIODS = 400  # sketches merged by one report: 400 days, or 16 days by hour
DEFAULT_SPAN = {"hour": 86400, "day": 30 * 86400}
WHAT_IF_DAYS = 7
STEP = {"hour": 3600, "day": 86400}
_DIMENSION_FIELDS = {"referrers": "host", "objects": "path", "ips": "ip"}
_RULE_CODES = {"referrers": "referrer_not_allowed", "ips": "ip_not_allowed",
               "objects": "path_not_allowed"}  # fmt: skip
_RULE_FIELDS = {"referrers": ("referrers", "allow_no_referrer"), "ips": ("ips",),
                "objects": ("paths",)}  # fmt: skip


async def analytics_report(
    store: Store,
    *,
    customer_id: str | None,
    key_id: str | None,
    start: int | None,
    end: int | None,
    grain: Grain,
) -> dict[str, Any]:
    """The report as JSON (module docstring)."""
    start, end = _range(start, end, grain)
    scope, id_ = await _subject(store, customer_id, key_id)
    counts = await store.read_usage(scope, [id_], start, end, grain)
    stored = await store.read_sketches(scope, [id_], start, end, grain)
    if key_id and customer_id is None and not counts and not stored:
        await find_key(store, id_)  # the operator's id of no key and no traffic: 404
    sketches = merged_sketches([row.sketches for row in stored])
    total: dict[str, int] = {}
    for row in counts:
        for name, value in row.counts.items():
            total[name] = total.get(name, 0) + value
    periods = [{"start": r.start, **_counts(r.counts)} for r in counts]
    return {
        scope: id_, "from": start, "to": end, "by": grain, "counts": _counts(total),
        "no_referrer": total.get("no_referrer", 0) + total.get("refused_no_referrer", 0),
        "no_referrer_share": _share(total), "periods": periods,
        "referrers": _listed(sketches, "referrers"),
        "objects": _listed(sketches, "objects"),
        "ips": _listed(sketches, "ips", refused=False),
        "refused_ips": _listed(sketches, "ips", served=False),
    }  # fmt: skip


def _range(start: int | None, end: int | None, grain: Grain) -> tuple[int, int]:
    now = int(time.time())
    if start is not None and end is not None and start >= end:
        raise Invalid("to", "must be after from (from is inclusive, to exclusive)")
    end = now + 1 if end is None else min(end, now + 1)
    start = end - DEFAULT_SPAN[grain] if start is None else start
    start = max(start, period_start(now - KEPT[grain], grain))
    periods = -(-(end - period_start(start, grain)) // STEP[grain])
    if periods > MAX_PERIODS:
        raise Invalid("from", f"the report would merge {periods} periods, more than "
                      f"{MAX_PERIODS}: narrow from and to, or read by day")  # fmt: skip
    return start, end


async def _subject(store: Store, customer_id: str | None, key_id: str | None) -> tuple[Scope, str]:
    """A key (a customer token's own only: another's is 404, as a missing one), else
    a customer. The operator may name a key id of no stored key (an external key's,
    SPEC section 13), whose traffic is kept under it."""
    if key_id:
        if customer_id is not None:
            await find_key(store, key_id, customer_id=customer_id)
        return "key", key_id
    if not customer_id:
        raise Invalid("key", "give a key or a customer")
    await find_customer(store, customer_id)
    return "customer", customer_id


def _counts(counts: dict[str, int]) -> dict[str, int]:
    denied = {k: v for k, v in sorted(counts.items()) if k.startswith("denied_")}
    return {**{name: counts.get(name, 0) for name in FIELDS}, **denied}


def _share(total: dict[str, int]) -> float | None:
    """Requests with no referrer over every request counted (served and refused); None
    when there were none, or the counts predate analytics."""
    seen = total.get("requests", 0) + sum(v for k, v in total.items() if k.startswith("denied_"))
    none = total.get("no_referrer", 0) + total.get("refused_no_referrer", 0)
    return round(none / seen, 4) if seen else None


def _listed(
    sketches: dict[str, Sketch], dimension: str, served: bool = True, refused: bool = True
) -> list[dict[str, Any]]:
    """The top TOP served items then the top TOP refused ones (with their code)."""
    found: list[dict[str, Any]] = []
    for name, is_refused in ((dimension, False), (f"refused_{dimension}", True)):
        if (refused if is_refused else served) and name in sketches:
            items = [i for i in sketches[name].items() if not _is_none(i[0], dimension)]
            found += [_item(dimension, item, is_refused) for item in items[:TOP]]
    return found


def _is_none(item: str, dimension: str) -> bool:
    """No referrer: counted by no_referrer_share, not listed as a host."""
    return dimension == "referrers" and item.rpartition(" ")[2] == NO_REFERRER


def _item(dimension: str, entry: tuple[str, int, int, int], refused: bool) -> dict[str, Any]:
    item, count, error, sent = entry
    code, value = split_item(item, refused)
    shown: dict[str, Any] = {_DIMENSION_FIELDS[dimension]: value}
    if dimension == "referrers":
        shown = _referrer(value)
    shown |= {"requests": count, "bytes": sent, "error": error}
    return {**shown, "code": code} if code is not None else shown


def _referrer(origin: str) -> dict[str, Any]:
    if origin == NO_REFERRER:
        return {"host": None, "origin": None}
    if origin == UNPARSABLE:
        return {"host": UNPARSABLE, "origin": None}
    rest = origin.partition("://")[2]
    host = rest if rest.endswith("]") else rest.rpartition(":")[0] if ":" in rest else rest
    return {"host": host, "origin": origin}


# --- what-if -------------------------------------------------------------------------


async def what_if(store: Store, record: KeyRecord, proposal: dict[str, Any]) -> dict[str, Any]:
    """The answer as JSON (module docstring). `proposal`: the read KEY_SETTINGS values
    of referrers, allow_no_referrer, ips, paths (at least one)."""
    if not proposal:
        raise Invalid("body", "propose at least one of referrers, allow_no_referrer, ips, paths")
    now = int(time.time())
    end, start = now + 1, now // 3600 * 3600 - (WHAT_IF_DAYS * 24 - 1) * 3600
    counts = await store.read_usage("key", [record.key_id], start, end, "hour")
    stored = await store.read_sketches("key", [record.key_id], start, end, "hour")
    sketches = merged_sketches([row.sketches for row in stored])
    policy = KeyPolicy.of(dataclasses.replace(record, **proposal))
    changed = [d for d, fields in _RULE_FIELDS.items() if any(f in proposal for f in fields)]
    refuse = {d: _judged(sketches.get(d), d, policy, passes=False) for d in changed}
    allow = {d: _judged(sketches.get(f"refused_{d}"), d, policy, passes=True) for d in changed}
    served = sum(row.counts.get("requests", 0) for row in counts)
    refused = sum(row.counts.get(f"denied_{_RULE_CODES[d]}", 0) for row in counts for d in changed)
    return {
        "key_id": record.key_id, "from": start, "to": end, "served": served,
        "would_refuse": min(served, sum(i["requests"] for v in refuse.values() for i in v)),
        "would_allow": min(refused, sum(i["requests"] for v in allow.values() for i in v)),
        "behind": {"would_refuse": refuse, "would_allow": allow},
    }  # fmt: skip


def _judged(
    sketch: Sketch | None, dimension: str, policy: KeyPolicy, passes: bool
) -> list[dict[str, Any]]:
    """The items of `sketch` the proposed policy refuses (passes=False), or lets
    through (True: refused items of the dimension's own code only)."""
    if sketch is None:
        return []
    found = []
    for entry in sketch.items():
        code, value = split_item(entry[0], refused=passes)
        if passes and code != _RULE_CODES[dimension]:
            continue
        if _allows(policy, dimension, value) == passes:
            found.append(_item(dimension, entry, refused=passes))
    return found


def _allows(policy: KeyPolicy, dimension: str, value: str) -> bool:
    """The key's real matchers (policy.py, referrers.py) on one recorded value."""
    if dimension == "referrers":
        page = value + "/" if value not in (NO_REFERRER, UNPARSABLE) else value or None
        return policy.referrers is None or policy.referrers.allows(page, None)
    if dimension == "ips":
        return policy.ips is None or policy.ips.allows(value)
    return policy.paths is None or policy.paths.allows(value)
