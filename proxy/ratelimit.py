"""Rate limits and monthly quotas: SPEC section 3, checks 9 and 10 of section 1.

A key's limits (`KeyLimits`) are resolved once per record load: its own bucket
(`rate`, `burst`, else `keys.defaults`), an optional bucket per (key, client IP), the
customer's plan-cap bucket, and its monthly quotas. Two limiters decide:

- `LocalLimiter`: buckets in this process. The SQLite store's limiter (each of N
  workers holds 1/N of every rate and burst), and every limiter's fallback.
- `SharedLimiter` (limiter_redis.py): one Lua script per bucket in Redis, the calls of
  one loop tick coalesced, behind a circuit breaker that falls back to a LocalLimiter.

Both return a `Decision`, whose headers go on every keyed response.
"""

from __future__ import annotations

import abc
import asyncio
import calendar
import contextlib
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from .config import KeyDefaults
from .errors import QuotaExceeded, RateLimited, Refusal, StoreError
from .records import Customer, KeyRecord
from .units import Rate


@dataclass(frozen=True, slots=True)
class Bucket:
    """A token bucket: capacity `burst`, refilled at `rate` tokens a second. `id` is
    its store key, hash-tagged by key (or customer) id for Redis Cluster."""

    id: str
    rate: float
    burst: int


@dataclass(frozen=True, slots=True)
class KeyLimits:
    key_id: str
    bucket: Bucket | None  # the key's own; its state fills the RateLimit-* headers
    ip_rate: Rate | None
    ip_burst: int
    customer_bucket: Bucket | None
    quota_requests: int | None
    quota_bytes: int | None

    @property
    def has_quota(self) -> bool:
        return self.quota_requests is not None or self.quota_bytes is not None

    @property
    def unlimited(self) -> bool:
        """No bucket, no quota: checks 9 and 10 have nothing to decide."""
        return (
            self.bucket is None
            and self.ip_rate is None
            and self.customer_bucket is None
            and not self.has_quota
        )

    def buckets(self, client_ip: str) -> list[Bucket]:
        """The buckets one request must pass; the key's own first."""
        found = [self.bucket] if self.bucket else []
        if self.ip_rate is not None:
            ip_bucket = Bucket(
                f"kf:b:{{{self.key_id}}}:ip:{client_ip}", self.ip_rate.per_second, self.ip_burst
            )
            found.append(ip_bucket)
        if self.customer_bucket:
            found.append(self.customer_bucket)
        return found

    @classmethod
    def of(cls, record: KeyRecord, customer: Customer | None, defaults: KeyDefaults) -> KeyLimits:
        rate = record.rate or defaults.rate
        burst = record.burst or defaults.burst
        key_bucket = _bucket(f"kf:b:{{{record.key_id}}}", rate, burst)
        customer_bucket = None
        if customer is not None and customer.max_rate is not None:
            customer_bucket = _bucket(
                f"kf:b:{{c:{customer.customer_id}}}", customer.max_rate, customer.max_burst
            )
        return cls(
            record.key_id,
            key_bucket,
            record.ip_rate,
            record.ip_burst or _default_burst(record.ip_rate),
            customer_bucket,
            _first(record.quota_requests, defaults.quota_requests),
            _first(record.quota_bytes, defaults.quota_bytes),
        )


def _bucket(bucket_id: str, rate: Rate | None, burst: int | None) -> Bucket | None:
    if rate is None:
        return None
    return Bucket(bucket_id, rate.per_second, burst or _default_burst(rate))


def _default_burst(rate: Rate | None) -> int:
    # No burst given: one second's worth, at least one request.
    return max(1, math.ceil(rate.per_second)) if rate else 1


def _first(value: int | None, default: int | None) -> int | None:
    return value if value is not None else default


@dataclass(slots=True)  # not frozen: built per request, and frozen __init__ costs ~0.4 µs
class Decision:
    """The outcome of checks 9 and 10 for one request, and its RateLimit-* headers
    (draft-ietf-httpapi-ratelimit-headers): Limit is the key bucket's capacity,
    Remaining the whole tokens left, Reset the seconds until the bucket is full."""

    limit: int
    remaining: int
    reset: int
    refusal: Refusal | None = None

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset),
        }


def decision(
    bucket: Bucket | None,
    tokens: float,
    refusal: type[Refusal] | None = None,
    retry_after: float = 0.0,
) -> Decision:
    """Build a Decision from the key bucket's tokens after this request."""
    if bucket is None:
        result = Decision(0, 0, 0)
    else:
        tokens = 0.0 if tokens < 0.0 else tokens
        result = Decision(
            bucket.burst, int(tokens), math.ceil((bucket.burst - tokens) / bucket.rate)
        )
    if refusal is None:
        return result
    headers = result.headers() if bucket else {}
    headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    result.refusal = refusal(headers=headers)
    return result


def retry_after_tokens(bucket: Bucket, tokens: float) -> float:
    """Seconds until one whole token is back."""
    return (1.0 - tokens) / bucket.rate if tokens < 1.0 else 1.0


def month_of(now: float) -> str:
    return time.strftime("%Y%m", time.gmtime(now))


def seconds_to_month_end(now: float) -> float:
    """SPEC: a 429 quota_exceeded says Retry-After until the month (UTC) ends."""
    t = time.gmtime(now)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return calendar.timegm((year, month, 1, 0, 0, 0)) - now


