"""The command line (SPEC section 8): serve, config check, customers, keys, sign.

    keyfront [-c FILE] [--json] GROUP [COMMAND] [options]    (-c and --json anywhere)

The config file comes from `-c FILE`, else $KEYFRONT_CONFIG. Store commands open the
configured store, do one thing and close it. Output is text for people or, with
`--json`, one JSON document on stdout (timestamps as unix seconds, rates as "10/s");
warnings and errors go to stderr.

Exit status: 0 done; 1 the command could not be done (no such record, a duplicate id,
store error); 2 bad usage or a bad config, naming the option or the field path.

A full key is printed once, by `keys create` or `keys roll`: it is never stored, and no
other command can show it. A key's link secret is shown only when it is set.
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
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .config import Config, describe, load
from .errors import ConfigError, Conflict, Refusal, StoreError
from .keys import KeySigner, is_key_id, key_id_of, new_key_id
from .records import CUSTOMER_STATUSES, Customer, KeyRecord
from .store import Store, store_from_url
from .units import Rate, format_size, parse_duration, parse_rate, parse_size

T = TypeVar("T")
DEFAULT_GRACE = "24h"  # `keys roll`: how long the replaced key keeps working
MIN_LINK_SECRET = 16


class Failure(Exception):
    """The command cannot be done: the message goes to stderr, the process exits with
    `exit_code` (1, or 2 for bad usage)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def bad_option(option: str, problem: str) -> Failure:
    """A bad command-line value found after parsing (exit 2, worded like argparse)."""
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


# --- argument types: each raises ValueError, shown by argparse after the option ---


