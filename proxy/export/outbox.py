"""The usage export (SPEC section 16): closed periods of usage become events in a
durable outbox in the store, and each sink receives them at least once.

Every keyfront process runs an `Exporter`; one of them, holding a lease in the store
(renewed every second, LEASE_TTL long), does the work:

1. The pass. When a period has closed and `settle` more seconds have gone (2 flush
   intervals and a second: the counts of requests served in the period have been
   flushed by then), it reads each key's hourly row of the period's hour, compares it
   with the ledger (what was exported of that row), and writes one event per key that
   gained counts, with the ledger's new entries, to every sink's outbox in one
   atomic, lease-fenced step (events.py). It also reads the LATE_HOURS hours before,
   and every older hour a usage flush marked since (issue 19: the store marks the hours
   of each flush with the counts, the pass clears a mark once that hour's events are
   enqueued): counts that reached the store late, however late within the rows' 35
   days (a flush held back by a store outage, a dead host's spool flushed hours later
   by the next start), become a delta event of their hour's last exported period.
2. Delivery, one task a sink: the oldest waiting events (by period), at most the
   sink's batch size, are delivered; on a 2xx they are removed with the sink's
   progress in one step; otherwise they stay and the task waits an exponential
   backoff (BACKOFF_MIN doubling to BACKOFF_MAX, jittered) before trying again.
3. Alerts (alerts.py), when configured: checked by the same holder, sent through the
   same outbox (sink `alerts`).

Nothing is removed before its sink took it, the outbox lives in the store, and the
ledger makes a pass repeatable: a restart, a `kill -9` or a store outage at any point
leads to the same events with the same ids, delivered again at worst (at least once;
receivers deduplicate on `id`). While a sink's outbox holds `max_pending` events the
pass waits: the periods' usage stays in the store's rows (35 days) until it drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import time
from dataclasses import dataclass, field

from ..config import ExportConfig
from ..errors import StoreError
from ..metrics import Metrics
from ..periodic import stop_tasks
from ..store import OutboxEvent, Store, UsageRow
from .alerts import QuotaAlerts
from .events import Exported, Owner, gained, iso, usage_event
from .sinks import Sink, SinkError

log = logging.getLogger("keyfront.export")

LEASE_TTL = 10.0  # seconds: how long a dead exporter holds the others back
TICK = 1.0  # seconds between looks at the clock, the lease and an empty outbox
LATE_HOURS = 2  # hours before the period's hour read each pass, marked or not
MAX_CATCH_UP = 47  # hours of that window after a gap (older ones are read if marked)
RETAINED_HOURS = 35 * 24  # the hourly rows' retention: older marks are dropped unread
BACKOFF_MIN, BACKOFF_MAX = 1.0, 300.0  # seconds between attempts at a refusing sink
ENQUEUE_CHUNK = 500  # keys per atomic enqueue
# Tests only: a period of this many seconds instead of `export.period`, so that an
# end-to-end test sees periods close without waiting for a minute's end. Not config:
# the SPEC's periods are 1m, 5m and 1h.
TEST_PERIOD_ENV = "KEYFRONT_TEST_EXPORT_PERIOD"


@dataclass
class SinkCounters:
    """This process's view of one sink, for /metrics."""

    delivered: int = 0  # events taken by the sink (2xx), this process
    errors: int = 0  # failed deliveries, this process
    waiting: int = 0  # events in the outbox, as last read from the store
    status: dict[str, str] = field(default_factory=dict)


def holder_name(listen: object) -> str:
    """The same on a restart of the same instance, so that it takes its own lease back
    at once instead of waiting LEASE_TTL; distinct per host, public listener (two
    instances of one host cannot share it) and worker."""
    worker = os.environ.get("KEYFRONT_WORKER", "0")
    return f"{socket.gethostname()}:{listen}:{worker}"


def period_seconds(config: ExportConfig) -> int:
    override = os.environ.get(TEST_PERIOD_ENV, "")
    if override.isdigit() and int(override) > 0 and 3600 % int(override) == 0:
        return int(override)
    return config.period


