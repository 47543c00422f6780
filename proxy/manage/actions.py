"""Customers, keys and customer tokens: the actions behind `keyfront customers|keys` and
the admin API (SPEC sections 2, 8, 9).

A key's own settings may not exceed its customer's plan caps. A full key is shown once,
by `minted_json` after a create or a roll: it is never stored. A customer token is
likewise shown once and stored only as its SHA-256: tokens carry 256 random bits, so
a plain hash is as good as a slow one and costs one lookup per admin call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
import time
from collections.abc import Iterable
from typing import Any

from ..config import AlertsConfig, KeyDefaults
from ..errors import Conflict, Forbidden, Invalid, Missing, Refused
from ..export.signing import customer_secret
from ..keys import KEY_ID_ALPHABET, KeySigner, new_key_id
from ..records import Customer, DisabledBy, KeyRecord
from ..referrers import is_path_pattern
from ..store import CustomerToken, Store
from ..units import MAX_DURATION, Rate, format_size

# (key field, the customer's plan cap): a key's own setting may not exceed the cap.
PLAN_CAPS = (
    ("rate", "max_rate"),
    ("burst", "max_burst"),
    ("ip_rate", "max_rate"),
    ("ip_burst", "max_burst"),
    ("quota_requests", "quota_requests"),
    ("quota_bytes", "quota_bytes"),
)
TOKEN_PREFIX = "kfc_"  # keyfront customer token: kfc_ + 43 base62 characters (256 bits)
_TOKEN = re.compile(r"kfc_[0-9A-Za-z]{43}")


def customer_json(customer: Customer, alerts: AlertsConfig | None) -> dict[str, Any]:
    """A customer as the operator and its own token read it: with `alert_secret`, the
    secret its alert endpoint verifies signatures with (SPEC section 16), when alerts
    are signed. Derived per customer (export/signing.py), so showing it to the
    customer reveals nothing that signs another's alerts."""
    data = record_json(customer)
    if alerts is not None and alerts.secret:
        data["alert_secret"] = customer_secret(alerts.secret, customer.customer_id)
    return data


def record_json(record: Customer | KeyRecord, reveal_secret: bool = False) -> dict[str, Any]:
    """A record as JSON values: Rate as "10/s", lists, unix-second timestamps. The link
    secret only when `reveal_secret` (the action set it); else `has_link_secret`."""
    data: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        data[f.name] = str(value) if isinstance(value, Rate) else value
        if isinstance(value, tuple):
            data[f.name] = list(value)
    if "link_secret" in data and not reveal_secret:
        data["has_link_secret"] = data.pop("link_secret") is not None
    return data


# --- customers ---------------------------------------------------------------------


async def find_customer(store: Store, customer_id: str, for_new_key: bool = False) -> Customer:
    """The customer, or Missing; with `for_new_key`, only an active one (else Refused)."""
    customer = await store.get_customer(customer_id)
    if customer is None:
        raise Missing(f"no such customer: {customer_id}")
    if for_new_key and customer.status != "active":
        raise Refused(f"customer {customer_id} is {customer.status}: it cannot get new keys")
    return customer


async def create_customer(store: Store, customer_id: str, settings: dict[str, Any]) -> Customer:
    customer = Customer(customer_id, created_at=int(time.time()), **settings)
    try:
        await store.create_customer(customer)
    except Conflict:
        raise Refused(f"customer {customer_id} already exists") from None
    return customer


async def change_customer(store: Store, customer_id: str, changes: dict[str, Any]) -> Customer:
    changed = dataclasses.replace(await find_customer(store, customer_id), **changes)
    await store.put_customer(changed)
    return changed


# --- keys --------------------------------------------------------------------------


async def find_key(
    store: Store, key_id: str, to_change: bool = False, customer_id: str | None = None
) -> KeyRecord:
    """The key's record, or Missing; with `customer_id`, only that customer's (another
    customer's key is Missing too); with `to_change`, only one not revoked."""
    record = await store.get_key(key_id)
    if record is None or customer_id not in (None, record.customer_id):
        raise Missing(f"no such key: {key_id}")
    if to_change and record.status == "revoked":
        raise Refused(f"key {key_id} is revoked, which is final")
    return record


def check_plan_caps(changes: dict[str, Any], customer: Customer) -> list[str]:
    """Raise Invalid for a setting above the customer's plan caps; the warnings the
    settings deserve (a referrer pattern with a path)."""
    within_plan_caps(changes, customer)
    return path_pattern_warnings(changes.get("referrers") or ())


