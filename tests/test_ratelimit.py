"""Rate-limit decisions in process (SPEC section 3): buckets, quotas, headers."""

from __future__ import annotations

import asyncio
import calendar
import time
from pathlib import Path

import pytest

from proxy.config import KeyDefaults
from proxy.errors import QuotaExceeded, RateLimited
from proxy.ratelimit import Bucket, KeyLimits, LocalBuckets, LocalLimiter, seconds_to_month_end
from proxy.records import Customer, KeyRecord
from proxy.store.sqlite import SqliteStore
from proxy.units import Rate

DEFAULTS = KeyDefaults(rate=Rate(20, 1.0), burst=40)


def limits(**fields: object) -> KeyLimits:
    customer = fields.pop("customer", None)
    return KeyLimits.of(KeyRecord("k" * 22, "acme", **fields), customer, DEFAULTS)  # type: ignore[arg-type]


def test_limits_fall_back_to_the_defaults() -> None:
    default = limits()
    assert default.bucket == Bucket("kf:b:{" + "k" * 22 + "}", 20.0, 40)
    own = limits(rate=Rate(600, 60.0), burst=5)
    assert own.bucket is not None and (own.bucket.rate, own.bucket.burst) == (10.0, 5)
    assert own.quota_requests is None and not own.has_quota
    assert limits(quota_requests=10).has_quota


def test_optional_buckets_share_the_keys_hash_tag() -> None:
    both = limits(ip_rate=Rate(2, 1.0), customer=Customer("acme", max_rate=Rate(100, 1.0)))
    ids = [[b.id for b in stage.buckets] for stage in both.stages("10.0.0.1")]
    assert ids == [  # narrowest first; one stage per hash slot
        ["kf:b:{" + "k" * 22 + "}:ip:10.0.0.1", "kf:b:{" + "k" * 22 + "}"],
        ["kf:b:{c:acme}"],
    ]


def test_burst_then_refusal_with_headers() -> None:
    limiter = LocalLimiter()
    key = limits(rate=Rate(1, 1.0), burst=3)
    decisions = [limiter.decide(key, "") for _ in range(4)]
    assert [d.refusal is None for d in decisions] == [True, True, True, False]
    assert decisions[0].headers() == {
        "RateLimit-Limit": "3",
        "RateLimit-Remaining": "2",
        "RateLimit-Reset": "1",
    }
    refused = decisions[3].refusal
    assert isinstance(refused, RateLimited)
    assert refused.headers["Retry-After"] == "1"
    assert refused.headers["RateLimit-Remaining"] == "0"


def test_refill_over_time() -> None:
    buckets = LocalBuckets()
    bucket = Bucket("b", rate=100.0, burst=1)
    assert buckets.take(bucket)[0] == 1
    assert buckets.take(bucket)[0] == 0
    time.sleep(0.02)
    assert buckets.take(bucket)[0] == 1


def test_per_worker_share() -> None:
    # N workers without a shared store each hold 1/N of the rate and burst.
    buckets = LocalBuckets(scale=0.5)
    bucket = Bucket("b", rate=0.001, burst=10)
    assert sum(buckets.take(bucket)[0] for _ in range(20)) == 5


def test_ip_bucket_refuses_one_client_not_another() -> None:
    limiter = LocalLimiter()
    key = limits(rate=Rate(1000, 1.0), burst=1000, ip_rate=Rate(1, 60.0), ip_burst=2)
    assert [limiter.decide(key, "10.0.0.1").refusal is None for _ in range(3)] == [
        True,
        True,
        False,
    ]
    assert limiter.decide(key, "10.0.0.2").refusal is None


def test_request_quota_refuses_until_the_month_ends() -> None:
    limiter = LocalLimiter()
    key = limits(rate=Rate(1000, 1.0), burst=1000, quota_requests=3)
    outcomes = [limiter.decide(key, "").refusal for _ in range(5)]
    assert outcomes[:3] == [None, None, None]
    assert isinstance(outcomes[3], QuotaExceeded)
    retry = int(outcomes[3].headers["Retry-After"])
    assert abs(retry - seconds_to_month_end(time.time())) <= 2


