"""`keyfront usage`: per-key or per-customer usage by hour, day or month (SPEC section 4).

    keyfront usage [--customer ID] [--key KEY_ID] [--from DATE] [--to DATE]
                   [--by hour|day|month] [--format table|json|csv]

What the filters select, the date rules and the defaults of --from and --to:
`proxy.manage.usage`.
"""

from __future__ import annotations

import argparse
import json

from ..config import Config
from ..errors import UsageError
from ..manage.settings import parse_date, parse_usage_key_id
from ..manage.usage import GRAINS, usage_columns, usage_csv, usage_report
from ..store import Store
from .keys import customer_option
from .options import Option
from .output import Output, table

FORMATS = ("table", "json", "csv")
DATE = "an ISO date or datetime, UTC unless it names a zone (2026-05-01, 2026-05-01T09:00)"
USAGE_OPTIONS: list[Option] = [
    customer_option(False, "whose usage (default: every customer's totals)"),
    ("--key", {"dest": "key_id", "type": parse_usage_key_id, "metavar": "KEY_ID",
               "help": "one key's usage (a key id or the key)"}),
    ("--from", {"dest": "start", "type": parse_date, "metavar": "DATE",
                "help": f"inclusive: {DATE}; with a time of day, the hours from it count, whatever "
                        "--by (default: the start of this month)"}),
    ("--to", {"dest": "end", "type": parse_date, "metavar": "DATE",
              "help": "exclusive: the first moment not counted, after --from (default: now)"}),
    ("--by", {"dest": "grain", "choices": GRAINS, "default": "day",
              "help": "one row per hour, day or month, UTC (default: day)"}),
    ("--format", {"dest": "format", "choices": FORMATS,
                  "help": "table (default), json, or csv with the same header whatever the "
                          "data; --json is --format json"}),
]  # fmt: skip


def check_flags(args: argparse.Namespace) -> None:
    """--json and a --format other than json contradict each other (issue 15)."""
    if args.json and args.format not in (None, "json"):
        raise UsageError("--format", f"--format {args.format} contradicts --json")


async def usage_report_command(args: argparse.Namespace, config: Config, store: Store) -> Output:
    data = await usage_report(store, customer_id=args.customer_id, key_id=args.key_id,
                              start=args.start, end=args.end, grain=args.grain)  # fmt: skip
    if args.format == "json":
        return Output(data, json.dumps(data, indent=2))
    if args.format == "csv":
        return Output(data, usage_csv(data, every_column=True).rstrip("\n"))
    columns, rows = usage_columns(data)
    return Output(data, table(rows, " ".join(columns)))
