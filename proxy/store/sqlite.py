"""The SQLite store: the embedded default, one host and zero services (SPEC section 7).

sqlite3 blocks, so every call runs on one dedicated thread that owns the one
connection: the event loop never waits on the disk, calls are serialised without a
lock, and the connection never crosses threads (sqlite3's own check stays on). WAL
lets the CLI and every worker process read while one of them writes.

Change feed (SPEC section 2, "within 1 second"): every write appends a row to
`changes` in its own transaction, and `changes()` polls every 0.2 s for rows past the
last one it saw: one range scan on the primary key, nearly free when idle, and it sees
writes from any process (the CLI, another worker's admin API, another instance).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

from ..errors import Conflict, StoreError
from ..records import Customer, KeyRecord
from .base import Change, ChangeKind, CustomerToken, Store
from .sqlite_outbox import OUTBOX_SCHEMA, SqliteOutbox
from .sqlite_usage import USAGE_SCHEMA, SqliteUsage

log = logging.getLogger(__name__)

T = TypeVar("T")
Row = tuple[Any, ...]

POLL_INTERVAL = 0.2  # seconds; 5 polls a second keep a change well inside the 1 s budget
POLL_BATCH = 1000  # rows per poll: bounds memory, still 5,000 changes a second
RETENTION = 3600.0  # seconds a change row is kept: far longer than any poll gap
PRUNE_EVERY = 60.0  # seconds between prunes (done by writers, so idle readers never write)
BUSY_TIMEOUT_MS = 5000  # wait this long for another process's write lock

SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (customer_id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, created_at INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS keys_by_customer ON keys (customer_id, created_at, key_id);
CREATE INDEX IF NOT EXISTS keys_by_age ON keys (created_at, key_id);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, id TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_by_age ON changes (at);
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY, customer_id TEXT NOT NULL, token_id TEXT NOT NULL,
    created_at INTEGER NOT NULL, body TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS tokens_by_customer ON tokens (customer_id, token_id);
CREATE TABLE IF NOT EXISTS imported (key_id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS quota (
    key_id TEXT NOT NULL, month TEXT NOT NULL, requests INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (key_id, month)
) WITHOUT ROWID;
"""
_QUOTA_OF = "SELECT key_id, requests, bytes FROM quota WHERE month = ? AND key_id IN"
_ADD_QUOTA = (
    "INSERT INTO quota (key_id, month, requests, bytes) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (key_id, month) DO UPDATE SET requests = requests + excluded.requests,"
    " bytes = bytes + excluded.bytes"
)

_INSERT_CUSTOMER = "INTO customers (customer_id, body) VALUES (?, ?)"
_INSERT_KEY = "INTO keys (key_id, customer_id, created_at, body) VALUES (?, ?, ?, ?)"
_KEY_AND_CUSTOMER = (
    "SELECT k.body, c.body FROM keys k LEFT JOIN customers c ON c.customer_id = k.customer_id"
    " WHERE k.key_id = ?"
)
_INSERT_TOKEN = (
    "INSERT INTO tokens (token_hash, customer_id, token_id, created_at, body)"
    " VALUES (?, ?, ?, ?, ?)"
)
_TOKENS_OF = "SELECT body FROM tokens WHERE customer_id = ? ORDER BY created_at, token_id"
_TOKEN_OF = "SELECT body FROM tokens WHERE customer_id = ? AND token_id = ?"
_DELETE_TOKEN = "DELETE FROM tokens WHERE customer_id = ? AND token_id = ?"
_KEYS_OF = "SELECT body FROM keys WHERE customer_id = ? ORDER BY created_at, key_id"
_ALL_KEYS = "SELECT body FROM keys ORDER BY created_at, key_id"
_IMPORTED_AFTER = "SELECT key_id FROM imported WHERE key_id > ? ORDER BY key_id LIMIT ?"
_IMPORT_BATCH = 10_000  # key ids per read of the imported list
_SECRET = "SELECT value FROM meta WHERE name = 'imported_key_secret'"
_NEW_SECRET = "INSERT OR IGNORE INTO meta (name, value) VALUES ('imported_key_secret', ?)"
_MAX_SEQ = "SELECT COALESCE(MAX(seq), 0) FROM changes"
_CHANGES_AFTER = f"SELECT seq, kind, id FROM changes WHERE seq > ? ORDER BY seq LIMIT {POLL_BATCH}"


