"""The key API's 200 answer (SPEC section 13), read as hostile input (issue 12).

The answer is a key record in SPEC section 2's field names, with the operator's own
`key_id` and `customer_id`, and an optional `customer` object. It is checked by the
validators the admin API uses for the same fields (proxy/manage/settings.py), and
refused whole on the first bad field: a malformed answer is an error, never cached,
never half used. An unknown field is refused too, so that a misspelt restriction
(`referer`) cannot silently leave a key unrestricted. docs/key-api.schema.json
describes the same contract.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import Invalid
from ..manage.settings import (
    CUSTOMER_CHANGES,
    ID,
    KEY_SETTINGS,
    MAX_TIMESTAMP,
    is_id,
    json_type,
    parse_date,
    read_settings,
)
from ..records import KEY_STATUSES, Customer, KeyRecord

MAX_ANSWER = 64 * 1024  # bytes: a key with 256 referrers, CIDRs and paths is ~60 KB
# The operator's ids go into usage rows, bucket ids ({key_id} hash tags), log lines and
# metrics labels (customers): the customer-id alphabet, so none can break one of those.
_KEY_FIELDS = {name: s for name, s in KEY_SETTINGS.items() if name != "expires_at"}
_CUSTOMER_FIELDS = {name: s for name, s in CUSTOMER_CHANGES.items() if name != "status"}


class MalformedAnswer(ValueError):
    """The key API answered 200 with something that is not a valid key record. Its
    message names the field, never the key."""


def read_answer(body: bytes) -> tuple[KeyRecord, Customer]:
    """The record and customer in a 200 answer's body, or MalformedAnswer."""
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except ValueError as exc:  # UnicodeDecodeError included
        raise MalformedAnswer(f"not JSON: {exc}") from None
    except RecursionError:
        raise MalformedAnswer("nested too deeply") from None
    if not isinstance(data, dict):
        raise MalformedAnswer(f"expected a JSON object, got {json_type(data)}")
    try:
        return _record(data)
    except Invalid as exc:
        raise MalformedAnswer(str(exc)) from None


def _record(data: dict[str, Any]) -> tuple[KeyRecord, Customer]:
    fields = dict(data)
    key_id = _id(fields.pop("key_id", None), "key_id")
    customer_id = _id(fields.pop("customer_id", None), "customer_id")
    status = fields.pop("status", "active")
    if status not in KEY_STATUSES:
        raise Invalid("status", f"expected one of {', '.join(KEY_STATUSES)}")
    expires_at = _moment(fields.pop("expires_at", None), "expires_at")
    created_at = _moment(fields.pop("created_at", None), "created_at") or 0
    customer = _customer(fields.pop("customer", None), customer_id)
    settings = read_settings(fields, _KEY_FIELDS)
    record = KeyRecord(
        key_id, customer_id, status=status, expires_at=expires_at, created_at=created_at,
        **settings,
    )  # fmt: skip
    return record, customer


def _customer(raw: Any, customer_id: str) -> Customer:
    """The `customer` object; absent: an active customer without plan caps."""
    if raw is None:
        return Customer(customer_id)
    if not isinstance(raw, dict):
        raise Invalid("customer", f"expected an object, got {json_type(raw)}")
    fields = dict(raw)
    if fields.pop("customer_id", customer_id) != customer_id:
        raise Invalid("customer.customer_id", "differs from the record's customer_id")
    status = fields.pop("status", "active")
    if status not in ("active", "disabled"):
        raise Invalid("customer.status", "expected active or disabled")
    try:
        settings = read_settings(fields, _CUSTOMER_FIELDS)
    except Invalid as exc:
        raise Invalid(f"customer.{exc.field}", exc.problem) from None
    return Customer(customer_id, status=status, **settings)


def _id(raw: Any, name: str) -> str:
    if not isinstance(raw, str) or not is_id(raw):
        raise Invalid(name, "required: 1 to 64 of A-Z a-z 0-9 _ . -")
    return raw


def _moment(raw: Any, name: str) -> int | None:
    """Unix seconds or an ISO date (UTC unless it names a zone); null: none. A moment
    in the past is fine here: an expired key answers 403 key_expired."""
    if raw is None:
        return None
    if isinstance(raw, str):
        try:
            raw = parse_date(raw)
        except ValueError as exc:
            raise Invalid(name, str(exc)) from None
    if not isinstance(raw, int) or isinstance(raw, bool) or not 0 <= raw <= MAX_TIMESTAMP:
        raise Invalid(name, f"expected unix seconds (0 to {MAX_TIMESTAMP}) or an ISO date")
    return raw


# --- the same contract as a JSON Schema (docs/key-api.schema.json is its dump) ---

_ID_SCHEMA = {"type": "string", "pattern": f"^{ID.pattern}$"}
_MOMENT = {"type": ["integer", "string", "null"], "minimum": 0, "maximum": MAX_TIMESTAMP,
           "description": "unix seconds, or an ISO 8601 date or datetime (UTC unless it names "
                          "a zone); null: never"}  # fmt: skip


def answer_schema() -> dict[str, Any]:
    """The JSON Schema of the key API's 200 answer, built from the tables the answer
    is read with, so the document cannot drift from what keyfront accepts."""
    customer = {
        "type": "object",
        "additionalProperties": False,
        "description": "absent: an active customer without plan caps",
        "properties": {
            "customer_id": {**_ID_SCHEMA, "description": "if given, the record's customer_id"},
            "status": {"enum": ["active", "disabled"], "default": "active"},
            **{name: setting.schema for name, setting in _CUSTOMER_FIELDS.items()},
        },
    }
    properties = {
        "key_id": {**_ID_SCHEMA, "description": "your own id of the key (usage, logs)"},
        "customer_id": {**_ID_SCHEMA, "description": "your own id of its customer"},
        "status": {"enum": list(KEY_STATUSES), "default": "active"},
        "expires_at": _MOMENT,
        "created_at": _MOMENT,
        **{name: setting.schema for name, setting in _KEY_FIELDS.items()},
        "customer": customer,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "keyfront key API answer (HTTP 200)",
        "description": 'The key record your key API returns for POST {url} {"key": ...}. '
        "Unset fields fall back to keys.defaults. Unknown fields are refused: a misspelt "
        "restriction must not leave a key unrestricted. 404 means the key is unknown.",
        "type": "object",
        "required": ["key_id", "customer_id"],
        "additionalProperties": False,
        "properties": properties,
    }


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
