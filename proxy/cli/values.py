"""Values on the command line, and the options that take them.

Each parser raises ValueError naming the problem; argparse shows it after the
option's name. An option is written once, as (flag, add_argument keywords), and
shared by every command that takes it. Option dests are record field names, so
`given_settings` can read a record's settings straight off the parsed arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import re
import time
from datetime import UTC, datetime
from typing import Any

from ..keys import is_key_id, key_id_of
from ..records import Customer, KeyRecord
from ..referrers import validate_referrer_pattern
from ..units import parse_duration, parse_rate, parse_size

MIN_LINK_SECRET = 16


def parse_customer_id(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", text):
        raise ValueError(f"{text!r} is not a customer id (1-64 of A-Z a-z 0-9 _ . -)")
    return text


def parse_key_id(text: str) -> str:
    """A key id, or the id of a full key string (for convenience)."""
    key_id = key_id_of(text) or (text if is_key_id(text) else None)
    if key_id is None:
        raise ValueError(f"{text!r} is neither a key id nor a key")
    return key_id


def parse_key(text: str) -> str:
    if key_id_of(text) is None:
        raise ValueError("not a keyfront key (prefix_version_keyid_mac)")
    return text


def parse_positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{text!r} is not a positive integer")
    return int(text)


def parse_cidr(text: str) -> str:
    return str(ipaddress.ip_network(text, strict=False))


def parse_path_prefix(text: str) -> str:
    if not text.startswith("/"):
        raise ValueError(f"{text!r}: a path prefix starts with '/', e.g. /files/icons/")
    return text


def parse_referrer(text: str) -> str:
    problem = validate_referrer_pattern(text)
    if problem:
        raise ValueError(problem)
    return text


def parse_link_secret(text: str) -> str:
    if len(text) < MIN_LINK_SECRET:
        raise ValueError(f"a link secret has at least {MIN_LINK_SECRET} characters")
    return text


def parse_expiry(text: str) -> int:
    """Unix seconds from an ISO date or datetime (UTC unless it names a zone) or from a
    duration from now (`30d`). A bare number is refused: seconds, or a timestamp?"""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        if text.strip().isdigit():
            raise ValueError(f"{text!r}: write a duration with its unit (30d) or a date") from None
        try:
            return int(time.time() + parse_duration(text))
        except ValueError:
            raise ValueError(f"{text!r} is neither an ISO date nor a duration (30d)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment.timestamp() <= time.time():
        raise ValueError(f"{text!r} is in the past")
    return int(moment.timestamp())


# --- options: (flag, add_argument keywords); `type` raises ValueError ---

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
        (f"--{prefix}burst", {"type": parse_positive, "metavar": "N"}),
    ]  # fmt: skip


_NOT_SETTINGS = frozenset({"key_id", "customer_id", "created_at", "version"})


def given_settings(
    args: argparse.Namespace, record_type: type[Customer | KeyRecord]
) -> dict[str, Any]:
    """The record's settings given on the command line (option dests are field names)."""
    names = {f.name for f in dataclasses.fields(record_type)} - _NOT_SETTINGS
    given = {name: getattr(args, name, None) for name in names}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in given.items() if v is not None}