def test_byte_quota_counts_bytes_sent() -> None:
    limiter = LocalLimiter()
    key = limits(quota_bytes=1000)
    assert limiter.decide(key, "").refusal is None
    limiter.sent(key, 999)
    assert limiter.decide(key, "").refusal is None
    limiter.sent(key, 1)
    assert isinstance(limiter.decide(key, "").refusal, QuotaExceeded)


def test_month_end() -> None:
    dec31 = calendar.timegm((2026, 12, 31, 23, 59, 0))
    assert seconds_to_month_end(dec31) == 60
    assert seconds_to_month_end(calendar.timegm((2026, 2, 1, 0, 0, 0))) == 28 * 86400


async def test_quotas_are_shared_through_the_sqlite_ledger(tmp_path: Path) -> None:
    store = SqliteStore(f"sqlite://{tmp_path}/kf.db")
    await store.open()
    try:
        one, two = LocalLimiter(0.5, store), LocalLimiter(0.5, store)  # two workers
        key = limits(rate=Rate(1000, 1.0), burst=1000, quota_requests=10)
        assert all(one.decide(key, "").refusal is None for _ in range(6))
        await one.quotas.sync()
        assert all(two.decide(key, "").refusal is None for _ in range(4))
        await two.quotas.sync()
        await one.quotas.sync()
        assert isinstance(one.decide(key, "").refusal, QuotaExceeded)
        assert isinstance(two.decide(key, "").refusal, QuotaExceeded)
    finally:
        await store.close()


@pytest.mark.parametrize("burst", [1, 7])
def test_accuracy_over_a_window(burst: int) -> None:
    # Saturate one bucket for 0.5 s: it admits at most `burst` plus `rate` per second
    # elapsed (SPEC: no more than burst + 1%). A busy machine that pauses this loop
    # for longer than burst/rate loses the tokens past the bucket's capacity, as a
    # token bucket should, so the lower bound is loose.
    buckets = LocalBuckets()
    bucket = Bucket("b", rate=200.0, burst=burst)
    admitted = buckets.take(bucket)[0]
    first = last = time.monotonic()
    while last - first < 0.5:
        admitted += buckets.take(bucket)[0]
        last = time.monotonic()
    expected = 200 * (last - first) + burst
    assert 0.5 * expected <= admitted <= 1.01 * expected + 1


# --- issue 12 item 6: a refusal never spends someone else's tokens or quota -------------


def test_an_ip_refusal_spends_neither_the_key_nor_the_customer_bucket() -> None:
    limiter = LocalLimiter()
    customer = Customer("acme", max_rate=Rate(1, 60.0), max_burst=4)
    key = limits(rate=Rate(1, 60.0), burst=4, ip_rate=Rate(1, 60.0), ip_burst=2, customer=customer)
    assert [limiter.decide(key, "10.0.0.1").refusal is None for _ in range(12)] == [True] * 2 + [
        False
    ] * 10
    assert [limiter.decide(key, "10.0.0.2").refusal is None for _ in range(3)] == [
        True,
        True,
        False,
    ]
    refused = limiter.decide(key, "10.0.0.3").refusal  # the key's bucket, at last
    assert isinstance(refused, RateLimited) and refused.headers["RateLimit-Remaining"] == "0"


def test_an_ip_refusal_spends_no_quota() -> None:
    limiter = LocalLimiter()
    key = limits(
        rate=Rate(1000, 1.0), burst=1000, ip_rate=Rate(1, 60.0), ip_burst=2, quota_requests=4
    )
    assert sum(limiter.decide(key, "10.0.0.1").refusal is None for _ in range(12)) == 2
    assert sum(limiter.decide(key, "10.0.0.2").refusal is None for _ in range(2)) == 2
    assert isinstance(limiter.decide(key, "10.0.0.3").refusal, QuotaExceeded)


def test_a_customer_refusal_spends_no_key_tokens() -> None:
    limiter = LocalLimiter()
    capped = Customer("acme", max_rate=Rate(1, 60.0), max_burst=2)
    key = limits(rate=Rate(1, 60.0), burst=3, customer=capped)
    assert [limiter.decide(key, "").refusal is None for _ in range(6)] == [True] * 2 + [False] * 4
    uncapped = limits(rate=Rate(1, 60.0), burst=3)  # the same key, its customer's cap lifted
    assert [limiter.decide(uncapped, "").refusal is None for _ in range(2)] == [True, False]


