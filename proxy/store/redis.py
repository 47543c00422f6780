"""The Redis store: shared by any number of keyfront instances (SPEC section 7).

    kf:c:{<customer_id>}    customer JSON
    kf:k:{<key_id>}         key record JSON
    kf:customers            set of every customer id
    kf:keys                 set of every key id (list_keys() without a customer)
    kf:ck:{<customer_id>}   set of that customer's key ids
    kf:t:{<token_hash>}     customer token JSON, by the SHA-256 of the token (SPEC section 9)
    kf:ct:{<customer_id>}   set of that customer's token hashes
    kf:imported             imported key ids (SPEC section 13): a sorted set, all scores
                            0, so that it lists in order (ZRANGE BYLEX), batch by batch
    kf:meta:imported_secret the secret imported keys are hashed with, unless configured
    kf:x:{x}:...            the usage export's outbox (redis_outbox.py)

The hash tags keep each command on one slot, so the same code runs on Redis Cluster.
A record and its index sets live in different slots, so a write is several commands,
not one MULTI: the record first, then the indexes, then a PUBLISH of `key:<id>` or
`customer:<id>` on `kf:changes`. A crash in between leaves a record missing from a
list until its next write, never an index entry that misleads: readers skip ids whose
record is gone or belongs to another customer now. Classic PUBLISH reaches every node
of a cluster, so a subscriber listens on any one node.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from ..errors import Conflict, StoreError
from ..records import Customer, KeyRecord
from .base import CHANGE_KINDS, Change, ChangeKind, CustomerToken, Store
from .redis_outbox import RedisOutbox
from .redis_usage import RedisUsage

log = logging.getLogger(__name__)

T = TypeVar("T")

CHANNEL = b"kf:changes"
CUSTOMERS, KEYS = "kf:customers", "kf:keys"
IMPORTED, IMPORTED_SECRET = "kf:imported", "kf:meta:imported_secret"
IMPORT_BATCH = 2000  # records per MSET and per pipeline of their index entries
SCAN_COUNT = 10_000  # imported key ids per ZRANGE
# Per process; callers beyond it wait (docs/dependencies.md: the default pool raises).
MAX_CONNECTIONS = 64
POOL_WAIT = 5.0  # seconds a caller waits for a free connection before StoreError
SOCKET_TIMEOUT = 3.0  # admin and record reads; the hot path bounds its own wait (50 ms)
HEALTH_CHECK_INTERVAL = 15.0  # PING a pooled connection idle this long before reusing it
MGET_BATCH = 500  # keys per MGET when listing
BACKOFF_MIN, BACKOFF_MAX = 0.1, 2.0  # seconds between attempts to resubscribe
PING_EVERY, SILENCE_LIMIT = 5.0, 12.0  # a subscription silent this long is dead
# RedisClusterException is no RedisError (it means "no node answers"); OSError
# includes TimeoutError.
DRIVER_ERRORS = (RedisError, RedisClusterException, OSError)


def _cancelled_meanwhile(exc: BaseException) -> None:
    """Raise CancelledError if this task was cancelled while `exc` was raised. A cancel
    that lands as a driver's own timeout expires comes out as TimeoutError, an OSError
    (so a DRIVER_ERROR): caught as a lost connection, it kept the change feed
    resubscribing for ever, and a SIGTERM'd keyfront waiting on it never exited."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


def _slot_key(kind: str, id_: str) -> str:
    """`kf:<kind>:{<id>}`, as in the table above: the braces are the hash tag."""
    return f"kf:{kind}:{{{id_}}}"


def _options(retries: int = 1) -> dict[str, Any]:
    # One quick retry covers a pooled connection that a Redis restart closed; more
    # would only make an unreachable store slower to report (readiness, the CLI).
    return {
        "decode_responses": False,
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": SOCKET_TIMEOUT,
        "health_check_interval": HEALTH_CHECK_INTERVAL if retries else 0,
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.05) if retries else NoBackoff(), retries),
    }


