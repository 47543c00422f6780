"""The admin API's handlers: customers and their tokens, keys, usage, purge (SPEC
section 9). Each reads its input, runs the action it shares with the command line
(proxy.manage), and answers JSON shaped as `keyfront ... --json` prints it.

A customer token's calls are scoped by `Caller.scope` and `find_key(customer_id=)`:
another customer's key, customer or usage is 404, as if it did not exist.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .. import failpoints
from ..config import KeyDefaults
from ..errors import BodyTooLarge, Forbidden, Invalid, ManageError, Missing, NotSupported
from ..manage import actions as act
from ..manage import export as manage_export
from ..manage.analytics import analytics_report, what_if
from ..manage.imports import FORMATS, SHARED_LOOP_BATCH, Importer, rows_of
from ..manage.invalidate import (
    MAX_TARGETS,
    invalidate,
    invalidation_changes,
    parse_external_key,
)
from ..manage.purge import purge as purge_everywhere
from ..manage.settings import (
    CUSTOMER_CHANGES,
    CUSTOMER_SETTINGS,
    DEFAULT_GRACE,
    KEY_CHANGES,
    KEY_SETTINGS,
    ROLL_SETTINGS,
    TOKEN_SETTINGS,
    parse_customer_id,
    parse_date,
    parse_external_id,
    parse_key_id,
    parse_path_prefix,
    parse_usage_key_id,
    read_settings,
)
from ..manage.usage import GRAINS, usage_csv, usage_report
from ..ratelimit import customer_quota_owner, seconds_to_month_end
from ..records import DisabledBy, KeyRecord
from ..units import parse_duration
from .http import AdminContext, Caller, Param, context, read_body, reply

MAX_PURGE_PATHS = 1000

# --- customers and their tokens (operator only) -------------------------------------


async def list_customers(request: web.Request, caller: Caller) -> web.Response:
    failpoints.check(failpoints.ADMIN_LIST_CUSTOMERS)  # tests only (proxy/failpoints.py)
    return reply([act.record_json(c) for c in await context(request).store.list_customers()])


async def create_customer(request: web.Request, caller: Caller) -> web.Response:
    body = await read_body(request)
    customer_id = _value(body.pop("customer_id", None), "customer_id", parse_customer_id)
    settings = read_settings(body, CUSTOMER_SETTINGS)
    customer = await act.create_customer(context(request).store, customer_id, settings)
    return reply(act.record_json(customer), 201)


async def get_customer(request: web.Request, caller: Caller) -> web.Response:
    admin = context(request)
    customer = await act.find_customer(admin.store, _customer_id(request))
    return reply(act.customer_json(customer, admin.config.alerts))


async def patch_customer(request: web.Request, caller: Caller) -> web.Response:
    body = await read_body(request)
    return reply(await changed_customer(context(request), caller, _customer_id(request), body))


async def disable_customer(request: web.Request, caller: Caller) -> web.Response:
    return await _change_customer(request, {"status": "disabled"})


async def _change_customer(request: web.Request, changes: dict[str, Any]) -> web.Response:
    store = context(request).store
    return reply(act.record_json(await act.change_customer(store, _customer_id(request), changes)))


async def list_tokens(request: web.Request, caller: Caller) -> web.Response:
    tokens = await act.list_tokens(context(request).store, _customer_id(request))
    return reply([act.token_json(t) for t in tokens])


async def create_token(request: web.Request, caller: Caller) -> web.Response:
    """The token is in this response only: the store keeps its hash."""
    name = read_settings(await read_body(request, optional=True), TOKEN_SETTINGS).get("name", "")
    token, record = await act.mint_token(context(request).store, _customer_id(request), name)
    return reply({"token": token, **act.token_json(record)}, 201)


async def delete_token(request: web.Request, caller: Caller) -> web.Response:
    store, token_id = context(request).store, request.match_info["token_id"]
    return reply(act.token_json(await act.revoke_token(store, _customer_id(request), token_id)))


def _customer_id(request: web.Request) -> str:
    return request.match_info["customer_id"]


# --- keys (the operator, or a customer token for its own keys) -----------------------


async def list_keys(request: web.Request, caller: Caller) -> web.Response:
    query = _query(request, KEYS_QUERY)
    return reply(await listed_keys(context(request), caller, query.get("customer")))


async def create_key(request: web.Request, caller: Caller) -> web.Response:
    return reply(await created_key(context(request), caller, await read_body(request)), 201)


async def get_key(request: web.Request, caller: Caller) -> web.Response:
    return reply(act.record_json(await key_of(context(request), caller, _key_id(request))))


async def patch_key(request: web.Request, caller: Caller) -> web.Response:
    admin = context(request)
    record = await key_of(admin, caller, _key_id(request), to_change=True)
    return reply(await changed_key(admin, caller, record, await read_body(request)))


async def revoke_key(request: web.Request, caller: Caller) -> web.Response:
    return reply(await revoked_key(context(request), caller, _key_id(request)))


async def roll_key(request: web.Request, caller: Caller) -> web.Response:
    body = await read_body(request, optional=True)
    return reply(await rolled_key(context(request), caller, _key_id(request), body), 201)


def _key_id(request: web.Request) -> str:
    return request.match_info["key_id"]


# The routes' actions, as functions of the caller and the request's JSON: the admin
# routes above and the customer page (proxy/portal) both call these, so the page can
# show and do nothing the API cannot (SPEC section 15).


async def changed_customer(
    admin: AdminContext, caller: Caller, customer_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    """PATCH /customers/{customer_id}: the operator changes a customer's record (plan
    caps, billing id, alert webhook, status). A customer's token may not change its own
    record, on the page (which calls this) as in the API (an operator route)."""
    if caller.customer_id is not None:
        raise Forbidden("only the operator's admin token may do this")
    changes = read_settings(body, CUSTOMER_CHANGES)
    return act.record_json(await act.change_customer(admin.store, customer_id, changes))


async def listed_keys(admin: AdminContext, caller: Caller, customer: str | None) -> list[Any]:
    customer_id = caller.scope(customer)
    if customer_id is not None:
        await act.find_customer(admin.store, customer_id)
    return [act.record_json(r) for r in await admin.store.list_keys(customer_id)]


async def created_key(admin: AdminContext, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
    """POST /keys: the minted key (shown this once) with its record."""
    requested = body.pop("customer_id", None)
    customer_id = caller.scope(_value(requested, "customer_id", parse_customer_id, optional=True))
    if customer_id is None:
        raise Invalid("customer_id", "required")
    customer = await act.find_customer(admin.store, customer_id, for_new_key=True)
    changes = read_settings(body, KEY_SETTINGS)
    warnings = act.check_plan_caps(changes, customer)
    version, bound = admin.config.keys.signing_version, _bound(admin, caller)
    record = await act.create_key(admin.store, customer, changes, version, bound,
                                  default_max_keys=_default_max_keys(admin, caller))  # fmt: skip
    return _warned(act.minted_json(admin.signer, record), warnings)


async def changed_key(
    admin: AdminContext, caller: Caller, record: KeyRecord, body: dict[str, Any]
) -> dict[str, Any]:
    """PATCH /keys/{key_id}, on the record `key_of(..., to_change=True)` found."""
    changes = read_settings(body, KEY_CHANGES)
    customer = await act.find_customer(admin.store, record.customer_id)
    warnings = act.check_plan_caps(changes, customer)
    by: DisabledBy = "operator" if caller.customer_id is None else "customer"
    cap = _default_max_keys(admin, caller)
    changed = await act.change_key(admin.store, record, changes, customer, _bound(admin, caller),
                                   by=by, default_max_keys=cap)  # fmt: skip
    shown = act.record_json(changed, reveal_secret=changed.link_secret != record.link_secret)
    return _warned(shown, warnings)


async def revoked_key(admin: AdminContext, caller: Caller, key_id: str) -> dict[str, Any]:
    record = await key_of(admin, caller, key_id)
    return act.record_json(await act.revoke_key(admin.store, record))


async def rolled_key(
    admin: AdminContext, caller: Caller, key_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    """POST /keys/{key_id}/roll: the new key (shown this once) and the old one's expiry."""
    settings = read_settings(body, ROLL_SETTINGS)
    grace = settings.get("grace", parse_duration(DEFAULT_GRACE))
    old = await key_of(admin, caller, key_id, to_change=True)
    new, old = await act.roll_key(admin.store, old, grace, admin.config.keys.signing_version,
                                  default_max_keys=_default_max_keys(admin, caller))  # fmt: skip
    extra = {"replaces": old.key_id, "replaced_expires_at": old.expires_at}
    return act.minted_json(admin.signer, new, **extra)


