"""Usage counters in the Redis store (SPEC section 4), mixed into RedisStore.

Each row of a batch is one call of usage.lua, which sets a marker for (batch, row) in
the same atomic step as the counts: a batch retried after a half-failed flush skips
the rows already applied. Rows are hash-tagged by key or customer, so the script runs
on Redis Cluster. Hourly hashes live 36 days and daily ones 401 (SPEC: at least 35
and 400). A row's sketches (SPEC section 15) are merged by the same script into a hash
per hour and per day (dimension -> sketch text), kept as long as the counts.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable, Callable, Iterable
from importlib import resources
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from ..sketch import CAPACITY, Sketch
from .base import Grain, Scope, UsageRow, day_of
from .redis_outbox import INDEX_TTL, TOUCHED, active_keys

T = TypeVar("T")

SCRIPT = resources.files("proxy.store").joinpath("usage.lua").read_text()
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
MARKER_TTL, HOURLY_TTL, DAILY_TTL = 7 * 86400, 36 * 86400, 401 * 86400
ROWS_PER_PIPELINE = 500
CLUSTER_CONCURRENCY = 32


def _script_args(batch_id: str, row: UsageRow) -> list[Any]:
    base = _base(row.scope, row.id)
    keys = [
        f"{base}:b:{batch_id}:{row.start}",
        f"{base}:h:{row.start}",
        f"{base}:d:{day_of(row.start)}",
        f"{base}:s:h:{row.start}",
        f"{base}:s:d:{day_of(row.start)}",
    ]
    args: list[Any] = [SCRIPT_SHA, 5, *keys, MARKER_TTL, HOURLY_TTL, DAILY_TTL, CAPACITY]
    args.append(len(row.sketches))
    for dimension, sketch in row.sketches.items():
        args += [dimension, sketch.dumps()]
    for field, value in row.counts.items():
        args += [field, value]
    return args


def _base(scope: Scope, id_: str) -> str:
    return f"kf:u:{{{scope[0]}:{id_}}}"


class RedisUsage:
    # Provided by RedisStore: the redis-py client and its error translation.
    _client: Redis | RedisCluster
    _call: Callable[[Awaitable[Any]], Awaitable[Any]]
    index_active_keys: bool  # RedisOutbox's: set when the usage export runs
    marks_hours: bool  # RedisOutbox's: set when the usage export runs

    async def add_usage(self, batch_id: str, rows: list[UsageRow]) -> None:
        for i in range(0, len(rows), ROWS_PER_PIPELINE):
            chunk = rows[i : i + ROWS_PER_PIPELINE]
            try:
                await self._call(self._apply(batch_id, chunk))
            except Exception as exc:
                if not isinstance(exc.__cause__, NoScriptError):
                    raise
                await self._call(self._client.script_load(SCRIPT))  # Redis restarted
                await self._call(self._apply(batch_id, chunk))
        if self.marks_hours:
            await self._mark_hours(rows)

    async def _mark_hours(self, rows: list[UsageRow]) -> None:
        """Mark the hours of the key rows for the usage export's pass (issue 19), after
        their counts. The counts are hash-tagged by key and the marks by `{x}`, so no
        one script may write both; the order makes that safe:
        - counts in, mark not (a death or a store failure between): add_usage has not
          returned, so the batch is sent again with its id (the spool keeps it sealed
          until then, across a SIGKILL); usage.lua skips its rows and the mark follows;
        - a pass reads the mark, then the rows, and clears the mark only if its token
          is unchanged: counts that landed after it read the rows are followed by a new
          token, which it does not clear. A re-scan is harmless: the ledger.
        A mark before the counts would not do: the pass could read both before the
        counts land and clear it."""
        hours = sorted({row.start for row in rows if row.scope == "key"})
        if hours:
            token = os.urandom(8).hex()  # never reused: the pass's compare and delete
            mapping = {str(hour): token for hour in hours}
            await self._call(self._client.hset(TOUCHED, mapping=mapping))  # type: ignore[arg-type]

    async def _apply(self, batch_id: str, rows: list[UsageRow]) -> list[Any]:
        calls = [_script_args(batch_id, row) for row in rows]
        if self.index_active_keys:  # the usage export reads which keys had usage
            await self._index_active(rows)
        if isinstance(self._client, RedisCluster):
            # redis-py refuses EVALSHA in cluster pipelines: concurrent calls instead,
            # a bounded number at a time (each node's connection pool is bounded).
            replies: list[Any] = []
            for i in range(0, len(calls), CLUSTER_CONCURRENCY):
                chunk = calls[i : i + CLUSTER_CONCURRENCY]
                replies += await asyncio.gather(*(self._client.evalsha(*c) for c in chunk))
            return replies
        pipe = self._client.pipeline(transaction=False)
        for call in calls:
            pipe.evalsha(*call)
        return list(await pipe.execute())

    async def _index_active(self, rows: list[UsageRow]) -> None:
        """Each key's id in its hour's set (redis_outbox.py), before its counts: a key
        whose counts are in is always in the set. Idempotent, so a retry is free."""
        hours: dict[int, set[str]] = {}
        for row in rows:
            if row.scope == "key":
                hours.setdefault(row.start, set()).add(row.id)
        pipe = self._client.pipeline(transaction=False)
        for hour, ids in hours.items():
            pipe.sadd(active_keys(hour), *ids)
            pipe.expire(active_keys(hour), INDEX_TTL)
        await pipe.execute()

    async def read_usage(
        self, scope: Scope, ids: Iterable[str], start: int, end: int, grain: Grain
    ) -> list[UsageRow]:
        found = await self._hashes(scope, ids, start, end, grain, kind="")
        return [
            UsageRow(scope, id_, t, {k.decode(): int(v) for k, v in counts.items()})
            for id_, t, counts in found
        ]

    async def read_sketches(
        self, scope: Scope, ids: Iterable[str], start: int, end: int, grain: Grain
    ) -> list[UsageRow]:
        found = await self._hashes(scope, ids, start, end, grain, kind="s:")
        return [
            UsageRow(scope, i, t, {}, {k.decode(): Sketch.loads(v.decode()) for k, v in h.items()})
            for i, t, h in found
        ]

    async def _hashes(
        self, scope: Scope, ids: Iterable[str], start: int, end: int, grain: Grain, *, kind: str
    ) -> list[tuple[str, int, dict[bytes, bytes]]]:
        """The non-empty hashes `kind` (counts "", sketches "s:") of the periods of
        `grain` (hour, else day) starting in [start, end), one pipeline."""
        step, letter = (3600, "h") if grain == "hour" else (86400, "d")
        first = start // step * step
        wanted = [(id_, t) for id_ in ids for t in range(first, end, step) if t >= start]
        pipe = self._client.pipeline(transaction=False)
        for id_, t in wanted:
            pipe.hgetall(f"{_base(scope, id_)}:{kind}{letter}:{t}")
        replies = await self._call(pipe.execute()) if wanted else []
        return [(i, t, h) for (i, t), h in zip(wanted, replies, strict=True) if h]
