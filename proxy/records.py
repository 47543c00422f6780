"""Key and customer records (SPEC section 2), as the store keeps them.

Records are immutable; a change is a new record written through the store, which
then announces it so that every instance's record cache drops its copy.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

from .units import Rate, parse_rate

KeyStatus = Literal["active", "disabled", "revoked"]
CustomerStatus = Literal["active", "disabled"]
DisabledBy = Literal["operator", "customer"]
KEY_STATUSES: tuple[str, ...] = ("active", "disabled", "revoked")
CUSTOMER_STATUSES: tuple[str, ...] = ("active", "disabled")


@dataclass(frozen=True, slots=True)
class Customer:
    """A business customer: owner of keys, bounded by its plan caps."""

    customer_id: str
    name: str = ""
    status: CustomerStatus = "active"
    created_at: int = 0  # unix seconds
    max_rate: Rate | None = None  # plan caps: a key's own settings may not exceed them
    max_burst: int | None = None
    quota_requests: int | None = None  # per calendar month (UTC), one pool for all its keys
    quota_bytes: int | None = None
    max_keys: int | None = None  # live keys (not revoked, not expired); None: see actions
    billing_id: str | None = None  # its id in the billing system (SPEC section 16)
    alert_webhook: str | None = None  # where its alerts are POSTed (SPEC section 16)

    def to_json(self) -> str:
        return _dump(self)

    @classmethod
    def from_json(cls, text: str | bytes) -> Customer:
        return cls(**_load(cls, text))


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One API key's record. Unset (None) fields fall back to `keys.defaults`."""

    key_id: str
    customer_id: str
    name: str = ""
    status: KeyStatus = "active"
    created_at: int = 0  # unix seconds
    expires_at: int | None = None  # unix seconds
    referrers: tuple[str, ...] = ()
    allow_no_referrer: bool | None = None  # None: true exactly when `referrers` is empty
    ips: tuple[str, ...] = ()  # CIDRs, v4 and v6
    paths: tuple[str, ...] = ()  # public path prefixes, e.g. /request/icons/
    rate: Rate | None = None
    burst: int | None = None
    ip_rate: Rate | None = None  # optional bucket per (key, client IP)
    ip_burst: int | None = None
    quota_requests: int | None = None
    quota_bytes: int | None = None
    link_secret: str | None = None
    require_signed_links: bool = False
    version: int = 0  # the signing-secret version of the key string (for `keys roll`)
    # Who set status "disabled" (issue 12 item 11): a customer token may lift only its
    # own disabling, never the operator's suspension. None while active.
    disabled_by: DisabledBy | None = None

    @property
    def suspended(self) -> bool:
        """Disabled by the operator: only an operator (token or CLI) lifts it. A key
        disabled before `disabled_by` existed counts as suspended, the safe reading."""
        return self.status == "disabled" and self.disabled_by != "customer"

    def to_json(self) -> str:
        return _dump(self)

    @classmethod
    def from_json(cls, text: str | bytes) -> KeyRecord:
        data = _load(cls, text)
        for name in ("referrers", "ips", "paths"):
            data[name] = tuple(data.get(name) or ())
        return cls(**data)


def _dump(record: Customer | KeyRecord) -> str:
    data = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if isinstance(value, Rate):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        data[f.name] = value
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def _load(cls: type[Customer | KeyRecord], text: str | bytes) -> dict[str, Any]:
    # Fields a newer keyfront wrote are dropped, so instances of mixed versions can
    # share one store during a rolling upgrade.
    known = {f.name for f in dataclasses.fields(cls)}
    data: dict[str, Any] = {k: v for k, v in json.loads(text).items() if k in known}
    for name in ("rate", "ip_rate", "max_rate"):
        if data.get(name) is not None:
            data[name] = parse_rate(data[name])
    return data
