"""`keyfront usage`: per-key or per-customer usage by hour, day or month (SPEC section 4).

    keyfront usage [--customer ID] [--key KEY_ID] [--from DATE] [--to DATE]
                   [--by hour|day|month] [--format table|json|csv]

What the filters select, and the defaults of --from and --to: `proxy.manage.usage`.
"""

from __future__ import annotations

import argparse
import json

from ..config import Config
from ..manage.settings import parse_date, parse_usage_key_id
from ..manage.usage import GRAINS, usage_columns, usage_csv, usage_report
from ..store import Store
from .keys import customer_option
from .options import Option
from .output import Output, table

USAGE_OPTIONS: list[Option] = [
    customer_option(False),
    ("--key", {"dest": "key_id", "type": parse_usage_key_id, "metavar": "KEY_ID"}),
    ("--from", {"dest": "start", "type": parse_date, "metavar": "DATE"}),
    ("--to", {"dest": "end", "type": parse_date, "metavar": "DATE"}),
    ("--by", {"dest": "grain", "choices": GRAINS, "default": "day"}),
    ("--format", {"dest": "format", "choices": ("table", "json", "csv"), "default": "table"}),
]


async def usage_report_command(args: argparse.Namespace, config: Config, store: Store) -> Output:
    data = await usage_report(store, customer_id=args.customer_id, key_id=args.key_id,
                              start=args.start, end=args.end, grain=args.grain)  # fmt: skip
    if args.format == "json":
        return Output(data, json.dumps(data, indent=2))
    if args.format == "csv":
        return Output(data, usage_csv(data).rstrip("\n"))
    columns, rows = usage_columns(data)
    return Output(data, table(rows, " ".join(columns)))
