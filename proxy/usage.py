"""Usage metering for billing and analytics (SPEC section 4).

Per key and per customer, per hour (UTC): `requests` (served 2xx/3xx), `bytes` (body
bytes actually sent), `hits`, `misses`, `not_modified`, and `denied_<code>` for
refused requests. Counted in process, once per request in the key's row (a dict
increment, no I/O); a customer's rows are its keys' rows summed at flush. Flushed every
`usage.flush_interval` and at shutdown as one batch with a unique id.
The store applies a batch at most once (SQLite: one transaction that records the id;
Redis: one script per row that sets a marker with the counts), so a flush that fails
half-way is retried whole without counting anything twice. While the store is down
the counts stay here, bounded by `usage.max_pending` rows; past the bound new rows are
dropped, counted in `dropped` and logged once per outage.

Analytics (SPEC section 15, `usage.analytics`): beside each key row, a `Traffic` of
sketches (proxy/analytics.py) counts the request's referrer origin, object and client
address, and two exact counters count requests without a referrer (`no_referrer`
served, `refused_no_referrer`). A customer's sketches are its keys' merged at flush.
The sketch rows are bounded with the counter rows, and further by MAX_TRAFFIC_ROWS
(each may hold 6 x 64 items of up to 256 characters, ~100 KiB at worst).
"""

from __future__ import annotations

import calendar
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from .analytics import Traffic, merged_sketches, referrer_of
from .errors import StoreError
from .periodic import Periodic
from .sketch import Sketch
from .store.base import Grain, Scope, UsageRow, day_of
from .xcache import HIT_STATES, XCache

if TYPE_CHECKING:  # exchange -> record_cache -> store -> usage: types only here
    from .exchange import Exchange

log = logging.getLogger(__name__)

FIELDS = ("requests", "bytes", "hits", "misses", "not_modified")
# The rows with sketches, at most: ~400 MiB if every one were full of 256-character
# values (a store outage of many hours with thousands of keys under attack); a row past
# it keeps its exact counters.
MAX_TRAFFIC_ROWS = 4096
Row = tuple[str, str, int]  # key, customer, hour


class UsageLedger(Protocol):
    """The store's side (SqliteStore, RedisStore)."""

    async def add_usage(self, batch_id: str, rows: list[UsageRow]) -> None:
        """Add hourly rows (and their daily roll-ups), at most once per batch id."""
        ...

    async def read_usage(
        self, scope: Scope, ids: Iterable[str], start: int, end: int, grain: Grain
    ) -> list[UsageRow]:
        """Rows of `grain` ("hour" or "day"; "month" is summed from days) whose
        period starts in [start, end)."""
        ...


