"""The values of record settings, checked one way for the command line and the admin
API (SPEC section 2).

Each `parse_*` takes text and raises ValueError naming the problem (argparse shows it
after the option's name). `read_settings` reads the settings of a JSON object through
a table of `Setting`s and raises `Invalid` naming the field; the same tables give the
admin API's OpenAPI schemas, so what is documented is what is accepted.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from ..config import Route
from ..errors import Invalid
from ..keys import is_key_id, key_id_of
from ..referrers import validate_referrer_pattern
from ..units import MAX_DURATION, parse_duration, parse_rate, parse_size

MIN_LINK_SECRET = 16
# Bounds on what the CLI and admin API accept (issue 12 item 10: a 400-digit number was
# an OverflowError and a 500 after the write). Text is measured before it is parsed.
MAX_COUNT = 2**53 - 1  # exact in JSON and in a float; fits SQLite's 64-bit integers
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z
MAX_TEXT = 1024  # a name, a path prefix, a link secret, a date
MAX_ITEMS = 256  # referrer patterns, CIDRs or path prefixes of one key
MAX_URL = 2048  # an alert webhook URL
MAX_BILLING_ID = 255
BILLING_ID = re.compile(r"[!-~]+")  # printable ASCII, no space


def _short(text: str, limit: int = MAX_TEXT) -> str:
    if len(text) > limit:
        raise ValueError(f"at most {limit} characters")
    return text


# A customer id, or a key id an operator's key API gives (SPEC section 13). Length
# first, so the match never sees more than 64 characters.
ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def is_id(text: str) -> bool:
    return len(text) <= 64 and ID.fullmatch(text) is not None


def parse_customer_id(text: str) -> str:
    if not is_id(text):
        raise ValueError(f"{text!r} is not a customer id (1-64 of A-Z a-z 0-9 _ . -)")
    return text


def parse_key_id(text: str) -> str:
    """A key id, or the id of a full key string (for convenience)."""
    key_id = key_id_of(text) or (text if is_key_id(text) else None)
    if key_id is None:
        raise ValueError(f"{text!r} is neither a key id nor a key")
    return key_id


def parse_external_id(text: str) -> str:
    """A key id from an operator's key API (SPEC section 13, keylookup/answer.py)."""
    if not is_id(text):
        raise ValueError(f"{text[:64]!r} is not a key id (1-64 of A-Z a-z 0-9 _ . -)")
    return text


def parse_usage_key_id(text: str) -> str:
    """Whose usage: a keyfront key id (or key), or the operator's own key id of an
    external key, which usage rows are kept under (SPEC section 13)."""
    try:
        return parse_key_id(text)
    except ValueError:
        return parse_external_id(text)


def parse_positive(text: str) -> int:
    if len(text) > 20 or not text.isascii() or not text.isdigit() or int(text) < 1:
        raise ValueError(f"{_short(text, 40)!r} is not a positive integer")
    return _at_most(int(text), MAX_COUNT)


def _at_most(value: int, limit: int) -> int:
    if value > limit:
        raise ValueError(f"{value} is too large (at most {limit})")
    return value


def parse_cidr(text: str) -> str:
    return str(ipaddress.ip_network(_short(text, 64), strict=False))


def parse_path_prefix(text: str) -> str:
    if not _short(text).startswith("/"):
        raise ValueError(f"{text!r}: a path prefix starts with '/', e.g. /files/icons/")
    return text


def within_routes(prefix: str, routes: Iterable[Route]) -> bool:
    """Whether path prefix `prefix` shares a path with some route: it lies under the
    route's prefix, or the route under it (`/` covers every route)."""
    return any(prefix.startswith(r.prefix) or r.prefix.startswith(prefix) for r in routes)


def parse_referrer(text: str) -> str:
    problem = validate_referrer_pattern(text)
    if problem:
        raise ValueError(problem)
    return text


def parse_link_secret(text: str) -> str:
    if len(_short(text)) < MIN_LINK_SECRET:
        raise ValueError(f"a link secret has at least {MIN_LINK_SECRET} characters")
    return text


def parse_billing_id(text: str) -> str:
    """The customer's id in the billing system (SPEC section 16: Stripe's `cus_...`,
    Lago's external customer id): printable ASCII without spaces."""
    if not 1 <= len(text) <= MAX_BILLING_ID or not BILLING_ID.fullmatch(text):
        raise ValueError(f"{_short(text, 64)!r} is not 1-{MAX_BILLING_ID} printable characters")
    return text


