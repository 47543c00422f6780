"""The live lookup's cache (SPEC section 13): what this process knows of external keys.

An answer's life, from the moment the key API gave it:

    fresh        [0, fresh)              used as is
    stale        [fresh, fresh + stale)  used, while one background refresh runs
    past stale                           the request waits for a lookup (<= timeout);
                                         if the API fails, the answer is still used
                                         up to `max_stale` past its freshness
    404          [0, negative_ttl)       401 key_unknown, then asked again

Errors, timeouts and malformed answers are never cached. Concurrent requests for one
key share one lookup; at most `concurrency` lookups run at once; a request that finds
no usable answer within `timeout` gets 503 `unavailable`. A key with no answer at all
costs its client IP (its IPv6 /64) a token of the `unknown_key_rate` bucket before it
is looked up, so a flood of made-up keys costs the key API a bounded number of calls;
past it, 429 `rate_limited`, which spends no key's tokens (there is no key yet).

`hit()` never awaits: a cached external key costs a dict look-up and a clock read,
as a cached keyfront key does (SPEC section 12: within 5% of it).

Answers are held under the raw key string, as KeySigner holds verified keys: hashing
every hit would cost a microsecond for nothing (the keys are public, in web pages,
and process memory is not a log). Keys never leave this process: the change feed
names them by keyed digests (digest.py), and logs, metrics and error bodies never
name them at all.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from ..cached_key import CachedKey, compile_key
from ..config import MAX_EXTERNAL_KEY, KeyDefaults, LookupConfig
from ..errors import LookupRateLimited, Unavailable
from ..keys import key_id_of
from ..ratelimit import (
    Bucket,
    LocalBuckets,
    client_prefix,
    decision,
    retry_after_tokens,
)
from ..store import Change
from .client import Found, KeyApi, LookupFailed
from .digest import key_digests

RETRY_PAUSE = 1.0  # after a failed lookup, an answer held is used this long without asking
CLIENT_BUCKETS = 50_000  # client IPs (/64s) tracked for unknown_key_rate
RESULTS = ("hit", "stale", "found", "unknown", "error", "timeout", "malformed", "busy")


@dataclass(slots=True)
class Answer:
    """A cached answer and its deadlines (monotonic seconds)."""

    key: CachedKey  # record None: the API said 404
    fresh_until: float
    stale_until: float
    usable_until: float  # when the API fails
    digests: tuple[str, ...]
    retry_at: float = 0.0  # no background refresh before this (after a failure)


class LookupCache:
    """External keys resolved through the operator's key API, cached per process."""

    def __init__(
        self,
        config: LookupConfig,
        api: KeyApi,
        *,
        pattern: str | re.Pattern[str],
        prefix: str,
        secrets: Mapping[int, str],
        defaults: KeyDefaults,
    ) -> None:
        self._config = config
        self._pattern = re.compile(pattern)
        self._own_prefix = f"{prefix}_"  # keys.prefix: keyfront's own keys start with it
        self._api = api
        self._secrets = dict(secrets)
        self._defaults = defaults
        self._entries: OrderedDict[str, Answer] = OrderedDict()
        self._by_digest: dict[str, str] = {}
        self._by_key_id: dict[str, set[str]] = {}
        self._by_customer: dict[str, set[str]] = {}
        self._loading: dict[str, asyncio.Task[CachedKey]] = {}
        self._generation = 0  # bumped by every invalidation: older loads install nothing
        self._slots = asyncio.Semaphore(config.concurrency)
        self._clients = LocalBuckets(max_buckets=CLIENT_BUCKETS)
        rate = config.unknown_key_rate.per_second
        self._bucket_args = (rate, config.unknown_key_burst)
        self.counts = dict.fromkeys(RESULTS, 0)

    async def open(self) -> None:
        await self._api.open()

    async def close(self) -> None:
        for task in list(self._loading.values()):
            task.cancel()
        await asyncio.gather(*self._loading.values(), return_exceptions=True)
        await self._api.close()

    # --- the request path ---

    def is_external(self, key: str) -> bool:
        """SPEC section 13 check 2: not in keyfront's own format with this prefix
        (whatever its MAC: such a key with a bad MAC is 401 key_invalid, never a
        lookup), and wholly matching `keys.external.pattern`."""
        if len(key) > MAX_EXTERNAL_KEY:
            return False
        if key.startswith(self._own_prefix) and key_id_of(key) is not None:
            return False
        return self._pattern.fullmatch(key) is not None

    def hit(self, key: str) -> CachedKey | None:
        """The cached answer for `key` if it may be used without waiting (fresh, or
        stale with a background refresh started); else None. Never awaits."""
        answer = self._entries.get(key)
        if answer is None:
            return None
        now = time.monotonic()
        if now < answer.fresh_until:
            self._entries.move_to_end(key)
            self.counts["hit"] += 1
            return answer.key
        if now < answer.stale_until:
            if now >= answer.retry_at and key not in self._loading:
                self._start(key)
            self.counts["stale"] += 1
            return answer.key
        return None

    async def resolve(self, key: str, client_ip: str) -> CachedKey:
        """The answer for `key` after a lookup (shared with concurrent callers), within
        `timeout`. Raises RateLimited (the client's unknown_key_rate is spent) or
        Unavailable (the API failed and no answer held is usable)."""
        load = self._loading.get(key)
        if load is None:
            if key not in self._entries:
                self._admit(client_ip)
            load = self._start(key)
        try:
            async with asyncio.timeout(self._config.timeout):
                return await asyncio.shield(load)
        except (LookupFailed, TimeoutError) as exc:
            return self._fallback(key, exc)

    def _admit(self, client_ip: str) -> None:
        """Spend a token of the client's unknown_key_rate bucket, or refuse with 429 and
        that bucket's RateLimit-* headers and Retry-After (SPEC section 1's 429)."""
        bucket = Bucket(client_prefix(client_ip), *self._bucket_args)
        admitted, tokens = self._clients.take(bucket)
        if not admitted:
            wait = retry_after_tokens(bucket, tokens)
            refused = decision(bucket, tokens, LookupRateLimited, wait)
            assert refused.refusal is not None
            raise refused.refusal

    def _fallback(self, key: str, failure: Exception) -> CachedKey:
        """What a request gets when no lookup answered in time: an answer held within
        max_stale (used without asking for RETRY_PAUSE), else 503."""
        answer, now = self._entries.get(key), time.monotonic()
        if answer is not None and now < answer.usable_until:
            answer.stale_until = max(
                answer.stale_until, min(now + RETRY_PAUSE, answer.usable_until)
            )
            answer.retry_at = max(answer.retry_at, now + RETRY_PAUSE)
            return answer.key
        raise Unavailable(f"the key API failed: {failure or type(failure).__name__}")

    # --- lookups ---

    def _start(self, key: str) -> asyncio.Task[CachedKey]:
        task = asyncio.get_running_loop().create_task(self._lookup(key, self._generation))
        self._loading[key] = task
        task.add_done_callback(lambda done: self._finished(key, done))
        return task

    def _finished(self, key: str, task: asyncio.Task[CachedKey]) -> None:
        if self._loading.get(key) is task:
            del self._loading[key]
        if not task.cancelled() and task.exception() is not None:  # retrieved: no warning
            answer = self._entries.get(key)
            if answer is not None:  # a failed background refresh: not again at once
                answer.retry_at = time.monotonic() + RETRY_PAUSE

    async def _lookup(self, key: str, generation: int) -> CachedKey:
        """One call to the key API, a slot and the answer both within `timeout`."""
        in_slot = False
        try:
            async with asyncio.timeout(self._config.timeout), self._slots:
                in_slot = True
                found = await self._api.fetch(key)
        except TimeoutError:
            self.counts["timeout" if in_slot else "busy"] += 1
            raise LookupFailed("timeout", "no answer within the timeout") from None
        except LookupFailed as exc:
            self.counts[exc.kind] += 1
            raise
        self.counts["found" if found else "unknown"] += 1
        return self._remember(key, found, generation)

    def _remember(self, key: str, found: Found | None, generation: int) -> CachedKey:
        config, now = self._config, time.monotonic()
        fresh = config.fresh if found else config.negative_ttl
        stale = config.stale if found else 0.0
        cached = compile_key(found, now + fresh, self._defaults)
        if generation != self._generation:
            return cached  # an invalidation came meanwhile: answer the waiters only
        self._forget(key)
        digests = key_digests(self._secrets, key)
        answer = Answer(cached, now + fresh, now + fresh + stale, now + fresh + config.max_stale,
                        digests)  # fmt: skip
        self._entries[key] = answer
        for digest in digests:
            self._by_digest[digest] = key
        if cached.record is not None:
            self._by_key_id.setdefault(cached.record.key_id, set()).add(key)
            self._by_customer.setdefault(cached.record.customer_id, set()).add(key)
        while len(self._entries) > config.cache_size:
            self._forget(next(iter(self._entries)))
        return cached

    def _forget(self, key: str) -> None:
        answer = self._entries.pop(key, None)
        if answer is None:
            return
        for digest in answer.digests:
            self._by_digest.pop(digest, None)
        record = answer.key.record
        if record is not None:
            _unindex(self._by_key_id, record.key_id, key)
            _unindex(self._by_customer, record.customer_id, key)

    # --- invalidation (the store's change feed: app.follow_changes) ---

    def apply(self, change: Change) -> None:
        """Drop the answers a change names: `lookup_key` (keys, by digest), `key` (a key
        id), `customer`. `all` (changes were missed) makes every answer ask again
        before its next use, yet keeps it usable if the API fails."""
        if change.kind == "lookup_key":
            keys = [self._by_digest.get(digest) for digest in change.id.split(",")]
        elif change.kind == "key":
            keys = list(self._by_key_id.get(change.id, ()))
        elif change.kind == "customer":
            keys = list(self._by_customer.get(change.id, ()))
        elif change.kind == "all":
            self._expire_all()
            keys = []
        else:
            return
        # Loads in flight may have asked before the change: they answer their waiters
        # but install nothing, and a request from now on starts a new one. Which keys
        # they are is unknown until they answer, so every one is left (changes are
        # rare; record_cache.RecordCache.apply does the same for customers).
        self._generation += 1
        self._loading.clear()
        for key in keys:
            if key is not None:
                self._forget(key)

    def _expire_all(self) -> None:
        now = time.monotonic()
        for answer in self._entries.values():
            answer.fresh_until = min(answer.fresh_until, now)
            answer.stale_until = min(answer.stale_until, now)
            answer.retry_at = 0.0

    def __len__(self) -> int:
        return len(self._entries)


def _unindex(index: dict[str, set[str]], name: str, key: str) -> None:
    keys = index.get(name)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[name]