class UsageMeter:
    def __init__(
        self, ledger: UsageLedger, flush_interval: float, max_pending: int, analytics: bool = True
    ) -> None:
        self._ledger = ledger
        self._max_pending = max_pending
        self._pending: dict[Row, dict[str, int]] = {}
        self._traffic: dict[Row, Traffic] | None = {} if analytics else None
        self._max_traffic = min(max_pending, MAX_TRAFFIC_ROWS)
        self._retry: tuple[str, list[UsageRow]] | None = None  # a batch the store refused
        self._batches = 0
        self._prefix = f"{os.getpid()}-{os.urandom(4).hex()}"
        self._flusher = Periodic(
            "usage flush", flush_interval, self._flush_quietly, final=self._flush_all
        )
        self.dropped = 0  # since the last successful flush: the outage's, for its log line
        self.dropped_total = 0  # for the life of the process: keyfront_usage_dropped_requests

    @property
    def pending(self) -> int:
        """Rows waiting for the store (for the keyfront_usage_pending gauge)."""
        return len(self._pending) + (len(self._retry[1]) if self._retry else 0)

    def record(self, exchange: Exchange, status: int, code: str | None) -> None:
        """Count one request whose key is known; `code` is its refusal's SPEC code."""
        record = exchange.entry.record if exchange.entry is not None else None
        if record is None:
            return  # no key to bill: refused before the record (metrics count those)
        row = (record.key_id, record.customer_id, int(time.time()) // 3600 * 3600)
        counts = self._pending.get(row)
        if counts is None:
            if self.pending >= self._max_pending:
                if self.dropped == 0:
                    log.error("usage buffer full (%d rows): new counts are dropped until the "
                              "store answers", self._max_pending)  # fmt: skip
                self.dropped += 1
                self.dropped_total += 1
                return
            counts = self._pending[row] = {}
        _count(counts, status, exchange.sent, exchange.cache, code)
        if self._traffic is not None and (code is not None or status < 400):
            self._collect(self._traffic, row, counts, exchange, code)

    def _collect(
        self,
        rows: dict[Row, Traffic],
        row: Row,
        counts: dict[str, int],
        exchange: Exchange,
        code: str | None,
    ) -> None:
        """SPEC section 15's sketches: a few dict operations, no I/O."""
        traffic = rows.get(row)
        if traffic is None:
            if len(rows) >= self._max_traffic:
                return
            traffic = rows[row] = Traffic()
        headers = exchange.request.headers
        referer = headers.get("Referer")
        referrer = referrer_of(referer, None if referer else headers.get("Origin"))
        if not referrer:
            field = "no_referrer" if code is None else "refused_no_referrer"
            counts[field] = counts.get(field, 0) + 1
        ip = (exchange.client_ip or "")[:64]
        traffic.add(referrer, exchange.decoded_path[:256], ip, exchange.sent, code)

    def start(self) -> None:
        self._flusher.start()

    async def close(self) -> None:
        """Stop and flush what is counted (SPEC section 11: at graceful shutdown)."""
        await self._flusher.stop()

    async def _flush_quietly(self) -> None:
        with contextlib.suppress(StoreError):  # flush() logged it; the rows are kept
            await self.flush()

    async def _flush_all(self) -> None:
        with contextlib.suppress(StoreError):
            await self.flush()
            await self.flush()  # the retried batch, then what was counted meanwhile

    async def flush(self) -> None:
        """Send one batch. A refused batch is retried with the same id before anything
        newer, so the store can tell a retry from new counts."""
        if self._retry is None:
            if not self._pending:
                return
            pending, self._pending = self._pending, {}
            traffic = self._traffic or {}
            if self._traffic is not None:
                self._traffic = {}
            rows = [
                UsageRow("key", key, hour, c, _sketches(traffic.get((key, customer, hour))))
                for (key, customer, hour), c in pending.items()
            ]
            rows += _customer_rows(pending, traffic)
            self._batches += 1
            self._retry = (f"{self._prefix}-{self._batches}", rows)
        batch_id, rows = self._retry
        try:
            await self._ledger.add_usage(batch_id, rows)
        except StoreError:
            log.warning("usage flush failed; %d rows kept for the next try", len(rows))
            raise
        self._retry = None
        self.dropped = 0


def _sketches(traffic: Traffic | None) -> dict[str, Sketch]:
    return traffic.sketches() if traffic is not None else {}


def _customer_rows(
    pending: dict[Row, dict[str, int]], traffic: dict[Row, Traffic]
) -> list[UsageRow]:
    """A customer's rows: its keys' counts summed and their sketches merged."""
    rows = summed((UsageRow("customer", c, t, n) for (_, c, t), n in pending.items()), "hour")
    keys: dict[tuple[str, int], list[dict[str, Sketch]]] = {}
    for (_, customer, hour), found in traffic.items():
        keys.setdefault((customer, hour), []).append(found.sketches())
    return [
        dataclasses.replace(row, sketches=merged_sketches(keys.get((row.id, row.start), [])))
        for row in rows
    ]


def _count(counts: dict[str, int], status: int, sent: int, cache: str, code: str | None) -> None:
    if code is not None:
        field = f"denied_{code}"
        counts[field] = counts.get(field, 0) + 1
        return
    if status >= 400:
        return  # an origin failure after every check passed: neither billed nor denied
    counts["requests"] = counts.get("requests", 0) + 1
    counts["bytes"] = counts.get("bytes", 0) + sent
    if status == 304:
        counts["not_modified"] = counts.get("not_modified", 0) + 1
    if cache in HIT_STATES:
        counts["hits"] = counts.get("hits", 0) + 1
    elif cache == XCache.MISS:
        counts["misses"] = counts.get("misses", 0) + 1


def month_start(ts: int) -> int:
    t = time.gmtime(ts)
    return calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))


def period_start(ts: int, grain: Grain) -> int:
    if grain == "hour":
        return ts // 3600 * 3600
    return day_of(ts) if grain == "day" else month_start(ts)


def summed(rows: Iterable[UsageRow], grain: Grain) -> list[UsageRow]:
    """Rows merged per (scope, id, period) at `grain`, ordered by id then start."""
    merged: dict[tuple[Scope, str, int], dict[str, int]] = {}
    for row in rows:
        into = merged.setdefault((row.scope, row.id, period_start(row.start, grain)), {})
        for field, value in row.counts.items():
            into[field] = into.get(field, 0) + value
    return [UsageRow(s, i, t, c) for (s, i, t), c in sorted(merged.items())]
