"""Rate limits and monthly quotas: SPEC section 3, checks 9 and 10 of section 1.

A key's limits (`KeyLimits`) are resolved once per record load: its own bucket
(`rate`, `burst`, else `keys.defaults`), an optional bucket per (key, client IP or
IPv6 /64), the customer's plan-cap bucket, its monthly quotas and its customer's pooled
monthly quota. They are grouped in `Stage`s, one per Redis hash slot, narrowest first:
the key's (per-IP bucket, key bucket, key quota) then the customer's (its bucket and
quota). A request is admitted only when every bucket and quota admits it, and a refused
request spends none of them (issue 12 item 6). Two limiters decide:

- `LocalLimiter`: buckets in this process. The SQLite store's limiter (each of N
  workers holds 1/N of every rate and burst), and every limiter's fallback.
- `SharedLimiter` (shared_limiter.py): one Lua script call per stage in Redis, the
  calls of one loop tick coalesced, behind a circuit breaker that falls back to a
  LocalLimiter.

Both return a `Decision`, whose headers go on every keyed response.
"""

from __future__ import annotations

import abc
import asyncio
import calendar
import ipaddress
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from .config import KeyDefaults
from .errors import (
    ClientRateLimited,
    CustomerQuotaExceeded,
    CustomerRateLimited,
    KeyQuotaExceeded,
    KeyRateLimited,
    RateLimited,
    Refusal,
    StoreError,
)
from .periodic import Periodic
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
class Stage:
    """Buckets and a monthly quota that share one Redis hash slot, so that one script
    call decides them all or nothing: a request takes a token from every bucket and
    counts against the quota only when every one of them admits it (issue 12 item 6).

    A key's stage holds its per-IP bucket (narrowest first), its own bucket and its
    quota, all tagged {key_id}; its customer's stage holds the customer's bucket and
    pooled quota, tagged {c:customer_id}. `id` names the stage for coalescing."""

    id: str
    buckets: tuple[Bucket, ...]  # narrowest first
    quota_owner: str | None = None  # the quota counters' id: a key id, or c:<customer id>
    quota_requests: int | None = None
    quota_bytes: int | None = None
    key_index: int = -1  # where the key's own bucket is in `buckets` (headers), -1: none

    @property
    def quota_id(self) -> str:
        """The Redis hash of this month's counters is quota_id + ":YYYYMM"."""
        return f"kf:q:{{{self.quota_owner}}}"


def customer_quota_owner(customer_id: str) -> str:
    """A customer's quota counters sit beside its keys' (in the SQLite quota table);
    a key id is base62, so the colon keeps the two apart."""
    return f"c:{customer_id}"