def parse_alert_webhook(text: str) -> str:
    """A URL keyfront will POST the customer's alerts to (SPEC section 16). Whoever sets
    it chooses where a server inside the provider's network sends requests (SSRF), so:
    https to a public host; plain http only to this host's loopback (a local relay);
    never an IP literal that is private, link-local (cloud metadata), multicast or
    reserved; no credentials in the URL (they would be logged). A name is checked
    again when it resolves, at delivery."""
    parts = urlsplit(_short(text, MAX_URL))
    try:
        host, port = parts.hostname or "", parts.port
    except ValueError:
        raise ValueError(f"{_short(text, 64)!r} has a bad port") from None
    if not text.isascii() or any(c.isspace() for c in text) or parts.fragment:
        raise ValueError("expected an ASCII URL without spaces or #fragment")
    if parts.scheme not in ("http", "https") or not host or parts.username is not None:
        raise ValueError("expected https://host/path (no user:password@)")
    if parts.scheme == "http" and not is_loopback(host):
        raise ValueError("plain http only to 127.0.0.1, ::1 or localhost: use https")
    if parts.scheme == "https" and not _public_host(host):
        raise ValueError(f"{host} is not a public host (private, loopback or link-local)")
    del port
    return text


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _public_host(host: str) -> bool:
    """A name (resolved at delivery) that is not local, or a global IP literal."""
    try:
        return ipaddress.ip_address(host).is_global
    except ValueError:
        return host != "localhost" and not host.endswith((".localhost", ".local", ".internal"))


