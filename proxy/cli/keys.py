"""`keyfront keys ...`: mint, list, show, change, revoke and roll API keys (SPEC 2, 8).

A key's own settings may not exceed its customer's plan caps; a bad one is refused
naming the option (exit 2). A full key is printed once, by `create` or `roll`: it is
never stored, and no other command can show it.
"""

from __future__ import annotations

import argparse
import dataclasses
import secrets
import sys
import time
from collections.abc import Sequence
from typing import Any

from ..config import Config
from ..keys import KeySigner, new_key_id
from ..records import Customer, KeyRecord
from ..referrers import is_path_pattern
from ..store import Store
from ..units import Rate, parse_duration
from .customers import find_customer
from .output import (
    Failure,
    Output,
    bad_option,
    fields_text,
    record_json,
    record_output,
    table,
    value_text,
    warn,
)
from .values import (
    FLAG,
    QUOTA_OPTIONS,
    Option,
    bucket_options,
    given_settings,
    parse_cidr,
    parse_customer_id,
    parse_expiry,
    parse_key_id,
    parse_link_secret,
    parse_path_prefix,
    parse_referrer,
)

DEFAULT_GRACE = "24h"  # `keys roll`: how long the replaced key keeps working
KEY_ID: Option = ("key_id", {"type": parse_key_id, "metavar": "KEY_ID", "help": "a key id or key"})
GRACE_HELP = "how long the old key keeps working (default 24h; 0: not at all)"
GRACE: Option = ("--grace", {"default": DEFAULT_GRACE, "type": parse_duration, "help": GRACE_HELP})
KEY_SETTINGS: list[Option] = [  # dests are KeyRecord field names
    ("--name", {}),
    ("--referrer", {"dest": "referrers", "action": "append", "type": parse_referrer,
                    "metavar": "PATTERN", "help": "example.com, *.example.com, https://h/p/*"}),
    ("--allow-no-referrer", FLAG),
    ("--ip", {"dest": "ips", "action": "append", "type": parse_cidr, "metavar": "CIDR"}),
    ("--path", {"dest": "paths", "action": "append", "type": parse_path_prefix,
                "metavar": "PREFIX"}),
    *bucket_options(""),
    *bucket_options("ip-", "a bucket per client IP, "),
    *QUOTA_OPTIONS,
    ("--expires", {"dest": "expires_at", "type": parse_expiry, "metavar": "DATE",
                   "help": "ISO date or datetime (UTC unless given), or from now: 30d"}),
    ("--require-signed-links", FLAG),
    ("--link-secret", {"type": parse_link_secret, "metavar": "SECRET",
                       "help": "generated when signed links are required and none is set"}),
]  # fmt: skip
KEY_UPDATE_ONLY: list[Option] = [
    ("--status", {"choices": ("active", "disabled")}),
    *((flag, {"action": "store_true"}) for flag in
      ("--clear-referrers", "--clear-ips", "--clear-paths", "--no-expiry")),
    ("--clear-ip-rate", {"action": "store_true", "help": "no bucket per client IP"}),
]  # fmt: skip
KEY_CLEARS: dict[str, dict[str, Any]] = {  # flag dest -> the fields it clears
    "clear_referrers": {"referrers": ()},
    "clear_ips": {"ips": ()},
    "clear_paths": {"paths": ()},
    "no_expiry": {"expires_at": None},
    "clear_ip_rate": {"ip_rate": None, "ip_burst": None},
}
# (key field, its option, the customer's plan cap): a key's own setting may not exceed it.
PLAN_CAPS = (
    ("rate", "--rate", "max_rate"),
    ("burst", "--burst", "max_burst"),
    ("ip_rate", "--ip-rate", "max_rate"),
    ("ip_burst", "--ip-burst", "max_burst"),
    ("quota_requests", "--quota-requests", "quota_requests"),
    ("quota_bytes", "--quota-bytes", "quota_bytes"),
)
KEY_COLUMNS = "key_id customer_id name status rate burst expires_at created_at"


def customer_option(required: bool) -> Option:
    return ("--customer", {"dest": "customer_id", "type": parse_customer_id,
                           "required": required, "metavar": "ID"})  # fmt: skip


async def find_key(store: Store, key_id: str, to_change: bool = False) -> KeyRecord:
    """The key's record, or Failure; with `to_change`, only one not revoked."""
    record = await store.get_key(key_id)
    if record is None:
        raise Failure(f"no such key: {key_id}")
    if to_change and record.status == "revoked":
        raise Failure(f"key {key_id} is revoked, which is final")
    return record


