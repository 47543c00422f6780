"""The command line (SPEC section 8): serve, config check, customers, keys, usage, sign,
cache purge.

    keyfront [-c FILE] [--json] GROUP [COMMAND] [options]    (-c and --json anywhere)

The config file comes from `-c FILE`, else $KEYFRONT_CONFIG. Store commands open the
configured store, do one thing and close it. Output is text for people or, with
`--json`, one JSON document on stdout (timestamps as unix seconds, rates as "10/s");
warnings and errors go to stderr.

Exit status (EXIT_CODES, printed by `keyfront --help`): each comes with the error's
class (`exit_code`, the table in proxy/errors.py), and `main` is the one place an error
becomes a message on stderr and an exit status. With `--json` the message is JSON too,
`{"error": {"code": ..., "message": ...}}`, on stderr, and stdout stays empty, as `gh`
and `kubectl` do: a script reads stdout only when the exit status is 0.
The customer and key commands share their logic with the admin API (`proxy.manage`).

The signing secrets are needed only by the commands that mint or verify a key (and by
`serve` and `config check`); the others load the config with `need_secrets=False`, so
a second terminal with only KEYFRONT_CONFIG set can list keys (issue 15).

A full key is printed once, by `keys create` or `keys roll`: it is never stored, and no
other command can show it. A link secret is printed only by the command that sets it.
An admin API token is printed once, by `customers token`: only its hash is stored.

It owns the command line: this module holds the command table, the parser built from
it and `main()`; the commands live in `customers`, `keys`, `usage`, `cache` and
`local`, their options and the values only the command line takes in `options`, what
they print in `output`, and the parser class, exit status table and version in
`parser`.

What it must not import (directly; tests/test_layers.py checks): proxy.admin, its
sibling front end (both call proxy.manage); the request path (proxy.pipeline,
proxy.listener, proxy.delivery); aiohttp, which no command needs. `serve` starts the
whole process through proxy.app, imported when it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..errors import ConfigError, KeyfrontError, UsageError
from ..store import Store, store_from_url
from . import cache, customers, export, keys, local, usage
from .customers import CUSTOMER_ID, CUSTOMER_SETTINGS, CUSTOMER_UPDATE_ONLY
from .keys import GRACE, KEY_ID, KEY_SETTINGS, KEY_UPDATE_ONLY, customer_option
from .local import SERVE_OPTIONS, SIGN_OPTIONS, load_config
from .options import Option
from .output import BAD_USAGE, Output, emit, error_json, failure_json, failure_text
from .parser import EXIT_CODES, BadUsage, Parser, version
from .usage import USAGE_OPTIONS

PRIVATE_UMASK = 0o077  # files 0600, folders 0700: see main()

StoreCommand = Callable[[argparse.Namespace, Config, Store], Awaitable[Output]]
LocalCommand = Callable[[argparse.Namespace], int]


def stored(command: StoreCommand, *, signs: bool = False) -> LocalCommand:
    """Run a store command: load the config, open the store, print the output. Only a
    command that `signs` (mints or verifies a key) needs the signing secrets."""

    def run(args: argparse.Namespace) -> int:
        config = load_config(args, need_secrets=signs)
        output = asyncio.run(_with_store(command, args, config))
        emit(output, args.json)
        return output.exit_code

    return run


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


# --- the command table: (group, command) -> what it does and the options it takes ---


@dataclass(frozen=True, slots=True)
class Command:
    help: str
    run: LocalCommand
    options: Sequence[Option] = ()
    # checks across options, before any config or store is read (UsageError)
    check: Callable[[argparse.Namespace], None] | None = None


GROUPS = {
    "config": "the config file",
    "customers": "customers, plan caps and admin API tokens",
    "keys": "API keys",
    "cache": "the disk cache",
    "export": "the usage export to billing systems (SPEC section 16)",
}
COMMANDS: dict[tuple[str, str | None], Command] = {
    ("serve", None): Command("run the proxy", local.serve, SERVE_OPTIONS),
    ("config", "check"): Command("validate the config file without starting", local.config_check),
    ("customers", "create"): Command(
        "add a customer", stored(customers.customers_create), [CUSTOMER_ID, *CUSTOMER_SETTINGS]
    ),
    ("customers", "list"): Command("list customers", stored(customers.customers_list)),
    ("customers", "show"): Command(
        "show a customer", stored(customers.customers_show), [CUSTOMER_ID]
    ),
    ("customers", "update"): Command(
        "change a customer",
        stored(customers.customers_update),
        [CUSTOMER_ID, *CUSTOMER_SETTINGS, *CUSTOMER_UPDATE_ONLY],
    ),
    ("customers", "disable"): Command(
        "disable a customer (its keys stop working)",
        stored(customers.customers_disable),
        [CUSTOMER_ID],
    ),
    ("customers", "token"): Command(
        "mint an admin API token for the customer (printed once)",
        stored(customers.customers_token),
        customers.TOKEN_OPTIONS,
    ),
    ("customers", "tokens"): Command(
        "list the customer's admin API tokens", stored(customers.customers_tokens), [CUSTOMER_ID]
    ),
    ("customers", "revoke-token"): Command(
        "revoke an admin API token", stored(customers.customers_revoke_token), customers.TOKEN_ID
    ),
    ("keys", "create"): Command(
        "mint a key (printed once)",
        stored(keys.keys_create, signs=True),
        [customer_option(True), *KEY_SETTINGS],
    ),
    ("keys", "list"): Command("list keys", stored(keys.keys_list), keys.LIST_OPTIONS),
    ("keys", "show"): Command("show a key's record", stored(keys.keys_show), [KEY_ID]),
    ("keys", "update"): Command(
        "change a key (lists given replace the old ones)",
        stored(keys.keys_update),
        [KEY_ID, *KEY_SETTINGS, *KEY_UPDATE_ONLY],
    ),
    ("keys", "revoke"): Command("revoke a key (final)", stored(keys.keys_revoke), [KEY_ID]),
    ("keys", "roll"): Command(
        "replace a key by a new one with the same settings",
        stored(keys.keys_roll, signs=True),
        [KEY_ID, GRACE],
    ),
    ("keys", "import"): Command(
        "import keys from an existing key system (CSV or JSON lines)",
        stored(keys.keys_import, signs=True),
        keys.IMPORT_OPTIONS,
    ),
    ("keys", "find"): Command(
        "show the record of a full key (imported or keyfront's)",
        stored(keys.keys_find, signs=True),
        keys.FIND_OPTIONS,
    ),
    ("keys", "invalidate"): Command(
        "drop cached key API answers on every instance (by key, key id or customer)",
        stored(keys.keys_invalidate, signs=True),
        keys.INVALIDATE_OPTIONS,
    ),
    ("usage", None): Command(
        "usage per key or customer, by hour, day or month",
        stored(usage.usage_report_command),
        USAGE_OPTIONS,
        usage.check_flags,
    ),
    ("export", "status"): Command(
        "the usage export per sink: last period delivered, events waiting, last error",
        stored(export.export_status_command),
    ),
    ("cache", "purge"): Command(
        "remove objects from the cache of every instance",
        stored(cache.cache_purge),
        cache.PURGE_OPTIONS,
    ),
    ("sign", None): Command(
        "add expires and sig to a URL for a key that uses signed links", local.sign, SIGN_OPTIONS
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="keyfront",
        description="A keyed file proxy.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"keyfront {version()}",
                        help="print the version and exit")  # fmt: skip
    # -c and --json are accepted on every (sub)parser. Below the top they default to
    # "absent", so that a value given before the subcommand is not overwritten.
    common = Parser(add_help=False, argument_default=argparse.SUPPRESS)
    for options in (parser, common):
        options.add_argument("-c", "--config", metavar="FILE", help="else $KEYFRONT_CONFIG")
        options.add_argument("--json", action="store_true",
                             help="machine-readable output, errors included")  # fmt: skip
    parser.set_defaults(config=None, json=False, command=None)
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    nested: dict[str, Any] = {}
    for (group, name), command in COMMANDS.items():
        if name is None:
            sub = groups.add_parser(
                group, parents=[common], help=command.help, description=command.help
            )
        else:
            if group not in nested:
                parent = groups.add_parser(group, parents=[common], help=GROUPS[group])
                nested[group] = parent.add_subparsers(
                    dest="command", required=True, metavar="COMMAND"
                )
            sub = nested[group].add_parser(
                name, parents=[common], help=command.help, description=command.help
            )
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
    # Everything keyfront writes is its user's alone (issue 12): the SQLite file holds
    # link secrets in clear, the cache and the access log what clients fetched. Files
    # that matter are also created with explicit modes; this covers the rest (SQLite's
    # -journal, the metrics folder's files, folders made on the way).
    os.umask(PRIVATE_UMASK)
    argv = sys.argv[1:] if argv is None else argv
    as_json = "--json" in argv[: argv.index("--") if "--" in argv else None]
    try:
        args = build_parser().parse_args(argv)
        command = COMMANDS[(args.group, args.command)]
        if command.check is not None:
            command.check(args)
        return command.run(args)
    except SystemExit as exc:  # --help and --version: return, don't raise
        return exc.code if isinstance(exc.code, int) else 2
    except BadUsage as exc:  # worded and numbered as argparse does
        if as_json:
            print(json.dumps(error_json(BAD_USAGE, str(exc))), file=sys.stderr)
        else:
            exc.parser.print_usage(sys.stderr)
            print(f"{exc.parser.prog}: error: {exc}", file=sys.stderr)
        return UsageError.exit_code
    except KeyfrontError as exc:  # its exit status comes with its class (errors.py)
        text = json.dumps(failure_json(exc)) if as_json else failure_text(exc)
        print(text, file=sys.stderr)
        return exc.exit_code