def _arg_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


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
    duration from now (`30d`). A bare number is refused: seconds or a year?"""
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


# --- parser ---


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keyfront", description="A keyed file proxy.")
    parser.add_argument("-c", "--config", metavar="FILE", help="config file ($KEYFRONT_CONFIG)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(command=None)
    # The same options on every subparser, defaulting to "absent" so that a value given
    # before the subcommand survives (argparse copies subparser defaults over it).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="FILE", default=argparse.SUPPRESS)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    serve = groups.add_parser("serve", parents=[common], help="run the proxy")
    serve.add_argument("--workers", type=_arg_type(_positive), metavar="N")
    checks = _command_group(groups, common, "config", "check the config file")
    checks.add_parser("check", parents=[common], help="validate the config without starting")
    _customer_commands(_command_group(groups, common, "customers", "manage customers"), common)
    _key_commands(_command_group(groups, common, "keys", "manage API keys"), common)
    sign = groups.add_parser("sign", parents=[common], help="sign a link for a key")
    sign.add_argument("url", metavar="URL", help="a full URL or a path with its query")
    sign.add_argument("--key", required=True, type=_arg_type(_key_id_shaped), metavar="KEY")
    sign.add_argument("--link-secret", required=True, type=_arg_type(_link_secret))
    sign.add_argument("--ttl", default=3600.0, type=_arg_type(parse_duration), help="default 1h")
    return parser


def _key_id_shaped(text: str) -> str:
    if key_id_of(text) is None:
        raise ValueError("not a keyfront key (prefix_version_keyid_mac)")
    return text


Subparsers = argparse._SubParsersAction  # type: ignore[type-arg]


def _command_group(
    groups: Subparsers, common: argparse.ArgumentParser, name: str, help: str
) -> Subparsers:
    group = groups.add_parser(name, parents=[common], help=help)
    return group.add_subparsers(dest="command", required=True, metavar="COMMAND")


def _with_id(parser: argparse.ArgumentParser, dest: str, parse: Callable[[str], str]) -> None:
    parser.add_argument(
        dest, type=_arg_type(parse), metavar="ID" if "customer" in dest else dest.upper()
    )


def _add_limits(parser: argparse.ArgumentParser, prefix: str) -> None:
    """Rate, burst and monthly quotas: a key's own (prefix "") or a plan's caps ("max-")."""
    dest = prefix.replace("-", "_")
    parser.add_argument(
        f"--{prefix}rate", dest=f"{dest}rate", type=_arg_type(parse_rate), metavar="RATE"
    )
    parser.add_argument(
        f"--{prefix}burst", dest=f"{dest}burst", type=_arg_type(_positive), metavar="N"
    )
    parser.add_argument(
        "--quota-requests", type=_arg_type(_positive), metavar="N", help="per month"
    )
    parser.add_argument(
        "--quota-bytes", type=_arg_type(parse_size), metavar="SIZE", help="per month"
    )


def _customer_commands(commands: Subparsers, common: argparse.ArgumentParser) -> None:
    create = commands.add_parser("create", parents=[common], help="add a customer")
    update = commands.add_parser("update", parents=[common], help="change a customer")
    for parser in (create, update):
        _with_id(parser, "customer_id", _customer_id)
        parser.add_argument("--name")
        _add_limits(parser, "max-")
    update.add_argument("--status", choices=CUSTOMER_STATUSES)
    commands.add_parser("list", parents=[common], help="list customers")
    for name, help in (("show", "show a customer"), ("disable", "disable a customer")):
        _with_id(
            commands.add_parser(name, parents=[common], help=help), "customer_id", _customer_id
        )


def _add_key_settings(parser: argparse.ArgumentParser) -> None:
    """The options `keys create` and `keys update` share. Lists given on update replace."""
    parser.add_argument("--name")
    parser.add_argument(
        "--referrer",
        dest="referrers",
        action="append",
        type=_arg_type(_referrer),
        metavar="PATTERN",
        help="example.com, *.example.com, https://host/path/*",
    )
    parser.add_argument("--allow-no-referrer", action=argparse.BooleanOptionalAction)
    parser.add_argument("--ip", dest="ips", action="append", type=_arg_type(_cidr), metavar="CIDR")
    parser.add_argument(
        "--path", dest="paths", action="append", type=_arg_type(_path_prefix), metavar="PREFIX"
    )
    _add_limits(parser, "")
    parser.add_argument(
        "--expires",
        dest="expires_at",
        type=_arg_type(_expiry),
        metavar="DATE",
        help="ISO date/datetime (UTC by default) or a duration from now (30d)",
    )
    parser.add_argument("--require-signed-links", action=argparse.BooleanOptionalAction)
    parser.add_argument(
        "--link-secret",
        type=_arg_type(_link_secret),
        metavar="SECRET",
        help="generated when signed links are required and none is given",
    )


def _key_commands(commands: Subparsers, common: argparse.ArgumentParser) -> None:
    create = commands.add_parser("create", parents=[common], help="mint a key (shown once)")
    create.add_argument(
        "--customer", dest="customer_id", required=True, type=_arg_type(_customer_id)
    )
    _add_key_settings(create)
    listing = commands.add_parser("list", parents=[common], help="list keys")
    listing.add_argument("--customer", dest="customer_id", type=_arg_type(_customer_id))
    update = commands.add_parser("update", parents=[common], help="change a key's settings")
    _with_id(update, "key_id", _key_id)
    _add_key_settings(update)
    update.add_argument("--status", choices=("active", "disabled"))
    for flag in ("--clear-referrers", "--clear-ips", "--clear-paths", "--no-expiry"):
        update.add_argument(flag, action="store_true")
    roll = commands.add_parser("roll", parents=[common], help="replace a key, keep its settings")
    _with_id(roll, "key_id", _key_id)
    roll.add_argument(
        "--grace",
        default=DEFAULT_GRACE,
        type=_arg_type(parse_duration),
        help="how long the old key keeps working (default 24h)",
    )
    for name, help in (("show", "show a key"), ("revoke", "revoke a key (final)")):
        _with_id(commands.add_parser(name, parents=[common], help=help), "key_id", _key_id)


# --- rendering: one representation per field (JSON: unix seconds; text: ISO-8601 UTC) ---


def record_json(record: Customer | KeyRecord, reveal_secret: bool = False) -> dict[str, Any]:
    """A record as JSON values: Rate as "10/s", lists, unix-second timestamps. A link
    secret only when `reveal_secret` (just set); otherwise `has_link_secret`."""
    data: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        data[f.name] = (
            str(value)
            if isinstance(value, Rate)
            else list(value)
            if isinstance(value, tuple)
            else value
        )
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


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    cells = [list(columns), *([_text(c, row[c]) for c in columns] for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells
    )


def _record_output(record: Customer | KeyRecord, reveal_secret: bool = False) -> Output:
    data = record_json(record, reveal_secret)
    return Output(data, fields_text(data))


def _minted(config: Config, record: KeyRecord, **extra: Any) -> Output:
    """The one time a full key is shown (create, roll)."""
    key = KeySigner(config.keys.prefix, config.keys.secrets).mint(record.key_id, record.version)
    data = {"key": key, **record_json(record, reveal_secret=True), **extra}
    shown = {name: data[name] for name in ("key", "key_id", "customer_id", "link_secret", *extra)}
    print("The key is shown only this once: store it now.", file=sys.stderr)
    return Output(data, fields_text({k: v for k, v in shown.items() if v is not None}))


# --- store commands ---

StoreCommand = Callable[[argparse.Namespace, Config, Store], Awaitable[Output]]
CUSTOMER_FIELDS = ("name", "max_rate", "max_burst", "quota_requests", "quota_bytes", "status")
KEY_FIELDS = (
    "name",
    "referrers",
    "allow_no_referrer",
    "ips",
    "paths",
    "rate",
    "burst",
    "quota_requests",
    "quota_bytes",
    "expires_at",
    "require_signed_links",
    "link_secret",
    "status",
)
KEY_CLEARS = {
    "clear_referrers": ("referrers", ()),
    "clear_ips": ("ips", ()),
    "clear_paths": ("paths", ()),
    "no_expiry": ("expires_at", None),
}
# (key field, its option, the customer's cap): a key's own setting may not exceed it.
PLAN_CAPS = (
    ("rate", "--rate", "max_rate"),
    ("burst", "--burst", "max_burst"),
    ("quota_requests", "--quota-requests", "quota_requests"),
    ("quota_bytes", "--quota-bytes", "quota_bytes"),
)


def _given(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The record fields set on the command line (lists become tuples)."""
    values = {name: getattr(args, name, None) for name in names}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if v is not None}


