"""Options on the command line, and the values only the command line takes.

An option is written once, as (flag, add_argument keywords), and shared by every
command that takes it. Its `type` raises ValueError naming the problem, and argparse
shows it after the option's name; the record settings' parsers are shared with the
admin API (`proxy.manage.settings`). Option dests are record field names, so
`given_settings` can read a record's settings straight off the parsed arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ..keys import key_id_of
from ..manage.settings import parse_positive
from ..records import Customer, KeyRecord
from ..units import parse_rate, parse_size


def parse_key(text: str) -> str:
    if key_id_of(text) is None:
        raise ValueError("not a keyfront key (prefix_version_keyid_mac)")
    return text


Option = tuple[str, dict[str, Any]]
FLAG: dict[str, Any] = {"action": argparse.BooleanOptionalAction}  # --x / --no-x / absent
QUOTA_OPTIONS: list[Option] = [
    ("--quota-requests", {"type": parse_positive, "metavar": "N", "help": "per month (UTC)"}),
    ("--quota-bytes", {"type": parse_size, "metavar": "SIZE", "help": "per month, e.g. 10GiB"}),
]


def bucket_options(prefix: str, scope: str = "") -> list[Option]:
    """A token bucket's refill rate and capacity: a key's own (prefix ""), its bucket per
    client IP ("ip-"), or a plan's caps ("max-")."""
    return [
        (f"--{prefix}rate", {"type": parse_rate, "metavar": "RATE",
                             "help": f"{scope}e.g. 10/s, 600/m"}),
        (f"--{prefix}burst", {"type": parse_positive, "metavar": "N",
                              "help": f"{scope}requests at once above the rate"}),
    ]  # fmt: skip


_NOT_SETTINGS = frozenset({"key_id", "customer_id", "created_at", "version"})


def given_settings(
    args: argparse.Namespace, record_type: type[Customer | KeyRecord]
) -> dict[str, Any]:
    """The record's settings given on the command line (option dests are field names)."""
    names = {f.name for f in dataclasses.fields(record_type)} - _NOT_SETTINGS
    given = {name: getattr(args, name, None) for name in names}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in given.items() if v is not None}