def test_a_customer_quota_is_one_pool_for_all_its_keys() -> None:
    limiter = LocalLimiter()
    customer = Customer("acme", quota_requests=5)
    one = KeyLimits.of(KeyRecord("a" * 22, "acme"), customer, KeyDefaults(None, None))
    two = KeyLimits.of(KeyRecord("b" * 22, "acme"), customer, KeyDefaults(None, None))
    assert not one.unlimited
    served = [limiter.decide(k, "").refusal is None for k in (one, two, one, two, one, two)]
    assert served == [True] * 5 + [False]
    assert isinstance(limiter.decide(one, "").refusal, QuotaExceeded)


def test_a_customer_byte_quota_counts_every_keys_bytes() -> None:
    limiter = LocalLimiter()
    customer = Customer("acme", quota_bytes=1000)
    one = KeyLimits.of(KeyRecord("a" * 22, "acme"), customer, KeyDefaults(None, None))
    two = KeyLimits.of(KeyRecord("b" * 22, "acme"), customer, KeyDefaults(None, None))
    assert limiter.decide(one, "").refusal is None
    limiter.sent(one, 600)
    assert limiter.decide(two, "").refusal is None
    limiter.sent(two, 400)
    assert isinstance(limiter.decide(two, "").refusal, QuotaExceeded)
    assert isinstance(limiter.decide(one, "").refusal, QuotaExceeded)


# --- per-IP buckets: IPv6 by /64, and a bounded table --------------------------------------


def test_ipv6_clients_share_a_bucket_per_64() -> None:
    limiter = LocalLimiter()
    key = limits(rate=Rate(1000, 1.0), burst=1000, ip_rate=Rate(1, 60.0), ip_burst=2)
    rotating = [f"2001:db8:0:1::{i:x}" for i in range(1, 6)]
    assert [limiter.decide(key, ip).refusal is None for ip in rotating] == [True] * 2 + [False] * 3
    assert limiter.decide(key, "2001:db8:0:2::1").refusal is None  # another /64
    mapped = [limiter.decide(key, ip).refusal is None for ip in ("10.0.0.9", "::ffff:10.0.0.9")]
    assert mapped == [True, True]
    assert limiter.decide(key, "10.0.0.9").refusal is not None  # one bucket for both forms


def test_the_bucket_table_is_bounded() -> None:
    buckets = LocalBuckets(max_buckets=1000)
    for i in range(5000):  # slow buckets: none refills within the test
        buckets.take(Bucket(f"b{i}", rate=0.001, burst=2))
    assert len(buckets) <= 1000


def test_the_shared_limiters_fallback_keeps_no_quotas() -> None:
    """Review finding 3: the fallback counted every byte a worker had sent in its life
    (it has no ledger, so nothing rolled over), and the first breaker trip then refused
    a key or a whole customer whose month was not spent. While degraded, quotas are not
    checked (README)."""
    fallback = LocalLimiter(quotas=False)
    customer = Customer("acme", quota_bytes=1000, quota_requests=3)
    key = KeyLimits.of(KeyRecord("a" * 22, "acme"), customer, KeyDefaults(None, None))
    for _ in range(11):
        fallback.sent(key, 10**9)
    assert [fallback.decide(key, "").refusal for _ in range(5)] == [None] * 5


async def test_counts_being_synced_still_count(tmp_path: Path) -> None:
    """While a sync sends this process's counts to the ledger, they are neither pending
    nor in the totals read back yet: requests decided meanwhile must still see them (a
    customer's pooled quota of 5 once served a sixth request, issue 15)."""
    store = SqliteStore(f"sqlite://{tmp_path}/kf.db")
    await store.open()
    try:
        limiter = LocalLimiter(1.0, store)
        key = limits(rate=Rate(1000, 1.0), burst=1000, quota_requests=3)
        assert all(limiter.decide(key, "").refusal is None for _ in range(3))
        syncing = asyncio.create_task(limiter.quotas.sync())
        await asyncio.sleep(0)  # the sync has taken the pending counts and awaits the ledger
        assert not syncing.done()
        assert isinstance(limiter.decide(key, "").refusal, QuotaExceeded)
        assert await limiter.quota_used(key.key_id) == (3, 0)
        await syncing
        assert isinstance(limiter.decide(key, "").refusal, QuotaExceeded)
        assert await limiter.quota_used(key.key_id) == (3, 0)
    finally:
        await store.close()
