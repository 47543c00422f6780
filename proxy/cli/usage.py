"""`keyfront usage`: per-key or per-customer usage by hour, day or month (SPEC section 4).

    keyfront usage [--customer ID] [--key KEY_ID] [--from DATE] [--to DATE]
                   [--by hour|day|month] [--format table|json|csv]

With --key, the key's rows (and, with --customer too, only if the key is that
customer's); with --customer alone, the customer's totals; with neither, every
customer's totals. --from defaults to the start of this month (UTC), --to (exclusive)
to now. Hourly rows are kept 35 days, daily ones 400: --by hour reads hourly rows,
day and month read daily ones.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
from datetime import UTC, datetime
from typing import Any

from ..config import Config
from ..store import Store
from ..usage import FIELDS, Scope, UsageRow, month_start, summed
from .keys import customer_option
from .output import Failure, Output, table
from .values import Option, parse_key_id


def parse_date(text: str) -> int:
    """Unix seconds from an ISO date or datetime, UTC unless it names a zone."""
    moment = datetime.fromisoformat(text)
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


USAGE_OPTIONS: list[Option] = [
    customer_option(False),
    ("--key", {"dest": "key_id", "type": parse_key_id, "metavar": "KEY_ID"}),
    ("--from", {"dest": "start", "type": parse_date, "metavar": "DATE"}),
    ("--to", {"dest": "end", "type": parse_date, "metavar": "DATE"}),
    ("--by", {"dest": "grain", "choices": ("hour", "day", "month"), "default": "day"}),
    ("--format", {"dest": "format", "choices": ("table", "json", "csv"), "default": "table"}),
]


async def usage_report(args: argparse.Namespace, config: Config, store: Store) -> Output:
    now = int(time.time())
    start = args.start if args.start is not None else month_start(now)
    end = args.end if args.end is not None else now + 1
    scope, ids = await _subjects(args, store)
    rows = summed(await store.read_usage(scope, ids, start, end, args.grain), args.grain)
    data = [_row_json(row) for row in rows]
    if args.format == "json":
        return Output(data, json.dumps(data, indent=2))
    return Output(data, _text(data, args.format))


async def _subjects(args: argparse.Namespace, store: Store) -> tuple[Scope, list[str]]:
    if args.key_id:
        record = await store.get_key(args.key_id)
        if record is None or (args.customer_id and record.customer_id != args.customer_id):
            raise Failure(f"no such key: {args.key_id}")
        return "key", [args.key_id]
    if args.customer_id:
        if await store.get_customer(args.customer_id) is None:
            raise Failure(f"no such customer: {args.customer_id}")
        return "customer", [args.customer_id]
    return "customer", [c.customer_id for c in await store.list_customers()]


def _row_json(row: UsageRow) -> dict[str, Any]:
    counts = {field: row.counts.get(field, 0) for field in FIELDS}
    denied = {k: v for k, v in sorted(row.counts.items()) if k.startswith("denied_")}
    period = datetime.fromtimestamp(row.start, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {row.scope: row.id, "start": row.start, "period": period, **counts, **denied}


def _text(data: list[dict[str, Any]], form: str) -> str:
    columns = list(dict.fromkeys(k for row in data for k in row if k != "start"))
    columns = columns or ["period", *FIELDS]
    rows = [{c: row.get(c, 0) for c in columns} for row in data]
    if form == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().rstrip("\n")
    return table(rows, " ".join(columns))