class RedisStore(RedisUsage, RedisOutbox, Store):
    """`redis://host:port/db`, `rediss://...` (TLS), `redis+cluster://host:port` or
    `rediss+cluster://host:port` (a cluster over TLS: a managed Redis Cluster with
    in-transit encryption; the hot path's RESP client takes the same URL).

    `open()` does not need Redis to be up (connections are made on first use), so a
    Redis outage never stops keyfront from starting; `ping()` tells readiness. `put_*`
    writes whether or not the record exists. A write whose PUBLISH fails raises
    StoreError although the record was written: writes are idempotent, so retry."""

    def __init__(self, url: str) -> None:
        scheme, _, rest = url.partition("://")
        self.cluster = scheme.lower() in ("redis+cluster", "rediss+cluster")
        tls = scheme.lower().startswith("rediss")
        # redis-py names a cluster by one node's plain URL; rediss:// turns its TLS on.
        self._url = ("rediss://" if tls else "redis://") + rest if self.cluster else url
        self._client: Redis | RedisCluster
        self._limit: asyncio.Semaphore | None = None
        self._cluster_lock, self._cluster_ready = asyncio.Lock(), False
        if self.cluster:
            # The async RedisCluster has no blocking pool and raises when a node's
            # connections run out: a semaphore below that bound makes callers wait.
            self._client = RedisCluster.from_url(
                self._url, max_connections=MAX_CONNECTIONS + 1, **_options()
            )
            self._limit = asyncio.Semaphore(MAX_CONNECTIONS)
        else:
            pool = BlockingConnectionPool.from_url(
                url, max_connections=MAX_CONNECTIONS, timeout=POOL_WAIT, **_options()
            )
            self._client = Redis.from_pool(pool)
        self._closing = asyncio.Event()

    async def close(self) -> None:
        self._closing.set()  # ends changes()
        await self._client.aclose()

    async def ping(self) -> None:
        await self._call(self._client.ping())

    # customers

    async def create_customer(self, customer: Customer) -> None:
        await self._save_customer(customer, create=True)

    async def put_customer(self, customer: Customer) -> None:
        await self._save_customer(customer, create=False)

    async def _save_customer(self, customer: Customer, create: bool) -> None:
        customer_id = customer.customer_id
        await self._set(
            _slot_key("c", customer_id), customer.to_json(), create, f"customer {customer_id!r}"
        )
        await self._call(self._client.sadd(CUSTOMERS, customer_id))
        await self._call(self._client.publish(CHANNEL, f"customer:{customer_id}"))

    async def get_customer(self, customer_id: str) -> Customer | None:
        body = await self._call(self._client.get(_slot_key("c", customer_id)))
        return Customer.from_json(body) if body is not None else None

    async def list_customers(self) -> list[Customer]:
        ids = sorted(await self._members(CUSTOMERS))
        bodies = await self._mget([_slot_key("c", i) for i in ids])
        return [Customer.from_json(body) for body in bodies]

    # keys

    async def create_key(self, record: KeyRecord) -> None:
        await self._save_key(record, create=True)

    async def put_key(self, record: KeyRecord) -> None:
        await self._save_key(record, create=False)

    async def _save_key(self, record: KeyRecord, create: bool) -> None:
        key_id = record.key_id
        await self._set(_slot_key("k", key_id), record.to_json(), create, f"key {key_id!r}")
        await self._call(self._client.sadd(KEYS, key_id))
        await self._call(self._client.sadd(_slot_key("ck", record.customer_id), key_id))
        await self._call(self._client.publish(CHANNEL, f"key:{key_id}"))

    async def get_key(self, key_id: str) -> KeyRecord | None:
        body = await self._call(self._client.get(_slot_key("k", key_id)))
        return KeyRecord.from_json(body) if body is not None else None

    async def list_keys(self, customer_id: str | None = None) -> list[KeyRecord]:
        index = KEYS if customer_id is None else _slot_key("ck", customer_id)
        bodies = await self._mget([_slot_key("k", i) for i in await self._members(index)])
        records = [KeyRecord.from_json(body) for body in bodies]
        if customer_id is not None:  # a key moved to another customer stays in the old set
            records = [r for r in records if r.customer_id == customer_id]
        return sorted(records, key=lambda r: (r.created_at, r.key_id))

    async def count_keys(self, customer_id: str) -> int:
        """The customer's index set; a key moved to another customer stays in the old
        set, so this may count one too many, never too few."""
        return int(await self._call(self._client.scard(_slot_key("ck", customer_id))))

    # imported keys (SPEC section 13)

    async def get_keys(self, key_ids: list[str]) -> dict[str, KeyRecord]:
        bodies = await self._mget([_slot_key("k", i) for i in key_ids])
        records = (KeyRecord.from_json(body) for body in bodies)
        return {record.key_id: record for record in records}

    async def import_keys(self, records: list[KeyRecord]) -> None:
        """IMPORT_BATCH records at a time: one MSET of the records, then one pipeline of
        their index entries (as for one key, records before indexes). A command per
        record was ~25 µs of redis-py's reply parsing each, 4 per record."""
        for start in range(0, len(records), IMPORT_BATCH):
            batch = records[start : start + IMPORT_BATCH]
            bodies = {_slot_key("k", r.key_id): r.to_json() for r in batch}
            if isinstance(self._client, RedisCluster):  # one slot per record
                await self._call(self._client.mset_nonatomic(bodies))
            else:
                await self._call(self._client.mset(bodies))
            by_customer: dict[str, list[str]] = {}
            for record in batch:
                by_customer.setdefault(record.customer_id, []).append(record.key_id)
            ids = [record.key_id for record in batch]
            pipe = self._client.pipeline(transaction=False)
            pipe.sadd(KEYS, *ids)
            for customer_id, its in by_customer.items():
                pipe.sadd(_slot_key("ck", customer_id), *its)
            pipe.zadd(IMPORTED, dict.fromkeys(ids, 0))
            await self._call(pipe.execute())

    async def scan_imported(self) -> AsyncIterator[list[str]]:
        """In order and in batches: a million ids are never one huge reply."""
        start = b"-"
        while True:
            members = await self._call(
                self._client.zrangebylex(IMPORTED, start, b"+", 0, SCAN_COUNT)
            )
            if not members:
                return
            batch = [m.decode() if isinstance(m, bytes) else m for m in members]
            yield batch
            start = b"(" + batch[-1].encode()

    async def imported_secret(self, create: bool) -> str | None:
        if create:
            candidate = secrets.token_hex(32)
            await self._call(self._client.set(IMPORTED_SECRET, candidate, nx=True))
        value = await self._call(self._client.get(IMPORTED_SECRET))
        return value.decode() if isinstance(value, bytes) else value

    async def announce_all(self, changes: list[Change]) -> None:
        if self.cluster:  # redis-py refuses PUBLISH in a cluster pipeline: one by one
            await super().announce_all(changes)
            return
        pipe = self._client.pipeline(transaction=False)
        for change in changes:
            pipe.publish(CHANNEL, f"{change.kind}:{change.id}")
        await self._call(pipe.execute())

    # customer tokens: the token first, then the index (as for keys); nothing caches them

    async def create_token(self, token_hash: str, token: CustomerToken) -> None:
        key = _slot_key("t", token_hash)
        await self._set(key, token.to_json(), True, f"token {token.token_id!r}")
        await self._call(self._client.sadd(_slot_key("ct", token.customer_id), token_hash))

    async def get_token(self, token_hash: str) -> CustomerToken | None:
        body = await self._call(self._client.get(_slot_key("t", token_hash)))
        return CustomerToken.from_json(body) if body is not None else None

    async def list_tokens(self, customer_id: str) -> list[CustomerToken]:
        hashes = await self._members(_slot_key("ct", customer_id))
        bodies = await self._mget([_slot_key("t", h) for h in hashes])
        tokens = [CustomerToken.from_json(body) for body in bodies]
        return sorted(tokens, key=lambda t: (t.created_at, t.token_id))

    async def delete_token(self, customer_id: str, token_id: str) -> CustomerToken | None:
        index = _slot_key("ct", customer_id)
        for token_hash in await self._members(index):
            token = await self.get_token(token_hash)
            if token is not None and token.token_id == token_id:
                await self._call(self._client.delete(_slot_key("t", token_hash)))
                await self._call(self._client.srem(index, token_hash))
                return token
        return None

    # change notification

    async def announce(self, change: Change) -> None:
        await self._call(self._client.publish(CHANNEL, f"{change.kind}:{change.id}"))

    async def changes(self) -> AsyncIterator[Change]:
        """Changes published by any instance from now on. A lost subscription is
        retried with backoff (0.1 s doubling to 2 s); once it is back, Change("all")
        comes first, since changes published meanwhile were missed."""
        backoff, attempt, missed = BACKOFF_MIN, 0, False
        while not self._closing.is_set():
            # Its own connection without retries: redis-py would otherwise reconnect
            # and resubscribe silently, and we could not tell that changes were missed.
            subscriber = Redis.from_url(self._subscriber_url(attempt), **_options(retries=0))
            pubsub = subscriber.pubsub()
            try:
                await _subscribe(pubsub)
                backoff = BACKOFF_MIN
                if missed:
                    missed = False
                    yield Change("all")
                async for change in self._messages(pubsub):
                    yield change
            except DRIVER_ERRORS as exc:
                _cancelled_meanwhile(exc)
                log.warning("redis change feed lost (%s); resubscribing in %.1fs", exc, backoff)
                missed, attempt = True, attempt + 1
                with contextlib.suppress(TimeoutError):  # a pause that close() cuts short
                    await asyncio.wait_for(self._closing.wait(), backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            finally:
                with contextlib.suppress(*DRIVER_ERRORS):
                    # Typed only from redis-py 8 on: the cast keeps mypy quiet on both.
                    await cast("Callable[[], Awaitable[None]]", pubsub.aclose)()
                    await subscriber.aclose()

    async def _messages(self, pubsub: PubSub) -> AsyncIterator[Change]:
        # Our own PING watchdog: a half-open connection (a failover behind NAT, a
        # pulled cable) would otherwise stay silent forever without an error.
        loop = asyncio.get_running_loop()
        heard = pinged = loop.time()
        while not self._closing.is_set():  # checked 4 times a second, so close() ends it
            now = loop.time()
            if now - heard > SILENCE_LIMIT:
                raise ConnectionError(f"redis did not answer for {SILENCE_LIMIT:.0f}s")
            if now - pinged > PING_EVERY:
                await pubsub.ping()
                pinged = now
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.25)
            if message is not None:
                heard = loop.time()
                change = _change_of(message)
                if change is not None:
                    yield change

    def _subscriber_url(self, attempt: int) -> str:
        """The node to subscribe on: the configured one, or for a cluster each known
        node in turn, so that losing one node moves the subscription to another."""
        nodes = self._client.get_nodes() if isinstance(self._client, RedisCluster) else []
        if not nodes:
            return self._url
        node = nodes[attempt % len(nodes)]
        parts = urlsplit(self._url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@{node.host}:{node.port}" if userinfo else f"{node.host}:{node.port}"
        return parts._replace(netloc=netloc, path="").geturl()

    # the edge: every command passes here

    async def _call(self, command: Awaitable[T]) -> T:
        """Await one command; every driver failure becomes StoreError."""
        try:
            if self._limit is None:
                return await command
            async with self._limit:
                await self._initialize_cluster()
                return await command
        except DRIVER_ERRORS as exc:
            raise StoreError(f"redis: {exc}") from exc
        finally:
            if inspect.iscoroutine(command):  # never awaited if the cluster failed first
                command.close()  # (a no-op once awaited)

    async def _initialize_cluster(self) -> None:
        # redis-py's async RedisCluster races when many commands start its first
        # initialize() at once: in tests, commands ran twice (a create then reported
        # Conflict) or failed with AttributeError. So the first call initializes alone.
        if self._cluster_ready:
            return
        async with self._cluster_lock:
            if not self._cluster_ready:
                await cast(RedisCluster, self._client).initialize()
                self._cluster_ready = True

    async def _set(self, key: str, body: str, create: bool, what: str) -> None:
        """SET a record, NX for a create. A create that finds its very body there
        counts as done: that is what a retry after a lost reply finds."""
        written = await self._call(self._client.set(key, body, nx=create))
        if not written and await self._call(self._client.get(key)) != body.encode():
            raise Conflict(f"{what} already exists")

    async def _members(self, index: str) -> list[str]:
        members = await self._call(self._client.smembers(index))
        return [m.decode() if isinstance(m, bytes) else m for m in members]

    async def _mget(self, keys: list[str]) -> list[bytes]:
        """The values of `keys` that exist, in order, MGET_BATCH keys per round trip."""
        values: list[bytes | str | None] = []
        for start in range(0, len(keys), MGET_BATCH):
            batch = keys[start : start + MGET_BATCH]
            if isinstance(self._client, RedisCluster):  # one MGET must stay in one slot
                values += await self._call(self._client.mget_nonatomic(batch))
            else:
                values += await self._call(self._client.mget(batch))
        return [value for value in values if isinstance(value, bytes)]


async def _subscribe(pubsub: PubSub) -> None:
    """SUBSCRIBE and wait for Redis to confirm: only then does "from now on" hold."""
    await pubsub.subscribe(CHANNEL)
    while True:
        message = await pubsub.get_message(timeout=SOCKET_TIMEOUT)
        if message is None:
            raise ConnectionError("redis did not confirm the subscription")
        if message["type"] == "subscribe":
            return


def _change_of(message: dict[str, Any]) -> Change | None:
    if message["type"] != "message":
        return None  # our PING's answer
    kind, _, id_ = bytes(message["data"]).decode(errors="replace").partition(":")
    if kind not in CHANGE_KINDS:
        log.debug("ignoring change %r", message["data"])  # e.g. from a newer keyfront
        return None
    return Change(cast(ChangeKind, kind), id_)
