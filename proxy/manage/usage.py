"""Usage reports for `keyfront usage` and `GET /admin/v1/usage` (SPEC section 4).

With a key, the key's rows (and, with a customer too, only if the key is that
customer's); with a customer alone, the customer's totals; with neither, every
customer's totals. `start` defaults to the start of this month (UTC), `end`
(exclusive) to now. Hourly rows are kept 35 days, daily ones 400: by hour reads
hourly rows, day and month read daily ones.

Issue 12 item 7: `from=0&by=hour` once read every hour since 1970 (on Redis, 490,000
HGETALLs: 9 s and 350 MB in the worker) and a far-future `to` overflowed. The range is
clamped to what the store keeps (nothing older exists, nothing later has happened),
and a report that would read more than MAX_ROWS rows (hours or days, times keys or
customers: a month report reads its days) is refused: an operator asking for every
customer by hour narrows it.
"""

from __future__ import annotations

import csv
import io
import time
from datetime import UTC, datetime
from typing import Any

from ..errors import Invalid, Missing
from ..store import Grain, Scope, Store, UsageRow
from ..usage import FIELDS, month_start, period_start, summed
from .actions import find_customer, find_key

GRAINS = ("hour", "day", "month")
KEPT = {"hour": 35 * 86400, "day": 400 * 86400, "month": 400 * 86400}  # SPEC section 4
# The rows a report reads per subject and second: month reports read daily rows, so a
# month costs up to 31 reads (the bound is on reads, not on rows returned).
READ_STEP = {"hour": 3600, "day": 86400, "month": 86400}
MAX_ROWS = 100_000  # rows one report reads: ~20 MB of JSON at most


async def usage_report(
    store: Store,
    *,
    customer_id: str | None,
    key_id: str | None,
    start: int | None,
    end: int | None,
    grain: Grain,
) -> list[dict[str, Any]]:
    """The rows as JSON: the key or customer id, `start` (unix seconds), `period` (ISO),
    the counts of FIELDS, and the `denied_<code>` counts that are not zero."""
    now = int(time.time())
    start, end = report_range(start, end, grain, now)
    scope, ids, unproven = await _subjects(store, customer_id, key_id)
    periods = max(0, end - start + READ_STEP[grain] - 1) // READ_STEP[grain]
    if periods * len(ids) > MAX_ROWS:
        raise Invalid("from", f"the report would read up to {periods * len(ids)} rows, "
                      f"more than {MAX_ROWS}: narrow from and to, or name a customer or a "
                      "key")  # fmt: skip
    rows = summed(await store.read_usage(scope, ids, start, end, grain), grain)
    if unproven and not rows:
        raise Missing(f"no such {scope}: {ids[0]}")
    return [_row_json(row) for row in rows]


def report_range(start: int | None, end: int | None, grain: Grain, now: int) -> tuple[int, int]:
    """[start, end) within what the store keeps: from the oldest period of `grain`
    still retained (the start of this month by default) to now at the latest."""
    oldest = period_start(now - KEPT[grain], grain)
    start = month_start(now) if start is None else start
    end = now + 1 if end is None else end
    return max(start, oldest), min(end, now + 1)


async def _subjects(
    store: Store, customer_id: str | None, key_id: str | None
) -> tuple[Scope, list[str], bool]:
    """Whose rows, and whether the store could not vouch for them. Keys answered by an
    operator's key API, and their customers, are in no store, yet their usage is kept
    under their ids (SPEC section 13): asked by id alone (the operator), their rows
    are reported, and only an id without rows is "no such" one. A query narrowed to a
    customer (a customer token's always is) needs the store to say the key is its."""
    if key_id:
        try:
            await find_key(store, key_id, customer_id=customer_id)
        except Missing:
            if customer_id is not None:
                raise
            return "key", [key_id], True
        return "key", [key_id], False
    if customer_id:
        try:
            await find_customer(store, customer_id)
        except Missing:
            return "customer", [customer_id], True
        return "customer", [customer_id], False
    return "customer", [c.customer_id for c in await store.list_customers()], False


def _row_json(row: UsageRow) -> dict[str, Any]:
    counts = {field: row.counts.get(field, 0) for field in FIELDS}
    denied = {k: v for k, v in sorted(row.counts.items()) if k.startswith("denied_")}
    period = datetime.fromtimestamp(row.start, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {row.scope: row.id, "start": row.start, "period": period, **counts, **denied}


def usage_columns(data: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """Column names and rows for a table or CSV: a column for every name any row has
    (but `start`), zero where a row lacks it."""
    columns = list(dict.fromkeys(k for row in data for k in row if k != "start"))
    columns = columns or ["period", *FIELDS]
    return columns, [{c: row.get(c, 0) for c in columns} for row in data]


def usage_csv(data: list[dict[str, Any]]) -> str:
    columns, rows = usage_columns(data)
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