@dataclass(frozen=True, slots=True)
class KeyLimits:
    key_id: str
    bucket: Bucket | None  # the key's own; its state fills the RateLimit-* headers
    ip_rate: Rate | None
    ip_burst: int
    customer_bucket: Bucket | None
    quota_requests: int | None
    quota_bytes: int | None
    customer_id: str = ""
    customer_quota_requests: int | None = None  # one pool for all the customer's keys
    customer_quota_bytes: int | None = None
    # Built once per record load by __post_init__: a request without a per-IP bucket
    # allocates nothing to find its stages.
    stages_fixed: tuple[Stage, ...] = field(init=False, compare=False, repr=False)
    customer_stages: tuple[Stage, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        key_stage = self._key_stage(None)
        customer = self._customer_stage()
        object.__setattr__(self, "customer_stages", customer)
        object.__setattr__(self, "stages_fixed", (key_stage, *customer) if key_stage else customer)

    @property
    def has_quota(self) -> bool:
        return self.quota_requests is not None or self.quota_bytes is not None

    @property
    def has_customer_quota(self) -> bool:
        return self.customer_quota_requests is not None or self.customer_quota_bytes is not None

    @property
    def counts_bytes(self) -> bool:
        """Bytes sent count against a monthly byte quota (the key's or its customer's)."""
        return bool(self.quota_bytes) or bool(self.customer_quota_bytes)

    @property
    def unlimited(self) -> bool:
        """No bucket, no quota: checks 9 and 10 have nothing to decide."""
        return not self.stages_fixed and self.ip_rate is None

    def stages(self, client_ip: str) -> tuple[Stage, ...]:
        """The stages one request must pass, narrowest first: the key's (with its
        per-IP bucket when it has one), then its customer's."""
        if self.ip_rate is None:
            return self.stages_fixed
        key_stage = self._key_stage(client_ip)
        assert key_stage is not None  # it holds the per-IP bucket
        return (key_stage, *self.customer_stages)

    def _key_stage(self, client_ip: str | None) -> Stage | None:
        buckets = [self.bucket] if self.bucket else []
        if client_ip is not None and self.ip_rate is not None:
            # Narrowest first (issue 12 item 6); IPv6 by /64 (client_prefix).
            bucket_id = f"kf:b:{{{self.key_id}}}:ip:{client_prefix(client_ip)}"
            buckets.insert(0, Bucket(bucket_id, self.ip_rate.per_second, self.ip_burst))
        if not buckets and not self.has_quota:
            return None
        owner = self.key_id if self.has_quota else None
        key_index = len(buckets) - 1 if self.bucket else -1
        stage_id = "|".join(b.id for b in buckets) or f"kf:q:{{{self.key_id}}}"
        return Stage(stage_id, tuple(buckets), owner, self.quota_requests, self.quota_bytes,
                     key_index)  # fmt: skip

    def _customer_stage(self) -> tuple[Stage, ...]:
        if self.customer_bucket is None and not self.has_customer_quota:
            return ()
        buckets = (self.customer_bucket,) if self.customer_bucket else ()
        owner = customer_quota_owner(self.customer_id) if self.has_customer_quota else None
        stage_id = buckets[0].id if buckets else f"kf:q:{{{owner}}}"
        return (Stage(stage_id, buckets, owner, self.customer_quota_requests,
                      self.customer_quota_bytes),)  # fmt: skip

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
            record.customer_id,
            customer.quota_requests if customer else None,
            customer.quota_bytes if customer else None,
        )


_prefixes: dict[str, str] = {}


def client_prefix(ip: str) -> str:
    """What a per-IP bucket is per: an IPv4 address, an IPv6 /64 (one subscriber's
    network: rotating addresses within it is free, issue 12), an IPv4-mapped IPv6
    address as its IPv4 address. Cached per process like policy._ip_values."""
    if ":" not in ip:
        return ip  # IPv4 (or unparsable, as given): the common case, no parse
    try:
        return _prefixes[ip]
    except KeyError:
        pass
    try:
        address = ipaddress.IPv6Address(ip)
    except ValueError:
        prefix = ip[:64]
    else:
        mapped = address.ipv4_mapped
        prefix = str(mapped) if mapped else f"{int(address) >> 64:x}/64"
    if len(ip) <= 64:
        if len(_prefixes) >= 4096:
            _prefixes.clear()  # cheaper than LRU bookkeeping on every hit
        _prefixes[ip] = prefix
    return prefix


def _bucket(bucket_id: str, rate: Rate | None, burst: int | None) -> Bucket | None:
    if rate is None:
        return None
    return Bucket(bucket_id, rate.per_second, burst or _default_burst(rate))


def _default_burst(rate: Rate | None) -> int:
    # No burst given: one second's worth, at least one request.
    return max(1, math.ceil(rate.per_second)) if rate else 1


def _first(value: int | None, default: int | None) -> int | None:
    return value if value is not None else default


# --- which limit refused (issue 15: a 429 says so) ---------------------------------------
# SPEC section 1's codes stay rate_limited and quota_exceeded; each refusal class
# (errors.py, KeyRateLimited...) fixes its own public message, so a client (and its
# developer) learns which limit to raise or wait for. The messages are constants:
# nothing of the request is echoed. They are subclasses, so `isinstance(refusal,
# RateLimited)` and the usage counter's denied_<code> are unchanged.


def rate_refusal(limits: KeyLimits, bucket: Bucket) -> type[RateLimited]:
    """The refusal of `bucket`, one of `limits`' (the per-IP bucket is built per
    request, so it is the one that is neither the key's nor the customer's)."""
    if bucket is limits.bucket:
        return KeyRateLimited
    if bucket is limits.customer_bucket:
        return CustomerRateLimited
    return ClientRateLimited