def within_plan_caps(changes: dict[str, Any], customer: Customer) -> None:
    """Raise Invalid for a setting above the customer's plan caps."""
    for field, cap_name in PLAN_CAPS:
        value, cap = changes.get(field), getattr(customer, cap_name)
        if value is not None and cap is not None and _amount(value) > _amount(cap):
            problem = f"{_shown(field, value)} exceeds customer {customer.customer_id}'s"
            raise Invalid(field, f"{problem} plan cap {cap_name} {_shown(cap_name, cap)}")


def _amount(value: Rate | int) -> float:
    return value.per_second if isinstance(value, Rate) else value


def _shown(name: str, value: Rate | int) -> str:
    return format_size(value) if name == "quota_bytes" and isinstance(value, int) else str(value)


def path_pattern_warnings(patterns: Iterable[str]) -> list[str]:
    return [f"referrer pattern {pattern!r} names a path, but browsers send only the page's "
            "origin on cross-origin requests (referrer policy strict-origin-when-cross-origin), "
            "so it matches only pages that send a fuller referrer"
            for pattern in patterns if is_path_pattern(pattern)]  # fmt: skip


def within_plan(record: KeyRecord, customer: Customer, defaults: KeyDefaults) -> KeyRecord:
    """For a key a customer manages itself: an unset field falls back to the configured
    default, which may be above the plan (or unlimited); such a field takes the cap."""
    filled: dict[str, Any] = {}
    for field, cap_name in PLAN_CAPS:
        if field.startswith("ip_"):
            continue  # unset, there is no bucket per client IP: nothing to bound
        cap, default = getattr(customer, cap_name), getattr(defaults, field)
        unset, capped = getattr(record, field) is None, cap is not None
        if unset and capped and (default is None or _amount(default) > _amount(cap)):
            filled[field] = cap
    return dataclasses.replace(record, **filled) if filled else record


def _completed(record: KeyRecord, customer: Customer, bound: KeyDefaults | None) -> KeyRecord:
    """The record to store: within the plan where `bound`; with a link secret generated
    where it requires signed links and has none."""
    if bound is not None:
        record = within_plan(record, customer, bound)
    if record.require_signed_links and not record.link_secret:
        record = dataclasses.replace(record, link_secret=secrets.token_urlsafe(32))
    return record


async def create_key(
    store: Store,
    customer: Customer,
    changes: dict[str, Any],
    version: int,
    bound: KeyDefaults | None = None,
    *,
    default_max_keys: int | None = None,
) -> KeyRecord:
    """A new key of `customer` (found active, its changes checked by check_plan_caps).
    With `bound` (the configured defaults), fields left to them stay within the plan;
    only while the customer has fewer live keys than its cap (`key_cap`)."""
    cap = key_cap(customer, default_max_keys)
    await _make_room(store, customer, cap)
    record = KeyRecord(new_key_id(), customer.customer_id, created_at=int(time.time()),
                       version=version, **changes)  # fmt: skip
    record = _completed(record, customer, bound)
    await store.create_key(record)
    await _keep_within(store, customer, cap, dataclasses.replace(record, status="revoked"))
    return record


# --- a cap on live keys (SPEC section 2: max_keys; issue 12) ---------------------------

# Revoked and expired keys stay for good, so a cap on live keys alone let a customer
# token create and revoke without end, each create reading every record (review of
# issue 12, finding 2b). Wherever a live cap applies, the records (live or not) are
# capped at this many times it: each live key can be replaced nine times over.
RECORDS_PER_LIVE_KEY = 10


def record_cap(cap: tuple[int, str]) -> int:
    """The most key records (live, revoked or expired) under the live cap `cap`."""
    return RECORDS_PER_LIVE_KEY * cap[0]


def key_cap(customer: Customer, default: int | None) -> tuple[int, str] | None:
    """How many live keys `customer` may hold, and the setting that says so: its own
    `max_keys`, else `default` (the admin API gives a customer token's calls the
    configured admin.customer_max_keys; the operator's have none)."""
    if customer.max_keys is not None:
        return customer.max_keys, "max_keys"
    return (default, "admin.customer_max_keys") if default is not None else None


