"""What every store shares: the `Store` interface and the value types it reads and
writes (Change, CustomerToken, UsageRow). A leaf of the store layer: the backends
(sqlite.py, redis.py) and the package's `store_from_url` import it; it imports nothing
above the store but the records it stores (issue 14: imports flow one way).
"""

from __future__ import annotations

import abc
import dataclasses
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Literal, get_args

from ..records import Customer, KeyRecord
from ..sketch import Sketch

ChangeKind = Literal["key", "customer", "all", "purge", "purge_prefix", "imported", "lookup_key"]
CHANGE_KINDS: frozenset[str] = frozenset(get_args(ChangeKind))
Scope = Literal["key", "customer"]  # whose usage a row counts
Grain = Literal["hour", "day", "month"]  # the period a usage row covers


@dataclass(frozen=True, slots=True)
class UsageRow:
    """The counts of one key (or customer) in one period starting at `start` (unix
    seconds, UTC: an hour, day or month boundary). `sketches`: its top referrers,
    objects and client addresses by dimension (SPEC section 15, proxy/analytics.py),
    stored and merged with the counts in the same at-most-once batch."""

    scope: Scope
    id: str
    start: int
    counts: dict[str, int]
    sketches: dict[str, Sketch] = field(default_factory=dict)


def day_of(ts: int) -> int:
    """The start of the UTC day holding unix time `ts` (hourly rows roll up to it)."""
    return ts // 86400 * 86400


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One event waiting in a sink's outbox (SPEC section 16, proxy/export): its id,
    the period it counts (unix seconds: the order sinks receive them in) and its JSON
    text, which the store keeps as given."""

    id: str
    period: int
    body: str


@dataclass(frozen=True, slots=True)
class Change:
    """A record changed: every instance drops its cached copy. `all` drops every cached
    record (sent after a lost subscription, when changes may have been missed).
    `purge` / `purge_prefix` carry a cache purge (SPEC section 5) to every instance:
    `id` is the public URL path or prefix. `imported` (SPEC section 13): the key id
    joins every instance's set of imported keys; without an id, a bulk import: every
    instance reloads the set.
    `lookup_key` drops the key API's cached
    answers for external keys (SPEC section 13): `id` lists their keyed digests
    (keylookup/digest.py), never the keys."""

    kind: ChangeKind
    id: str = ""


@dataclass(frozen=True, slots=True)
class CustomerToken:
    """A customer's admin API token (SPEC section 9), as stored: the store keeps it
    under the SHA-256 of the token string, never the token itself."""

    token_id: str
    customer_id: str
    name: str = ""
    created_at: int = 0  # unix seconds

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> CustomerToken:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})


class Store(abc.ABC):
    """Customers and key records. Writes announce a Change to every subscriber."""

    async def open(self) -> None:
        """Connect / create the schema. Called once before use. A network store may
        connect lazily, so that keyfront starts while it is down: ping() tells."""

    async def close(self) -> None:
        """Release connections. Called once at shutdown."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise StoreError unless the store answers (for /readyz)."""

    # customers
    @abc.abstractmethod
    async def create_customer(self, customer: Customer) -> None:
        """Insert; raise Conflict if the id exists."""

    @abc.abstractmethod
    async def put_customer(self, customer: Customer) -> None:
        """Replace an existing customer and announce the change. (Every store writes a
        missing one too, as an upsert; callers read first when the difference matters.)"""

    @abc.abstractmethod
    async def get_customer(self, customer_id: str) -> Customer | None: ...

    @abc.abstractmethod
    async def list_customers(self) -> list[Customer]:
        """All customers, ordered by customer_id."""

    # keys
    @abc.abstractmethod
    async def create_key(self, record: KeyRecord) -> None:
        """Insert; raise Conflict if the key_id exists. Announces the change (so a
        cached "unknown" answer for that id is dropped)."""

    @abc.abstractmethod
    async def put_key(self, record: KeyRecord) -> None:
        """Replace an existing key record and announce the change. (A missing one is
        written too, as for put_customer.)"""

    @abc.abstractmethod
    async def get_key(self, key_id: str) -> KeyRecord | None: ...

    @abc.abstractmethod
    async def list_keys(self, customer_id: str | None = None) -> list[KeyRecord]:
        """Keys of one customer (or all), ordered by created_at then key_id."""

    @abc.abstractmethod
    async def count_keys(self, customer_id: str) -> int:
        """How many key records (live, revoked or expired) the customer holds, at least:
        one index lookup, no record read (a cap on them, manage.actions.record_cap)."""

    async def get_key_and_customer(self, key_id: str) -> tuple[KeyRecord, Customer | None] | None:
        """The request path's read on a record-cache miss. Stores that can join in one
        round trip override this."""
        record = await self.get_key(key_id)
        if record is None:
            return None
        return record, await self.get_customer(record.customer_id)

    # imported keys (SPEC section 13; proxy/imported.py)
    async def get_keys(self, key_ids: list[str]) -> dict[str, KeyRecord]:
        """The records of those of `key_ids` that exist (an import's upserts). Stores
        that can read in bulk override this."""
        found = {}
        for key_id in key_ids:
            record = await self.get_key(key_id)
            if record is not None:
                found[key_id] = record
        return found

    @abc.abstractmethod
    async def import_keys(self, records: list[KeyRecord]) -> None:
        """Write the records (upserts) and list their ids as imported, in bulk (one
        transaction, or pipelined). Announces nothing: the importer announces once
        for the whole file (`announce_all`)."""

    @abc.abstractmethod
    def scan_imported(self) -> AsyncIterator[list[str]]:
        """Every imported key id, in batches, in ascending order (the in-memory set is
        built from it without a sort)."""

    @abc.abstractmethod
    async def imported_secret(self, create: bool) -> str | None:
        """The secret imported keys are hashed with, when keys.external.hash_secret is
        not set: made once (first writer wins) when `create`, then kept."""

    # customer tokens (SPEC section 9), by the hex SHA-256 of the token string
    @abc.abstractmethod
    async def create_token(self, token_hash: str, token: CustomerToken) -> None:
        """Insert; raise Conflict if the hash exists."""

    @abc.abstractmethod
    async def get_token(self, token_hash: str) -> CustomerToken | None: ...

    @abc.abstractmethod
    async def list_tokens(self, customer_id: str) -> list[CustomerToken]:
        """The customer's tokens, ordered by created_at then token_id."""

    @abc.abstractmethod
    async def delete_token(self, customer_id: str, token_id: str) -> CustomerToken | None:
        """Delete the customer's token `token_id`; the deleted token, or None."""

    # usage counters (SPEC section 4; see usage.py)
    @abc.abstractmethod
    async def add_usage(self, batch_id: str, rows: list[UsageRow]) -> None:
        """Add hourly rows and their daily roll-ups, at most once per batch id."""

    @abc.abstractmethod
    async def read_usage(
        self, scope: Scope, ids: Iterable[str], start: int, end: int, grain: Grain
    ) -> list[UsageRow]:
        """Stored rows of `grain` (hour, else day) starting in [start, end)."""

    @abc.abstractmethod
    async def read_sketches(
        self, scope: Scope, ids: Iterable[str], start: int, end: int, grain: Grain
    ) -> list[UsageRow]:
        """Stored sketches of `grain` (hour, else day) starting in [start, end), as rows
        whose counts are empty (SPEC section 15)."""

    # the usage export's outbox (SPEC section 16; proxy/export). Ledger entries and
    # sink status are JSON text the store keeps as given: it knows no event's fields.
    def track_usage_keys(self) -> None:
        """The usage export will call hour_usage(): keep what it needs from now on (a
        store that can list an hour's keys anyway does nothing)."""

    def track_touched_hours(self) -> None:
        """The usage export runs: from now on each add_usage also marks the hours of
        its key rows (export_touched), in the same at-most-once write as the counts or
        after them, before it returns (a batch is re-sent until it returns)."""

    @abc.abstractmethod
    async def export_touched(self) -> dict[int, str]:
        """The marked hours: hour start -> the token of its last mark (a fresh random
        one per mark, so that a mark set again is never taken for the one read)."""

    @abc.abstractmethod
    async def export_untouch(self, hour: int, token: str) -> None:
        """Remove the mark of `hour` if it is still `token` (compare and delete): a
        flush that marked it again since it was read keeps it."""

    @abc.abstractmethod
    async def export_lease(self, holder: str, ttl: float) -> bool:
        """Take or renew the one exporter's lease for `ttl` seconds: true if `holder`
        holds it now (no other holder's lease was live)."""

    @abc.abstractmethod
    async def hour_usage(self, hour: int) -> list[UsageRow]:
        """Every key's hourly row of the hour starting at `hour`."""

    @abc.abstractmethod
    async def export_ledger(self, hour: int) -> dict[str, str]:
        """What was exported of each key's row of `hour`: key id -> ledger entry."""

    @abc.abstractmethod
    async def export_enqueue(
        self,
        holder: str,
        hour: int,
        ledger: dict[str, str],
        events: list[OutboxEvent],
        sinks: list[str],
    ) -> bool:
        """In one atomic step, if `holder` holds the lease (else false, and nothing
        written): write the ledger entries of `hour` and add each event to every
        sink's outbox (an id already there is kept as it was)."""

    @abc.abstractmethod
    async def export_marks(self) -> dict[str, str]:
        """The exporter's own marks (the last period passed), name -> text."""

    @abc.abstractmethod
    async def set_export_mark(self, name: str, value: str) -> None: ...

    @abc.abstractmethod
    async def export_once(self, name: str, ttl: float) -> bool:
        """Set-if-absent: true for the first caller of `name` (across instances) while
        it is kept, `ttl` seconds at least (an alert sent once a month, SPEC 16)."""

    @abc.abstractmethod
    async def export_peek(self, sink: str, limit: int) -> list[OutboxEvent]:
        """The sink's oldest waiting events (by period, then id), `limit` at most."""

    @abc.abstractmethod
    async def export_ack(self, sink: str, ids: list[str], status: dict[str, str]) -> None:
        """Remove delivered events from the sink's outbox and merge `status` into its
        status fields, in one step."""

    @abc.abstractmethod
    async def export_note(self, sink: str, status: dict[str, str]) -> None:
        """Merge `status` into the sink's status fields (its last error)."""

    @abc.abstractmethod
    async def export_status(self, sink: str) -> tuple[int, dict[str, str]]:
        """How many events wait in the sink's outbox, and its status fields."""

    # change notification (SPEC section 2: a change reaches every instance within 1 s)
    @abc.abstractmethod
    async def announce(self, change: Change) -> None:
        """Send a change that is not a record write (a cache purge) to every
        instance's `changes()`, this one's included."""

    async def announce_all(self, changes: list[Change]) -> None:
        """`announce` each change, in bulk where the store can."""
        for change in changes:
            await self.announce(change)

    @abc.abstractmethod
    def changes(self) -> AsyncIterator[Change]:
        """Changes made by any instance, from now on, until the store closes. After a
        gap (lost connection) it yields Change("all") first."""
