"""The usage export's outbox in the SQLite store (SPEC section 16), mixed into
SqliteStore. proxy/export owns what the rows mean; this module only keeps them.

    export_lease   (name, holder, until): the one exporter of this store
    export_ledger  (hour, key_id) -> what was exported of the key's row of that hour
    export_outbox  (sink, event_id) -> the event, until the sink answered 2xx
    export_status  (sink, name) -> text: last period delivered, last error, ...
    export_marks   name -> text: the last period passed
    export_touched hour -> token: the hours usage was written to since the pass read them
    export_once    name -> until: what happened once (an alert per threshold and month)

add_usage marks the hours of its key rows in export_touched in the batch's own
transaction (SqliteUsage), so counts are never in without their mark (issue 19). An
enqueue, fenced by the lease, writes its ledger entries and every sink's events in
one transaction, so a crash leaves both or neither; an ack removes the delivered
events and records the sink's progress in one transaction.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from .base import OutboxEvent, UsageRow

OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS export_lease (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, until REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS export_ledger (
    hour INTEGER NOT NULL, key_id TEXT NOT NULL, entry TEXT NOT NULL,
    PRIMARY KEY (hour, key_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS export_outbox (
    sink TEXT NOT NULL, period INTEGER NOT NULL, event_id TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (sink, period, event_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS export_outbox_ids ON export_outbox (sink, event_id);
CREATE TABLE IF NOT EXISTS export_status (
    sink TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (sink, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS export_marks (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS export_touched (hour INTEGER PRIMARY KEY, token TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS export_once (name TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE INDEX IF NOT EXISTS usage_by_period ON usage (grain, start, scope);
"""
LEDGER_RETENTION = 36 * 86400  # as long as the hourly rows it shadows (35 days)
_TAKE_LEASE = (
    "INSERT INTO export_lease (name, holder, until) VALUES ('export', ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until"
    " WHERE export_lease.holder = excluded.holder OR export_lease.until < ?"
)
_UNTOUCH = "DELETE FROM export_touched WHERE hour = ? AND token = ?"
_HOUR = "SELECT id, field, value FROM usage WHERE grain = 'hour' AND start = ? AND scope = 'key'"
_STATUS = (
    "INSERT INTO export_status (sink, name, value) VALUES (?, ?, ?)"
    " ON CONFLICT (sink, name) DO UPDATE SET value = excluded.value"
)


