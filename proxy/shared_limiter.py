"""Rate limits shared by every instance through Redis (SPEC section 3).

One Lua script (store/bucket.lua) decides a stage (ratelimit.Stage: the buckets and
quota of one Redis hash slot) atomically on the server's clock, all or nothing. The
requests of one loop tick that share a stage are coalesced into one script call with
their count as its cost, and the calls of a tick leave in one socket write
(store/resp.py): redis-py costs 100-160 µs of client CPU per call, this ~10 µs per
call and one call per hot key per tick (docs/dependencies.md "Redis").

A refusal never spends another's tokens or quota (issue 12 item 6). Within a stage the
script sees to it: a request refused by its per-IP bucket takes nothing from the key's
bucket or quota. A key's stage and its customer's live in different hash slots (Redis
Cluster cannot run one script over both), so the two are called in the same tick, in
parallel (still one round trip), and when one admits a request the other refused, its
token and count go back with the next tick's call (`refund`). Until then, about one
round trip, they are held: a client refused at high rate holds a few of its customer's
tokens at any moment, never spends them. The alternative, the customer's call only
after the key's admitted, would be exact but cost a second round trip on every request
of a customer with a plan cap or a pooled quota.

A request that gives up on a stage (its call timed out or failed, or the request was
cancelled) gives back whatever that stage admitted for it, then or when the reply
lands; a refund whose own call fails is kept (at most MAX_KEPT_REFUNDS stages) and
sent again by the background flush; a refund goes to the month its request was
counted in (review of issue 12, finding 6).

Leases: a busy key's requests mostly decide with no await at all. When a tick calls the
script for a key's own bucket, it asks for a few tokens more than the tick's requests
need, and this instance keeps the extra as a lease. The next requests take a token from
the lease, synchronously. When half the lease is spent, a refill of twice its size rides
along in the next tick's call, without holding up any request; a lease that runs dry
before its refill lands also grows, never shrinks (it once restarted at a token or two,
and a busy key then made a script call every ~25 requests). Leased tokens are real
tokens, taken from the shared bucket, so leasing never lets a key past its global limit.
A lease holds at most 1% of the bucket's burst (LEASE_SHARE), and at most LEASE_MAX
tokens. Unspent tokens lapse after LEASE_LIFE: when a key's traffic stops, an instance
can leave at most twice that unused. Keys with a monthly quota, a per-IP bucket or a
customer bucket do not lease, so that their counts stay exact. Small buckets (burst
under 100) do not lease either. Measured on 10 KB keyed hits (3 interleaved rounds, same
session): at 8 connections 15.0k -> 19.3k req/s (59.6 -> 50.3 µs of CPU each), at 64
within 2% (docs/performance.md, "Checks ≤ 10%").

A circuit breaker keeps the request path off a failing store: the first failure or
timeout (`store_timeout`) opens it, and requests are then decided by the fallback
LocalLimiter (same rates, this instance only) or refused with 503 (`on_store_error:
deny`), while a probe retries the store every PROBE_INTERVAL and closes the breaker
when it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Literal, cast

from .errors import StoreError, Unavailable
from .periodic import Periodic, stop_tasks
from .ratelimit import (
    Bucket,
    Decision,
    KeyLimits,
    Limiter,
    LocalLimiter,
    QuotaUnit,
    Stage,
    decision,
    month_of,
    quota_refusal,
    rate_refusal,
    retry_after_tokens,
    seconds_to_month_end,
)
from .store.resp import PipelinedClient

log = logging.getLogger(__name__)

SCRIPT = resources.files("proxy.store").joinpath("bucket.lua").read_text()
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
PROBE_INTERVAL = 0.25  # seconds between store probes while the breaker is open
BYTES_FLUSH_INTERVAL = 1.0  # seconds: byte counts of idle keys reach the quota this often
QUOTA_RETENTION = 40 * 86400  # seconds a month's quota counters outlive the month
LEASE_SHARE = 100  # a lease holds at most burst / LEASE_SHARE tokens (1% of the bucket)
LEASE_MAX = 256  # and at most this many
LEASE_LIFE = 0.05  # seconds: unspent leased tokens lapse
MAX_LEASES = 10_000  # past this many, lapsed leases are dropped when a new one starts
NO_QUOTA = -1  # bucket.lua ARGV[4] and ARGV[5]: this quota is not set
MAX_KEPT_REFUNDS = 10_000  # stages whose refund failed, kept for the next flush; more: dropped


@dataclass(slots=True)  # not frozen: one per request, and a frozen __init__ is slower
class StageVerdict:
    """One request's verdict from a coalesced stage call (`_settle` hands each waiter
    its own)."""

    admitted: bool
    levels: list[float]  # each bucket's tokens after the call, shared by its waiters
    quota_exhausted: bool
    bytes_used: int  # the quota's byte count after the call: which of it is spent
    month: str  # the quota month the call counted in: a refund goes back there


@dataclass(slots=True)
class Batch:
    """The requests of one tick that share a stage (its buckets and quota)."""

    stage: Stage
    waiters: list[asyncio.Future[StageVerdict]] = field(default_factory=list)
    lease: int = 0  # tokens asked for beyond the waiters', to keep as a lease
    # Requests this stage admitted that were not served (another stage refused them,
    # or they gave up), by the quota month they were counted in.
    refunds: dict[str, int] | None = None


@dataclass(slots=True)
class Lease:
    """Tokens this instance took from a shared bucket ahead of need."""

    tokens: int  # whole tokens left to spend here
    left: float  # the bucket's tokens after the grant (for RateLimit-Remaining)
    until: float  # time.monotonic() when unspent tokens lapse
    size: int  # what a refill asks for
    refilling: bool = False


@dataclass(slots=True)
class Tick:
    """The script calls of one loop tick, and the one timer that bounds their wait by
    `store_timeout`."""

    pending: int
    timer: asyncio.TimerHandle | None = None


def _expire(waiters: list[asyncio.Future[StageVerdict]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_exception(TimeoutError())


class SharedLimiter(Limiter):
    def __init__(
        self,
        client: PipelinedClient,
        timeout: float,
        on_store_error: Literal["allow", "deny"],
        fallback: LocalLimiter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self.clock = clock  # names the quota month; tests move it across a month's end
        self._timeout = timeout
        self._deny_on_error = on_store_error == "deny"
        self._fallback = fallback
        self._batches: dict[str, Batch] = {}
        self._leases: dict[str, Lease] = {}  # bucket id -> the lease held here
        self._bytes: dict[str, int] = {}  # quota owner -> bytes sent, not yet counted
        # (stage id, month) -> (stage, requests): refunds whose call failed, sent again
        self._kept: dict[tuple[str, str], tuple[Stage, int]] = {}
        self.healthy = True
        self._flusher = Periodic(
            "quota byte flush", BYTES_FLUSH_INTERVAL, self._flush_if_healthy, final=self._flush_last
        )
        self._tasks: list[asyncio.Task[None]] = []  # the breaker's probe

    async def open(self) -> None:
        self._flusher.start()
        try:
            await self._client.ensure_connected()
        except StoreError as exc:
            self._trip(exc)

    async def close(self) -> None:
        await stop_tasks(self._tasks)  # bounded: see periodic.stop_tasks
        await self._flusher.stop()  # and a last flush
        self._client.close()

    async def check(self, limits: KeyLimits, client_ip: str) -> Decision:
        if not self.healthy:
            return self._degraded(limits, client_ip)
        stages = limits.stages(client_ip)
        if not stages:
            return decision(None, 0.0)
        first = stages[0]
        leasing = len(stages) == 1 and _leases(first)
        if leasing:
            lease = self._leases.get(first.id)
            if lease is not None and lease.tokens > 0 and lease.until > time.monotonic():
                return self._spend(first, lease)  # no await: the common case
        # No asyncio.timeout here: one timer per tick bounds every waiter (see _flush);
        # a timeout context per request cost ~15% of a 10 KB hit.
        try:
            if len(stages) == 1:  # the common case: the key's own stage
                outcomes = [await self._ask(first, leasing)]
            else:  # the key's stage and its customer's, in the same tick
                waits = [self._ask(stage) for stage in stages]
                try:
                    outcomes = [await wait for wait in waits]
                except BaseException:  # timed out, failed or cancelled: not served
                    for stage, wait in zip(stages, waits, strict=True):
                        self._give_back_if_admitted(stage, wait)
                    raise
        except (StoreError, TimeoutError) as exc:
            self._trip(exc)
            return self._degraded(limits, client_ip)
        if len(outcomes) > 1 and not all(o.admitted for o in outcomes):
            # A customer's bucket sits in another Redis Cluster slot than its key's, so
            # the two cannot be one script: what one stage admitted goes back.
            for stage, outcome in zip(stages, outcomes, strict=True):
                if outcome.admitted:
                    self._give_back(stage, outcome.month, 1)
        return self._decide(limits, stages, outcomes)

    def _give_back(self, stage: Stage, month: str, requests: int) -> None:
        """Return `requests` admissions of `stage` counted in `month` that were not
        served: the refund rides the next tick's call. Until it lands, about one round
        trip, the tokens are held, never lost."""
        batch = self._batch(stage)
        if batch.refunds is None:
            batch.refunds = {}
        batch.refunds[month] = batch.refunds.get(month, 0) + requests

    def _give_back_if_admitted(self, stage: Stage, wait: asyncio.Future[StageVerdict]) -> None:
        """A request gave up on `wait` (review finding 6a): if its stage admitted it,
        now or when the reply lands, that goes back. A waiter that timed out or was
        cancelled before its reply is _settle's to give back."""
        if not wait.done():
            wait.add_done_callback(functools.partial(self._give_back_if_admitted, stage))
        elif not wait.cancelled() and wait.exception() is None and wait.result().admitted:
            self._give_back(stage, wait.result().month, 1)

    def _decide(
        self, limits: KeyLimits, stages: tuple[Stage, ...], outcomes: list[StageVerdict]
    ) -> Decision:
        first = stages[0]
        key_tokens = outcomes[0].levels[first.key_index] if first.key_index >= 0 else 0.0
        for stage, outcome in zip(stages, outcomes, strict=True):
            if outcome.quota_exhausted:
                spent_bytes = (
                    stage.quota_bytes is not None and outcome.bytes_used >= stage.quota_bytes
                )
                unit: QuotaUnit = "bytes" if spent_bytes else "requests"
                return quota_refusal(limits, key_tokens, stage, unit, time.time())
            if not outcome.admitted:
                wait = _retry_after(stage, outcome.levels)
                refused_by = _refusing_bucket(stage, outcome.levels)
                return decision(limits.bucket, key_tokens, rate_refusal(limits, refused_by), wait)
        return decision(limits.bucket, key_tokens, None)

    def _spend(self, stage: Stage, lease: Lease) -> Decision:
        bucket = stage.buckets[0]
        lease.tokens -= 1
        if lease.tokens <= lease.size // 2 and not lease.refilling:
            lease.refilling = True
            # Rides along in the next tick; a lease spent this fast may be larger.
            self._batch(stage).lease = min(_lease_size(bucket), 2 * lease.size)
        return decision(bucket, min(bucket.burst, lease.left + lease.tokens))

    def sent(self, limits: KeyLimits, nbytes: int) -> None:
        if nbytes > 0:
            for stage in limits.stages_fixed:
                owner = stage.quota_owner
                if owner is not None and stage.quota_bytes is not None:
                    self._bytes[owner] = self._bytes.get(owner, 0) + nbytes
        self._fallback.sent(limits, nbytes)

    async def quota_used(self, owner: str) -> tuple[int, int]:
        """The script with no bucket and nothing to count reads the quota's hash and
        writes nothing: the counters as check() reads them."""
        if not self.healthy:
            raise StoreError("the rate-limit store is unreachable")
        now = self.clock()
        stage = Stage(f"kf:q:{{{owner}}}", (), owner)
        try:
            async with asyncio.timeout(max(self._timeout, 1.0)):
                reply = await self._call(stage, 0, 0, 0, now, month=month_of(now))
        except TimeoutError:
            raise StoreError("the rate-limit store did not answer in time") from None
        _, _, requests, nbytes, *_ = cast(list[int], reply)
        return requests, nbytes + self._bytes.get(owner, 0)

    # --- coalescing: one script call per stage per loop tick ---

    def _ask(self, stage: Stage, leasing: bool = False) -> asyncio.Future[StageVerdict]:
        waiter: asyncio.Future[StageVerdict] = asyncio.get_running_loop().create_future()
        batch = self._batch(stage)
        batch.waiters.append(waiter)
        if leasing:  # a tick's demand twice over, or a live lease that ran dry doubled
            held = self._leases.get(stage.id)
            dry = 2 * held.size if held is not None and held.until > time.monotonic() else 0
            wanted = max(batch.lease, 2 * len(batch.waiters), dry)
            batch.lease = min(_lease_size(stage.buckets[0]), wanted)
        return waiter

    def _batch(self, stage: Stage) -> Batch:
        """This tick's batch for `stage`; the first of a tick schedules the flush."""
        batch = self._batches.get(stage.id)
        if batch is None:
            if not self._batches:
                asyncio.get_running_loop().call_soon(self._flush)
            batch = self._batches[stage.id] = Batch(stage)
        return batch

    def _flush(self) -> None:
        batches, self._batches = self._batches, {}
        now = self.clock()
        month = month_of(now)
        tick = Tick(len(batches))
        for batch in batches.values():
            owner = batch.stage.quota_owner
            nbytes = self._bytes.pop(owner, 0) if owner is not None else 0
            refund = self._refunds_of(batch, month, now) if batch.refunds else 0
            cost = len(batch.waiters) + batch.lease
            reply = self._call(batch.stage, cost, refund, nbytes, now, month=month)
            done = functools.partial(self._settle, batch, tick, nbytes, month=month, refund=refund)
            reply.add_done_callback(done)
        waiters = [waiter for batch in batches.values() for waiter in batch.waiters]
        tick.timer = asyncio.get_running_loop().call_later(self._timeout, _expire, waiters)

    def _refunds_of(self, batch: Batch, month: str, now: float) -> int:
        """The refunds that ride this tick's call of `batch`: all of them for a stage
        without a quota; else those counted this month. One counted in a month that
        has ended since (review finding 6c) goes to that month's counter, in a call
        of its own, rather than make a unit of this month's quota."""
        assert batch.refunds is not None
        if batch.stage.quota_owner is None:
            return sum(batch.refunds.values())
        for counted_in, requests in batch.refunds.items():
            if counted_in != month:
                reply = self._call(batch.stage, 0, requests, 0, now, month=counted_in)
                reply.add_done_callback(
                    functools.partial(self._refund_settled, batch.stage, counted_in, requests)
                )
        return batch.refunds.get(month, 0)

    def _refund_settled(
        self, stage: Stage, month: str, requests: int, reply: asyncio.Future[object]
    ) -> None:
        if reply.cancelled() or reply.exception() is not None:
            self._keep(stage, month, requests)

    def _keep(self, stage: Stage, month: str, requests: int) -> None:
        """A refund whose call failed (review finding 6b), for the background flush to
        send again. Bounded: past MAX_KEPT_REFUNDS stages a new one is dropped (its
        tokens refill anyway; its count stays spent)."""
        slot = (stage.id, month)
        kept = self._kept.get(slot)
        if kept is not None:
            self._kept[slot] = (stage, kept[1] + requests)
        elif len(self._kept) < MAX_KEPT_REFUNDS:
            self._kept[slot] = (stage, requests)
        else:
            log.warning("%d refunds pending: dropped one of %s", len(self._kept), stage.id)

    def _call(
        self, stage: Stage, cost: int, refund: int, nbytes: int, now: float, *, month: str
    ) -> asyncio.Future[object]:
        keys = [bucket.id for bucket in stage.buckets]
        limits = (NO_QUOTA, NO_QUOTA)
        if stage.quota_owner is not None:
            keys.append(f"{stage.quota_id}:{month}")
            limits = (_quota_arg(stage.quota_requests), _quota_arg(stage.quota_bytes))
        ttl = int(seconds_to_month_end(now)) + QUOTA_RETENTION
        args: list[float] = [len(stage.buckets), cost, refund, limits[0], limits[1], nbytes, ttl]
        for bucket in stage.buckets:
            args += (bucket.rate, bucket.burst)
        return self._client.evalsha(SCRIPT_SHA, SCRIPT, keys, args)

    def _settle(
        self,
        batch: Batch,
        tick: Tick,
        nbytes: int,
        reply: asyncio.Future[object],
        *,
        month: str,
        refund: int,
    ) -> None:
        tick.pending -= 1
        if tick.pending == 0 and tick.timer is not None:
            tick.timer.cancel()
        error = reply.exception() if not reply.cancelled() else StoreError("cancelled")
        if error is not None:
            owner = batch.stage.quota_owner
            if nbytes and owner is not None:  # not counted: keep for the next call
                self._bytes[owner] = self._bytes.get(owner, 0) + nbytes
            if refund:  # not given back: kept likewise (review finding 6b)
                self._keep(batch.stage, month, refund)
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.set_exception(StoreError(str(error)))
            return
        admitted, exhausted, _, bytes_used, *milli = cast(list[int], reply.result())
        levels = [tokens / 1000 for tokens in milli]
        unused = 0
        for i, waiter in enumerate(batch.waiters):
            if not waiter.done():
                quota_exhausted = bool(exhausted) and i >= admitted
                verdict = StageVerdict(i < admitted, levels, quota_exhausted, bytes_used, month)
                waiter.set_result(verdict)
            elif i < admitted:  # admitted, but its request gave up (timed out, cancelled)
                unused += 1
        if unused:  # review finding 6a: their tokens and count go back
            self._give_back(batch.stage, month, unused)
        if batch.lease:
            self._grant(batch, admitted - len(batch.waiters), levels[0])

    def _grant(self, batch: Batch, granted: int, left: float) -> None:
        """Keep the tokens admitted beyond the waiters' as the bucket's lease (a
        waiter that timed out meanwhile gives its token back: never over-admits)."""
        stage_id = batch.stage.id
        lease = self._leases.get(stage_id)
        now = time.monotonic()
        if lease is None or lease.until <= now:
            if lease is None and len(self._leases) >= MAX_LEASES:
                self._leases = {k: v for k, v in self._leases.items() if v.until > now}
            lease = self._leases[stage_id] = Lease(0, left, now, batch.lease)
        lease.tokens += max(0, granted)
        # Never smaller: a refill and a dry tick's call can land in either order.
        lease.left, lease.until, lease.size = left, now + LEASE_LIFE, max(lease.size, batch.lease)
        lease.refilling = False

    # --- bytes for the byte quotas, for owners with no request in flight ---

    async def _flush_if_healthy(self) -> None:
        if self.healthy:
            with contextlib.suppress(StoreError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._flush_kept()
                    await self._flush_bytes()

    async def _flush_last(self) -> None:
        """At close: whatever the breaker says, one bounded try."""
        with contextlib.suppress(StoreError, TimeoutError):
            async with asyncio.timeout(1.0):
                await self._flush_bytes()
                await self._flush_kept()

    async def _flush_bytes(self) -> None:
        pending, self._bytes = self._bytes, {}
        now = self.clock()
        for owner, nbytes in pending.items():
            stage = Stage(f"kf:q:{{{owner}}}", (), owner)
            try:
                await self._call(stage, 0, 0, nbytes, now, month=month_of(now))
            except StoreError:
                self._bytes[owner] = self._bytes.get(owner, 0) + nbytes
                raise

    async def _flush_kept(self) -> None:
        """Send again the refunds whose call failed, each to its own month. Replies
        are not awaited one by one: a timeout here must not cancel one that the store
        may still apply (a failed one is kept again by _refund_settled)."""
        kept, self._kept = self._kept, {}
        now = self.clock()
        replies = []
        for (_, month), (stage, requests) in kept.items():
            reply = self._call(stage, 0, requests, 0, now, month=month)
            reply.add_done_callback(functools.partial(self._refund_settled, stage, month, requests))
            replies.append(reply)
        if replies:
            await asyncio.wait(replies)

    # --- the circuit breaker ---

    @property
    def degraded(self) -> bool:
        return not self.healthy

    def _degraded(self, limits: KeyLimits, client_ip: str) -> Decision:
        if self._deny_on_error:
            return Decision(0, 0, 0, Unavailable("the rate-limit store is unreachable"))
        return self._fallback.decide(limits, client_ip)

    def _trip(self, error: BaseException) -> None:
        if not self.healthy:
            return
        self.healthy = False
        self._leases.clear()  # the fallback decides from now on
        log.warning(
            "rate-limit store failed (%s): deciding locally until it answers",
            error or type(error).__name__,
        )
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(asyncio.create_task(self._probe()))

    async def _probe(self) -> None:
        probe = Stage("kf:b:{probe}", (Bucket("kf:b:{probe}", 1.0, 1),))
        while not self.healthy:
            await asyncio.sleep(PROBE_INTERVAL)
            with contextlib.suppress(StoreError, TimeoutError):
                async with asyncio.timeout(max(self._timeout, 0.5)):
                    await self._client.ensure_connected()
                    await self._call(probe, 0, 0, 0, time.time(), month="")
                    self.healthy = True
                    log.warning("rate-limit store answers again: shared limits resume")
            _raise_if_cancelled()


def _leases(stage: Stage) -> bool:
    """Only a lone bucket without a quota leases: the others' counts stay exact."""
    return (
        len(stage.buckets) == 1 and stage.quota_owner is None and _lease_size(stage.buckets[0]) > 0
    )


def _retry_after(stage: Stage, levels: list[float]) -> float:
    """Seconds until every bucket of the stage has a whole token again."""
    waits = [
        retry_after_tokens(b, t) for b, t in zip(stage.buckets, levels, strict=True) if t < 1.0
    ]
    return max(waits, default=1.0)


def _refusing_bucket(stage: Stage, levels: list[float]) -> Bucket:
    """The narrowest bucket of the stage left without a whole token: the script admits
    as many as its emptiest bucket allows, so that one is below 1 after the call."""
    for bucket, tokens in zip(stage.buckets, levels, strict=True):
        if tokens < 1.0:
            return bucket
    return stage.buckets[-1]


def _lease_size(bucket: Bucket) -> int:
    """The largest lease of `bucket`; 0: it does not lease."""
    return min(LEASE_MAX, bucket.burst // LEASE_SHARE)


def _quota_arg(value: int | None) -> int:
    """A monthly quota as the script takes it: the limit, or NO_QUOTA for none."""
    return NO_QUOTA if value is None else value


def _raise_if_cancelled() -> None:
    """A cancel that lands as a timeout expires comes out as TimeoutError, which the
    loops above suppress: without this they would run on, and hold shutdown."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
