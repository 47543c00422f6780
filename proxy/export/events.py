"""Usage events (SPEC section 16): what one key used in one period, as a CloudEvents
1.0 object, and the ledger entry that remembers what was exported.

The store keeps usage per key and hour (SPEC section 4). An exported period (1m, 5m
or 1h) lies inside one hour, so an event carries what the key's hourly row gained
since the ledger's last entry for that row: the counts that reached the store by the
period's end plus the settle delay. An event's `id` is a hash of (key, period,
revision), so the same key, period and revision always give the same id. Counts that
reach the store after their period was exported (a flush delayed by a store outage)
go out as the next revision of the row's last exported period: a new id carrying
only the difference.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

COUNTS = ("requests", "bytes", "hits", "misses", "not_modified")
DENIED = "denied_"  # usage rows count refusals as denied_<code>


@dataclass(frozen=True, slots=True)
class Exported:
    """The ledger entry of one key's hourly row: the counts exported from it so far,
    and the period and revision of the last event that carried some of them."""

    period: int
    revision: int
    counts: dict[str, int] = field(default_factory=dict)

    def dumps(self) -> str:
        return json.dumps([self.period, self.revision, self.counts], separators=(",", ":"))

    @classmethod
    def loads(cls, text: str) -> Exported:
        period, revision, counts = json.loads(text)
        return cls(int(period), int(revision), {str(k): int(v) for k, v in counts.items()})


def gained(now: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """What a row gained: counters only grow, so a field that did not is left out."""
    return {k: v - before.get(k, 0) for k, v in now.items() if v > before.get(k, 0)}


def event_id(key_id: str, period: int, revision: int) -> str:
    """Stable: the same key, period and revision always give the same id."""
    digest = hashlib.sha256(f"keyfront.usage\0{key_id}\0{period}\0{revision}".encode())
    return digest.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Owner:
    """Whose key it is, as the records say when the event is made."""

    customer_id: str | None
    billing_id: str | None


def usage_event(
    key_id: str, owner: Owner, period: int, length: int, *, revision: int, counts: dict[str, int]
) -> dict[str, Any]:
    """The CloudEvents 1.0 object of SPEC section 16 (structured mode, JSON data)."""
    denied = {k.removeprefix(DENIED): v for k, v in sorted(counts.items()) if k.startswith(DENIED)}
    data: dict[str, Any] = {
        "key_id": key_id,
        "customer_id": owner.customer_id,
        "billing_id": owner.billing_id,
        "period_start": iso(period),
        "period_end": iso(period + length),
        **{name: counts.get(name, 0) for name in COUNTS},
        "denied": denied,
        "revision": revision,  # 0, then one more for each delta of late counts
    }
    return {
        "specversion": "1.0",
        "id": event_id(key_id, period, revision),
        "source": "keyfront",
        "type": "keyfront.usage",
        "subject": owner.customer_id,
        "time": iso(period),
        "datacontenttype": "application/json",
        "data": data,
    }


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