class SqliteOutbox:
    """The export_* methods of the Store interface, over the store's one thread."""

    # Provided by SqliteStore: its thread runner, transactions and connection.
    _run: Callable[..., Any]
    _transaction: Callable[[], AbstractContextManager[sqlite3.Connection]]
    _connection: Callable[[], sqlite3.Connection]
    marks_hours = False  # set by the exporter: add_usage then marks the hours it wrote

    def track_touched_hours(self) -> None:
        self.marks_hours = True

    async def export_touched(self) -> dict[int, str]:
        sql = "SELECT hour, token FROM export_touched"
        rows = await self._run(lambda: self._connection().execute(sql).fetchall())
        return {int(hour): token for hour, token in rows}

    async def export_untouch(self, hour: int, token: str) -> None:
        def job() -> None:
            with self._transaction() as conn:
                conn.execute(_UNTOUCH, (hour, token))

        await self._run(job)

    async def export_lease(self, holder: str, ttl: float) -> bool:
        def job() -> bool:
            with self._transaction() as conn:
                now = time.time()
                conn.execute(_TAKE_LEASE, (holder, now + ttl, now))
                row = conn.execute("SELECT holder FROM export_lease").fetchone()
            return bool(row and row[0] == holder)

        result: bool = await self._run(job)
        return result

    async def hour_usage(self, hour: int) -> list[UsageRow]:
        def job() -> list[UsageRow]:
            rows: dict[str, dict[str, int]] = {}
            for key_id, field, value in self._connection().execute(_HOUR, (hour,)):
                rows.setdefault(key_id, {})[field] = value
            return [UsageRow("key", k, hour, c) for k, c in sorted(rows.items())]

        result: list[UsageRow] = await self._run(job)
        return result

    async def export_ledger(self, hour: int) -> dict[str, str]:
        sql = "SELECT key_id, entry FROM export_ledger WHERE hour = ?"
        rows = await self._run(lambda: self._connection().execute(sql, (hour,)).fetchall())
        return {key_id: entry for key_id, entry in rows}

    async def export_enqueue(
        self,
        holder: str,
        hour: int,
        ledger: dict[str, str],
        events: list[OutboxEvent],
        sinks: list[str],
    ) -> bool:
        def job() -> bool:
            with self._transaction() as conn:
                lease = conn.execute("SELECT holder, until FROM export_lease").fetchone()
                if lease is None or lease[0] != holder or lease[1] < time.time():
                    return False  # fenced: the lease is another exporter's now
                conn.executemany(
                    "INSERT OR REPLACE INTO export_ledger (hour, key_id, entry) VALUES (?, ?, ?)",
                    [(hour, key_id, entry) for key_id, entry in ledger.items()],
                )
                conn.executemany(
                    "INSERT OR IGNORE INTO export_outbox (sink, period, event_id, body)"
                    " VALUES (?, ?, ?, ?)",
                    [(s, e.period, e.id, e.body) for s in sinks for e in events],
                )
                conn.execute(
                    "DELETE FROM export_ledger WHERE hour < ?", (time.time() - LEDGER_RETENTION,)
                )
            return True

        result: bool = await self._run(job)
        return result

    async def export_marks(self) -> dict[str, str]:
        sql = "SELECT name, value FROM export_marks"
        rows = await self._run(lambda: self._connection().execute(sql).fetchall())
        return {name: value for name, value in rows}

    async def set_export_mark(self, name: str, value: str) -> None:
        def job() -> None:
            with self._transaction() as conn:
                conn.execute(
                    "INSERT OR REPLACE INTO export_marks (name, value) VALUES (?, ?)", (name, value)
                )

        await self._run(job)

    async def export_once(self, name: str, ttl: float) -> bool:
        def job() -> bool:
            with self._transaction() as conn:
                now = time.time()
                conn.execute("DELETE FROM export_once WHERE until < ?", (now,))
                added = conn.execute(
                    "INSERT OR IGNORE INTO export_once (name, until) VALUES (?, ?)",
                    (name, now + ttl),
                )
            return added.rowcount == 1

        result: bool = await self._run(job)
        return result

    async def export_peek(self, sink: str, limit: int) -> list[OutboxEvent]:
        sql = (
            "SELECT event_id, period, body FROM export_outbox WHERE sink = ?"
            " ORDER BY period, event_id LIMIT ?"
        )
        rows = await self._run(lambda: self._connection().execute(sql, (sink, limit)).fetchall())
        return [OutboxEvent(event_id, period, body) for event_id, period, body in rows]

    async def export_ack(self, sink: str, ids: list[str], status: dict[str, str]) -> None:
        def job() -> None:
            with self._transaction() as conn:
                conn.executemany(
                    "DELETE FROM export_outbox WHERE sink = ? AND event_id = ?",
                    [(sink, event_id) for event_id in ids],
                )
                conn.executemany(_STATUS, [(sink, k, v) for k, v in status.items()])

        await self._run(job)

    async def export_note(self, sink: str, status: dict[str, str]) -> None:
        def job() -> None:
            with self._transaction() as conn:
                conn.executemany(_STATUS, [(sink, k, v) for k, v in status.items()])

        await self._run(job)

    async def export_status(self, sink: str) -> tuple[int, dict[str, str]]:
        def job() -> tuple[int, dict[str, str]]:
            conn = self._connection()
            count = "SELECT COUNT(*) FROM export_outbox WHERE sink = ?"
            waiting = int(conn.execute(count, (sink,)).fetchone()[0])
            rows = conn.execute("SELECT name, value FROM export_status WHERE sink = ?", (sink,))
            return waiting, {name: value for name, value in rows}

        result: tuple[int, dict[str, str]] = await self._run(job)
        return result
