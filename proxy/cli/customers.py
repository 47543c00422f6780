"""`keyfront customers ...`: customers and their plan caps (SPEC sections 2, 8)."""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

from ..config import Config
from ..errors import Conflict
from ..records import CUSTOMER_STATUSES, Customer
from ..store import Store
from .output import Failure, Output, record_json, record_output, table
from .values import QUOTA_OPTIONS, Option, bucket_options, given_settings, parse_customer_id

CUSTOMER_ID: Option = ("customer_id", {"type": parse_customer_id, "metavar": "ID"})
CUSTOMER_SETTINGS: list[Option] = [("--name", {}), *bucket_options("max-"), *QUOTA_OPTIONS]
CUSTOMER_UPDATE_ONLY: list[Option] = [("--status", {"choices": CUSTOMER_STATUSES})]
CUSTOMER_COLUMNS = (
    "customer_id name status max_rate max_burst quota_requests quota_bytes created_at"
)


async def find_customer(store: Store, customer_id: str, for_new_key: bool = False) -> Customer:
    """The customer, or Failure; with `for_new_key`, only an active one."""
    customer = await store.get_customer(customer_id)
    if customer is None:
        raise Failure(f"no such customer: {customer_id}")
    if for_new_key and customer.status != "active":
        raise Failure(f"customer {customer_id} is {customer.status}: it cannot get new keys")
    return customer


async def customers_create(args: argparse.Namespace, config: Config, store: Store) -> Output:
    settings = given_settings(args, Customer)
    customer = Customer(args.customer_id, created_at=int(time.time()), **settings)
    try:
        await store.create_customer(customer)
    except Conflict:
        raise Failure(f"customer {args.customer_id} already exists") from None
    return record_output(customer)


async def customers_list(args: argparse.Namespace, config: Config, store: Store) -> Output:
    rows = [record_json(c) for c in await store.list_customers()]
    return Output(rows, table(rows, CUSTOMER_COLUMNS))


async def customers_show(args: argparse.Namespace, config: Config, store: Store) -> Output:
    return record_output(await find_customer(store, args.customer_id))


async def customers_update(args: argparse.Namespace, config: Config, store: Store) -> Output:
    return await _change_customer(store, args.customer_id, given_settings(args, Customer))


async def customers_disable(args: argparse.Namespace, config: Config, store: Store) -> Output:
    return await _change_customer(store, args.customer_id, {"status": "disabled"})


async def _change_customer(store: Store, customer_id: str, changes: dict[str, Any]) -> Output:
    changed = dataclasses.replace(await find_customer(store, customer_id), **changes)
    await store.put_customer(changed)
    return record_output(changed)