async def _customer(store: Store, customer_id: str) -> Customer:
    customer = await store.get_customer(customer_id)
    if customer is None:
        raise Failure(f"no such customer: {customer_id}")
    return customer


async def _active_customer(store: Store, customer_id: str) -> Customer:
    customer = await _customer(store, customer_id)
    if customer.status != "active":
        raise Failure(f"customer {customer_id} is {customer.status}: it cannot get new keys")
    return customer


async def _key(store: Store, key_id: str, changing: bool = True) -> KeyRecord:
    record = await store.get_key(key_id)
    if record is None:
        raise Failure(f"no such key: {key_id}")
    if changing and record.status == "revoked":
        raise Failure(f"key {key_id} is revoked, which is final")
    return record


async def customers_create(args: argparse.Namespace, config: Config, store: Store) -> Output:
    fields = _given(args, CUSTOMER_FIELDS)
    customer = Customer(args.customer_id, created_at=int(time.time()), **fields)
    try:
        await store.create_customer(customer)
    except Conflict:
        raise Failure(f"customer {args.customer_id} already exists") from None
    return _record_output(customer)


async def customers_list(args: argparse.Namespace, config: Config, store: Store) -> Output:
    rows = [record_json(c) for c in await store.list_customers()]
    columns = (
        "customer_id",
        "name",
        "status",
        "max_rate",
        "max_burst",
        "quota_requests",
        "quota_bytes",
        "created_at",
    )
    return Output(rows, table(rows, columns))


async def customers_show(args: argparse.Namespace, config: Config, store: Store) -> Output:
    return _record_output(await _customer(store, args.customer_id))


async def customers_update(args: argparse.Namespace, config: Config, store: Store) -> Output:
    customer = await _customer(store, args.customer_id)
    changed = dataclasses.replace(customer, **_given(args, CUSTOMER_FIELDS))
    await store.put_customer(changed)
    return _record_output(changed)


async def customers_disable(args: argparse.Namespace, config: Config, store: Store) -> Output:
    customer = await _customer(store, args.customer_id)
    changed = dataclasses.replace(customer, status="disabled")
    await store.put_customer(changed)
    return _record_output(changed)


def _key_changes(args: argparse.Namespace, customer: Customer) -> dict[str, Any]:
    """The key settings given on the command line, checked against the plan caps."""
    changes = {
        field: value for flag, (field, value) in KEY_CLEARS.items() if getattr(args, flag, False)
    }
    changes.update(_given(args, KEY_FIELDS))
    for field, option, cap_name in PLAN_CAPS:
        value, cap = changes.get(field), getattr(customer, cap_name)
        if value is not None and cap is not None and _amount(value) > _amount(cap):
            problem = f"{_text(field, value)} exceeds customer {customer.customer_id}'s plan cap"
            raise bad_option(option, f"{problem} {cap_name} {_text(cap_name, cap)}")
    from .policy import is_path_pattern

    for pattern in changes.get("referrers", ()):
        if is_path_pattern(pattern):
            warn(
                f"referrer pattern {pattern!r} names a path, but browsers send only the page's "
                "origin on cross-origin requests (referrer policy strict-origin-when-cross-origin), "
                "so it matches only pages that send a fuller referrer"
            )
    return changes


def _amount(value: Rate | int) -> float:
    return value.per_second if isinstance(value, Rate) else value


def _with_link_secret(record: KeyRecord) -> KeyRecord:
    if record.require_signed_links and not record.link_secret:
        return dataclasses.replace(record, link_secret=secrets.token_urlsafe(32))
    return record


async def keys_create(args: argparse.Namespace, config: Config, store: Store) -> Output:
    customer = await _active_customer(store, args.customer_id)
    changes = _key_changes(args, customer)
    record = KeyRecord(
        new_key_id(),
        customer.customer_id,
        created_at=int(time.time()),
        version=config.keys.signing_version,
        **changes,
    )
    record = _with_link_secret(record)
    await store.create_key(record)
    return _minted(config, record)


