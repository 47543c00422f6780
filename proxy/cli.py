"""The command line (SPEC section 8): serve, config check, customers, keys, sign.

    keyfront [-c FILE] [--json] GROUP [COMMAND] [options]    (-c and --json anywhere)

The config file comes from `-c FILE`, else $KEYFRONT_CONFIG. Store commands open the
configured store, do one thing and close it. Output is text for people or, with
`--json`, one JSON document on stdout (timestamps as unix seconds, rates as "10/s");
warnings and errors go to stderr.

Exit status: 0 done; 1 the command could not be done (no such record, a duplicate id,
store error); 2 bad usage or a bad config, naming the option or the field path.

A full key is printed once, by `keys create` or `keys roll`: it is never stored, and no
other command can show it. A link secret is printed only by the command that sets it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .config import Config, describe, load
from .errors import ConfigError, Conflict, Refusal, StoreError
from .keys import KeySigner, is_key_id, key_id_of, new_key_id
from .records import CUSTOMER_STATUSES, Customer, KeyRecord
from .store import Store, store_from_url
from .units import Rate, format_size, parse_duration, parse_rate, parse_size

DEFAULT_GRACE = "24h"  # `keys roll`: how long the replaced key keeps working
DEFAULT_TTL = "1h"  # `sign`: how long a signed link is valid
MIN_LINK_SECRET = 16


class Failure(Exception):
    """The command cannot be done: the message goes to stderr, the process exits with
    `exit_code` (1, or 2 for bad usage)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def bad_option(option: str, problem: str) -> Failure:
    """A bad command-line value found after parsing (exit 2, worded like argparse's)."""
    return Failure(f"keyfront: error: argument {option}: {problem}", 2)


@dataclass(frozen=True, slots=True)
class Output:
    """A command's result: `data` is what --json prints, `text` what people read."""

    data: Any
    text: str


def emit(output: Output, as_json: bool) -> None:
    print(json.dumps(output.data, indent=2) if as_json else output.text)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# --- values on the command line: each parser raises ValueError naming the problem ---