QuotaUnit = Literal["requests", "bytes"]


def quota_refusal(
    limits: KeyLimits, key_tokens: float, stage: Stage, unit: QuotaUnit, now: float
) -> Decision:
    """429 quota_exceeded for `stage`'s quota, spent in `unit`: the key bucket's
    RateLimit-* headers as on every keyed response (SPEC section 1), Retry-After until
    the month (UTC) ends (SPEC section 3), and the quota's own X-Quota-* headers (SPEC
    is silent on their names; RateLimit-* keep meaning the key's bucket, so that a
    client pacing itself by them never sees them jump to a monthly figure): the limit,
    its unit, 0 remaining, and the seconds until it resets at the month's end."""
    refusal = KeyQuotaExceeded if stage.quota_owner == limits.key_id else CustomerQuotaExceeded
    wait = seconds_to_month_end(now)
    limit = stage.quota_bytes if unit == "bytes" else stage.quota_requests
    quota = {
        "X-Quota-Limit": str(limit),
        "X-Quota-Remaining": "0",
        "X-Quota-Reset": str(max(1, math.ceil(wait))),
        "X-Quota-Unit": unit,
    }
    return decision(limits.bucket, key_tokens, refusal, wait, quota)


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
    more_headers: dict[str, str] | None = None,
) -> Decision:
    """Build a Decision from the key bucket's tokens after this request; a refusal's
    headers add Retry-After and `more_headers`."""
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
    if more_headers:
        headers.update(more_headers)
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

    @property
    def degraded(self) -> bool:
        """The store's circuit breaker is open: limits are decided in this process
        (the keyfront_store_degraded gauge)."""
        return False

    @abc.abstractmethod
    async def check(self, limits: KeyLimits, client_ip: str) -> Decision:
        """Checks 9 and 10 for one request: take one token from each bucket and count
        the request against the quota. The Decision's refusal is set when refused."""

    @abc.abstractmethod
    def sent(self, limits: KeyLimits, nbytes: int) -> None:
        """Count body bytes sent, for the monthly byte quotas (the key's and its
        customer's). Never blocks."""

    @abc.abstractmethod
    async def quota_used(self, owner: str) -> tuple[int, int]:
        """(requests, bytes) counted this month (UTC) against `owner`'s quota (a key
        id, or customer_quota_owner(id)), read as check() reads it, with what this
        process counted and has not yet sent (GET /admin/v1/me, issue 15). Bytes are
        counted only where a byte quota is set. StoreError if the store cannot say."""