class Exporter:
    """The usage export (`config`, its `sinks`) and the quota alerts (`alerts`, sent
    through `alert_sink`) of one process; either may be absent."""

    def __init__(
        self,
        store: Store,
        config: ExportConfig | None,
        sinks: list[Sink],
        flush_interval: float,
        holder: str,
        *,
        alerts: QuotaAlerts | None = None,
        alert_sink: Sink | None = None,
    ) -> None:
        self._store = store
        store.track_usage_keys()
        if config is not None:
            store.track_touched_hours()
        self._config = config
        self._usage_sinks = sinks
        self._sinks = [*sinks, *([alert_sink] if alert_sink else [])]
        self._alerts = alerts
        self._holder = holder
        self._max_pending = config.max_pending if config else 100_000
        self.period = period_seconds(config) if config else 3600
        self.settle = 2 * flush_interval + 1.0
        self.counters = {sink.name: SinkCounters() for sink in self._sinks}
        self._task: asyncio.Task[None] | None = None
        self._deliveries: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._store_ok_since: float | None = None
        self._failing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage export")

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._deliveries) if t is not None]
        await stop_tasks(tasks)
        self._task, self._deliveries = None, []
        for sink in self._sinks:
            await sink.close()

    def publish(self, metrics: Metrics) -> None:
        """Copy this process's counts into the metrics (SPEC section 16's names)."""
        counters = self.counters.items()
        metrics.counters["export_delivered"] = {name: c.delivered for name, c in counters}
        metrics.counters["export_errors"] = {name: c.errors for name, c in counters}
        waiting = {name: float(c.waiting) for name, c in counters}
        metrics.labelled_host_gauges["export_pending"] = ("sink", waiting)
        if self._alerts is not None:
            metrics.counters["alerts"] = dict(self._alerts.counts)

    # --- the loop: lease, pass, status ---

    async def _run(self) -> None:
        while True:
            leading = False
            try:
                leading = await self.step(time.time())
                self._failing = False
            except StoreError as exc:
                self._store_ok_since = None
                if not self._failing:  # once per outage
                    log.warning("usage export: the store failed (%s); retrying every second", exc)
                self._failing = True
            except Exception:  # a bug must not end the export for the process's life
                log.exception("usage export: the pass failed; it runs again in %.0f s", TICK)
            self._lead(leading)
            await asyncio.sleep(TICK)

    async def step(self, now: float) -> bool:
        """Take or renew the lease; its holder runs the pass. Whether this process
        holds the lease. StoreError if the store failed."""
        leading = await self._store.export_lease(self._holder, LEASE_TTL)
        if self._store_ok_since is None:
            self._store_ok_since = now
        if leading and self._config is not None:
            await self.run_pass(now)
        if leading and self._alerts is not None:
            await self._alerts.check(now, self._holder)
            self._wake.set()
        await self._read_status()
        return leading

    def _lead(self, leading: bool) -> None:
        """Deliver while this process holds the lease; stop when it lost it."""
        running = [t for t in self._deliveries if not t.done()]
        if leading and not running:
            self._deliveries = [
                asyncio.create_task(self._deliver(sink), name=f"export to {sink.name}")
                for sink in self._sinks
            ]
        elif not leading and running:
            for task in running:
                task.cancel()
            self._deliveries = []

    async def _read_status(self) -> None:
        for sink in self._sinks:
            counters = self.counters[sink.name]
            counters.waiting, counters.status = await self._store.export_status(sink.name)

    # --- the pass ---

    async def run_pass(self, now: float) -> None:
        """Export the newest period closed `settle` seconds ago, unless it was, and
        the late counts of the hours before it."""
        if self._store_ok_since is None or now - self._store_ok_since < self.settle:
            return  # the store is back: let the workers flush what they held first
        length = self.period
        closed = int(now - self.settle) // length * length - length
        marks = await self._store.export_marks()
        passed = int(marks["passed"]) if "passed" in marks else None
        if passed is not None and passed >= closed:
            return
        if any(self.counters[s.name].waiting >= self._max_pending for s in self._usage_sinks):
            log.warning(
                "usage export: an outbox holds %d events; the pass waits", self._max_pending
            )
            return
        last_hour = closed // 3600 * 3600
        first_hour = (passed if passed is not None else closed) // 3600 * 3600
        first_hour = max(first_hour - LATE_HOURS * 3600, last_hour - MAX_CATCH_UP * 3600)
        # Read before the rows: a mark set again after this (a fresh token) is kept.
        touched = await self._store.export_touched()
        oldest = last_hour - RETAINED_HOURS * 3600
        for hour in [h for h in touched if h < oldest]:  # its rows are gone or going
            await self._store.export_untouch(hour, touched[hour])
        late = {h for h in touched if oldest <= h < first_hour}
        for hour in sorted(late.union(range(first_hour, last_hour + 1, 3600))):
            target = closed if hour == last_hour else hour + 3600 - length
            if not await self._export_hour(hour, target):
                return  # the lease went to another exporter
            if hour in touched and target == hour + 3600 - length:
                # Only now that its events are enqueued: a death before leaves the
                # mark, and the ledger makes the next pass's re-scan harmless.
                await self._store.export_untouch(hour, touched[hour])
        await self._store.set_export_mark("passed", str(closed))
        self._wake.set()

    async def _export_hour(self, hour: int, target: int) -> bool:
        """Events for what each key's row of `hour` gained since the ledger's entry,
        as period `target`. False if the lease was lost meanwhile."""
        rows = await self._store.hour_usage(hour)
        ledger = {k: Exported.loads(v) for k, v in (await self._store.export_ledger(hour)).items()}
        changed: list[tuple[UsageRow, dict[str, int], int]] = []
        for row in rows:
            before = ledger.get(row.id)
            delta = gained(row.counts, before.counts if before else {})
            if delta:
                revision = before.revision + 1 if before and before.period == target else 0
                changed.append((row, delta, revision))
        owners = await self._owners([row.id for row, _, _ in changed])
        names = [sink.name for sink in self._usage_sinks]
        for i in range(0, len(changed), ENQUEUE_CHUNK):
            chunk = changed[i : i + ENQUEUE_CHUNK]
            entries, events = {}, []
            for row, delta, revision in chunk:
                event = usage_event(
                    row.id, owners[row.id], target, self.period, revision=revision, counts=delta
                )
                events.append(OutboxEvent(event["id"], target, json.dumps(event)))
                entries[row.id] = Exported(target, revision, row.counts).dumps()
            if not await self._store.export_enqueue(self._holder, hour, entries, events, names):
                return False
        return True

    async def _owners(self, key_ids: list[str]) -> dict[str, Owner]:
        """Each key's customer and its billing id, as the records say now. A key with
        no record (an external key the key API answers for) has no known customer."""
        records = await self._store.get_keys(key_ids)
        customers: dict[str, Owner] = {}
        for record in records.values():
            if record.customer_id not in customers:
                customer = await self._store.get_customer(record.customer_id)
                billing = customer.billing_id if customer else None
                customers[record.customer_id] = Owner(record.customer_id, billing)
        nobody = Owner(None, None)
        return {k: customers[r.customer_id] if (r := records.get(k)) else nobody for k in key_ids}

    # --- delivery ---

    async def _deliver(self, sink: Sink) -> None:
        failures = 0
        while True:
            try:
                delivered = await self.deliver_once(sink)
            except StoreError:
                await asyncio.sleep(TICK)
                continue
            except SinkError as exc:
                failures += 1
                await self._failed(sink, exc, failures)
                continue
            except Exception as exc:  # a bug (a body the sink cannot read): kept, retried
                log.exception("usage export to %s failed unexpectedly", sink.name)
                self.counters[sink.name].errors += 1
                failures += 1
                await self._failed(sink, SinkError(f"internal error: {exc!r}"), failures)
                continue
            failures = 0
            if not delivered:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), TICK)

    async def deliver_once(self, sink: Sink) -> int:
        """Deliver the sink's oldest waiting events, at most its batch size, and remove
        them once it took them. How many; SinkError if it did not take them."""
        batch = await self._store.export_peek(sink.name, sink.batch_size)
        if not batch:
            return 0
        counters = self.counters[sink.name]
        try:
            await sink.deliver([json.loads(event.body) for event in batch])
        except SinkError as exc:
            counters.errors += 1
            taken = [e for e in batch if e.id in exc.taken]  # a sink that sends one by one
            if taken:
                await self._ack(sink, taken)
            raise
        await self._ack(sink, batch)
        return len(batch)

    async def _ack(self, sink: Sink, events: list[OutboxEvent]) -> None:
        self.counters[sink.name].delivered += len(events)
        status = {"last_period": iso(max(e.period for e in events)), "delivered_at": _now()}
        with contextlib.suppress(StoreError):  # not removed: delivered again, same ids
            await self._store.export_ack(sink.name, [e.id for e in events], status)

    async def _failed(self, sink: Sink, exc: SinkError, failures: int) -> None:
        delay = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)
        log.warning("usage export to %s failed (%s); again in %.1f s", sink.name, exc, delay)
        with contextlib.suppress(StoreError):
            await self._store.export_note(sink.name, {"last_error": str(exc)[:500],
                                                      "last_error_at": _now()})  # fmt: skip
        await asyncio.sleep(delay)


def _now() -> str:
    return str(int(time.time()))
