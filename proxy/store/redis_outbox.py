"""The usage export's outbox in the Redis store (SPEC section 16), mixed into
RedisStore. proxy/export owns what the entries mean; this module only keeps them.

Every key carries the one hash tag `{kf:x}`, so that an enqueue (the ledger entries
of an hour and every sink's events) is one atomic script on Redis Cluster too:

    kf:x:{x}:lease          the one exporter's lease (lease.lua: SET PX by its holder)
    kf:x:{x}:a:<hour>       a set: the keys with usage in that hour (add_usage adds them)
    kf:x:{x}:l:<hour>       a hash: key id -> what was exported of its row of that hour
    kf:x:{x}:q:<sink>       a sorted set: the sink's waiting event ids, by period
    kf:x:{x}:e:<sink>       a hash: event id -> the event's JSON
    kf:x:{x}:s:<sink>       a hash: the sink's status (last period delivered, last error)
    kf:x:{x}:marks          a hash: the exporter's marks (the last period passed)
    kf:x:{x}:t              a hash: hour -> token, the hours add_usage wrote since the
                            pass read them (issue 19; a fresh random token per mark)
    kf:x:{x}:once:<name>    what happened once (SET NX EX): an alert per threshold and month

One slot holds the whole outbox: it sees a few writes per active key per period
and at most `export.max_pending` events per sink, far below one node's capacity; in
exchange an enqueue is atomic without a cross-slot transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from .base import Grain, OutboxEvent, Scope, UsageRow

ENQUEUE = resources.files("proxy.store").joinpath("outbox.lua").read_text()
LEASE = resources.files("proxy.store").joinpath("lease.lua").read_text()
TAG = "kf:x:{x}"
# The keys with usage in an hour, and the ledger of an hour, are needed while an hour's
# late counts may still arrive and be exported: as long as its hourly rows (35 days).
INDEX_TTL = 36 * 86400
# Compare and delete: a mark set again since the pass read it (a fresh token) is kept.
UNTOUCH = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""
TOUCHED = f"{TAG}:t"


def active_keys(hour: int) -> str:
    return f"{TAG}:a:{hour}"


class RedisOutbox:
    # Provided by RedisStore / RedisUsage: the client, its error translation, the reads.
    _client: Redis | RedisCluster
    _call: Callable[[Awaitable[Any]], Awaitable[Any]]
    _hashes: Callable[..., Awaitable[list[tuple[str, int, dict[bytes, bytes]]]]]
    index_active_keys = False  # set by the exporter: add_usage then indexes active keys
    marks_hours = False  # set by the usage export: add_usage then marks the hours it wrote

    def track_usage_keys(self) -> None:
        self.index_active_keys = True

    def track_touched_hours(self) -> None:
        self.marks_hours = True

    async def export_touched(self) -> dict[int, str]:
        found = await self._call(self._client.hgetall(TOUCHED))
        return {int(k): v.decode() for k, v in found.items()}

    async def export_untouch(self, hour: int, token: str) -> None:
        await self._call(self._client.eval(UNTOUCH, 1, TOUCHED, hour, token))

    async def export_lease(self, holder: str, ttl: float) -> bool:
        taken = await self._call(
            self._client.eval(LEASE, 1, f"{TAG}:lease", holder, int(ttl * 1000))
        )
        return bool(taken)

    async def hour_usage(self, hour: int) -> list[UsageRow]:
        members = await self._call(self._client.smembers(active_keys(hour)))
        ids = sorted(m.decode() for m in members)
        scope: Scope = "key"
        grain: Grain = "hour"
        found = await self._hashes(scope, ids, hour, hour + 1, grain, kind="")
        return [
            UsageRow("key", id_, t, {k.decode(): int(v) for k, v in counts.items()})
            for id_, t, counts in found
        ]

    async def export_ledger(self, hour: int) -> dict[str, str]:
        found = await self._call(self._client.hgetall(f"{TAG}:l:{hour}"))
        return {k.decode(): v.decode() for k, v in found.items()}

    async def export_enqueue(
        self,
        holder: str,
        hour: int,
        ledger: dict[str, str],
        events: list[OutboxEvent],
        sinks: list[str],
    ) -> bool:
        keys = [f"{TAG}:lease", f"{TAG}:l:{hour}"]
        for sink in sinks:
            keys += [f"{TAG}:q:{sink}", f"{TAG}:e:{sink}"]
        args: list[Any] = [holder, INDEX_TTL, len(ledger)]
        for key_id, entry in ledger.items():
            args += [key_id, entry]
        for event in events:
            args += [event.id, event.period, event.body]
        return bool(await self._call(self._client.eval(ENQUEUE, len(keys), *keys, *args)))

    async def export_marks(self) -> dict[str, str]:
        found = await self._call(self._client.hgetall(f"{TAG}:marks"))
        return {k.decode(): v.decode() for k, v in found.items()}

    async def set_export_mark(self, name: str, value: str) -> None:
        await self._call(self._client.hset(f"{TAG}:marks", name, value))

    async def export_once(self, name: str, ttl: float) -> bool:
        done = await self._call(self._client.set(f"{TAG}:once:{name}", b"1", nx=True, ex=int(ttl)))
        return bool(done)

    async def export_peek(self, sink: str, limit: int) -> list[OutboxEvent]:
        queued = await self._call(
            self._client.zrange(f"{TAG}:q:{sink}", 0, limit - 1, withscores=True)
        )
        if not queued:
            return []
        ids = [member for member, _ in queued]
        bodies = await self._call(self._client.hmget(f"{TAG}:e:{sink}", ids))
        return [
            OutboxEvent(member.decode(), int(score), body.decode())
            for (member, score), body in zip(queued, bodies, strict=True)
            if body is not None
        ]

    async def export_ack(self, sink: str, ids: list[str], status: dict[str, str]) -> None:
        # The queue first: an event off the queue is never sent again; a crash before
        # the HDEL leaves only its text behind, which nothing reads.
        pipe = self._client.pipeline(transaction=False)
        if ids:
            pipe.zrem(f"{TAG}:q:{sink}", *ids)
            pipe.hdel(f"{TAG}:e:{sink}", *ids)
        if status:
            pipe.hset(f"{TAG}:s:{sink}", mapping=status)  # type: ignore[arg-type]
        await self._call(pipe.execute())

    async def export_note(self, sink: str, status: dict[str, str]) -> None:
        await self._call(self._client.hset(f"{TAG}:s:{sink}", mapping=status))  # type: ignore[arg-type]

    async def export_status(self, sink: str) -> tuple[int, dict[str, str]]:
        pipe = self._client.pipeline(transaction=False)
        pipe.zcard(f"{TAG}:q:{sink}")
        pipe.hgetall(f"{TAG}:s:{sink}")
        waiting, status = await self._call(pipe.execute())
        return int(waiting), {k.decode(): v.decode() for k, v in status.items()}
