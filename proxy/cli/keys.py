"""`keyfront keys ...`: mint, list, show, change, revoke and roll API keys (SPEC 2, 8).

A key's own settings may not exceed its customer's plan caps; a bad one is refused
naming the option (exit 2). A full key is printed once, by `create` or `roll`: it is
never stored, and no other command can show it.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import time
from collections.abc import Sequence
from typing import Any

from ..config import MAX_EXTERNAL_KEY, Config, Route
from ..errors import CommandFailed, Invalid, KeyInvalid, Missing
from ..imported import hash_secret, imported_key_id
from ..keys import KeySigner
from ..manage.actions import (
    change_key,
    check_plan_caps,
    create_key,
    find_customer,
    find_key,
    key_state,
    live_successors,
    minted_json,
    record_json,
    revoke_key,
    roll_key,
)
from ..manage.imports import FORMATS, Importer, ImportReport, rows_of
from ..manage.invalidate import (
    invalidate,
    invalidation_changes,
    parse_external_key,
)
from ..manage.settings import (
    DEFAULT_GRACE,
    parse_cidr,
    parse_customer_id,
    parse_expiry,
    parse_external_id,
    parse_key_id,
    parse_link_secret,
    parse_path_prefix,
    parse_referrer,
    within_routes,
)
from ..records import Customer, KeyRecord
from ..store import Store
from ..units import parse_duration
from .options import FLAG, QUOTA_OPTIONS, Option, bucket_options, given_settings
from .output import Output, fields_text, record_output, table, value_text, warn


def parse_cidr_noted(text: str) -> str:
    """parse_cidr, with a warning when the address has host bits set (issue 15): the
    key gets the whole network, which is rarely what 10.0.0.5/8 meant."""
    network = parse_cidr(text)
    if "/" in text and ipaddress.ip_interface(text).ip != ipaddress.ip_network(network)[0]:
        warn(f"--ip {text} has host bits set: it became {network}")
    return network


KEY_ID: Option = ("key_id", {"type": parse_key_id, "metavar": "KEY_ID", "help": "a key id or key"})
GRACE_HELP = "how long the old key keeps working (default 24h; 0: not at all)"
GRACE: Option = ("--grace", {"default": DEFAULT_GRACE, "type": parse_duration, "help": GRACE_HELP})
KEY_SETTINGS: list[Option] = [  # dests are KeyRecord field names
    ("--name", {"help": "what the key is for, for people"}),
    ("--referrer", {"dest": "referrers", "action": "append", "type": parse_referrer,
                    "metavar": "PATTERN", "help": "allowed referrer, repeatable: example.com, "
                                                  "*.example.com, https://h/p/*"}),
    ("--allow-no-referrer", FLAG | {"help": "serve requests with neither Referer nor Origin "
                                            "(default: only when no --referrer is set)"}),
    ("--ip", {"dest": "ips", "action": "append", "type": parse_cidr_noted, "metavar": "CIDR",
              "help": "allowed client network, repeatable: 192.0.2.0/24, 2001:db8::/32"}),
    ("--path", {"dest": "paths", "action": "append", "type": parse_path_prefix,
                "metavar": "PREFIX", "help": "allowed public path prefix, repeatable: /files/"}),
    *bucket_options(""),
    *bucket_options("ip-", "a bucket per client IP, "),
    *QUOTA_OPTIONS,
    ("--expires", {"dest": "expires_at", "type": parse_expiry, "metavar": "DATE",
                   "help": "ISO date or datetime (UTC unless given), or from now: 30d"}),
    ("--require-signed-links", FLAG | {"help": "serve only signed links (keyfront sign)"}),
    ("--link-secret", {"type": parse_link_secret, "metavar": "SECRET",
                       "help": "generated when signed links are required and none is set"}),
]  # fmt: skip
KEY_UPDATE_ONLY: list[Option] = [
    ("--status", {"choices": ("active", "disabled"), "help": "disable a key, or enable it"}),
    ("--clear-referrers", {"action": "store_true", "help": "no referrer patterns"}),
    ("--clear-ips", {"action": "store_true", "help": "no client network restriction"}),
    ("--clear-paths", {"action": "store_true", "help": "no path restriction"}),
    ("--no-expiry", {"action": "store_true", "help": "the key never expires"}),
    ("--clear-ip-rate", {"action": "store_true", "help": "no bucket per client IP"}),
]
KEY_STATES = ("active", "disabled", "expired", "revoked")  # manage.actions.key_state
KEY_CLEARS: dict[str, dict[str, Any]] = {  # flag dest -> the fields it clears
    "clear_referrers": {"referrers": ()},
    "clear_ips": {"ips": ()},
    "clear_paths": {"paths": ()},
    "no_expiry": {"expires_at": None},
    "clear_ip_rate": {"ip_rate": None, "ip_burst": None},
}
INVALIDATE_OPTIONS: list[Option] = [  # SPEC section 13
    ("--key", {"dest": "keys", "action": "append", "type": parse_external_key,
               "metavar": "KEY", "help": "an external key as its clients present it"}),
    ("--key-id", {"dest": "key_ids", "action": "append", "type": parse_external_id,
                  "metavar": "ID", "help": "a key id (the key API's, or keyfront's)"}),
    ("--customer", {"dest": "customer_ids", "action": "append", "type": parse_customer_id,
                    "metavar": "ID", "help": "every key of this customer"}),
]  # fmt: skip
KEY_COLUMNS = "key_id customer_id name status disabled_by rate burst expires_at created_at"


def customer_option(required: bool, help: str = "the customer the key belongs to") -> Option:
    return ("--customer", {"dest": "customer_id", "type": parse_customer_id,
                           "required": required, "metavar": "ID", "help": help})  # fmt: skip


LIST_OPTIONS: list[Option] = [
    customer_option(False, "only this customer's keys"),
    ("--status", {"choices": KEY_STATES, "help": "only keys in this state: expired is an "
                                                 "active key past its expiry"}),
]  # fmt: skip


def key_changes(
    args: argparse.Namespace, customer: Customer, routes: Sequence[Route]
) -> dict[str, Any]:
    """The key settings given on the command line, checked against the plan caps.
    A --clear-* flag empties its fields; a list given replaces the old one."""
    changes: dict[str, Any] = {}
    for flag, cleared in KEY_CLEARS.items():
        if getattr(args, flag, False):
            changes.update(cleared)
    changes.update(given_settings(args, KeyRecord))
    for warning in check_plan_caps(changes, customer):
        warn(warning)
    for path in changes.get("paths") or ():
        if not within_routes(path, routes):  # issue 15: it would let the key read nothing
            prefixes = ", ".join(route.prefix for route in routes)
            warn(f"--path {path} is outside every route ({prefixes}): the key can read "
                 "nothing under it")  # fmt: skip
    return changes


def _minted(config: Config, record: KeyRecord, **extra: Any) -> Output:
    """The one time a full key is shown (create, roll)."""
    data = minted_json(KeySigner(config.keys.prefix, config.keys.secrets), record, **extra)
    shown = ("key", "key_id", "customer_id", "link_secret", *extra)
    print("The key is shown only this once: store it now.", file=sys.stderr)
    return Output(data, fields_text({k: data[k] for k in shown if data[k] is not None}))


async def keys_create(args: argparse.Namespace, config: Config, store: Store) -> Output:
    customer = await find_customer(store, args.customer_id, for_new_key=True)
    changes = key_changes(args, customer, config.routes)
    return _minted(config, await create_key(store, customer, changes, config.keys.signing_version))


async def keys_list(args: argparse.Namespace, config: Config, store: Store) -> Output:
    if args.customer_id is not None:
        await find_customer(store, args.customer_id)
    now = time.time()
    records = await store.list_keys(args.customer_id)
    if args.status is not None:
        records = [r for r in records if key_state(r, now) == args.status]
    rows = [record_json(r) for r in records]
    return Output(rows, table(rows, KEY_COLUMNS))


async def keys_show(args: argparse.Namespace, config: Config, store: Store) -> Output:
    return record_output(await find_key(store, args.key_id))


async def keys_update(args: argparse.Namespace, config: Config, store: Store) -> Output:
    record = await find_key(store, args.key_id, to_change=True)
    customer = await find_customer(store, record.customer_id)
    changed = await change_key(store, record, key_changes(args, customer, config.routes), customer)
    return record_output(changed, reveal_secret=changed.link_secret != record.link_secret)


async def keys_revoke(args: argparse.Namespace, config: Config, store: Store) -> Output:
    record = await revoke_key(store, await find_key(store, args.key_id))
    return Output(record_json(record), f"revoked {record.key_id}")


async def keys_roll(args: argparse.Namespace, config: Config, store: Store) -> Output:
    """A new key with the old one's settings; the old one expires after --grace."""
    old = await find_key(store, args.key_id, to_change=True)
    successors = await live_successors(store, old)  # issue 15: a roll retried by a script
    if successors:
        ids = ", ".join(key.key_id for key in successors)
        retires = value_text("expires_at", old.expires_at)
        warn(
            f"key {old.key_id} was rolled before (it expires at {retires}); its live "
            f"successor: {ids}. This roll makes another key: revoke the one you do not use"
        )
    new, old = await roll_key(store, old, args.grace, config.keys.signing_version)
    return _minted(config, new, replaces=old.key_id, replaced_expires_at=old.expires_at)