async def key_of(
    admin: AdminContext, caller: Caller, text: str, to_change: bool = False
) -> KeyRecord:
    """The key `text` names, if the caller may see it (else 404, as a missing one)."""
    try:
        key_id = parse_key_id(text)
    except ValueError:
        raise Missing(f"no such key: {text}") from None
    return await act.find_key(admin.store, key_id, to_change, caller.customer_id)


def _bound(admin: AdminContext, caller: Caller) -> KeyDefaults | None:
    """A customer's own keys stay within its plan even where they leave a field to the
    configured defaults (manage.actions.within_plan); the operator's need not."""
    return admin.config.keys.defaults if caller.customer_id is not None else None


def _default_max_keys(admin: AdminContext, caller: Caller) -> int | None:
    """A customer token's keys are capped even where its customer sets no max_keys (a
    token is a credential on the internet; the operator is not)."""
    return admin.config.admin.customer_max_keys if caller.customer_id else None


def _warned(data: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    return {**data, "warnings": warnings} if warnings else data


# --- the caller's own plan (SPEC section 9: GET /admin/v1/me; issue 15) ----------------


async def me(request: web.Request, caller: Caller) -> web.Response:
    """A customer token's view of its plan; 400 for the operator, which has no plan of
    its own (it reads GET /customers/{customer_id}), rather than a guess at a customer."""
    if caller.customer_id is None:
        raise ManageError("GET /me is a customer token's own plan; the operator's admin "
                          "token has none (read GET /customers/{customer_id})")  # fmt: skip
    return reply(await plan(context(request), caller, caller.customer_id))


async def plan(admin: AdminContext, caller: Caller, customer_id: str) -> dict[str, Any]:
    """A customer's plan as GET /me shows it: the customer's record (its caps), its
    live keys against the cap that applies to `caller`, and its pooled monthly quota
    used and left, read from the counters the limiter enforces."""
    runtime = admin.runtime
    customer = await act.find_customer(runtime.store, caller.scope(customer_id) or customer_id)
    cap = act.key_cap(customer, _default_max_keys(admin, caller))
    live = await act.live_keys(runtime.store, customer.customer_id)
    now = time.time()
    quota: dict[str, Any] = {"month": time.strftime("%Y-%m", time.gmtime(now)),
                             "resets_at": round(now + seconds_to_month_end(now))}  # fmt: skip
    used = (0, 0)
    if customer.quota_requests is not None or customer.quota_bytes is not None:
        used = await runtime.limiter.quota_used(customer_quota_owner(customer.customer_id))
    for name, limit, spent in (("requests", customer.quota_requests, used[0]),
                               ("bytes", customer.quota_bytes, used[1])):  # fmt: skip
        quota[name] = {"limit": limit, "used": None if limit is None else spent,
                       "left": None if limit is None else max(0, limit - spent)}  # fmt: skip
    keys = {"live": live, "max": cap[0] if cap else None}
    return {**act.customer_json(customer, admin.config.alerts), "keys": keys, "quota": quota}


# --- imported keys (SPEC section 13; operator only) ------------------------------------

# The admin API's other bodies are capped at 64 KiB (app.ADMIN_MAX_BODY); a file of keys
# may be far larger: 64 MiB is ~500,000 rows. Larger files go in several calls (an
# import is an upsert, so any split works). One import at a time per process, so at most
# one such body is held in memory; its rows are checked a few hundred at a time, with
# the event loop (which serves the public listener too) free in between.
IMPORT_MAX_BODY = 64 * 1024**2
_IMPORTING = asyncio.Lock()
_JSONL_TYPES = ("application/x-ndjson", "application/jsonl", "application/json-lines")
IMPORT_QUERY = (
    Param("format", {"enum": list(FORMATS)}, "default: from Content-Type (text/csv, "
          "application/x-ndjson), else csv"),
    Param("dry_run", {"enum": ["true", "false"], "default": "false"}, "check, write nothing"),
)  # fmt: skip


async def import_keys(request: web.Request, caller: Caller) -> web.Response:
    """The body is the file itself (CSV with a header row, or JSON lines)."""
    query = _query(request, IMPORT_QUERY)
    default = "jsonl" if request.content_type in _JSONL_TYPES else "csv"
    form = _value(query.get("format", default), "format", _one_of(FORMATS))
    dry_run = _value(query.get("dry_run", "false"), "dry_run", _one_of(("true", "false")))
    admin = context(request)
    async with _IMPORTING:
        text = await _upload(request)
        importer = Importer(admin.store, admin.signer, admin.config.keys.external,
                            dry_run == "true", SHARED_LOOP_BATCH)  # fmt: skip
        report = await importer.run(rows_of(io.StringIO(text, newline=""), form))
    return reply(report.to_json())


async def _upload(request: web.Request) -> str:
    """The body, read past the admin API's 64 KiB cap up to IMPORT_MAX_BODY (else 413)."""
    too_large = BodyTooLarge(f"at most {IMPORT_MAX_BODY} bytes a call: "
                             "split the file (importing is an upsert)")  # fmt: skip
    if (request.content_length or 0) > IMPORT_MAX_BODY:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(1024 * 1024):
        size += len(chunk)
        if size > IMPORT_MAX_BODY:
            raise too_large
        chunks.append(chunk)
    body = b"".join(chunks)
    chunks.clear()  # one copy of the body at a time, not two
    try:
        return body.decode()
    except UnicodeDecodeError:
        raise Invalid("body", "not UTF-8 text") from None


# --- usage (SPEC section 4: the filters of `keyfront usage`) -------------------------


async def usage(request: web.Request, caller: Caller) -> web.Response:
    query = _query(request, USAGE_QUERY)
    form = _value(query.pop("format", "json"), "format", _one_of(("json", "csv")))
    data = await usage_of(context(request), caller, query)
    if form == "csv":
        return web.Response(text=usage_csv(data), content_type="text/csv")
    return reply(data)


async def usage_of(admin: AdminContext, caller: Caller, query: dict[str, str]) -> list[Any]:
    """GET /usage's rows, for the query's customer, key, from, to and by."""
    customer_id = caller.scope(query.get("customer"))
    key_id = _value(query.get("key"), "key", parse_usage_key_id, optional=True)
    start = _value(query.get("from"), "from", _moment, optional=True)
    end = _value(query.get("to"), "to", _moment, optional=True)
    grain = _value(query.get("by", "day"), "by", _one_of(GRAINS))
    return await usage_report(admin.store, customer_id=customer_id, key_id=key_id,
                              start=start, end=end, grain=grain)  # fmt: skip


def _moment(text: str) -> int:
    """Unix seconds, or an ISO date or datetime (UTC unless it names a zone). More than
    12 digits (past year 33658) reads as that far future, which the report clamps to
    now: int() never sees thousands of digits (issue 12 items 3 and 7)."""
    if text.isascii() and text.isdigit():
        return int(text) if len(text) <= 12 else 10**12
    return parse_date(text)


def _one_of(choices: tuple[str, ...]) -> Callable[[str], Any]:
    def check(text: str) -> str:
        if text not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return text

    return check


TIME = {"type": "string", "description": "unix seconds, or an ISO date or datetime (UTC)"}
KEYS_QUERY = (Param("customer", {"type": "string"}, "only this customer's keys"),)
USAGE_QUERY = (
    Param("customer", {"type": "string"}, "this customer's totals (with key: its key only)"),
    Param("key", {"type": "string"}, "this key's rows"),
    Param("from", TIME, "default: the start of this month (UTC)"),
    Param("to", TIME, "exclusive; default: now"),
    Param("by", {"enum": list(GRAINS), "default": "day"}),
    Param("format", {"enum": ["json", "csv"], "default": "json"}),
)


# --- analytics and what-if (SPEC section 15; manage/analytics.py) -----------------------

ANALYTICS_GRAINS = ("hour", "day")
ANALYTICS_QUERY = (
    Param("key", {"type": "string"}, "this key's traffic (a customer token: its own keys)"),
    Param("customer", {"type": "string"}, "this customer's, all its keys merged"),
    Param("from", TIME, "default: a day (by hour) or 30 days (by day) before to"),
    Param("to", TIME, "exclusive; default: now"),
    Param("by", {"enum": list(ANALYTICS_GRAINS), "default": "day"}),
)
WHAT_IF_SETTINGS = {name: KEY_SETTINGS[name]
                    for name in ("referrers", "allow_no_referrer", "ips", "paths")}  # fmt: skip


async def analytics(request: web.Request, caller: Caller) -> web.Response:
    query = _query(request, ANALYTICS_QUERY)
    return reply(await analytics_of(context(request), caller, query))


async def analytics_of(admin: AdminContext, caller: Caller, query: dict[str, str]) -> Any:
    """GET /analytics's answer, for the query's key or customer, from, to and by."""
    customer_id = caller.scope(query.get("customer"))
    key_id = _value(query.get("key"), "key", parse_usage_key_id, optional=True)
    start = _value(query.get("from"), "from", _moment, optional=True)
    end = _value(query.get("to"), "to", _moment, optional=True)
    grain = _value(query.get("by", "day"), "by", _one_of(ANALYTICS_GRAINS))
    return await analytics_report(admin.store, customer_id=customer_id, key_id=key_id,
                                  start=start, end=end, grain=grain)  # fmt: skip


async def key_what_if(request: web.Request, caller: Caller) -> web.Response:
    admin = context(request)
    record = await key_of(admin, caller, _key_id(request))
    return reply(await what_if_of(admin, record, await read_body(request)))


async def what_if_of(
    admin: AdminContext, record: KeyRecord, body: dict[str, Any]
) -> dict[str, Any]:
    """POST /keys/{key_id}/what-if, on the record `key_of` found. Changes nothing: the
    proposal is judged against the recorded traffic only."""
    return await what_if(admin.store, record, read_settings(body, WHAT_IF_SETTINGS))


# --- purge (proxy/manage/purge.py: this host's folder, then every instance) ------------


async def export_status(request: web.Request, caller: Caller) -> web.Response:
    found = context(request)
    config = found.config
    return reply(await manage_export.export_status(found.store, config.export, config.alerts))


async def purge(request: web.Request, caller: Caller) -> web.Response:
    paths, prefix = _purge_targets(await read_body(request))
    runtime = context(request).runtime
    if runtime.cache is None:
        raise NotSupported("this keyfront has no cache to purge")
    purged = await purge_everywhere(runtime.store, runtime.cache, paths, prefix)
    return reply({"purged": purged})


def _purge_targets(body: dict[str, Any]) -> tuple[list[str], str | None]:
    if set(body) not in ({"paths"}, {"prefix"}):
        raise Invalid("body", 'give either "paths" (a list of paths) or "prefix"')
    if "prefix" in body:
        return [], _value(body["prefix"], "prefix", parse_path_prefix)
    paths = body["paths"]
    if not isinstance(paths, list) or not 1 <= len(paths) <= MAX_PURGE_PATHS:
        raise Invalid("paths", f"expected a list of 1 to {MAX_PURGE_PATHS} paths")
    return [_value(p, "paths", parse_path_prefix) for p in paths], None


# --- invalidation of cached key answers (SPEC section 13; manage/invalidate.py) -------

INVALIDATE_TARGETS: dict[str, Callable[[str], str]] = {
    "keys": parse_external_key,
    "key_ids": parse_external_id,
    "customer_ids": parse_customer_id,
}


async def invalidate_keys(request: web.Request, caller: Caller) -> web.Response:
    """Drop cached answers for these keys, key ids or customers on every instance."""
    body = await read_body(request)
    for name in body:
        if name not in INVALIDATE_TARGETS:
            raise Invalid(name, f"unknown field; expected {', '.join(INVALIDATE_TARGETS)}")
    targets = {name: _list(body.get(name), name, parse)
               for name, parse in INVALIDATE_TARGETS.items()}  # fmt: skip
    changes = invalidation_changes(context(request).config.keys.secrets, **targets)
    return reply({"announced": await invalidate(context(request).store, changes)})


def _list(value: Any, name: str, parse: Callable[[str], str]) -> list[str]:
    """A list of at most MAX_TARGETS strings, each read by `parse` (absent: empty)."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_TARGETS:
        raise Invalid(name, f"expected a list of at most {MAX_TARGETS} strings")
    return [_value(item, name, parse) for item in value]


# --- input ---------------------------------------------------------------------------


def _query(request: web.Request, params: tuple[Param, ...]) -> dict[str, str]:
    """The query, refusing names the endpoint does not take (a typo such as
    ?customer_id= would otherwise widen a report to every customer)."""
    known = {p.name for p in params}
    for name in request.query:
        if name not in known:
            raise Invalid(name, "unknown query parameter")
    return {name: request.query[name] for name in known if name in request.query}


def _value(value: Any, name: str, parse: Callable[[str], Any], optional: bool = False) -> Any:
    """`parse(value)` for a string; None when absent and `optional`; else Invalid."""
    if value is None and optional:
        return None
    if value is None:
        raise Invalid(name, "required")
    if not isinstance(value, str):
        raise Invalid(name, "expected a string")
    try:
        return parse(value)
    except ValueError as exc:
        raise Invalid(name, str(exc)) from None