async def live_keys(store: Store, customer_id: str, excluding: str | None = None) -> int:
    """Keys neither revoked nor expired (a disabled key is live: it can be enabled)."""
    now = time.time()
    return sum(
        1
        for key in await store.list_keys(customer_id)
        if key.status != "revoked"
        and (key.expires_at is None or key.expires_at > now)
        and key.key_id != excluding
    )


async def _make_room(
    store: Store,
    customer: Customer,
    cap: tuple[int, str] | None,
    excluding: str | None = None,
    *,
    new_record: bool = True,
) -> None:
    """Room for one more live key (a `new_record`, or one brought back to life). The
    records are counted first, from an index: fewer than the cap leaves room without
    reading any; at the record cap a new one is refused without reading any."""
    if cap is None:
        return
    records = await store.count_keys(customer.customer_id)
    if new_record and records >= record_cap(cap):
        raise Refused(f"customer {customer.customer_id} has {records} keys counting revoked "
                      f"and expired ones, its cap ({record_cap(cap)}: {RECORDS_PER_LIVE_KEY} x "
                      f"{cap[1]} {cap[0]}): ask the operator to raise {cap[1]}")  # fmt: skip
    if records >= cap[0] and await live_keys(store, customer.customer_id, excluding) >= cap[0]:
        raise _full(customer, cap)


async def _keep_within(
    store: Store,
    customer: Customer,
    cap: tuple[int, str] | None,
    undo: KeyRecord,
    excluding: str | None = None,
) -> None:
    """Concurrent creations can each find room for one: a key made live past the cap
    is put back as `undo` at once (a new key revoked: nobody has seen it; a revived one
    as it was) and the call refused, so the cap holds."""
    if cap is None or await store.count_keys(customer.customer_id) <= cap[0]:
        return
    if await live_keys(store, customer.customer_id, excluding) > cap[0]:
        await store.put_key(undo)
        raise _full(customer, cap)


def _full(customer: Customer, cap: tuple[int, str]) -> Refused:
    return Refused(f"customer {customer.customer_id} has {cap[0]} live keys, its cap "
                   f"({cap[1]} {cap[0]}): revoke one first")  # fmt: skip


async def change_key(
    store: Store,
    record: KeyRecord,
    changes: dict[str, Any],
    customer: Customer,
    bound: KeyDefaults | None = None,
    *,
    by: DisabledBy = "operator",
    default_max_keys: int | None = None,
) -> KeyRecord:
    """The key with `changes` (checked by check_plan_caps), as for create_key, made
    `by` the operator or the customer's own token (see `status_change`). A change that
    brings an expired key back to life (its expiry cleared or moved on) passes the cap
    on live keys as a create does (review of issue 12, finding 2a)."""
    changes = {**changes, **status_change(record, changes, by)}
    changed = _completed(dataclasses.replace(record, **changes), customer, bound)
    cap = key_cap(customer, default_max_keys) if _revives(record, changed) else None
    await _make_room(store, customer, cap, new_record=False)
    await store.put_key(changed)
    await _keep_within(store, customer, cap, record)
    return changed


def _revives(record: KeyRecord, changed: KeyRecord) -> bool:
    """`changed` is live where `record` was not (see live_keys; revoked is final)."""
    now = time.time()
    was_expired = record.expires_at is not None and record.expires_at <= now
    return was_expired and (changed.expires_at is None or changed.expires_at > now)


def status_change(record: KeyRecord, changes: dict[str, Any], by: DisabledBy) -> dict[str, Any]:
    """`disabled_by` for a change of `status` (issue 12 item 11): the operator's
    suspension is separate from the customer's own switch, and only the operator lifts
    it; the operator may take over a customer's own disabling."""
    status = changes.get("status")
    if status is None:
        return {}
    if by == "customer" and record.suspended:
        raise Forbidden(f"key {record.key_id} is suspended by the operator: only the "
                        "operator can change its status")  # fmt: skip
    return {"disabled_by": by if status == "disabled" else None}


def key_state(record: KeyRecord, now: float) -> str:
    """revoked, disabled, expired or active: the first that applies, in the order of
    SPEC check 4 (record_cache.status_refusal), the customer's status aside."""
    if record.status != "active":
        return record.status
    return "expired" if record.expires_at is not None and record.expires_at <= now else "active"


# What a roll copies to the new key (roll_key); the rest is the key's own identity.
_ROLLED = tuple(f.name for f in dataclasses.fields(KeyRecord)
                if f.name not in ("key_id", "status", "created_at", "expires_at", "version",
                                  "disabled_by"))  # fmt: skip