def key_changes(args: argparse.Namespace, customer: Customer) -> dict[str, Any]:
    """The key settings given on the command line, checked against the plan caps.
    A --clear-* flag empties its fields; a list given replaces the old one."""
    changes: dict[str, Any] = {}
    for flag, cleared in KEY_CLEARS.items():
        if getattr(args, flag, False):
            changes.update(cleared)
    changes.update(given_settings(args, KeyRecord))
    for field, option, cap_name in PLAN_CAPS:
        value, cap = changes.get(field), getattr(customer, cap_name)
        if value is not None and cap is not None and _amount(value) > _amount(cap):
            problem = f"{value_text(field, value)} exceeds customer {customer.customer_id}'s"
            raise bad_option(option, f"{problem} plan cap {cap_name} {value_text(cap_name, cap)}")
    _warn_about_path_patterns(changes.get("referrers") or ())
    return changes


def _amount(value: Rate | int) -> float:
    return value.per_second if isinstance(value, Rate) else value


def _warn_about_path_patterns(patterns: Sequence[str]) -> None:
    for pattern in filter(is_path_pattern, patterns):
        warn(f"referrer pattern {pattern!r} names a path, but browsers send only the page's "
             "origin on cross-origin requests (referrer policy strict-origin-when-cross-origin), "
             "so it matches only pages that send a fuller referrer")  # fmt: skip


def _with_link_secret(record: KeyRecord) -> KeyRecord:
    if record.require_signed_links and not record.link_secret:
        return dataclasses.replace(record, link_secret=secrets.token_urlsafe(32))
    return record


def _minted(config: Config, record: KeyRecord, **extra: Any) -> Output:
    """The one time a full key is shown (create, roll)."""
    key = KeySigner(config.keys.prefix, config.keys.secrets).mint(record.key_id, record.version)
    data = {"key": key, **record_json(record, reveal_secret=True), **extra}
    shown = ("key", "key_id", "customer_id", "link_secret", *extra)
    print("The key is shown only this once: store it now.", file=sys.stderr)
    return Output(data, fields_text({k: data[k] for k in shown if data[k] is not None}))


async def keys_create(args: argparse.Namespace, config: Config, store: Store) -> Output:
    customer = await find_customer(store, args.customer_id, for_new_key=True)
    changes = key_changes(args, customer)
    record = KeyRecord(new_key_id(), customer.customer_id, created_at=int(time.time()),
                       version=config.keys.signing_version, **changes)  # fmt: skip
    record = _with_link_secret(record)
    await store.create_key(record)
    return _minted(config, record)


async def keys_list(args: argparse.Namespace, config: Config, store: Store) -> Output:
    if args.customer_id is not None:
        await find_customer(store, args.customer_id)
    rows = [record_json(r) for r in await store.list_keys(args.customer_id)]
    return Output(rows, table(rows, KEY_COLUMNS))


async def keys_show(args: argparse.Namespace, config: Config, store: Store) -> Output:
    return record_output(await find_key(store, args.key_id))


async def keys_update(args: argparse.Namespace, config: Config, store: Store) -> Output:
    record = await find_key(store, args.key_id, to_change=True)
    changes = key_changes(args, await find_customer(store, record.customer_id))
    changed = _with_link_secret(dataclasses.replace(record, **changes))
    await store.put_key(changed)
    return record_output(changed, reveal_secret=changed.link_secret != record.link_secret)


async def keys_revoke(args: argparse.Namespace, config: Config, store: Store) -> Output:
    record = await find_key(store, args.key_id)
    record = dataclasses.replace(record, status="revoked")
    await store.put_key(record)
    return Output(record_json(record), f"revoked {record.key_id}")


async def keys_roll(args: argparse.Namespace, config: Config, store: Store) -> Output:
    """A new key with the old one's settings (status and expiry included); the old one
    expires after the grace period, unless it already expires sooner."""
    old = await find_key(store, args.key_id, to_change=True)
    await find_customer(store, old.customer_id, for_new_key=True)
    now = int(time.time())
    new = dataclasses.replace(old, key_id=new_key_id(), created_at=now,
                              version=config.keys.signing_version)  # fmt: skip
    await store.create_key(new)
    retire_at = now + int(args.grace)
    if old.expires_at is None or old.expires_at > retire_at:
        old = dataclasses.replace(old, expires_at=retire_at)
        await store.put_key(old)
    return _minted(config, new, replaces=old.key_id, replaced_expires_at=old.expires_at)
