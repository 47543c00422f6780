"""Usage reports for `keyfront usage` and `GET /admin/v1/usage` (SPEC section 4).

With a key, the key's rows (and, with a customer too, only if the key is that
customer's); with a customer alone, the customer's totals; with neither, every
customer's totals. `start` defaults to the start of this month (UTC), `end`
(exclusive) to now. Hourly rows are kept 35 days, daily ones 400: by hour reads
hourly rows, day and month read daily ones.

Date rules (issue 15): a row counts when its period starts in [start, end): `start`
inclusive, `end` exclusive, and `start >= end` is refused rather than answered empty.
Usage is stored per hour, so a bound with a time of day counts from (or up to) that
hour whatever the grain: by day or month, the part-days at either end are read from
hourly rows and summed into their day (a day's row would count hours outside the
range, or none of them). Hourly rows are kept 35 days: a part-day older than that is
refused, naming the bound, rather than answered short.

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

from ..errors import Invalid, Missing, Refusal
from ..store import Grain, Scope, Store, UsageRow
from ..usage import FIELDS, month_start, period_start, summed
from .actions import find_customer, find_key

GRAINS = ("hour", "day", "month")
KEPT = {"hour": 35 * 86400, "day": 400 * 86400, "month": 400 * 86400}  # SPEC section 4
# The rows a report reads per subject and second: month reports read daily rows, so a
# month costs up to 31 reads (the bound is on reads, not on rows returned).
READ_STEP = {"hour": 3600, "day": 86400, "month": 86400}
MAX_ROWS = 100_000  # rows one report reads: ~20 MB of JSON at most
DAY = 86400


def _refusal_codes(cls: type[Refusal] = Refusal) -> list[str]:
    """Every code a refusal can have, in the order errors.py defines them (SPEC
    section 1's), internal_error last: those a usage row may count as denied_<code>."""
    codes: list[str] = []
    for sub in cls.__subclasses__():
        codes += [code for code in _refusal_codes(sub) if code not in codes]
    return [*codes, cls.code] if cls.code not in codes else codes


# The CSV's columns (issue 15): the same whatever the rows, so a spreadsheet or a
# script can rely on them; ids first, the one a report is not by left empty.
ID_COLUMNS = ("customer", "key")
DENIED = tuple(f"denied_{code}" for code in _refusal_codes())
CSV_COLUMNS = (*ID_COLUMNS, "period", *FIELDS, *DENIED)


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
    if start is not None and end is not None and start >= end:
        raise Invalid("to", f"{_iso(end)} is not after from {_iso(start)} (from is "
                      "inclusive, to exclusive)")  # fmt: skip
    now = int(time.time())
    open_end = end is None or end > now
    start, end = report_range(start, end, grain, now)
    reads = _reads(start, end, grain, open_end, now)
    scope, ids, unproven = await _subjects(store, customer_id, key_id)
    periods = sum(max(0, -(-(b - a) // READ_STEP[g])) for g, a, b in reads)
    if periods * len(ids) > MAX_ROWS:
        raise Invalid("from", f"the report would read up to {periods * len(ids)} rows, "
                      f"more than {MAX_ROWS}: narrow from and to, or name a customer or a "
                      "key")  # fmt: skip
    found = [row for g, a, b in reads for row in await store.read_usage(scope, ids, a, b, g)]
    rows = summed(found, grain)
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


def _reads(
    start: int, end: int, grain: Grain, open_end: bool, now: int
) -> list[tuple[Grain, int, int]]:
    """The store reads of a report: (grain stored, start, end). By hour, one; by day or
    month, the whole days from daily rows and any part-day at either end from hourly
    ones (the module's date rules). An open end (none given, or later than now) ends
    no part-day: nothing after now is stored."""
    if grain == "hour" or start >= end:
        return [("hour" if grain == "hour" else "day", start, end)]
    first = -(-start // DAY) * DAY  # the first whole day
    last = end if open_end else end // DAY * DAY  # the end of the last whole day
    if first >= last:  # within one day
        return [_hours(start, end, "from", now)]
    reads: list[tuple[Grain, int, int]] = [("day", first, last)]
    if start < first:
        reads.insert(0, _hours(start, first, "from", now))
    if last < end:
        reads.append(_hours(last, end, "to", now))
    return reads


def _hours(start: int, end: int, bound: str, now: int) -> tuple[Grain, int, int]:
    if start < period_start(now - KEPT["hour"], "hour"):
        raise Invalid(bound, "has a time of day, but hourly usage is kept 35 days: give a "
                      "date (midnight UTC) for older periods")  # fmt: skip
    return "hour", start, end


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    return {row.scope: row.id, "start": row.start, "period": _iso(row.start), **counts, **denied}


def usage_columns(data: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """Column names and rows for a table or CSV: a column for every name any row has
    (but `start`), zero where a row lacks it."""
    columns = list(dict.fromkeys(k for row in data for k in row if k != "start"))
    columns = columns or ["period", *FIELDS]
    return columns, [{c: row.get(c, 0) for c in columns} for row in data]


def usage_csv(data: list[dict[str, Any]], *, every_column: bool = False) -> str:
    """The rows as CSV. With `every_column`, the header is CSV_COLUMNS whatever the
    rows (zeros and empty ids included), then any column a row has beyond them (a
    refusal code an older keyfront stored): no count is left out."""
    columns, rows = usage_columns(data)
    if every_column:
        columns = [*CSV_COLUMNS, *(c for c in columns if c not in CSV_COLUMNS)]
        rows = [{c: row.get(c, "" if c in ID_COLUMNS else 0) for c in columns} for row in data]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