async def live_successors(store: Store, record: KeyRecord) -> list[KeyRecord]:
    """Live keys that an earlier roll of `record` made (issue 15: a roll retried by a
    script leaves two new keys). Rolls record no link, so a successor is told by what
    a roll leaves: `record` has an expiry, and another live key of its customer with
    the same settings was created after it and no later than that expiry."""
    retire_at = record.expires_at
    if retire_at is None:
        return []
    now = time.time()
    same = [getattr(record, name) for name in _ROLLED]
    return [
        key
        for key in await store.list_keys(record.customer_id)
        if key.key_id != record.key_id
        and record.created_at <= key.created_at <= retire_at
        and key_state(key, now) in ("active", "disabled")
        and [getattr(key, name) for name in _ROLLED] == same
    ]


async def revoke_key(store: Store, record: KeyRecord) -> KeyRecord:
    revoked = dataclasses.replace(record, status="revoked")
    await store.put_key(revoked)
    return revoked


async def roll_key(
    store: Store,
    old: KeyRecord,
    grace: float,
    version: int,
    *,
    default_max_keys: int | None = None,
) -> tuple[KeyRecord, KeyRecord]:
    """A new key with the old one's settings (status and expiry included); the old one
    expires after the grace period, unless it already expires sooner. (new, old).
    Under a cap on live keys the old one does not count (it is on its way out), so a
    customer holds at most one key more than its cap while a roll's grace runs.

    Both records are built and checked before the first write: a bad grace used to
    fail after the new key was stored, leaving a key nobody was shown (issue 12 item 10)."""
    if not 0 <= grace <= MAX_DURATION:  # also NaN; the parsers already bound it
        raise Invalid("grace", f"{grace!r} is not between 0 s and a century")
    customer = await find_customer(store, old.customer_id, for_new_key=True)
    cap = key_cap(customer, default_max_keys)
    await _make_room(store, customer, cap, excluding=old.key_id)
    now = int(time.time())
    new = dataclasses.replace(old, key_id=new_key_id(), created_at=now, version=version)
    retire_at = now + int(grace)
    retire = old.expires_at is None or old.expires_at > retire_at
    if retire:
        old = dataclasses.replace(old, expires_at=retire_at)
    await store.create_key(new)
    unseen = dataclasses.replace(new, status="revoked")
    await _keep_within(store, customer, cap, unseen, excluding=old.key_id)
    if retire:
        await store.put_key(old)
    return new, old


def minted_json(signer: KeySigner, record: KeyRecord, **extra: Any) -> dict[str, Any]:
    """The one time a full key is shown (create, roll), with its link secret."""
    key = signer.mint(record.key_id, record.version)
    return {"key": key, **record_json(record, reveal_secret=True), **extra}


# --- customer tokens (SPEC section 9) ----------------------------------------------


def token_json(token: CustomerToken) -> dict[str, Any]:
    """A token as listed: never the token string (it is not stored)."""
    return dataclasses.asdict(token)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def mint_token(store: Store, customer_id: str, name: str) -> tuple[str, CustomerToken]:
    """A new token for the customer: (the token, shown once; its stored record)."""
    await find_customer(store, customer_id)
    token = TOKEN_PREFIX + "".join(secrets.choice(KEY_ID_ALPHABET) for _ in range(43))
    token_id = "".join(secrets.choice(KEY_ID_ALPHABET) for _ in range(12))
    record = CustomerToken(token_id, customer_id, name, int(time.time()))
    await store.create_token(token_hash(token), record)
    return token, record


async def list_tokens(store: Store, customer_id: str) -> list[CustomerToken]:
    await find_customer(store, customer_id)
    return await store.list_tokens(customer_id)


async def revoke_token(store: Store, customer_id: str, token_id: str) -> CustomerToken:
    token = await store.delete_token(customer_id, token_id)
    if token is None:
        await find_customer(store, customer_id)
        raise Missing(f"no such token: {token_id}")
    return token


async def token_holder(store: Store, token: str) -> CustomerToken | None:
    """The stored token `token` names; None (without a store call) for a malformed one."""
    if len(token) != len(TOKEN_PREFIX) + 43 or not _TOKEN.fullmatch(token):
        return None
    return await store.get_token(token_hash(token))