class Limiter(abc.ABC):
    async def open(self) -> None:
        """Connect / load scripts / start background tasks."""

    async def close(self) -> None:
        """Flush what is pending and stop."""

    @abc.abstractmethod
    async def check(self, limits: KeyLimits, client_ip: str) -> Decision:
        """Checks 9 and 10 for one request: take one token from each bucket and count
        the request against the quota. The Decision's refusal is set when refused."""

    @abc.abstractmethod
    def sent(self, key_id: str, nbytes: int) -> None:
        """Count body bytes sent, for the monthly byte quota. Never blocks."""


class LocalBuckets:
    """Token buckets in this process: the monotonic clock, no I/O, ~0.5 µs a take."""

    def __init__(self, scale: float = 1.0) -> None:
        self._scale = scale  # 1/N when N workers share the limit without a shared store
        self._state: dict[str, list[float]] = {}  # id -> [tokens, at, full again at]
        self._last_sweep = time.monotonic()

    def take(self, bucket: Bucket, cost: int = 1) -> tuple[int, float]:
        """(admitted of `cost`, tokens left), the tokens scaled back to the whole bucket."""
        rate, burst = bucket.rate * self._scale, max(1.0, bucket.burst * self._scale)
        now = time.monotonic()
        state = self._state.get(bucket.id)
        tokens = burst if state is None else min(burst, state[0] + (now - state[1]) * rate)
        admitted = min(cost, int(tokens))
        tokens -= admitted
        self._state[bucket.id] = [tokens, now, now + (burst - tokens) / rate]
        if now - self._last_sweep > 10.0:
            self._sweep(now)
        return admitted, tokens / self._scale

    def _sweep(self, now: float) -> None:
        # A bucket that has refilled is dropped: a missing bucket starts full, so this
        # changes no decision and bounds memory by the recently active buckets.
        self._last_sweep = now
        for bucket_id in [k for k, state in self._state.items() if state[2] <= now]:
            del self._state[bucket_id]


class QuotaLedger(Protocol):
    """Where monthly quota counters live for the local limiter (the SQLite store)."""

    async def add_quota_usage(
        self, month: str, deltas: dict[str, tuple[int, int]], read: Iterable[str]
    ) -> dict[str, tuple[int, int]]:
        """Add (requests, bytes) per key id to `month`'s counters; return the totals of
        the keys in `deltas` and `read`."""
        ...


class LocalQuotas:
    """Monthly counters as last read from the ledger (shared by every process on the
    host), plus what this process counted since. Synced every `usage.flush_interval`,
    so a quota is enforced to within about one interval of traffic."""

    def __init__(self, ledger: QuotaLedger | None) -> None:
        self._ledger = ledger
        self._month = month_of(time.time())
        self._totals: dict[str, tuple[int, int]] = {}
        self._pending: dict[str, list[int]] = {}

    def exhausted(self, limits: KeyLimits) -> bool:
        requests, nbytes = self._totals.get(limits.key_id, (0, 0))
        pending = self._pending.get(limits.key_id)
        if pending:
            requests, nbytes = requests + pending[0], nbytes + pending[1]
        if limits.quota_bytes is not None and nbytes >= limits.quota_bytes:
            return True
        return limits.quota_requests is not None and requests >= limits.quota_requests

    def count(self, key_id: str, requests: int, nbytes: int) -> None:
        pending = self._pending.get(key_id)
        if pending is None:
            self._pending[key_id] = [requests, nbytes]
        else:
            pending[0] += requests
            pending[1] += nbytes

    async def sync(self) -> None:
        """Send what was counted here, read back every process's totals."""
        if self._ledger is None:
            return
        month = month_of(time.time())
        if month != self._month:
            self._month, self._totals = month, {}
        pending, self._pending = self._pending, {}
        deltas = {k: (v[0], v[1]) for k, v in pending.items()}
        try:
            self._totals = await self._ledger.add_quota_usage(month, deltas, self._totals)
        except StoreError:
            for key_id, (requests, nbytes) in deltas.items():  # kept for the next try
                self.count(key_id, requests, nbytes)


class LocalLimiter(Limiter):
    """Checks 9 and 10 in this process. For the SQLite store (scale 1/N for N
    workers) and as the shared limiter's fallback while the store is unreachable."""

    def __init__(
        self, scale: float = 1.0, ledger: QuotaLedger | None = None, sync_interval: float = 1.0
    ) -> None:
        self.buckets = LocalBuckets(scale)
        self.quotas = LocalQuotas(ledger)
        self._sync_interval = sync_interval
        self._syncer: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self._syncer = asyncio.create_task(self._sync_forever())

    async def close(self) -> None:
        if self._syncer is not None:
            self._syncer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._syncer
        await self.quotas.sync()

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sync_interval)
            await self.quotas.sync()

    async def check(self, limits: KeyLimits, client_ip: str) -> Decision:
        return self.decide(limits, client_ip)

    def decide(self, limits: KeyLimits, client_ip: str) -> Decision:
        """The synchronous decision: no I/O at all."""
        key_tokens = 0.0
        for bucket in limits.buckets(client_ip):
            admitted, tokens = self.buckets.take(bucket)
            if bucket is limits.bucket:
                key_tokens = tokens
            if not admitted:
                wait = retry_after_tokens(bucket, tokens)
                return decision(limits.bucket, key_tokens, RateLimited, wait)
        if limits.has_quota:
            if self.quotas.exhausted(limits):
                wait = seconds_to_month_end(time.time())
                return decision(limits.bucket, key_tokens, QuotaExceeded, wait)
            self.quotas.count(limits.key_id, 1, 0)
        return decision(limits.bucket, key_tokens)

    def sent(self, key_id: str, nbytes: int) -> None:
        self.quotas.count(key_id, 0, nbytes)