def parse_expiry(text: str) -> int:
    """Unix seconds from an ISO date or datetime (UTC unless it names a zone) or from a
    duration from now (`30d`). A bare number is refused: seconds, or a timestamp?"""
    try:
        moment = datetime.fromisoformat(_short(text, 64))
    except ValueError:
        if text.strip().isdigit():
            raise ValueError(f"{text!r}: write a duration with its unit (30d) or a date") from None
        try:
            return int(time.time() + parse_duration(text))
        except ValueError:
            raise ValueError(f"{text!r} is neither an ISO date nor a duration (30d)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _future(int(moment.timestamp()), text)


def parse_date(text: str) -> int:
    """Unix seconds from an ISO date or datetime, UTC unless it names a zone."""
    moment = datetime.fromisoformat(_short(text, 64))
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


def _future(moment: int, given: object) -> int:
    if moment <= time.time():
        raise ValueError(f"{given!r} is in the past")
    if moment > MAX_TIMESTAMP:
        raise ValueError(f"{given!r} is after the year 9999")
    return moment


# --- settings in JSON (the admin API) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setting:
    """A settable record field in JSON: its JSON Schema, how to read a value (raising
    ValueError), and what null means (unset; `nullable=False`: refused)."""

    schema: dict[str, Any]
    read: Callable[[Any], Any]
    nullable: bool = True
    unset: Any = None


def _expect(kind: type, what: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        # bool is an int to Python, not to JSON: true is no count, 1 is no flag.
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            raise ValueError(f"expected {what}, got {json_type(value)}")
        return value

    return check


_any_string, _boolean = _expect(str, "a string"), _expect(bool, "true or false")
_any_integer = _expect(int, "an integer")


def _string(value: Any) -> str:
    return _short(_any_string(value))


def _integer(value: Any) -> int:
    """An integer that fits the store (SQLite: 64 bits) and JSON (53 bits), either sign."""
    number = _any_integer(value)
    if abs(number) > MAX_COUNT:
        raise ValueError(f"{'-' if number < 0 else ''}{len(str(abs(number)))} digits: too large "
                         f"(at most {MAX_COUNT})")  # fmt: skip
    return int(number)


def json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    return names.get(type(value), "an array" if isinstance(value, list) else "an object")


def _text(parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    return lambda value: parse(_string(value))


def _positive(value: Any) -> int:
    if _integer(value) < 1:
        raise ValueError(f"{value} is not a positive integer")
    return int(value)


def _size(value: Any) -> int:
    return _positive(value) if not isinstance(value, str) else _positive(parse_size(value))


def _grace(value: Any) -> float:
    if isinstance(value, str):
        return parse_duration(value)
    if _integer(value) < 0:
        raise ValueError(f"{value} is negative")
    if value > MAX_DURATION:
        raise ValueError(f"{value} is more than a century")
    return float(value)


def _expiry(value: Any) -> int:
    return parse_expiry(value) if isinstance(value, str) else _future(_integer(value), value)


def _list_of(parse: Callable[[str], str]) -> Callable[[Any], tuple[str, ...]]:
    def read(value: Any) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise ValueError(f"expected an array of strings, got {json_type(value)}")
        if len(value) > MAX_ITEMS:
            raise ValueError(f"at most {MAX_ITEMS} items")
        return tuple(parse(_string(item)) for item in value)

    return read


def _choice(*choices: str) -> Setting:
    def read(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return str(value)

    return Setting({"enum": list(choices)}, read, nullable=False)


def _nullable(*types: str, **more: Any) -> dict[str, Any]:
    return {"type": [*types, "null"], **more}


def _strings(parse: Callable[[str], str], description: str) -> Setting:
    schema = {"type": ["array", "null"], "items": {"type": "string"}, "description": description}
    return Setting(schema, _list_of(parse), unset=())


NAME = Setting({"type": "string"}, _string, nullable=False)
RATE = Setting(_nullable("string", examples=["10/s", "600/m"]), _text(parse_rate))
COUNT = Setting(_nullable("integer", minimum=1), _positive)
BYTES = Setting(_nullable("integer", "string", examples=[1073741824, "1GiB"]), _size)
STATUS = _choice("active", "disabled")
KEY_SETTINGS: dict[str, Setting] = {  # KeyRecord fields
    "name": NAME,
    "referrers": _strings(parse_referrer, "example.com, *.example.com, https://host/path/*"),
    "allow_no_referrer": Setting(_nullable("boolean"), _boolean),
    "ips": _strings(parse_cidr, "CIDRs, IPv4 and IPv6"),
    "paths": _strings(parse_path_prefix, "path prefixes, each starting with /"),
    "rate": RATE,
    "burst": COUNT,
    "ip_rate": RATE,
    "ip_burst": COUNT,
    "quota_requests": COUNT,
    "quota_bytes": BYTES,
    "expires_at": Setting(
        _nullable("integer", "string", description="unix seconds, an ISO date, or 30d"), _expiry
    ),
    "require_signed_links": Setting({"type": "boolean"}, _boolean, nullable=False),
    "link_secret": Setting(
        _nullable("string", minLength=MIN_LINK_SECRET), _text(parse_link_secret)
    ),
}
CUSTOMER_SETTINGS: dict[str, Setting] = {  # Customer fields: the plan caps
    "name": NAME,
    "max_rate": RATE,
    "max_burst": COUNT,
    "quota_requests": COUNT,
    "quota_bytes": BYTES,
    "max_keys": COUNT,
    # SPEC section 16: the billing system's id of the customer, and where its alerts go
    "billing_id": Setting(_nullable("string", maxLength=MAX_BILLING_ID), _text(parse_billing_id)),
    "alert_webhook": Setting(
        _nullable("string", format="uri", description="https to a public host"),
        _text(parse_alert_webhook),
    ),
}
KEY_CHANGES = {**KEY_SETTINGS, "status": STATUS}
# An imported key's row (SPEC section 13): a key revoked in the operator's system comes
# in revoked, so that it answers key_revoked rather than key_unknown.
KEY_IMPORT = {**KEY_SETTINGS, "status": _choice("active", "disabled", "revoked")}
CUSTOMER_CHANGES = {**CUSTOMER_SETTINGS, "status": STATUS}
TOKEN_SETTINGS = {"name": NAME}
DEFAULT_GRACE = "24h"  # `keys roll`: how long the replaced key keeps working
GRACE_HELP = "how long the old key keeps working: 24h, or seconds (default 24h; 0: not at all)"
ROLL_SETTINGS = {
    "grace": Setting({"type": ["string", "integer"], "description": GRACE_HELP}, _grace, False)
}


def read_settings(body: Mapping[str, Any], settings: Mapping[str, Setting]) -> dict[str, Any]:
    """The record fields a JSON object sets; Invalid names the first bad field."""
    found: dict[str, Any] = {}
    for name, value in body.items():
        setting = settings.get(name)
        if setting is None:
            raise Invalid(name, "unknown field")
        if value is None and not setting.nullable:
            raise Invalid(name, "may not be null")
        try:
            found[name] = setting.unset if value is None else setting.read(value)
        except ValueError as exc:
            raise Invalid(name, str(exc)) from None
    return found
