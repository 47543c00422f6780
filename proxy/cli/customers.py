"""`keyfront customers ...`: customers, their plan caps and their admin API tokens
(SPEC sections 2, 8, 9). A token is printed once, by `customers token`: only its hash
is stored."""

from __future__ import annotations

import argparse
import sys

from ..config import Config
from ..manage.actions import (
    change_customer,
    create_customer,
    customer_json,
    find_customer,
    list_tokens,
    mint_token,
    record_json,
    revoke_token,
    token_json,
)
from ..manage.settings import (
    parse_alert_webhook,
    parse_billing_id,
    parse_customer_id,
    parse_positive,
)
from ..records import CUSTOMER_STATUSES, Customer
from ..store import Store
from .options import QUOTA_OPTIONS, Option, bucket_options, given_settings
from .output import Output, fields_text, record_output, table

CUSTOMER_ID: Option = (
    "customer_id",
    {
        "type": parse_customer_id,
        "metavar": "ID",
        "help": "the customer's id (1-64 of A-Z a-z 0-9 _ . -)",
    },
)
CUSTOMER_SETTINGS: list[Option] = [
    ("--name", {"help": "the customer's name, for people"}),
    *bucket_options("max-", "plan cap on each key's, "),
    *QUOTA_OPTIONS,
    ("--max-keys", {"type": parse_positive, "metavar": "N", "help": "live keys at most"}),
    ("--billing-id", {"type": parse_billing_id, "metavar": "X",
                      "help": "its id in the billing system (exported usage carries it)"}),
    ("--alert-webhook", {"type": parse_alert_webhook, "metavar": "URL",
                         "help": "https URL its quota alerts are POSTed to"}),
]  # fmt: skip
CUSTOMER_UPDATE_ONLY: list[Option] = [
    ("--status", {"choices": CUSTOMER_STATUSES, "help": "disabled: its keys stop working"}),
]
TOKEN_OPTIONS: list[Option] = [
    CUSTOMER_ID,
    ("--name", {"default": "", "help": "what the token is for, for people"}),
]
TOKEN_ID: list[Option] = [
    CUSTOMER_ID,
    ("token_id", {"metavar": "TOKEN_ID", "help": "as `customers tokens` lists it"}),
]
CUSTOMER_COLUMNS = (
    "customer_id name status max_rate max_burst quota_requests quota_bytes max_keys created_at"
)


async def customers_create(args: argparse.Namespace, config: Config, store: Store) -> Output:
    settings = given_settings(args, Customer)
    return record_output(await create_customer(store, args.customer_id, settings))


async def customers_list(args: argparse.Namespace, config: Config, store: Store) -> Output:
    rows = [record_json(c) for c in await store.list_customers()]
    return Output(rows, table(rows, CUSTOMER_COLUMNS))


async def customers_show(args: argparse.Namespace, config: Config, store: Store) -> Output:
    customer = customer_json(await find_customer(store, args.customer_id), config.alerts)
    return Output(customer, fields_text(customer))


async def customers_update(args: argparse.Namespace, config: Config, store: Store) -> Output:
    changes = given_settings(args, Customer)
    return record_output(await change_customer(store, args.customer_id, changes))


async def customers_disable(args: argparse.Namespace, config: Config, store: Store) -> Output:
    return record_output(await change_customer(store, args.customer_id, {"status": "disabled"}))


# --- admin API tokens ---


async def customers_token(args: argparse.Namespace, config: Config, store: Store) -> Output:
    token, record = await mint_token(store, args.customer_id, args.name)
    data = {"token": token, **token_json(record)}
    print("The token is shown only this once: store it now.", file=sys.stderr)
    return Output(data, fields_text(data))


async def customers_tokens(args: argparse.Namespace, config: Config, store: Store) -> Output:
    rows = [token_json(t) for t in await list_tokens(store, args.customer_id)]
    return Output(rows, table(rows, "token_id name created_at"))


async def customers_revoke_token(args: argparse.Namespace, config: Config, store: Store) -> Output:
    token = await revoke_token(store, args.customer_id, args.token_id)
    return Output(token_json(token), f"revoked token {token.token_id}")