class SqliteStore(SqliteUsage, SqliteOutbox, Store):
    """Customers and keys in one SQLite file, `sqlite:///abs/path.db`.

    `put_*` writes whether or not the record exists (an upsert), like Redis SET."""

    def __init__(self, url: str) -> None:
        self.path = url[len("sqlite://") :]
        # One thread owns the connection: see the module docstring.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keyfront-sqlite")
        self._conn: sqlite3.Connection | None = None  # touched only on that thread
        self._last_prune = 0.0  # likewise
        self._closing = asyncio.Event()

    async def open(self) -> None:
        """Create the parent directory, the file and the schema. StoreError if it can't."""
        await self._run(self._connect)

    async def close(self) -> None:
        if self._closing.is_set():
            return
        with contextlib.suppress(StoreError):  # never opened: nothing to close
            await self._run(lambda: self._connection().close())
        self._closing.set()  # ends changes() and refuses later calls
        self._thread.shutdown(wait=False)  # its queue is empty: the close ran last

    async def ping(self) -> None:
        await self._fetch(_MAX_SEQ, ())  # reads the file, unlike SELECT 1

    # customers

    async def create_customer(self, customer: Customer) -> None:
        row = (customer.customer_id, customer.to_json())
        await self._write("INSERT " + _INSERT_CUSTOMER, row, "customer", creates=True)

    async def put_customer(self, customer: Customer) -> None:
        row = (customer.customer_id, customer.to_json())
        await self._write("INSERT OR REPLACE " + _INSERT_CUSTOMER, row, "customer")

    async def get_customer(self, customer_id: str) -> Customer | None:
        rows = await self._fetch("SELECT body FROM customers WHERE customer_id = ?", (customer_id,))
        return Customer.from_json(rows[0][0]) if rows else None

    async def list_customers(self) -> list[Customer]:
        rows = await self._fetch("SELECT body FROM customers ORDER BY customer_id", ())
        return [Customer.from_json(body) for (body,) in rows]

    # keys

    async def create_key(self, record: KeyRecord) -> None:
        await self._write("INSERT " + _INSERT_KEY, _key_row(record), "key", creates=True)

    async def put_key(self, record: KeyRecord) -> None:
        await self._write("INSERT OR REPLACE " + _INSERT_KEY, _key_row(record), "key")

    async def get_key(self, key_id: str) -> KeyRecord | None:
        rows = await self._fetch("SELECT body FROM keys WHERE key_id = ?", (key_id,))
        return KeyRecord.from_json(rows[0][0]) if rows else None

    async def list_keys(self, customer_id: str | None = None) -> list[KeyRecord]:
        query = (_ALL_KEYS, ()) if customer_id is None else (_KEYS_OF, (customer_id,))
        rows = await self._fetch(*query)
        return [KeyRecord.from_json(body) for (body,) in rows]

    async def count_keys(self, customer_id: str) -> int:
        rows = await self._fetch("SELECT COUNT(*) FROM keys WHERE customer_id = ?", (customer_id,))
        return int(rows[0][0])  # keys_by_customer: no record is read

    async def get_key_and_customer(self, key_id: str) -> tuple[KeyRecord, Customer | None] | None:
        """One query (a LEFT JOIN), so a record-cache miss is one hop to the thread."""
        rows = await self._fetch(_KEY_AND_CUSTOMER, (key_id,))
        if not rows:
            return None
        key_body, customer_body = rows[0]
        customer = Customer.from_json(customer_body) if customer_body is not None else None
        return KeyRecord.from_json(key_body), customer

    # imported keys (SPEC section 13)

    async def get_keys(self, key_ids: list[str]) -> dict[str, KeyRecord]:
        def job() -> dict[str, KeyRecord]:
            found: dict[str, KeyRecord] = {}
            conn = self._connection()
            for i in range(0, len(key_ids), 500):  # SQLite's bound-parameter limit
                chunk = key_ids[i : i + 500]
                sql = (
                    f"SELECT key_id, body FROM keys WHERE key_id IN ({','.join('?' * len(chunk))})"
                )
                for key_id, body in conn.execute(sql, chunk):
                    found[key_id] = KeyRecord.from_json(body)
            return found

        return await self._run(job)

    async def import_keys(self, records: list[KeyRecord]) -> None:
        """One transaction for the whole batch: 100,000 rows in about a second."""

        def job() -> None:
            with self._transaction() as conn:
                conn.executemany("INSERT OR REPLACE " + _INSERT_KEY, map(_key_row, records))
                ids = [(r.key_id,) for r in records]
                conn.executemany("INSERT OR IGNORE INTO imported (key_id) VALUES (?)", ids)

        await self._run(job)

    async def scan_imported(self) -> AsyncIterator[list[str]]:
        last = ""
        while True:
            rows = await self._fetch(_IMPORTED_AFTER, (last, _IMPORT_BATCH))
            if not rows:
                return
            yield [key_id for (key_id,) in rows]
            last = rows[-1][0]

    async def imported_secret(self, create: bool) -> str | None:
        candidate = secrets.token_hex(32)

        def job() -> str | None:
            if create:
                with self._transaction() as conn:
                    conn.execute(_NEW_SECRET, (candidate,))
            rows = self._connection().execute(_SECRET, ()).fetchall()
            return str(rows[0][0]) if rows else None

        return await self._run(job)

    async def announce_all(self, changes: list[Change]) -> None:
        def job() -> None:
            with self._transaction() as conn:
                for change in changes:
                    self._log_change(conn, change.kind, change.id)

        await self._run(job)

    # customer tokens: no change row, since nothing caches them

    async def create_token(self, token_hash: str, token: CustomerToken) -> None:
        row = (token_hash, token.customer_id, token.token_id, token.created_at, token.to_json())

        def job() -> None:
            try:
                self._connection().execute(_INSERT_TOKEN, row)
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"token {token.token_id!r} already exists") from exc

        await self._run(job)

    async def get_token(self, token_hash: str) -> CustomerToken | None:
        rows = await self._fetch("SELECT body FROM tokens WHERE token_hash = ?", (token_hash,))
        return CustomerToken.from_json(rows[0][0]) if rows else None

    async def list_tokens(self, customer_id: str) -> list[CustomerToken]:
        rows = await self._fetch(_TOKENS_OF, (customer_id,))
        return [CustomerToken.from_json(body) for (body,) in rows]

    async def delete_token(self, customer_id: str, token_id: str) -> CustomerToken | None:
        def job() -> CustomerToken | None:
            with self._transaction() as conn:
                rows = conn.execute(_TOKEN_OF, (customer_id, token_id)).fetchall()
                conn.execute(_DELETE_TOKEN, (customer_id, token_id))
            return CustomerToken.from_json(rows[0][0]) if rows else None

        return await self._run(job)

    # change notification

    async def announce(self, change: Change) -> None:
        def job() -> None:
            with self._transaction() as conn:
                self._log_change(conn, change.kind, change.id)

        await self._run(job)

    async def changes(self) -> AsyncIterator[Change]:
        """Changes written by any process from now on. A failed poll is retried from
        the same place (rows are kept an hour), so nothing is missed; a gap in the
        sequence (rows pruned while this process slept) yields Change("all")."""
        last = await self._current_seq()
        while await self._pause(POLL_INTERVAL):
            if last is None:  # the store failed at subscription: start from now
                last = await self._current_seq()
                if last is not None:
                    yield Change("all")  # what changed until now is unknown
                continue
            for seq, change in await self._changes_after(last):
                last = seq
                yield change

    async def _current_seq(self) -> int | None:
        rows = await self._poll(_MAX_SEQ, ())
        return int(rows[0][0]) if rows else None

    async def _changes_after(self, last: int) -> list[tuple[int, Change]]:
        """The changes after seq `last`, each with its seq; [] when the poll fails."""
        rows = await self._poll(_CHANGES_AFTER, (last,)) or []
        found = [(seq, Change(cast(ChangeKind, kind), id_)) for seq, kind, id_ in rows]
        if rows and rows[0][0] > last + 1:  # AUTOINCREMENT leaves no holes but pruning
            found.insert(0, (last, Change("all")))
        return found

    async def _poll(self, sql: str, params: tuple[Any, ...]) -> list[Row] | None:
        """`_fetch` for the change feed, which outlives store failures: None on error."""
        try:
            return await self._fetch(sql, params)
        except StoreError as exc:
            log.warning("sqlite change feed: %s; retrying", exc)
            return None

    async def _pause(self, seconds: float) -> bool:
        """Sleep; False (at once) when the store closes."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)
        return not self._closing.is_set()

    # monthly quota counters, for the local rate limiter (ratelimit.QuotaLedger)

    async def add_quota_usage(
        self, month: str, deltas: dict[str, tuple[int, int]], read: Iterable[str]
    ) -> dict[str, tuple[int, int]]:
        """Add (requests, bytes) per key to `month` and return the totals of every key
        in `deltas` and `read`: one transaction, so every worker sees one sum."""
        wanted = sorted(set(deltas) | set(read))

        def job() -> dict[str, tuple[int, int]]:
            with self._transaction() as conn:
                rows = [(k, month, r, b) for k, (r, b) in deltas.items()]
                conn.executemany(_ADD_QUOTA, rows)
                totals: dict[str, tuple[int, int]] = {}
                for i in range(0, len(wanted), 500):  # SQLite's bound-parameter limit
                    chunk = wanted[i : i + 500]
                    marks = ",".join("?" * len(chunk))
                    sql = f"{_QUOTA_OF} ({marks})"
                    for key_id, requests, nbytes in conn.execute(sql, (month, *chunk)):
                        totals[key_id] = (requests, nbytes)
                return totals

        return await self._run(job)

    # the thread: everything below `_run` executes on it

    async def _run(self, job: Callable[[], T]) -> T:
        """Run `job` on the store's thread; sqlite3 and OS errors become StoreError."""
        if self._closing.is_set():
            raise StoreError("the store is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, job)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"sqlite {self.path}: {exc}") from exc

    async def _fetch(self, sql: str, params: tuple[Any, ...]) -> list[Row]:
        return await self._run(lambda: self._connection().execute(sql, params).fetchall())

    async def _write(
        self, sql: str, params: tuple[Any, ...], kind: ChangeKind, creates: bool = False
    ) -> None:
        """Write one row and its change row in one transaction."""

        def job() -> None:
            with self._transaction() as conn:
                try:
                    conn.execute(sql, params)
                except sqlite3.IntegrityError as exc:  # the primary key: the only constraint
                    if creates:
                        raise Conflict(f"{kind} {params[0]!r} already exists") from exc
                    raise
                self._log_change(conn, kind, params[0])

        await self._run(job)

    def _log_change(self, conn: sqlite3.Connection, kind: ChangeKind, id_: str) -> None:
        """Append to the change feed, inside the caller's transaction."""
        now = time.time()
        conn.execute("INSERT INTO changes (kind, id, at) VALUES (?, ?, ?)", (kind, id_, now))
        self._prune(conn, now)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front (waiting up to busy_timeout)
        # instead of failing with SQLITE_BUSY when a read upgrades to a write.
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:  # SQLite may have rolled back already (disk full, I/O)
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _prune(self, conn: sqlite3.Connection, now: float) -> None:
        if now - self._last_prune >= PRUNE_EVERY:
            conn.execute("DELETE FROM changes WHERE at < ?", (now - RETENTION,))
            self._last_prune = now

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the store is not open")
        return self._conn

    def _connect(self) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        _make_private(self.path)
        # isolation_level=None: no implicit transactions; `_transaction` makes them.
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _set_up(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn


def _make_private(path: str) -> None:
    """The file holds link secrets in clear (issue 12): its user's alone. Created 0600
    before SQLite opens it, since SQLite gives its -wal and -shm files the database
    file's mode; one made earlier with a looser mode is tightened, with its -wal/-shm."""
    if path in ("", ":memory:"):
        return
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    for name in (path, path + "-wal", path + "-shm"):
        with contextlib.suppress(OSError):
            if os.stat(name).st_mode & 0o077:
                os.chmod(name, 0o600)


def _set_up(conn: sqlite3.Connection) -> None:
    """WAL and the schema. Switching to WAL takes an exclusive lock and SQLite does not
    call the busy handler for it, so N workers opening one new file at once may see
    "database is locked": retry for up to BUSY_TIMEOUT_MS."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.executescript(SCHEMA + USAGE_SCHEMA + OUTBOX_SCHEMA)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _key_row(record: KeyRecord) -> tuple[str, str, int, str]:
    return record.key_id, record.customer_id, record.created_at, record.to_json()
