"""The admin API's OpenAPI 3.1 document, built from the route table (every path,
method, parameter and status comes from an `Endpoint`) and from the same settings
tables that validate request bodies (proxy.manage.settings), so that the document
cannot drift from what the API does."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..manage.invalidate import MAX_TARGETS
from ..manage.settings import (
    CUSTOMER_CHANGES,
    CUSTOMER_SETTINGS,
    KEY_CHANGES,
    KEY_SETTINGS,
    ROLL_SETTINGS,
    TOKEN_SETTINGS,
    Setting,
)
from ..records import CUSTOMER_STATUSES, KEY_STATUSES, Customer, KeyRecord
from ..usage import FIELDS
from .http import Endpoint

STRING, INTEGER = {"type": "string"}, {"type": "integer"}
OPTIONAL_BODIES = frozenset({"Roll", "TokenCreate"})  # read_body(optional=True) in handlers
ERRORS = {
    "400": "a bad value: `field` names it",
    "401": "no token, or not a valid one; or the admin API is off (no admin.token set)",
    "403": "a customer token calling an operator-only route, or its customer is disabled",
    "404": "no such record (or another customer's)",
    "409": "the id exists, the key is revoked, or the customer is disabled",
}


def document(endpoints: Sequence[Endpoint], prefix: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        paths.setdefault(prefix + endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint)
    return {
        "openapi": "3.1.0",
        "info": {"title": "keyfront admin API", "version": "1"},
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": {"bearer": {"type": "http",
                       "scheme": "bearer", "description": "the admin token or a customer token"}}},
        "security": [{"bearer": []}],
    }  # fmt: skip


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    who = {"public": "No token needed.", "operator": "The operator's admin token only.",
           "customer": "The operator, or a customer token for its own customer."}  # fmt: skip
    operation: dict[str, Any] = {
        "operationId": endpoint.handler.__name__,
        "summary": endpoint.summary,
        "description": who[endpoint.access],
        "x-access": endpoint.access,  # public | operator | customer (tokens allowed)
        "parameters": _parameters(endpoint),
        "responses": {str(endpoint.status): _content(endpoint), **_errors(endpoint)},
    }
    if endpoint.access == "public":
        operation["security"] = []
    if endpoint.body in FILE_BODIES:  # a file sent as it is (SPEC section 13's imports)
        content = {kind: {"schema": _ref(endpoint.body)} for kind in FILE_BODIES[endpoint.body]}
        operation["requestBody"] = {"required": True, "content": content}
    elif endpoint.body is not None:
        content = {"application/json": {"schema": _ref(endpoint.body)}}
        required = endpoint.body not in OPTIONAL_BODIES
        operation["requestBody"] = {"required": required, "content": content}
    return operation


def _parameters(endpoint: Endpoint) -> list[dict[str, Any]]:
    found = [{"name": name, "in": "path", "required": True, "schema": STRING}
             for name in re.findall(r"\{(\w+)\}", endpoint.path)]  # fmt: skip
    for param in endpoint.query:
        query = {"name": param.name, "in": "query", "required": False, "schema": param.schema}
        found.append({**query, "description": param.description} if param.description else query)
    return found


def _content(endpoint: Endpoint) -> dict[str, Any]:
    content = {"application/json": {"schema": _ref(endpoint.response)}}
    if any(p.name == "format" and "json" in p.schema["enum"] for p in endpoint.query):
        content["text/csv"] = {"schema": STRING}
    return {"description": endpoint.summary, "content": content}


def _errors(endpoint: Endpoint) -> dict[str, Any]:
    error = {"content": {"application/json": {"schema": _ref("Error")}}}
    if endpoint.access == "public":
        return {}
    found = {status: {"description": text, **error} for status, text in ERRORS.items()}
    if endpoint.method not in ("POST", "PATCH"):
        del found["409"]
    return {**found, "default": {"description": "another error (501, 503)", **error}}


def _ref(name: str) -> dict[str, Any]:
    if name.startswith("["):
        return {"type": "array", "items": _ref(name.strip("[]"))}
    return {"$ref": f"#/components/schemas/{name}"}


# --- schemas ---------------------------------------------------------------------------

_FIELD_TYPES: dict[str, dict[str, Any]] = {  # a record field's annotation -> its JSON
    "str": STRING,
    "int": INTEGER,
    "bool": {"type": "boolean"},
    "str | None": {"type": ["string", "null"]},
    "int | None": {"type": ["integer", "null"]},
    "bool | None": {"type": ["boolean", "null"]},
    "Rate | None": {"type": ["string", "null"], "examples": ["10/s"]},
    "tuple[str, ...]": {"type": "array", "items": STRING},
    "KeyStatus": {"enum": list(KEY_STATUSES)},
    "CustomerStatus": {"enum": list(CUSTOMER_STATUSES)},
    "DisabledBy | None": {
        "enum": ["operator", "customer", None],
        "description": "who disabled the key; only the operator lifts its own suspension",
    },
}


def _object(properties: Mapping[str, Any], required: Sequence[str] = ()) -> dict[str, Any]:
    schema = {"type": "object", "properties": dict(properties), "additionalProperties": False}
    return {**schema, "required": list(required)} if required else schema


def _input(settings: Mapping[str, Setting], **more: Any) -> dict[str, Any]:
    return _object({**more, **{name: s.schema for name, s in settings.items()}})


def _record(cls: type[Customer | KeyRecord], **more: Any) -> dict[str, Any]:
    properties = {f.name: _FIELD_TYPES[str(f.type)] for f in dataclasses.fields(cls)}
    optional = set(more)
    if cls is KeyRecord:  # link_secret only from the call that set it, else has_link_secret
        properties["has_link_secret"] = {"type": "boolean"}
        properties["warnings"] = {"type": "array", "items": STRING}  # about referrer patterns
        optional |= {"link_secret", "has_link_secret", "warnings"}
    return _object({**properties, **more}, [name for name in properties if name not in optional])


FILE_BODIES = {"KeyImport": ("text/csv", "application/x-ndjson")}
CUSTOMER_ID = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}
TOKEN = {"token_id": STRING, "customer_id": STRING, "name": STRING, "created_at": INTEGER}
KEY_MINTED = {
    "key": STRING,
    "replaces": STRING,
    "replaced_expires_at": {"type": ["integer", "null"]},
}
MINTED_KEY = _record(KeyRecord, **KEY_MINTED)
USAGE_COUNTS = {name: INTEGER for name in FIELDS}
NULLABLE_INTEGER = {"type": ["integer", "null"]}
QUOTA = {**_object({"limit": NULLABLE_INTEGER, "used": NULLABLE_INTEGER, "left":
                    NULLABLE_INTEGER}, ["limit", "used", "left"]),
         "description": "null: no such quota on the plan"}  # fmt: skip
_COUNTED = {"requests": {**INTEGER, "description": "at most this many"},
            "bytes": {**INTEGER, "description": "counted while the value was tracked"},
            "error": {**INTEGER, "description": "requests - error <= true count <= requests"},
            "code": {**STRING, "description": "a refusal's SPEC code; absent: served"}}  # fmt: skip
NULLABLE_STRING = {"type": ["string", "null"]}


def _listed(name: str, kind: dict[str, Any], **more: Any) -> dict[str, Any]:
    item = _object({name: kind, **more, **_COUNTED}, [name, "requests", "bytes", "error"])
    return {"type": "array", "items": item}


REFERRERS = _listed(
    "host",
    {**NULLABLE_STRING, "description": "null: no referrer"},
    origin={**NULLABLE_STRING, "examples": ["https://app.example.com"]},
)
BEHIND = _object({"referrers": REFERRERS, "ips": _listed("ip", STRING),
                  "objects": _listed("path", STRING)})  # fmt: skip
SCHEMAS: dict[str, Any] = {
    "Error": _object({"error": _object(
        {"code": STRING, "message": STRING, "request_id": STRING, "field": STRING},
        ["code", "message", "request_id"])}, ["error"]),
    "Customer": _record(Customer),
    "CustomerCreate": {**_input(CUSTOMER_SETTINGS, customer_id=CUSTOMER_ID),
                       "required": ["customer_id"]},
    "CustomerPatch": _input(CUSTOMER_CHANGES),
    "Plan": {**_object({**_record(Customer)["properties"],
                        "keys": _object({"live": INTEGER, "max": NULLABLE_INTEGER},
                                        ["live", "max"]),
                        "quota": _object({"month": {**STRING, "examples": ["2026-12"]},
                                          "resets_at": {**INTEGER, "description":
                                                        "unix seconds: the month's end (UTC)"},
                                          "requests": QUOTA, "bytes": QUOTA},
                                         ["month", "resets_at", "requests", "bytes"])},
                       [*_record(Customer)["required"], "keys", "quota"]),
             "description": "the customer's record (its caps), live keys against the cap "
                            "that applies to its tokens, and its pooled monthly quota"},
    "Key": _record(KeyRecord),
    "MintedKey": {**MINTED_KEY, "required": ["key", *MINTED_KEY["required"]], "description":
                  "the only time the key is shown; link_secret in place of has_link_secret"},
    "KeyCreate": _input(KEY_SETTINGS, customer_id={**CUSTOMER_ID, "description":
                        "required of the operator; a customer token's own by default"}),
    "KeyPatch": _input(KEY_CHANGES),
    "Roll": _input(ROLL_SETTINGS),
    "TokenCreate": _input(TOKEN_SETTINGS),
    "Token": _object(TOKEN, list(TOKEN)),
    "MintedToken": _object({"token": STRING, **TOKEN}, ["token", *TOKEN]),
    "UsageRow": {**_object({"customer": STRING, "key": STRING, "start": INTEGER, "period": STRING,
                            **USAGE_COUNTS}, ["start", "period", *FIELDS]),
                 "patternProperties": {"^denied_[a-z_]+$": INTEGER}},
    "Analytics": {**_object({
        "key": STRING, "customer": STRING, "from": INTEGER, "to": INTEGER,
        "by": {"enum": ["hour", "day"]},
        "counts": {**_object(USAGE_COUNTS), "patternProperties": {"^denied_[a-z_]+$": INTEGER},
                   "description": "exact (SPEC section 4), summed over the range"},
        "no_referrer": {**INTEGER, "description": "requests with neither Referer nor Origin"},
        "no_referrer_share": {"type": ["number", "null"]},
        "periods": {"type": "array", "items": {"type": "object", "description":
                    "start, then the exact counts of one hour or day"}},
        "referrers": REFERRERS, "objects": _listed("path", STRING),
        "ips": _listed("ip", STRING), "refused_ips": _listed("ip", STRING),
    }, ["from", "to", "by", "counts", "no_referrer", "no_referrer_share", "periods",
        "referrers", "objects", "ips", "refused_ips"]),
        "description": "top 20 served and top 20 refused of each list, from bounded sketches "
                       "(the counts are upper bounds with their error); `counts` are exact"},
    "WhatIf": {**_input({k: KEY_SETTINGS[k] for k in ("referrers", "allow_no_referrer", "ips",
                                                      "paths")}), "minProperties": 1},
    "WhatIfAnswer": _object({
        "key_id": STRING, "from": INTEGER, "to": INTEGER,
        "served": {**INTEGER, "description": "requests served in the window (exact)"},
        "would_refuse": {**INTEGER, "description": "served requests the proposal refuses"},
        "would_allow": {**INTEGER, "description": "refused requests it lets through"},
        "behind": _object({"would_refuse": BEHIND, "would_allow": BEHIND},
                          ["would_refuse", "would_allow"]),
    }, ["key_id", "from", "to", "served", "would_refuse", "would_allow", "behind"]),
    "Purge": {**_object({"paths": {"type": "array", "items": STRING, "minItems": 1},
                         "prefix": STRING}),
              "oneOf": [{"required": ["paths"]}, {"required": ["prefix"]}]},
    "Purged": _object({"purged": INTEGER}, ["purged"]),
    "KeyImport": {"type": "string", "description": "CSV with a header row naming the columns "
                  "(key, customer_id, and Key fields; referrers, ips and paths space-separated), "
                  "or one JSON object a line; at most 64 MiB a call"},
    "ImportReport": _object({
        "dry_run": {"type": "boolean"}, "imported": INTEGER, "created": INTEGER,
        "updated": INTEGER,
        "keys": {"type": "array", "items": _object({"line": INTEGER, "key_id": {"type": [
            "string", "null"]}}, ["line", "key_id"])},
        "errors": {"type": "array", "items": _object({"line": INTEGER, "field": STRING,
                                                      "message": STRING})},
    }, ["dry_run", "imported", "created", "updated", "keys", "errors"]),
    "Invalidate": {**_object({name: {"type": "array", "items": STRING, "maxItems": MAX_TARGETS}
                              for name in ("keys", "key_ids", "customer_ids")}),
                   "minProperties": 1, "description": "at most "
                   f"{MAX_TARGETS} keys, key ids and customer ids in all; a key is any text "
                   "its client presents (never stored: instances get keyed digests)"},
    "Invalidated": _object({"announced": {**INTEGER, "description": "changes announced"}},
                           ["announced"]),
    "ExportSink": _object({
        "sink": STRING, "type": {"enum": ["webhook", "stripe", "openmeter", "lago", "alerts"]},
        "last_period_exported": {**NULLABLE_STRING, "description": "ISO 8601 UTC: the newest "
                                 "period turned into events"},
        "last_period_delivered": {**NULLABLE_STRING, "description": "the newest period of the "
                                  "last batch the sink took"},
        "last_delivery_at": NULLABLE_INTEGER, "waiting": {**INTEGER, "description":
                                                         "events in the sink's outbox"},
        "last_error": NULLABLE_STRING, "last_error_at": NULLABLE_INTEGER,
    }, ["sink", "type", "last_period_exported", "last_period_delivered", "last_delivery_at",
        "waiting", "last_error", "last_error_at"]),
    "OpenAPI": {"type": "object", "description": "this document"},
}  # fmt: skip