def _customer_id(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", text):
        raise ValueError(f"{text!r} is not a customer id (1-64 of A-Z a-z 0-9 _ . -)")
    return text


def _key_id(text: str) -> str:
    """A key id, or the id of a full key string (for convenience)."""
    key_id = key_id_of(text) or (text if is_key_id(text) else None)
    if key_id is None:
        raise ValueError(f"{text!r} is neither a key id nor a key")
    return key_id


def _key(text: str) -> str:
    if key_id_of(text) is None:
        raise ValueError("not a keyfront key (prefix_version_keyid_mac)")
    return text


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{text!r} is not a positive integer")
    return int(text)


def _cidr(text: str) -> str:
    return str(ipaddress.ip_network(text, strict=False))


def _path_prefix(text: str) -> str:
    if not text.startswith("/"):
        raise ValueError(f"{text!r}: a path prefix starts with '/', e.g. /files/icons/")
    return text


def _referrer(text: str) -> str:
    from .policy import validate_referrer_pattern

    problem = validate_referrer_pattern(text)
    if problem:
        raise ValueError(problem)
    return text


def _link_secret(text: str) -> str:
    if len(text) < MIN_LINK_SECRET:
        raise ValueError(f"a link secret has at least {MIN_LINK_SECRET} characters")
    return text


def _expiry(text: str) -> int:
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


# --- options, written once: (flag, add_argument keywords); `type` raises ValueError ---

Option = tuple[str, dict[str, Any]]
FLAG: dict[str, Any] = {"action": argparse.BooleanOptionalAction}  # --x / --no-x / absent
CUSTOMER_ID: Option = ("customer_id", {"type": _customer_id, "metavar": "ID"})
KEY_ID: Option = ("key_id", {"type": _key_id, "metavar": "KEY_ID", "help": "a key id or key"})
GRACE_HELP = "how long the old key keeps working (default 24h; 0: not at all)"
GRACE: Option = ("--grace", {"default": DEFAULT_GRACE, "type": parse_duration, "help": GRACE_HELP})


def _limits(prefix: str) -> list[Option]:
    """Rate, burst and monthly quotas: a key's own (prefix "") or a plan's caps ("max-")."""
    return [
        (f"--{prefix}rate", {"type": parse_rate, "metavar": "RATE", "help": "e.g. 10/s, 600/m"}),
        (f"--{prefix}burst", {"type": _positive, "metavar": "N"}),
        ("--quota-requests", {"type": _positive, "metavar": "N", "help": "per month (UTC)"}),
        ("--quota-bytes", {"type": parse_size, "metavar": "SIZE", "help": "per month, e.g. 10GiB"}),
    ]


CUSTOMER_SETTINGS: list[Option] = [("--name", {}), *_limits("max-")]
KEY_SETTINGS: list[Option] = [  # dests are KeyRecord field names
    ("--name", {}),
    ("--referrer", {"dest": "referrers", "action": "append", "type": _referrer,
                    "metavar": "PATTERN", "help": "example.com, *.example.com, https://h/p/*"}),
    ("--allow-no-referrer", FLAG),
    ("--ip", {"dest": "ips", "action": "append", "type": _cidr, "metavar": "CIDR"}),
    ("--path", {"dest": "paths", "action": "append", "type": _path_prefix, "metavar": "PREFIX"}),
    *_limits(""),
    ("--expires", {"dest": "expires_at", "type": _expiry, "metavar": "DATE",
                   "help": "ISO date or datetime (UTC unless given), or from now: 30d"}),
    ("--require-signed-links", FLAG),
    ("--link-secret", {"type": _link_secret, "metavar": "SECRET",
                       "help": "generated when signed links are required and none is set"}),
]  # fmt: skip
KEY_UPDATE_ONLY: list[Option] = [
    ("--status", {"choices": ("active", "disabled")}),
    *((flag, {"action": "store_true"}) for flag in
      ("--clear-referrers", "--clear-ips", "--clear-paths", "--no-expiry")),
]  # fmt: skip
KEY_CLEARS: dict[str, tuple[str, Any]] = {  # flag dest -> (field, cleared value)
    "clear_referrers": ("referrers", ()),
    "clear_ips": ("ips", ()),
    "clear_paths": ("paths", ()),
    "no_expiry": ("expires_at", None),
}


# --- rendering: one representation per field (JSON: unix seconds; text: ISO-8601 UTC) ---


def record_json(record: Customer | KeyRecord, reveal_secret: bool = False) -> dict[str, Any]:
    """A record as JSON values: Rate as "10/s", lists, unix-second timestamps. The link
    secret only when `reveal_secret` (the command set it); else `has_link_secret`."""
    data: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        data[f.name] = str(value) if isinstance(value, Rate) else value
        if isinstance(value, tuple):
            data[f.name] = list(value)
    if "link_secret" in data and not reveal_secret:
        data["has_link_secret"] = data.pop("link_secret") is not None
    return data


def _text(name: str, value: Any) -> str:
    if value is None or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if name.endswith("_at"):
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if name.endswith("quota_bytes"):
        return format_size(value)
    if isinstance(value, list):
        return ", ".join(value)
    return str(value)


def fields_text(data: Mapping[str, Any]) -> str:
    width = max(map(len, data)) + 1
    return "\n".join(f"{name + ':':<{width}} {_text(name, value)}" for name, value in data.items())


def table(rows: Sequence[Mapping[str, Any]], names: str) -> str:
    """Left-aligned columns (`names`, space-separated) under a header line."""
    columns = names.split()
    lines = [list(columns), *([_text(c, row[c]) for c in columns] for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    padded = (
        " ".join(cell.ljust(w + 1) for cell, w in zip(line, widths, strict=True)) for line in lines
    )
    return "\n".join(line.rstrip() for line in padded)


def _record_output(record: Customer | KeyRecord, reveal_secret: bool = False) -> Output:
    data = record_json(record, reveal_secret)
    return Output(data, fields_text(data))


def _minted(config: Config, record: KeyRecord, **extra: Any) -> Output:
    """The one time a full key is shown (create, roll)."""
    key = KeySigner(config.keys.prefix, config.keys.secrets).mint(record.key_id, record.version)
    data = {"key": key, **record_json(record, reveal_secret=True), **extra}
    shown = ("key", "key_id", "customer_id", "link_secret", *extra)
    print("The key is shown only this once: store it now.", file=sys.stderr)
    return Output(data, fields_text({k: data[k] for k in shown if data[k] is not None}))


# --- store commands ---

StoreCommand = Callable[[argparse.Namespace, Config, Store], Awaitable[Output]]
CUSTOMER_COLUMNS = (
    "customer_id name status max_rate max_burst quota_requests quota_bytes created_at"
)
KEY_COLUMNS = "key_id customer_id name status rate burst expires_at created_at"
_NOT_SETTINGS = frozenset({"key_id", "customer_id", "created_at", "version"})
# (key field, its option, the customer's plan cap): a key's own setting may not exceed it.
PLAN_CAPS = (
    ("rate", "--rate", "max_rate"),
    ("burst", "--burst", "max_burst"),
    ("quota_requests", "--quota-requests", "quota_requests"),
    ("quota_bytes", "--quota-bytes", "quota_bytes"),
)


def _settings(args: argparse.Namespace, record_type: type[Customer | KeyRecord]) -> dict[str, Any]:
    """The record's settings given on the command line (option dests are field names)."""
    names = {f.name for f in dataclasses.fields(record_type)} - _NOT_SETTINGS
    given = {name: getattr(args, name, None) for name in names}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in given.items() if v is not None}


async def _customer(store: Store, customer_id: str, for_new_key: bool = False) -> Customer:
    customer = await store.get_customer(customer_id)
    if customer is None:
        raise Failure(f"no such customer: {customer_id}")
    if for_new_key and customer.status != "active":
        raise Failure(f"customer {customer_id} is {customer.status}: it cannot get new keys")
    return customer


async def _key_record(store: Store, key_id: str, to_change: bool = False) -> KeyRecord:
    record = await store.get_key(key_id)
    if record is None:
        raise Failure(f"no such key: {key_id}")
    if to_change and record.status == "revoked":
        raise Failure(f"key {key_id} is revoked, which is final")
    return record


async def customers_create(args: argparse.Namespace, config: Config, store: Store) -> Output:
    customer = Customer(args.customer_id, created_at=int(time.time()), **_settings(args, Customer))
    try:
        await store.create_customer(customer)
    except Conflict:
        raise Failure(f"customer {args.customer_id} already exists") from None
    return _record_output(customer)


async def customers_list(args: argparse.Namespace, config: Config, store: Store) -> Output:
    rows = [record_json(c) for c in await store.list_customers()]
    return Output(rows, table(rows, CUSTOMER_COLUMNS))


async def customers_show(args: argparse.Namespace, config: Config, store: Store) -> Output:
    return _record_output(await _customer(store, args.customer_id))


async def customers_update(args: argparse.Namespace, config: Config, store: Store) -> Output:
    return await _change_customer(store, args.customer_id, _settings(args, Customer))


async def customers_disable(args: argparse.Namespace, config: Config, store: Store) -> Output:
    return await _change_customer(store, args.customer_id, {"status": "disabled"})


async def _change_customer(store: Store, customer_id: str, changes: dict[str, Any]) -> Output:
    changed = dataclasses.replace(await _customer(store, customer_id), **changes)
    await store.put_customer(changed)
    return _record_output(changed)


def _key_changes(args: argparse.Namespace, customer: Customer) -> dict[str, Any]:
    """The key settings given on the command line, checked against the plan caps.
    A --clear-* flag empties a list; a list given replaces the old one."""
    changes = {
        field: value for flag, (field, value) in KEY_CLEARS.items() if getattr(args, flag, False)
    }
    changes.update(_settings(args, KeyRecord))
    for field, option, cap_name in PLAN_CAPS:
        value, cap = changes.get(field), getattr(customer, cap_name)
        if value is not None and cap is not None and _amount(value) > _amount(cap):
            problem = f"{_text(field, value)} exceeds customer {customer.customer_id}'s plan cap"
            raise bad_option(option, f"{problem} {cap_name} {_text(cap_name, cap)}")
    _warn_about_path_patterns(changes.get("referrers") or ())
    return changes


def _amount(value: Rate | int) -> float:
    return value.per_second if isinstance(value, Rate) else value


def _warn_about_path_patterns(patterns: Sequence[str]) -> None:
    from .policy import is_path_pattern

    for pattern in filter(is_path_pattern, patterns):
        warn(f"referrer pattern {pattern!r} names a path, but browsers send only the page's "
             "origin on cross-origin requests (referrer policy strict-origin-when-cross-origin), "
             "so it matches only pages that send a fuller referrer")  # fmt: skip


def _with_link_secret(record: KeyRecord) -> KeyRecord:
    if record.require_signed_links and not record.link_secret:
        return dataclasses.replace(record, link_secret=secrets.token_urlsafe(32))
    return record


async def keys_create(args: argparse.Namespace, config: Config, store: Store) -> Output:
    customer = await _customer(store, args.customer_id, for_new_key=True)
    changes = _key_changes(args, customer)
    record = KeyRecord(new_key_id(), customer.customer_id, created_at=int(time.time()),
                       version=config.keys.signing_version, **changes)  # fmt: skip
    record = _with_link_secret(record)
    await store.create_key(record)
    return _minted(config, record)


async def keys_list(args: argparse.Namespace, config: Config, store: Store) -> Output:
    if args.customer_id is not None:
        await _customer(store, args.customer_id)
    rows = [record_json(r) for r in await store.list_keys(args.customer_id)]
    return Output(rows, table(rows, KEY_COLUMNS))


async def keys_show(args: argparse.Namespace, config: Config, store: Store) -> Output:
    return _record_output(await _key_record(store, args.key_id))


async def keys_update(args: argparse.Namespace, config: Config, store: Store) -> Output:
    record = await _key_record(store, args.key_id, to_change=True)
    changes = _key_changes(args, await _customer(store, record.customer_id))
    changed = _with_link_secret(dataclasses.replace(record, **changes))
    await store.put_key(changed)
    return _record_output(changed, reveal_secret=changed.link_secret != record.link_secret)


async def keys_revoke(args: argparse.Namespace, config: Config, store: Store) -> Output:
    record = await _key_record(store, args.key_id)
    record = dataclasses.replace(record, status="revoked")
    await store.put_key(record)
    return Output(record_json(record), f"revoked {record.key_id}")


async def keys_roll(args: argparse.Namespace, config: Config, store: Store) -> Output:
    """A new key with the old one's settings (status and expiry included); the old one
    expires after the grace period, unless it already expires sooner."""
    old = await _key_record(store, args.key_id, to_change=True)
    await _customer(store, old.customer_id, for_new_key=True)
    now = int(time.time())
    new = dataclasses.replace(old, key_id=new_key_id(), created_at=now,
                              version=config.keys.signing_version)  # fmt: skip
    await store.create_key(new)
    retire_at = now + int(args.grace)
    if old.expires_at is None or old.expires_at > retire_at:
        old = dataclasses.replace(old, expires_at=retire_at)
        await store.put_key(old)
    return _minted(config, new, replaces=old.key_id, replaced_expires_at=old.expires_at)


async def _with_store(command: StoreCommand, args: argparse.Namespace, config: Config) -> Output:
    try:
        store = store_from_url(config.store)
    except ValueError as exc:
        raise ConfigError("store", str(exc)) from exc
    await store.open()
    try:
        return await command(args, config, store)
    finally:
        await store.close()


# --- commands without a store ---

LocalCommand = Callable[[argparse.Namespace], int]


def load_config(args: argparse.Namespace) -> Config:
    """The config in -c FILE, else in $KEYFRONT_CONFIG; ConfigError names a bad field."""
    return load(args.config)


def serve(args: argparse.Namespace) -> int:
    config = load_config(args)
    from .app import serve_forever

    return serve_forever(config, args.workers)


def config_check(args: argparse.Namespace) -> int:
    config = load_config(args)
    summary = describe(config)
    data = {"ok": True, "file": config.source, "summary": summary}
    emit(Output(data, f"ok: {summary}"), args.json)
    return 0


def sign(args: argparse.Namespace) -> int:
    """Add key, expires and sig to a URL (SPEC section 2, signed links), keeping its
    other query parameters. The key's parameter is named as configured, if a config is
    given."""
    from .policy import normalise_path, sign_link

    has_config = args.config or os.environ.get("KEYFRONT_CONFIG")
    param = load_config(args).keys.query_param if has_config else "key"
    parts = urlsplit(args.url)
    try:
        path = normalise_path(parts.path)  # what the proxy will check the signature over
    except Refusal as exc:
        raise bad_option("URL", f"{parts.path!r}: {exc}") from None
    expires = int(time.time() + args.ttl)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if k not in (param, "expires", "sig")]  # fmt: skip
    sig = sign_link(path, expires, args.link_secret)
    query += [(param, args.key), ("expires", str(expires)), ("sig", sig)]
    url = urlunsplit(parts._replace(query=urlencode(query)))
    emit(Output({"url": url, "expires": expires}, url), args.json)
    return 0


def stored(command: StoreCommand) -> LocalCommand:
    """Run a store command: load the config, open the store, print the output."""

    def run(args: argparse.Namespace) -> int:
        config = load_config(args)
        emit(asyncio.run(_with_store(command, args, config)), args.json)
        return 0

    return run


# --- the command table: (group, command) -> what it does and the options it takes ---


@dataclass(frozen=True, slots=True)
class Command:
    help: str
    run: LocalCommand
    options: Sequence[Option] = ()


def _customer_option(required: bool) -> Option:
    return ("--customer", {"dest": "customer_id", "type": _customer_id, "required": required,
                           "metavar": "ID"})  # fmt: skip


GROUPS = {"config": "the config file", "customers": "customers and plan caps", "keys": "API keys"}
COMMANDS: dict[tuple[str, str | None], Command] = {
    ("serve", None): Command("run the proxy", serve, [("--workers", {"type": _positive})]),
    ("config", "check"): Command("validate the config file without starting", config_check),
    ("customers", "create"): Command(
        "add a customer", stored(customers_create), [CUSTOMER_ID, *CUSTOMER_SETTINGS]
    ),
    ("customers", "list"): Command("list customers", stored(customers_list)),
    ("customers", "show"): Command("show a customer", stored(customers_show), [CUSTOMER_ID]),
    ("customers", "update"): Command(
        "change a customer",
        stored(customers_update),
        [CUSTOMER_ID, *CUSTOMER_SETTINGS, ("--status", {"choices": CUSTOMER_STATUSES})],
    ),
    ("customers", "disable"): Command(
        "disable a customer (its keys stop working)", stored(customers_disable), [CUSTOMER_ID]
    ),
    ("keys", "create"): Command(
        "mint a key (printed once)", stored(keys_create), [_customer_option(True), *KEY_SETTINGS]
    ),
    ("keys", "list"): Command("list keys", stored(keys_list), [_customer_option(False)]),
    ("keys", "show"): Command("show a key's record", stored(keys_show), [KEY_ID]),
    ("keys", "update"): Command(
        "change a key (lists given replace the old ones)",
        stored(keys_update),
        [KEY_ID, *KEY_SETTINGS, *KEY_UPDATE_ONLY],
    ),
    ("keys", "revoke"): Command("revoke a key (final)", stored(keys_revoke), [KEY_ID]),
    ("keys", "roll"): Command(
        "replace a key by a new one with the same settings",
        stored(keys_roll),
        [KEY_ID, GRACE],
    ),
    ("sign", None): Command(
        "add expires and sig to a URL for a key that uses signed links",
        sign,
        [
            ("url", {"metavar": "URL", "help": "a full URL, or a path with its query"}),
            ("--key", {"required": True, "type": _key}),
            ("--link-secret", {"required": True, "type": _link_secret, "metavar": "SECRET"}),
            ("--ttl", {"default": DEFAULT_TTL, "type": parse_duration, "help": "default 1h"}),
        ],
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keyfront", description="A keyed file proxy.")
    # -c and --json are accepted on every (sub)parser. Below the top they default to
    # "absent", so that a value given before the subcommand is not overwritten.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    for options in (parser, common):
        options.add_argument("-c", "--config", metavar="FILE", help="else $KEYFRONT_CONFIG")
        options.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(config=None, json=False, command=None)
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    nested: dict[str, Any] = {}
    for (group, name), command in COMMANDS.items():
        if name is None:
            sub = groups.add_parser(group, parents=[common], help=command.help)
        else:
            if group not in nested:
                parent = groups.add_parser(group, parents=[common], help=GROUPS[group])
                nested[group] = parent.add_subparsers(
                    dest="command", required=True, metavar="COMMAND"
                )
            sub = nested[group].add_parser(name, parents=[common], help=command.help)
        _add_options(sub, command.options)
    return parser


def _add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    for flag, spec in options:
        kwargs = dict(spec)
        if "type" in kwargs:
            kwargs["type"] = _arg_type(kwargs["type"])
        parser.add_argument(flag, **kwargs)


def _arg_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """argparse shows an ArgumentTypeError's message after the option's name."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def main(argv: list[str] | None = None) -> int:
    """The `keyfront` console script. Returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage errors and --help: return, don't raise
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return COMMANDS[(args.group, args.command)].run(args)
    except Failure as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"store error: {exc}", file=sys.stderr)
        return 1
