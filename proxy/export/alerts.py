"""Quota alerts (SPEC section 16): when a key's usage this month crosses a threshold of
its monthly quota (`alerts.quota_thresholds`, e.g. 80% and 100%), keyfront writes a
log line, counts `keyfront_alerts_total{threshold}` and, when `alerts.secret` is set
and the customer has an `alert_webhook`, POSTs a signed `keyfront.alert` event to it.

Once per threshold, metric and key per month across all instances: only the export
lease's holder checks (every ALERT_EVERY seconds, the keys with usage this hour and a
quota), and a set-if-absent in the store (`export_once`, kept 40 days) decides. The
alert goes through the outbox like usage events (sink `alerts`, sinks/alert.py), so a
customer's endpoint that is down gets it later. Usage counts reach the store every
flush interval, so an alert follows its crossing by a flush interval and a check.

Not built yet: thresholds of a customer's pooled quota, and the refusal spike.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import logging
import time
from typing import Any

from ..config import AlertsConfig, KeyDefaults
from ..records import KeyRecord
from ..store import OutboxEvent, Store
from .events import iso

log = logging.getLogger("keyfront.alerts")

ALERT_EVERY = 2.0  # seconds between checks by the lease holder
ONCE_TTL = 40 * 86400  # an alert's "sent" mark outlives its month
ALERT_SINK = "alerts"
METRICS = ("requests", "bytes")


def month_of(ts: float) -> int:
    t = time.gmtime(ts)
    return calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))


def percent(threshold: float) -> str:
    return f"{threshold * 100:g}%"


def alert_event(
    record: KeyRecord, metric: str, threshold: float, *, used: int, limit: int, month: int
) -> dict[str, Any]:
    """The signed JSON event of SPEC section 16; its id is stable per key, month,
    metric and threshold, so a repeat is recognised."""
    month_text = time.strftime("%Y-%m", time.gmtime(month))
    name = f"keyfront.alert\0{record.key_id}\0{month_text}\0{metric}\0{threshold}"
    return {
        "specversion": "1.0",
        "id": hashlib.sha256(name.encode()).hexdigest()[:32],
        "source": "keyfront",
        "type": "keyfront.alert",
        "subject": record.customer_id,
        "time": iso(int(time.time())),
        "datacontenttype": "application/json",
        "data": {
            "threshold": percent(threshold),
            "metric": metric,
            "key_id": record.key_id,
            "customer_id": record.customer_id,
            "used": used,
            "limit": limit,
            "month": month_text,
        },
    }


class QuotaAlerts:
    def __init__(self, store: Store, config: AlertsConfig, defaults: KeyDefaults) -> None:
        self._store = store
        self._thresholds = config.quota_thresholds
        self._send = config.secret is not None
        self._defaults = defaults
        self._last = 0.0
        self._done: set[str] = set()  # marks this process saw taken (bounded: a month's)
        self._month = 0
        self.counts: dict[str, int] = {}  # threshold -> alerts, this process (metrics)

    async def check(self, now: float, holder: str) -> None:
        """Alert for every threshold crossed by a key active this hour, once."""
        if now - self._last < ALERT_EVERY:
            return
        self._last = now
        month = month_of(now)
        if month != self._month:
            self._month, self._done = month, set()
        rows = await self._store.hour_usage(int(now) // 3600 * 3600)
        records = await self._store.get_keys([row.id for row in rows])
        limits = {k: self._limits(r) for k, r in records.items()}
        limits = {k: v for k, v in limits.items() if v}
        if not limits:
            return
        used: dict[str, dict[str, int]] = {}
        for row in await self._store.read_usage("key", list(limits), month, int(now) + 1, "day"):
            totals = used.setdefault(row.id, {})
            for metric in METRICS:
                totals[metric] = totals.get(metric, 0) + row.counts.get(metric, 0)
        for key_id, quotas in limits.items():
            for metric, limit in quotas.items():
                count = used.get(key_id, {}).get(metric, 0)
                for threshold in self._thresholds:
                    if count >= threshold * limit:
                        await self._once(records[key_id], metric, threshold, count, limit, holder)

    def _limits(self, record: KeyRecord) -> dict[str, int]:
        found = {
            "requests": record.quota_requests or self._defaults.quota_requests,
            "bytes": record.quota_bytes or self._defaults.quota_bytes,
        }
        return {metric: limit for metric, limit in found.items() if limit}

    async def _once(  # noqa: PLR0917 (the alert's facts, in the order they are read)
        self, record: KeyRecord, metric: str, threshold: float, used: int, limit: int, holder: str
    ) -> None:
        name = f"quota:{record.key_id}:{self._month}:{metric}:{threshold}"
        if name in self._done:
            return
        if not await self._store.export_once(name, ONCE_TTL):
            self._done.add(name)  # another instance (or an earlier life) sent it
            return
        self._done.add(name)
        label = percent(threshold)
        self.counts[label] = self.counts.get(label, 0) + 1
        log.warning(
            "alert: key %s of customer %s at %s of its monthly %s quota (%d of %d)",
            record.key_id, record.customer_id, label, metric, used, limit,
        )  # fmt: skip
        customer = await self._store.get_customer(record.customer_id)
        if not self._send or customer is None or not customer.alert_webhook:
            return
        event = alert_event(record, metric, threshold, used=used, limit=limit, month=self._month)
        body = json.dumps({"url": customer.alert_webhook, "event": event})
        hour = int(time.time()) // 3600 * 3600
        outbox = OutboxEvent(event["id"], int(time.time()), body)
        await self._store.export_enqueue(holder, hour, {}, [outbox], [ALERT_SINK])