class LocalBuckets:
    """Token buckets in this process: the monotonic clock, no I/O, ~0.5 µs a take.

    The table holds one entry per recently active bucket (per key, per key and client
    IP or /64, per customer). A bucket that has refilled is dropped (a missing bucket
    starts full, so that changes no decision); past `max_buckets` the fullest go first,
    so clients that rotate addresses cannot grow it without bound (issue 12)."""

    def __init__(self, scale: float = 1.0, max_buckets: int = 100_000) -> None:
        self._scale = scale  # 1/N when N workers share the limit without a shared store
        self._max = max_buckets
        self._state: dict[str, list[float]] = {}  # id -> [tokens, at, full again at]
        self._last_sweep = time.monotonic()

    def __len__(self) -> int:
        return len(self._state)

    def level(self, bucket: Bucket) -> float:
        """The bucket's tokens now, scaled back to the whole bucket; takes none."""
        rate, burst = bucket.rate * self._scale, max(1.0, bucket.burst * self._scale)
        state = self._state.get(bucket.id)
        if state is None:
            return burst / self._scale
        return min(burst, state[0] + (time.monotonic() - state[1]) * rate) / self._scale

    def admits(self, bucket: Bucket) -> bool:
        """A take() now would admit one request."""
        return self.level(bucket) * self._scale >= 1.0

    def take(self, bucket: Bucket, cost: int = 1) -> tuple[int, float]:
        """(admitted of `cost`, tokens left), the tokens scaled back to the whole bucket."""
        rate, burst = bucket.rate * self._scale, max(1.0, bucket.burst * self._scale)
        now = time.monotonic()
        state = self._state.get(bucket.id)
        if state is None:
            tokens = burst
            if len(self._state) >= self._max:
                self._sweep(now)
        else:
            tokens = min(burst, state[0] + (now - state[1]) * rate)
        admitted = min(cost, int(tokens))
        tokens -= admitted
        self._state[bucket.id] = [tokens, now, now + (burst - tokens) / rate]
        if now - self._last_sweep > 10.0:
            self._sweep(now)
        return admitted, tokens / self._scale

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        for bucket_id in [k for k, state in self._state.items() if state[2] <= now]:
            del self._state[bucket_id]
        if len(self._state) >= self._max:
            # Still full: forget the tenth nearest to full. Each starts over full, the
            # least generous error available without unbounded memory.
            nearest = sorted(self._state.items(), key=lambda item: item[1][2])
            for bucket_id, _ in nearest[: max(1, len(nearest) // 10)]:
                del self._state[bucket_id]


class QuotaLedger(Protocol):
    """Where monthly quota counters live for the local limiter (the SQLite store)."""

    async def add_quota_usage(
        self, month: str, deltas: dict[str, tuple[int, int]], read: Iterable[str]
    ) -> dict[str, tuple[int, int]]:
        """Add (requests, bytes) per owner (a key id, or c:<customer id>) to `month`'s
        counters; return the totals of the owners in `deltas` and `read`."""
        ...


class LocalQuotas:
    """Monthly counters as last read from the ledger (shared by every process on the
    host), plus what this process counted since. Synced every `usage.flush_interval`,
    so a quota is enforced to within about one interval of traffic. Counters are per
    owner: a key id, or c:<customer id> for a customer's pooled quota."""

    def __init__(self, ledger: QuotaLedger | None) -> None:
        self._ledger = ledger
        self._month = month_of(time.time())
        self._totals: dict[str, tuple[int, int]] = {}
        self._pending: dict[str, list[int]] = {}
        self._sending: dict[str, tuple[int, int]] = {}  # the part of _pending a sync sends

    def exhausted(self, stage: Stage) -> QuotaUnit | None:
        """What of `stage`'s quota is spent, so that no request of it may start; None
        while neither is."""
        owner = stage.quota_owner
        if owner is None:
            return None
        requests, nbytes = self._totals.get(owner, (0, 0))
        pending = self._pending.get(owner)
        if pending:
            requests, nbytes = requests + pending[0], nbytes + pending[1]
        if stage.quota_bytes is not None and nbytes >= stage.quota_bytes:
            return "bytes"
        if stage.quota_requests is not None and requests >= stage.quota_requests:
            return "requests"
        return None

    def count(self, owner: str, requests: int, nbytes: int) -> None:
        pending = self._pending.get(owner)
        if pending is None:
            self._pending[owner] = [requests, nbytes]
        else:
            pending[0] += requests
            pending[1] += nbytes

    async def used(self, owner: str) -> tuple[int, int]:
        """`owner`'s totals this month: the ledger's (every process's sent counts) plus
        this process's pending ones."""
        month = month_of(time.time())
        if month != self._month:
            return 0, 0  # the next sync starts the month
        pending = tuple(self._pending.get(owner, (0, 0)))
        if self._ledger is None:
            requests, nbytes = self._totals.get(owner, (0, 0))
            return requests + pending[0], nbytes + pending[1]
        # Taken before the read: the ledger runs one job at a time, so a sync in flight
        # now is in the totals read, and in `pending` too until it is back.
        sending = self._sending.get(owner, (0, 0))
        totals = await self._ledger.add_quota_usage(month, {}, (owner,))
        requests, nbytes = totals.get(owner, (0, 0))
        return requests + pending[0] - sending[0], nbytes + pending[1] - sending[1]

    async def sync(self) -> None:
        """Send what was counted here, read back every process's totals. The counts
        sent stay pending until the totals that include them are back: taken out
        before, they counted nowhere while the ledger worked, and requests decided
        meanwhile were admitted past the quota (a pooled quota of 5 served 6, issue 15)."""
        if self._ledger is None:
            return
        month = month_of(time.time())
        if month != self._month:
            self._month, self._totals = month, {}
        deltas = {k: (v[0], v[1]) for k, v in self._pending.items()}
        self._sending = deltas
        try:
            totals = await self._ledger.add_quota_usage(month, deltas, self._totals)
        except StoreError:
            return  # still pending: the next sync sends them
        except asyncio.CancelledError:  # stopping: the ledger's thread may write them
            self._sent(deltas)  # still, and the final sync must not count them twice
            raise
        finally:
            self._sending = {}
        self._sent(deltas)
        self._totals = totals

    def _sent(self, deltas: dict[str, tuple[int, int]]) -> None:
        for owner, (requests, nbytes) in deltas.items():
            pending = self._pending[owner]
            pending[0] -= requests
            pending[1] -= nbytes
            if pending == [0, 0]:
                del self._pending[owner]


class LocalLimiter(Limiter):
    """Checks 9 and 10 in this process. For the SQLite store (scale 1/N for N
    workers) and as the shared limiter's fallback while the store is unreachable, which
    passes `quotas=False`: the monthly counts live in the store it cannot reach, and
    counts kept here over the process's life would refuse a key whose month is not
    spent (README: while degraded, quotas are not checked)."""

    def __init__(
        self,
        scale: float = 1.0,
        ledger: QuotaLedger | None = None,
        sync_interval: float = 1.0,
        *,
        quotas: bool = True,
    ) -> None:
        self.buckets = LocalBuckets(scale)
        self.quotas = LocalQuotas(ledger)
        self._quotas_on = quotas
        self._syncer = Periodic("quota sync", sync_interval, self.quotas.sync)

    async def open(self) -> None:
        self._syncer.start()

    async def close(self) -> None:
        await self._syncer.stop()  # and a last sync

    async def check(self, limits: KeyLimits, client_ip: str) -> Decision:
        return self.decide(limits, client_ip)

    def decide(self, limits: KeyLimits, client_ip: str) -> Decision:
        """The synchronous decision: no I/O at all. Every bucket and quota is checked,
        narrowest first, before any is spent: a refused request spends nothing."""
        stages = limits.stages(client_ip)
        if len(stages) == 1 and stages[0].quota_owner is None and len(stages[0].buckets) == 1:
            return self._take_one(limits, stages[0].buckets[0])  # the common case
        for stage in stages:
            for bucket in stage.buckets:
                if not self.buckets.admits(bucket):
                    key_tokens = self.buckets.level(limits.bucket) if limits.bucket else 0.0
                    wait = retry_after_tokens(bucket, self.buckets.level(bucket))
                    return decision(limits.bucket, key_tokens, rate_refusal(limits, bucket), wait)
            spent = self.quotas.exhausted(stage) if self._quotas_on else None
            if spent is not None:
                key_tokens = self.buckets.level(limits.bucket) if limits.bucket else 0.0
                return quota_refusal(limits, key_tokens, stage, spent, time.time())
        key_tokens = 0.0
        for stage in stages:
            for bucket in stage.buckets:
                tokens = self.buckets.take(bucket)[1]
                if bucket is limits.bucket:
                    key_tokens = tokens
            if stage.quota_owner is not None and self._quotas_on:
                self.quotas.count(stage.quota_owner, 1, 0)
        return decision(limits.bucket, key_tokens)

    def _take_one(self, limits: KeyLimits, bucket: Bucket) -> Decision:
        """One bucket and nothing else: one take() is all or nothing already."""
        admitted, tokens = self.buckets.take(bucket)
        key_tokens = tokens if bucket is limits.bucket else 0.0
        if admitted:
            return decision(limits.bucket, key_tokens)
        wait = retry_after_tokens(bucket, tokens)
        return decision(limits.bucket, key_tokens, rate_refusal(limits, bucket), wait)

    async def quota_used(self, owner: str) -> tuple[int, int]:
        return await self.quotas.used(owner)

    def sent(self, limits: KeyLimits, nbytes: int) -> None:
        if not self._quotas_on:
            return
        for stage in limits.stages_fixed:
            if stage.quota_owner is not None and stage.quota_bytes is not None:
                self.quotas.count(stage.quota_owner, 0, nbytes)
