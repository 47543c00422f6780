"""Usage counters in the SQLite store (SPEC section 4), mixed into SqliteStore.

Each batch is applied in one transaction that also records its id, so a retried
batch is skipped whole: no count is applied twice. Hourly rows are kept 35 days and
daily roll-ups 400 days (SPEC: at least that long); both are written by the same
transaction, and old rows are pruned by writers at most once an hour. A row's
sketches (SPEC section 15) are merged into the stored ones (hourly and daily) in the
same transaction, and kept and pruned as the counts. While the usage export runs, the
same transaction also marks the hours it wrote (sqlite_outbox.py, export_touched).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from ..sketch import Sketch
from .base import Grain, Scope, UsageRow, day_of

T = TypeVar("T")

USAGE_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    scope TEXT NOT NULL, id TEXT NOT NULL, grain TEXT NOT NULL, start INTEGER NOT NULL,
    field TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (scope, id, grain, start, field)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage_sketches (
    scope TEXT NOT NULL, id TEXT NOT NULL, grain TEXT NOT NULL, start INTEGER NOT NULL,
    dimension TEXT NOT NULL, sketch TEXT NOT NULL,
    PRIMARY KEY (scope, id, grain, start, dimension)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage_batches (batch_id TEXT PRIMARY KEY, at REAL NOT NULL);
"""
HOURLY_RETENTION = 35 * 86400
DAILY_RETENTION = 400 * 86400
BATCH_RETENTION = 7 * 86400  # a batch id is remembered far longer than any retry
_ADD = (
    "INSERT INTO usage (scope, id, grain, start, field, value) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (scope, id, grain, start, field) DO UPDATE SET value = value + excluded.value"
)
_TOUCH = "INSERT OR REPLACE INTO export_touched (hour, token) VALUES (?, ?)"
_SKETCH_KEY = "scope = ? AND id = ? AND grain = ? AND start = ? AND dimension = ?"
_SKETCH_READ = (
    "SELECT id, start, dimension, sketch FROM usage_sketches WHERE scope = ? AND grain = ?"
    " AND id = ? AND start >= ? AND start < ?"
)
_READ = (
    "SELECT id, start, field, value FROM usage WHERE scope = ? AND grain = ? AND id = ?"
    " AND start >= ? AND start < ?"
)


class SqliteUsage:
    """add_usage / read_usage over the store's one thread and connection."""

    # Provided by SqliteStore: its thread runner, transactions and connection.
    _run: Callable[..., Any]
    _transaction: Callable[[], AbstractContextManager[sqlite3.Connection]]
    _connection: Callable[[], sqlite3.Connection]
    _last_usage_prune = 0.0
    marks_hours: bool  # SqliteOutbox's: set when the usage export runs

    async def add_usage(self, batch_id: str, rows: list[UsageRow]) -> None:
        def job() -> None:
            with self._transaction() as conn:
                now = time.time()
                seen = conn.execute(
                    "INSERT OR IGNORE INTO usage_batches (batch_id, at) VALUES (?, ?)",
                    (batch_id, now),
                )
                if seen.rowcount == 0:
                    return  # applied before: this is a retry whose reply was lost
                conn.executemany(_ADD, _usage_params(rows))
                if self.marks_hours:  # the usage export's pass reads them (issue 19)
                    token = os.urandom(8).hex()  # never reused: compare and delete
                    hours = {row.start for row in rows if row.scope == "key"}
                    conn.executemany(_TOUCH, [(hour, token) for hour in sorted(hours)])
                _merge_sketches(conn, rows)
                self._prune_usage(conn, now)

        await self._run(job)

    async def read_usage(
        self, scope: Scope, ids: Iterable[str], start: int, end: int, grain: Grain
    ) -> list[UsageRow]:
        cells = await self._read_cells(scope, ids, start, end, grain, query=_READ)
        return [UsageRow(scope, i, b, counts) for (i, b), counts in cells]

    async def read_sketches(
        self, scope: Scope, ids: Iterable[str], start: int, end: int, grain: Grain
    ) -> list[UsageRow]:
        cells = await self._read_cells(scope, ids, start, end, grain, query=_SKETCH_READ)
        return [
            UsageRow(scope, i, b, {}, {name: Sketch.loads(text) for name, text in texts.items()})
            for (i, b), texts in cells
        ]

    async def _read_cells(
        self, scope: Scope, ids: Iterable[str], start: int, end: int, grain: Grain, *, query: str
    ) -> list[tuple[tuple[str, int], dict[str, Any]]]:
        """(id, period start) -> {field or dimension: value}, in order, for the rows of
        `grain` ("month" is summed from days by the caller) starting in [start, end)."""
        stored = "hour" if grain == "hour" else "day"
        wanted = list(ids)

        def job() -> list[tuple[tuple[str, int], dict[str, Any]]]:
            conn = self._connection()
            rows: dict[tuple[str, int], dict[str, Any]] = {}
            for id_ in wanted:
                for row_id, begin, name, value in conn.execute(
                    query, (scope, stored, id_, start, end)
                ):
                    rows.setdefault((row_id, begin), {})[name] = value
            return sorted(rows.items())

        result: list[tuple[tuple[str, int], dict[str, Any]]] = await self._run(job)
        return result

    def _prune_usage(self, conn: sqlite3.Connection, now: float) -> None:
        if now - self._last_usage_prune < 3600:
            return
        self._last_usage_prune = now
        conn.execute(
            "DELETE FROM usage WHERE grain = 'hour' AND start < ?", (now - HOURLY_RETENTION,)
        )
        conn.execute(
            "DELETE FROM usage WHERE grain = 'day' AND start < ?", (now - DAILY_RETENTION,)
        )
        for grain, kept in (("hour", HOURLY_RETENTION), ("day", DAILY_RETENTION)):
            conn.execute(
                "DELETE FROM usage_sketches WHERE grain = ? AND start < ?", (grain, now - kept)
            )
        conn.execute("DELETE FROM usage_batches WHERE at < ?", (now - BATCH_RETENTION,))


def _usage_params(rows: list[UsageRow]) -> Iterator[tuple[str, str, str, int, str, int]]:
    for row in rows:
        for field, value in row.counts.items():
            yield row.scope, row.id, "hour", row.start, field, value
            yield row.scope, row.id, "day", day_of(row.start), field, value


def _merge_sketches(conn: sqlite3.Connection, rows: list[UsageRow]) -> None:
    """Each row's sketches into the stored hourly and daily ones (Sketch.merge)."""
    for row in rows:
        for dimension, sketch in row.sketches.items():
            for grain, start in (("hour", row.start), ("day", day_of(row.start))):
                where = (row.scope, row.id, grain, start, dimension)
                found = conn.execute(
                    f"SELECT sketch FROM usage_sketches WHERE {_SKETCH_KEY}", where
                ).fetchone()
                total = Sketch.loads(found[0]) if found else Sketch()
                total.merge(sketch)
                conn.execute(
                    "INSERT OR REPLACE INTO usage_sketches"
                    " (scope, id, grain, start, dimension, sketch) VALUES (?, ?, ?, ?, ?, ?)",
                    (*where, total.dumps()),
                )
