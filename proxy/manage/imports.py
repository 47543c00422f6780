"""Importing keys from an existing key system (SPEC section 13): what `keyfront keys
import` and `POST /admin/v1/keys/import` both do.

    lines (CSV with a header row, or JSON lines)
      -> rows_of:   (line number, a JSON object, or why the line is not one)
      -> Importer:  each row checked as `keys create` checks settings (values.KEY_IMPORT,
                    actions.check_plan_caps); a bad row is reported by line and reason,
                    and the others go on
      -> the store: BATCH records a transaction (SQLite) or pipelined (Redis), then one
                    announcement for the whole file

Re-importing a key replaces its record by the row (fields the row leaves out fall back
to the defaults), keeping its `created_at` and, unless the row gives one, its link
secret. Decisions where the SPEC is silent (README "Bringing your existing keys"):
the customer must exist (else the row is bad); a customer's `max_keys` holds (rows past
it are bad), `admin.customer_max_keys` does not (it bounds customer tokens, and only
the operator imports); a row that requires signed links brings its `link_secret`
(keyfront would otherwise make one that nobody is shown).
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..config import MAX_EXTERNAL_KEY, ExternalKeysConfig
from ..errors import Invalid
from ..imported import hash_secret, imported_key_id
from ..keys import KeySigner
from ..records import Customer, KeyRecord
from ..store import Change, Store
from .actions import live_keys, within_plan_caps
from .settings import KEY_IMPORT, parse_customer_id, read_settings

FORMATS = ("csv", "jsonl")
BATCH = 5000  # records a store write (one SQLite transaction: fewer commits, faster)
# In the admin API the loop also serves the public listener: a batch's reads, JSON and
# merging hold it ~10-20 ms at this size, ~100 ms at BATCH.
SHARED_LOOP_BATCH = 1000
YIELD_EVERY = 200  # rows checked between yields to the event loop (the admin API's process)
PER_KEY_CHANGES = 1000  # above this many, one bulk change replaces the per-key ones
MAX_LINE = 256 * 1024  # characters of one JSON line
MEMO_SIZE = 10_000  # distinct field values remembered by one import
_BOOLEANS = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}

Row = tuple[int, dict[str, Any] | Invalid]  # (line number, the row or why it is bad)
COLUMNS = ("key", "customer_id", *KEY_IMPORT)


# --- reading rows ------------------------------------------------------------------------


def rows_of(lines: Iterable[str], form: str) -> Iterator[Row]:
    """The rows of a CSV (header row first) or JSON-lines text, by line number."""
    return _csv_rows(lines) if form == "csv" else _json_rows(lines)


def _csv_rows(lines: Iterable[str]) -> Iterator[Row]:
    reader = csv.reader(lines, strict=True)
    try:
        header = [name.strip().lstrip("\ufeff") for name in next(reader)]  # Excel's BOM
    except StopIteration:
        return
    except csv.Error as exc:
        yield reader.line_num, Invalid("header", str(exc))
        return
    unknown = [name for name in header if name not in COLUMNS]
    if unknown or len(set(header)) != len(header) or "key" not in header:
        problem = f"unknown column {unknown[0]!r}" if unknown else "needs one key column"
        if not unknown and "key" in header:
            problem = "a column is named twice"
        yield 1, Invalid("header", f"{problem}; columns: {', '.join(COLUMNS)}")
        return
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # a broken quote, a field over csv's size limit
            yield start, Invalid("csv", str(exc))
            continue
        if not any(cell.strip() for cell in cells):
            continue  # blank line
        if len(cells) != len(header):
            yield start, Invalid("csv", f"{len(cells)} columns, the header has {len(header)}")
            continue
        yield start, {n: _csv_value(n, c) for n, c in zip(header, cells, strict=True) if c != ""}


def _csv_value(name: str, text: str) -> Any:
    """A CSV cell as the JSON value the setting reads: lists space-separated, booleans
    and counts converted; anything else left as text for the setting to judge."""
    setting = KEY_IMPORT.get(name)
    types = setting.schema.get("type", ()) if setting is not None else ()
    if "array" in types:
        return text.split()
    if "boolean" in types:
        return _BOOLEANS.get(text.strip().lower(), text)
    if "integer" in types and len(text) <= 20 and text.isascii() and text.strip().isdigit():
        return int(text)
    return text


def _json_rows(lines: Iterable[str]) -> Iterator[Row]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if len(line) > MAX_LINE:
            yield number, Invalid("line", f"longer than {MAX_LINE} characters")
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            yield number, Invalid("line", "not valid JSON")
            continue
        yield number, row if isinstance(row, dict) else Invalid("line", "not a JSON object")


# --- checking and writing -------------------------------------------------------------


@dataclass
class ImportReport:
    """What an import did: each good line's key id (None in a dry run before the
    first import made the hash secret), each bad line's field and reason."""

    dry_run: bool
    keys: list[tuple[int, str | None]] = field(default_factory=list)
    errors: list[tuple[int, str, str]] = field(default_factory=list)
    created: int = 0
    updated: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "imported": len(self.keys),
            "created": self.created,
            "updated": self.updated,
            "keys": [{"line": line, "key_id": key_id} for line, key_id in self.keys],
            "errors": [{"line": n, "field": f, "message": m} for n, f, m in self.errors],
        }