# --- imported keys (SPEC section 13) ---------------------------------------------------

IMPORT_OPTIONS: list[Option] = [
    ("file", {"metavar": "FILE", "help": "CSV with a header row, or JSON lines; - for stdin"}),
    ("--format", {"choices": FORMATS, "help": "default: jsonl for .jsonl/.ndjson, else csv"}),
    ("--dry-run", {"action": "store_true", "help": "check every row, write nothing"}),
]
FIND_OPTIONS: list[Option] = [
    ("key", {"metavar": "KEY", "help": "the full key; - reads it from stdin (keeps it out "
                                       "of the process list and shell history)"}),
]  # fmt: skip


async def keys_import(args: argparse.Namespace, config: Config, store: Store) -> Output:
    """Each good line's key id on stdout, each bad line on stderr; exit 1 if any."""
    form = args.format or ("jsonl" if args.file.endswith((".jsonl", ".ndjson")) else "csv")
    signer = KeySigner(config.keys.prefix, config.keys.secrets)
    importer = Importer(store, signer, config.keys.external, args.dry_run)
    try:
        if args.file == "-":
            report = await importer.run(rows_of(sys.stdin, form))
        else:
            with open(args.file, encoding="utf-8", newline="") as lines:
                report = await importer.run(rows_of(lines, form))
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandFailed(f"cannot read {args.file}: {exc}") from None
    for line, field, problem in report.errors:
        print(f"line {line}: {field}: {problem}", file=sys.stderr)
    return Output(report.to_json(), _import_text(report), 1 if report.errors else 0)