async def keys_list(args: argparse.Namespace, config: Config, store: Store) -> Output:
    if args.customer_id is not None:
        await _customer(store, args.customer_id)
    rows = [record_json(r) for r in await store.list_keys(args.customer_id)]
    columns = (
        "key_id",
        "customer_id",
        "name",
        "status",
        "rate",
        "burst",
        "expires_at",
        "created_at",
    )
    return Output(rows, table(rows, columns))


async def keys_show(args: argparse.Namespace, config: Config, store: Store) -> Output:
    return _record_output(await _key(store, args.key_id, changing=False))


async def keys_update(args: argparse.Namespace, config: Config, store: Store) -> Output:
    record = await _key(store, args.key_id)
    changes = _key_changes(args, await _customer(store, record.customer_id))
    changed = _with_link_secret(dataclasses.replace(record, **changes))
    await store.put_key(changed)
    return _record_output(changed, reveal_secret=changed.link_secret != record.link_secret)


async def keys_revoke(args: argparse.Namespace, config: Config, store: Store) -> Output:
    record = dataclasses.replace(await _key(store, args.key_id, changing=False), status="revoked")
    await store.put_key(record)
    return Output(record_json(record), f"revoked {record.key_id}")


async def keys_roll(args: argparse.Namespace, config: Config, store: Store) -> Output:
    """A new key with the old one's settings; the old one expires after the grace
    period (or keeps an earlier expiry it already had)."""
    old = await _key(store, args.key_id)
    await _active_customer(store, old.customer_id)
    now = int(time.time())
    new = dataclasses.replace(
        old, key_id=new_key_id(), created_at=now, version=config.keys.signing_version
    )
    await store.create_key(new)
    retire_at = now + int(args.grace)
    if old.expires_at is None or old.expires_at > retire_at:
        old = dataclasses.replace(old, expires_at=retire_at)
        await store.put_key(old)
    return _minted(config, new, replaces=old.key_id, replaced_expires_at=old.expires_at)


STORE_COMMANDS: dict[tuple[str, str], StoreCommand] = {
    ("customers", "create"): customers_create,
    ("customers", "list"): customers_list,
    ("customers", "show"): customers_show,
    ("customers", "update"): customers_update,
    ("customers", "disable"): customers_disable,
    ("keys", "create"): keys_create,
    ("keys", "list"): keys_list,
    ("keys", "show"): keys_show,
    ("keys", "update"): keys_update,
    ("keys", "revoke"): keys_revoke,
    ("keys", "roll"): keys_roll,
}


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


def _config_path(args: argparse.Namespace) -> str | None:
    return args.config or os.environ.get("KEYFRONT_CONFIG") or None


def load_config(args: argparse.Namespace) -> Config:
    path = _config_path(args)
    if path is None:
        raise Failure("keyfront: error: no config file: pass -c FILE or set KEYFRONT_CONFIG", 2)
    return load(path)


def serve(args: argparse.Namespace) -> int:
    config = load_config(args)
    from .app import serve_forever

    return serve_forever(config, args.workers)


def config_check(args: argparse.Namespace) -> int:
    config = load_config(args)
    summary = describe(config)
    emit(
        Output({"ok": True, "source": config.source, "summary": summary}, f"ok: {summary}"),
        args.json,
    )
    return 0


def sign(args: argparse.Namespace) -> int:
    """Add key, expires and sig to a URL (SPEC section 2, signed links); other query
    parameters are kept. The key's parameter name is the configured one, if any."""
    from .policy import normalise_path, sign_link

    param = load_config(args).keys.query_param if _config_path(args) else "key"
    parts = urlsplit(args.url)
    try:
        path = normalise_path(parts.path)
    except Refusal as exc:
        raise bad_option("URL", f"{parts.path!r}: {exc}") from None
    expires = int(time.time() + args.ttl)
    query = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if k not in (param, "expires", "sig")
    ]
    query += [
        (param, args.key),
        ("expires", str(expires)),
        ("sig", sign_link(path, expires, args.link_secret)),
    ]
    url = urlunsplit(parts._replace(query=urlencode(query)))
    emit(Output({"url": url, "expires": expires}, url), args.json)
    return 0


LOCAL_COMMANDS: dict[tuple[str, str | None], Callable[[argparse.Namespace], int]] = {
    ("serve", None): serve,
    ("config", "check"): config_check,
    ("sign", None): sign,
}


def main(argv: list[str] | None = None) -> int:
    """The `keyfront` console script. Returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except Failure as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"store error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    command = (args.group, args.command)
    if command in LOCAL_COMMANDS:
        return LOCAL_COMMANDS[command](args)
    config = load_config(args)
    emit(asyncio.run(_with_store(STORE_COMMANDS[command], args, config)), args.json)
    return 0