@dataclass
class _Cap:
    limit: int
    live: int


class Importer:
    """Checks rows and writes the good ones (none with `dry_run`)."""

    def __init__(
        self,
        store: Store,
        signer: KeySigner,
        external: ExternalKeysConfig,
        dry_run: bool,
        batch: int = BATCH,
    ) -> None:
        self._store, self._signer, self._external = store, signer, external
        self._batch = batch
        self.report = ImportReport(dry_run)
        self._customers: dict[str, Customer | None] = {}
        self._read: dict[tuple[Any, ...], Any] = {}  # (field, JSON value) -> its setting
        self._caps: dict[str, _Cap | None] = {}
        self._secret: bytes | None = None
        self._new: list[str] = []
        self._changed: list[str] = []

    async def run(self, rows: Iterable[Row]) -> ImportReport:
        create = not self.report.dry_run
        self._secret = await hash_secret(self._store, self._external.hash_secret, create)
        batch: list[tuple[int, KeyRecord, bool]] = []
        for count, (line, row) in enumerate(rows, 1):
            try:
                batch.append(await self._record(line, row))
            except Invalid as bad:
                self.report.errors.append((line, bad.field, bad.problem))
            if len(batch) >= self._batch:
                await self._write(batch)
                batch = []
            if count % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        await self._write(batch)
        changes = self._changes()
        if changes and not self.report.dry_run:
            await self._store.announce_all(changes)
        return self.report

    async def _record(
        self, line: int, row: dict[str, Any] | Invalid
    ) -> tuple[int, KeyRecord, bool]:
        """A row's record (key id still "" when the secret is unknown), or Invalid."""
        if isinstance(row, Invalid):
            raise row
        row = dict(row)
        key = self._key(row.pop("key", None))
        customer = await self._customer(row.pop("customer_id", None))
        settings = self._settings(row)
        within_plan_caps(settings, customer)
        if settings.get("status") == "disabled":
            settings["disabled_by"] = "operator"
        key_id = imported_key_id(self._secret, key) if self._secret is not None else ""
        record = KeyRecord(key_id, customer.customer_id, created_at=int(time.time()), **settings)
        return line, record, "link_secret" in settings

    def _settings(self, row: dict[str, Any]) -> dict[str, Any]:
        """`read_settings(row, KEY_IMPORT)`, remembering the values it read: rows of one
        export repeat their referrers and rates, and checking a referrer pattern is
        ~8 µs (most of a 100,000-row import's time before this). A value is
        remembered with its JSON type, so `true` is never taken for a remembered 1."""
        found: dict[str, Any] = {}
        for name, value in row.items():
            memo = _memo_key(name, value)
            if memo is not None and memo in self._read:
                found[name] = self._read[memo]
                continue
            found.update(read_settings({name: value}, KEY_IMPORT))
            if memo is not None and len(self._read) < MEMO_SIZE:
                self._read[memo] = found[name]
        return found

    def _key(self, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise Invalid("key", "required: the key as your customers send it")
        if len(value) > MAX_EXTERNAL_KEY or self._external.pattern.fullmatch(value) is None:
            raise Invalid("key", f"does not match keys.external.pattern "
                                 f"({self._external.pattern.pattern})")  # fmt: skip
        if self._signer.owns(value):
            raise Invalid("key", "has keyfront's own format: it is checked by its signature, "
                                 "not imported")  # fmt: skip
        return value

    async def _customer(self, value: Any) -> Customer:
        if not isinstance(value, str):
            raise Invalid("customer_id", "required")
        try:
            customer_id = parse_customer_id(value)
        except ValueError as exc:
            raise Invalid("customer_id", str(exc)) from None
        if customer_id not in self._customers:
            self._customers[customer_id] = await self._store.get_customer(customer_id)
        customer = self._customers[customer_id]
        if customer is None:
            raise Invalid("customer_id", f"no such customer: {customer_id}")
        return customer

    async def _write(self, batch: list[tuple[int, KeyRecord, bool]]) -> None:
        """Merge with the records already stored, hold the caps, write the batch."""
        ids = list({record.key_id for _, record, _ in batch if record.key_id})
        existing = await self._store.get_keys(ids) if ids else {}
        good: dict[str, KeyRecord] = {}
        for line, record, gave_secret in batch:
            try:
                merged = await self._merged(record, existing.get(record.key_id), gave_secret)
            except Invalid as bad:
                self.report.errors.append((line, bad.field, bad.problem))
                continue
            self.report.keys.append((line, record.key_id or None))
            if record.key_id and record.key_id not in good:
                fresh = record.key_id not in existing
                self.report.created += fresh
                self.report.updated += not fresh
                (self._new if fresh else self._changed).append(record.key_id)
            good[record.key_id] = merged  # a key given twice: its last row wins
        if good and not self.report.dry_run:
            await self._store.import_keys(list(good.values()))

    async def _merged(
        self, record: KeyRecord, old: KeyRecord | None, gave_secret: bool
    ) -> KeyRecord:
        if old is not None:
            secret = record.link_secret if gave_secret else old.link_secret
            record = dataclasses.replace(record, created_at=old.created_at, link_secret=secret)
        if record.require_signed_links and not record.link_secret:
            raise Invalid("link_secret", "required with require_signed_links (keyfront would "
                                         "otherwise make one that nobody is shown)")  # fmt: skip
        if _live(record) and (old is None or not _live(old)):
            await self._take_slot(record.customer_id)
        return record

    async def _take_slot(self, customer_id: str) -> None:
        """A customer's max_keys holds for imported keys too (README)."""
        if customer_id not in self._caps:
            customer = self._customers[customer_id]
            limit = customer.max_keys if customer is not None else None
            live = await live_keys(self._store, customer_id) if limit is not None else 0
            self._caps[customer_id] = _Cap(limit, live) if limit is not None else None
        cap = self._caps[customer_id]
        if cap is None:
            return
        if cap.live >= cap.limit:
            raise Invalid("customer_id", f"customer {customer_id} has {cap.limit} live keys, "
                                         f"its cap (max_keys {cap.limit})")  # fmt: skip
        cap.live += 1

    def _changes(self) -> list[Change]:
        """Per key while few; else one change that makes every instance reload the set
        (`imported`) or drop every cached record too (`all`): 100,000 messages would
        take the SQLite feed (1,000 rows a poll) 20 s to deliver."""
        if len(self._changed) > PER_KEY_CHANGES:
            return [Change("all")]  # reloads the set as well
        changes = [Change("key", key_id) for key_id in self._changed]
        if len(self._new) > PER_KEY_CHANGES:
            return [*changes, Change("imported")]
        return changes + [Change("imported", key_id) for key_id in self._new]


def _memo_key(name: str, value: Any) -> tuple[Any, ...] | None:
    """A hashable stand-in for a field's JSON value, or None (not remembered). An
    expiry relative to now ("30d") is remembered too: an import takes seconds."""
    if isinstance(value, list):
        if not all(isinstance(item, str) for item in value):
            return None
        return (name, list, *value)
    if isinstance(value, str | int | bool | float) or value is None:
        return (name, type(value), value)
    return None


def _live(record: KeyRecord) -> bool:
    expired = record.expires_at is not None and record.expires_at <= time.time()
    return record.status != "revoked" and not expired
