"""Alerts (SPEC section 16). When a key's usage this month crosses a threshold of its
monthly quota (`alerts.quota_thresholds`, e.g. 80% and 100%), or a customer's usage one
of its pooled quota, or a key's refused share of the last 10 minutes exceeds
`alerts.refusal_spike`, keyfront writes a log line, counts
`keyfront_alerts_total{threshold}` and, when `alerts.secret` is set and the customer
has an `alert_webhook`, POSTs a signed `keyfront.alert` event to it.

Once per threshold, metric and key per month across all instances: only the export
lease's holder checks (every ALERT_EVERY seconds, the keys with usage this hour and a
quota), and a set-if-absent in the store (`export_once`, kept 40 days) decides. The
alert goes through the outbox like usage events (sink `alerts`, sinks/alert.py), so a
customer's endpoint that is down gets it later. Usage counts reach the store every
flush interval, so an alert follows its crossing by a flush interval and a check;
counts that reach the store after their hour ended are checked too (the last hour's
keys, for the first LATE_WINDOW seconds of the next).

The refusal spike is judged on the keys refused this hour, sampled every SPIKE_SAMPLE
seconds from their month-to-date counts: once the samples span SPIKE_WINDOW (10
minutes), the share refused between the oldest sample in the window and now is
compared with the threshold, over at least SPIKE_MIN_REQUESTS requests (one refusal
of one request is no spike). A new lease holder therefore waits 10 minutes.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..config import AlertsConfig, KeyDefaults
from ..records import Customer, KeyRecord
from ..store import OutboxEvent, Scope, Store, UsageRow
from .events import DENIED, iso

log = logging.getLogger("keyfront.alerts")

ALERT_EVERY = 2.0  # seconds between checks by the lease holder
LATE_WINDOW = 600.0  # seconds into an hour during which the last hour's keys are checked
ONCE_TTL = 40 * 86400  # an alert's "sent" mark outlives its month
ALERT_SINK = "alerts"
METRICS = ("requests", "bytes")
SPIKE_WINDOW = 600.0  # SPEC section 16: the refused share over 10 minutes
SPIKE_SAMPLE = 30.0  # seconds between samples of a refused key: 21 a window at most
SPIKE_MIN_REQUESTS = 20  # requests in the window below which no spike is judged
MAX_SAMPLED_KEYS = 100_000  # keys sampled at once (issue 12: bounded tables)


@dataclass(frozen=True, slots=True)
class Alert:
    """What crossed which threshold. `key_id` is None for a customer's pooled quota;
    for a refusal spike, `used` is the refused requests and `limit` all requests of
    the window."""

    customer_id: str
    key_id: str | None
    metric: str  # requests | bytes | refused_share
    threshold: float
    used: int
    limit: int

    def name(self, month: int) -> str:
        return f"{self.key_id or 'c:' + self.customer_id}:{month}:{self.metric}:{self.threshold}"


def month_of(ts: float) -> int:
    t = time.gmtime(ts)
    return calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))


def percent(threshold: float) -> str:
    return f"{threshold * 100:g}%"


def alert_event(alert: Alert, month: int) -> dict[str, Any]:
    """The signed JSON event of SPEC section 16; its id is stable per key (or
    customer), month, metric and threshold, so a repeat is recognised."""
    month_text = time.strftime("%Y-%m", time.gmtime(month))
    return {
        "specversion": "1.0",
        "id": hashlib.sha256(f"keyfront.alert\0{alert.name(month)}".encode()).hexdigest()[:32],
        "source": "keyfront",
        "type": "keyfront.alert",
        "subject": alert.customer_id,
        "time": iso(int(time.time())),
        "datacontenttype": "application/json",
        "data": {
            "threshold": percent(alert.threshold),
            "metric": alert.metric,
            "key_id": alert.key_id,
            "customer_id": alert.customer_id,
            "used": alert.used,
            "limit": alert.limit,
            "month": month_text,
        },
    }


def month_totals(rows: list[UsageRow]) -> dict[str, dict[str, int]]:
    """Per id: requests, bytes and refused (every denied_<code>) summed."""
    totals: dict[str, dict[str, int]] = {}
    for row in rows:
        found = totals.setdefault(row.id, {"requests": 0, "bytes": 0, "refused": 0})
        for field, value in row.counts.items():
            if field.startswith(DENIED):
                found["refused"] += value
            elif field in found:
                found[field] += value
    return totals


class QuotaAlerts:
    def __init__(self, store: Store, config: AlertsConfig, defaults: KeyDefaults) -> None:
        self._store = store
        store.track_usage_keys()  # hour_usage() lists the keys active this hour
        self._thresholds = config.quota_thresholds
        self._spike = config.refusal_spike
        self._send = config.secret is not None
        self._defaults = defaults
        self._last = 0.0
        self._done: set[str] = set()  # marks this process saw taken (bounded: a month's)
        self._month = 0
        # key -> (time, requests answered, refused) samples, month to date
        self._samples: dict[str, deque[tuple[float, int, int]]] = {}
        self.counts: dict[str, int] = {}  # threshold -> alerts, this process (metrics)

    async def check(self, now: float, holder: str) -> None:
        """Alert for every threshold crossed by a key active this hour (and by its
        customer), and for every refusal spike, once."""
        if now - self._last < ALERT_EVERY:
            return
        self._last = now
        month = month_of(now)
        if month != self._month:
            self._month, self._done, self._samples = month, set(), {}
        hour = int(now) // 3600 * 3600
        rows = await self._store.hour_usage(hour)
        if now - hour < LATE_WINDOW:
            # Counts served in an hour's last seconds reach the store after it ends (a
            # flush interval, a retried flush): the crossing is in the last hour's rows,
            # which this hour's list does not name (a quota of 10 whose 10th request
            # came at 00:59:58 was never alerted).
            rows += await self._store.hour_usage(hour - 3600)
        records = await self._store.get_keys(list(dict.fromkeys(row.id for row in rows)))
        limits = {k: v for k, r in records.items() if (v := self._limits(r))}
        refused = set()
        if self._spike is not None:
            refused = {r.id for r in rows if r.id in records and _refused(r.counts)}
        totals = await self._totals("key", [*limits, *(refused - limits.keys())], month, now)
        alerts = [
            Alert(records[key_id].customer_id, key_id, metric, threshold, count, limit)
            for key_id, quotas in limits.items()
            for metric, limit in quotas.items()
            for threshold in self._thresholds
            if (count := totals.get(key_id, {}).get(metric, 0)) >= threshold * limit
        ]
        alerts += await self._customer_alerts({r.customer_id for r in records.values()}, now)
        alerts += self._spikes(refused, records, totals, now)
        for alert in alerts:
            await self._raise(alert, holder)

    def _limits(self, record: KeyRecord) -> dict[str, int]:
        found = {
            "requests": record.quota_requests or self._defaults.quota_requests,
            "bytes": record.quota_bytes or self._defaults.quota_bytes,
        }
        return {metric: limit for metric, limit in found.items() if limit}

    async def _totals(
        self, scope: Scope, ids: list[str], month: int, now: float
    ) -> dict[str, dict[str, int]]:
        if not ids:
            return {}
        return month_totals(await self._store.read_usage(scope, ids, month, int(now) + 1, "day"))

    async def _customer_alerts(self, customer_ids: set[str], now: float) -> list[Alert]:
        """Thresholds of the customers' pooled monthly quotas (SPEC section 3)."""
        pooled: dict[str, Customer] = {}
        for customer_id in sorted(customer_ids):
            customer = await self._store.get_customer(customer_id)
            if customer and (customer.quota_requests or customer.quota_bytes):
                pooled[customer_id] = customer
        totals = await self._totals("customer", list(pooled), self._month, now)
        return [
            Alert(customer_id, None, metric, threshold, count, limit)
            for customer_id, customer in pooled.items()
            for metric, limit in (
                ("requests", customer.quota_requests),
                ("bytes", customer.quota_bytes),
            )
            if limit
            for threshold in self._thresholds
            if (count := totals.get(customer_id, {}).get(metric, 0)) >= threshold * limit
        ]

    def _spikes(
        self,
        refused: set[str],
        records: dict[str, KeyRecord],
        totals: dict[str, dict[str, int]],
        now: float,
    ) -> list[Alert]:
        found: list[Alert] = []
        spike = self._spike
        if spike is None:
            return found
        for key_id in sorted(refused):
            counts = totals.get(key_id, {})
            answered = counts.get("requests", 0) + counts.get("refused", 0)
            samples = self._samples.get(key_id)
            if samples is None:
                if len(self._samples) >= MAX_SAMPLED_KEYS:
                    continue
                samples = self._samples[key_id] = deque()
            if not samples or now - samples[-1][0] >= SPIKE_SAMPLE:
                samples.append((now, answered, counts.get("refused", 0)))
            while len(samples) > 1 and now - samples[1][0] >= SPIKE_WINDOW:
                samples.popleft()  # keep one sample at least a window old
            start, before, refused_before = samples[0]
            window = answered - before
            share_refused = counts.get("refused", 0) - refused_before
            if (now - start >= SPIKE_WINDOW and window >= SPIKE_MIN_REQUESTS
                    and share_refused > spike * window):  # fmt: skip
                customer_id = records[key_id].customer_id
                alert = Alert(customer_id, key_id, "refused_share", spike,
                              share_refused, window)  # fmt: skip
                found.append(alert)
        return found

    async def _raise(self, alert: Alert, holder: str) -> None:
        name = alert.name(self._month)
        if name in self._done:
            return
        if not await self._store.export_once(name, ONCE_TTL):
            self._done.add(name)  # another instance (or an earlier life) sent it
            return
        self._done.add(name)
        label = percent(alert.threshold)
        self.counts[label] = self.counts.get(label, 0) + 1
        log.warning(
            "alert: %s of customer %s at %s of its %s (%d of %d)",
            f"key {alert.key_id}" if alert.key_id else "the pooled quota",
            alert.customer_id, label,
            "refused share over 10 minutes" if alert.metric == "refused_share"
            else f"monthly {alert.metric} quota", alert.used, alert.limit,
        )  # fmt: skip
        customer = await self._store.get_customer(alert.customer_id)
        if not self._send or customer is None or not customer.alert_webhook:
            return
        event = alert_event(alert, self._month)
        body = json.dumps({"url": customer.alert_webhook, "event": event})
        hour = int(time.time()) // 3600 * 3600
        outbox = OutboxEvent(event["id"], int(time.time()), body)
        await self._store.export_enqueue(holder, hour, {}, [outbox], [ALERT_SINK])


def _refused(counts: dict[str, int]) -> bool:
    return any(v for k, v in counts.items() if k.startswith(DENIED))
