"""Usage metering for billing and analytics (SPEC section 4).

Per key and per customer, per hour (UTC): `requests` (served 2xx/3xx), `bytes` (body
bytes actually sent), `hits`, `misses`, `not_modified`, and `denied_<code>` for
refused requests. Counted in process, once per request in the key's row: a few int64
stores into this process's usage spool, a MAP_SHARED file that outlives a SIGKILL
(proxy/usage_spool.py; no syscall); a customer's rows are its keys' rows summed at
flush. Flushed every `usage.flush_interval` and at shutdown as one batch with a
unique id. The store applies a batch at most once (SQLite: one transaction that
records the id; Redis: one script per row that sets a marker with the counts), so a
flush that fails half-way is retried whole without counting anything twice. While the
store is down the counts stay here, bounded by `usage.max_pending` rows; past the bound
new rows are dropped, counted in `dropped` and logged once per outage.

Issue 19: the spool files of dead processes (a worker the OOM killer took, a process
killed before its final flush) are flushed by the live ones: at their first flush,
every CLAIM_INTERVAL, and at shutdown; each file exactly once (flock), its sealed batch
again under its own id, its live rows as a new batch. A graceful stop whose final
flush fails (store down) leaves its file for the next start.

Analytics (SPEC section 15, `usage.analytics`): beside each key row, a `Traffic` of
sketches (proxy/analytics.py) counts the request's referrer origin, object and client
address, and two exact counters count requests without a referrer (`no_referrer`
served, `refused_no_referrer`). A customer's sketches are its keys' merged at flush.
The sketch rows are bounded with the counter rows, and further by MAX_TRAFFIC_ROWS
(each may hold 6 x 64 items of up to 256 characters, ~100 KiB at worst).
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from . import failpoints
from .analytics import MAX_VALUE, NO_REFERRER, Traffic, merged_sketches, origins, referrer_of
from .errors import StoreError
from .periodic import Periodic
from .sketch import Sketch
from .store.base import Grain, Scope, UsageRow, day_of
from .usage_spool import (
    CACHE_CELL,
    NO_REFERRER_CELL,
    NOT_MODIFIED_CELL,
    OTHER_CELL,
    REFUSED_SUFFIX,
    Row,
    Spool,
    SpoolRefused,
    spool_files,
)
from .xcache import HIT_STATES, XCache

if TYPE_CHECKING:  # exchange -> record_cache -> store -> usage: types only here
    from .exchange import Exchange

log = logging.getLogger(__name__)

FIELDS = ("requests", "bytes", "hits", "misses", "not_modified")
# The rows with sketches, at most: ~400 MiB if every one were full of 256-character
# values (a store outage of many hours with thousands of keys under attack); a row past
# it keeps its exact counters.
MAX_TRAFFIC_ROWS = 4096
CLAIM_INTERVAL = 30.0  # seconds between looks for the spool files of dead processes


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
    """Counts requests into this process's usage spool (proxy/usage_spool.py) and
    flushes them in batches; flushes what dead processes left in the spool folder."""

    def __init__(
        self,
        ledger: UsageLedger,
        flush_interval: float,
        max_pending: int,
        analytics: bool = True,
        *,
        spool_dir: str | None = None,
        store_id: int = 0,
    ) -> None:
        self._ledger = ledger
        self._max_pending = max_pending
        self._prefix = f"{os.getpid()}-{os.urandom(4).hex()}"
        self._spool_dir, self._store_id = spool_dir, store_id
        self._spool = _open_spool(spool_dir, store_id, self._prefix, max_pending)
        self._words = self._spool.words  # the hot path's int64 words (a shared mapping)
        self._slots: dict[Row, int] = {}  # a live row -> its slot's first word
        # Counts the spool cannot hold (an id past 64 bytes, a 33rd refusal code): kept
        # in memory, as all counts were before issue 19.
        self._pending: dict[Row, dict[str, int]] = {}
        self._traffic: dict[Row, Traffic] | None = {} if analytics else None
        self._max_traffic = min(max_pending, MAX_TRAFFIC_ROWS)
        self._retry: tuple[str, list[UsageRow]] | None = None  # the sealed batch, unanswered
        self._next_claim = 0.0  # monotonic time of the next look for dead processes' files
        self._flusher = Periodic(
            "usage flush", flush_interval, self._flush_quietly, final=self._flush_all
        )
        self.dropped = 0  # since the last successful flush: the outage's, for its log line
        self.dropped_total = 0  # for the life of the process: keyfront_usage_dropped_requests
        self.spool_refused = 0  # spool files refused: keyfront_usage_spool_refused_total

    @property
    def pending(self) -> int:
        """Rows waiting for the store (for the keyfront_usage_pending gauge)."""
        sealed = len(self._retry[1]) if self._retry else 0
        return len(self._slots) + len(self._pending) + sealed

    def record(self, exchange: Exchange, status: int, code: str | None) -> None:
        """Count one request whose key is known; `code` is its refusal's SPEC code.
        A few int64 stores into the shared mapping: no syscall (SPEC section 12)."""
        record = exchange.entry.record if exchange.entry is not None else None
        if record is None:
            return  # no key to bill: refused before the record (metrics count those)
        if code is None and status >= 400:
            return  # an origin failure after every check passed: neither billed nor denied
        row = (record.key_id, record.customer_id, int(time.time()) // 3600 * 3600)
        base = self._slots.get(row)
        if base is None and (base := self._new_row(row)) is None:
            return
        no_referrer = 0
        traffic = self._traffic
        if traffic is not None:
            # SPEC section 15's sketches: a few dict operations, no I/O, written out here
            # (a method and referrer_of's frame were a quarter of their cost). 1 in
            # no_referrer: the exact no_referrer counters count the request too.
            page = exchange.page
            if not page:
                referrer, no_referrer = NO_REFERRER, 1
            else:
                found = origins.get(page)
                referrer = found if found is not None else referrer_of(page)
            sketches = traffic.get(row)
            if sketches is None and len(traffic) < self._max_traffic:
                sketches = traffic[row] = Traffic()
            if sketches is not None:
                ip, path = exchange.client_ip or "", exchange.decoded_path
                if len(ip) > 64 or len(path) > MAX_VALUE:  # a slice each was ~60 ns
                    ip, path = ip[:64], path[:MAX_VALUE]
                sketches.add(referrer, path, ip, exchange.sent, code)
        words = self._words
        if base < 0:  # the spool could not take the row
            _count(self._pending.setdefault(row, {}), status, exchange.sent, exchange.cache, code)
            return
        if code is not None:
            at = self._spool.codes.get(code)
            if at is None and (at := self._spool.code_word(code)) is None:
                _count(self._pending.setdefault(row, {}), status, 0, "", code)
                return
            words[base + at + no_referrer] += 1
            return
        # One cell by outcome, written to its older copy: bytes, then the count that
        # commits them (proxy/usage_spool.py: a death between the two stores counts
        # nothing of this request, never half of it).
        i = base + CACHE_CELL.get(exchange.cache, OTHER_CELL) + no_referrer * NO_REFERRER_CELL
        if status == 304:
            i += NOT_MODIFIED_CELL
        a, b = words[i], words[i + 2]
        if a >= b:
            words[i + 3] = words[i + 1] + exchange.sent
            words[i + 2] = a + 1
        else:
            words[i + 1] = words[i + 3] + exchange.sent
            words[i] = b + 1

    def _new_row(self, row: Row) -> int | None:
        """A slot for a row first counted: its first word; -1 to count it in memory;
        None when the bound is reached (the request is dropped, and logged)."""
        if self.pending >= self._max_pending:
            if self.dropped == 0:
                log.error("usage buffer full (%d rows): new counts are dropped until the "
                          "store answers", self._max_pending)  # fmt: skip
            self.dropped += 1
            self.dropped_total += 1
            return None
        try:
            base = self._spool.allocate(row)
        except ValueError:
            base = -1  # an id the slot cannot hold
        except OSError as exc:  # no disk for the slot: count on, in memory (not durable)
            log.error("usage spool %s: %s; counts are kept in memory only from now on",
                      self._spool.path, exc.strerror)  # fmt: skip
            self._spool = self._spool.detach()
            self._words = self._spool.words
            base = self._spool.allocate(row)
        if base >= 0:
            self._slots[row] = base
        return base

    def start(self) -> None:
        self._flusher.start()

    async def close(self) -> None:
        """Stop and flush what is counted (SPEC section 11: at graceful shutdown)."""
        await self._flusher.stop()

    async def _flush_quietly(self) -> None:
        with contextlib.suppress(StoreError):  # flush() logged it; the rows are kept
            await self.flush()
            if time.monotonic() >= self._next_claim:
                self._next_claim = time.monotonic() + CLAIM_INTERVAL
                await self.flush_dead()

    async def _flush_all(self) -> None:
        try:
            await self.flush()
            await self.flush()  # the retried batch, then what was counted meanwhile
            await self.flush_dead()  # a worker killed meanwhile, whose restart was cut
        except StoreError:
            pass
        # What the store has not acknowledged stays in the file for the next start.
        self._spool.close(unlink=self.pending == 0 and not self._slots)

    async def flush(self) -> None:
        """Send one batch. A refused batch is retried with the same id before anything
        newer, so the store can tell a retry from new counts."""
        if self._retry is None:
            if not self._slots and not self._pending:
                return
            self._retry = self._seal()
        batch_id, rows = self._retry
        try:
            if rows:
                if failpoints.fires(failpoints.USAGE_FLUSH):  # tests only (failpoints.py)
                    raise StoreError("failpoint usage.flush: the store refused the flush")
                await self._ledger.add_usage(batch_id, rows)
        except StoreError:
            log.warning("usage flush failed; %d rows kept for the next try", len(rows))
            raise
        self._retry = None
        self._spool.release()
        self.dropped = 0

    def _seal(self) -> tuple[str, list[UsageRow]]:
        """The live rows as the next batch (the spool seals their area in one store),
        with what memory held beside them and the sketches."""
        batch = self._spool.seal()
        self._slots = {}
        counts = dict(batch.rows)
        pending, self._pending = self._pending, {}
        for row, found in pending.items():
            into = counts.setdefault(row, {})
            for field, value in found.items():
                into[field] = into.get(field, 0) + value
        traffic = self._traffic or {}
        if self._traffic is not None:
            self._traffic = {}
        return batch.batch_id, _batch_rows(counts, traffic)

    async def flush_dead(self) -> None:
        """Flush the spool files of dead processes in the folder, each exactly once: a
        file is locked while it is flushed and unlinked before it is unlocked. A file
        that fails its checks is renamed, logged and counted, and nothing of it sent."""
        if self._spool_dir is None:
            return
        for path in await asyncio.to_thread(spool_files, self._spool_dir):
            if path == self._spool.path:
                continue
            try:
                spool = await asyncio.to_thread(Spool.claim, path, self._store_id)
            except SpoolRefused as exc:
                self.spool_refused += 1
                log.error("usage spool %s refused (renamed *%s), nothing of it is counted: "
                          "%s", path, REFUSED_SUFFIX, exc)  # fmt: skip
                continue
            if spool is not None:
                await self._flush_claimed(spool)

    async def _flush_claimed(self, spool: Spool) -> None:
        """The sealed batch again (same id), then the live rows as a new one."""
        requests = 0
        try:
            # Read in a thread: a file of many rows takes ms to parse (~7 µs a row).
            batch = await asyncio.to_thread(spool.sealed)
            while batch is not None or spool.live_rows:
                if batch is None:
                    batch = await asyncio.to_thread(spool.seal)
                rows = _batch_rows(dict(batch.rows), {})
                if rows:
                    await self._ledger.add_usage(batch.batch_id, rows)
                spool.release()
                requests += sum(c.get("requests", 0) for _, c in batch.rows)
                batch = None
        except StoreError:
            spool.close(unlink=False)  # unlocked: the next look sends it again
            raise
        spool.close(unlink=True)
        log.info("usage spool %s of a dead process flushed: %d requests", spool.path, requests)


def _open_spool(folder: str | None, store_id: int, prefix: str, capacity: int) -> Spool:
    if folder is not None:
        try:
            return Spool.create(folder, store_id, prefix, capacity)
        except OSError as exc:
            log.error("usage spool in %s: %s; counts are kept in memory only (a SIGKILL "
                      "loses the last flush interval's)", folder, exc)  # fmt: skip
    return Spool.in_memory(prefix, capacity)


def _batch_rows(counts: dict[Row, dict[str, int]], traffic: dict[Row, Traffic]) -> list[UsageRow]:
    """Key rows with their sketches, then their customers' rows."""
    counts = {row: c for row, c in counts.items() if c}
    rows = [
        UsageRow("key", key, hour, c, _sketches(traffic.get((key, customer, hour))))
        for (key, customer, hour), c in counts.items()
    ]
    return rows + _customer_rows(counts, traffic)


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