def _import_text(report: ImportReport) -> str:
    lines = [f"line {line}: {key_id or '(no hash secret yet)'}" for line, key_id in report.keys]
    what = "would import" if report.dry_run else "imported"
    lines.append(f"{what} {len(report.keys)} rows ({report.created} new keys, "
                 f"{report.updated} updated); {len(report.errors)} bad rows")  # fmt: skip
    return "\n".join(lines)


async def keys_find(args: argparse.Namespace, config: Config, store: Store) -> Output:
    """The record of a full key, found by its hash; the key is never printed back."""
    key = sys.stdin.readline().strip() if args.key == "-" else args.key
    signer = KeySigner(config.keys.prefix, config.keys.secrets)
    if signer.owns(key):
        try:
            key_id = signer.verify(key).key_id
        except KeyInvalid:
            raise Invalid("key", "has keyfront's format but its signature is wrong") from None
        return record_output(await find_key(store, key_id))
    external = config.keys.external
    if len(key) > MAX_EXTERNAL_KEY or external.pattern.fullmatch(key) is None:
        raise Invalid("key", "neither a keyfront key nor a match of keys.external.pattern")
    secret = await hash_secret(store, external.hash_secret, create=False)
    record = await store.get_key(imported_key_id(secret, key)) if secret else None
    if record is None:
        raise Missing("no such key: it was never imported")
    return record_output(record)


async def keys_invalidate(args: argparse.Namespace, config: Config, store: Store) -> Output:
    """Drop cached key answers on every instance (SPEC section 13): announced through
    the store's change feed, so only instances sharing this store see it."""
    changes = invalidation_changes(
        config.keys.secrets, args.keys or [], args.key_ids or [], args.customer_ids or []
    )
    announced = await invalidate(store, changes)
    return Output({"announced": announced}, f"{announced} invalidation(s) announced")
