"""The Redis token bucket (store/bucket.lua) and its coalescing client, on one
redis-server and on a 3-master Redis Cluster (SPEC section 3)."""

from __future__ import annotations

import asyncio
import calendar
import subprocess
import time
from collections.abc import AsyncIterator, Callable

import pytest

from proxy.config import KeyDefaults
from proxy.errors import QuotaExceeded, RateLimited, Unavailable
from proxy.ratelimit import KeyLimits, LocalLimiter, customer_quota_owner, month_of
from proxy.records import Customer, KeyRecord
from proxy.shared_limiter import LEASE_MAX, SharedLimiter
from proxy.store.resp import key_slot, resp_client_from_url
from proxy.units import Rate

from conftest import free_port

DEFAULTS = KeyDefaults(rate=None, burst=None)


def limits(key_id: str, customer: Customer | None = None, **fields: object) -> KeyLimits:
    record = KeyRecord(key_id, "acme", **fields)  # type: ignore[arg-type]
    return KeyLimits.of(record, customer, DEFAULTS)


def _script_calls(ports: list[int]) -> int:
    total = 0
    for port in ports:
        stats = subprocess.run(
            ["redis-cli", "-p", str(port), "INFO", "commandstats"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for line in stats.splitlines():
            if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:")):
                total += int(line.split("calls=")[1].split(",")[0])
    return total


Factory = Callable[..., SharedLimiter]


@pytest.fixture(params=["redis", "redis+cluster"])
async def deployment(
    request: pytest.FixtureRequest, redis_url: str
) -> AsyncIterator[tuple[Factory, list[int]]]:
    if request.param == "redis":
        url, ports = redis_url, [int(redis_url.rsplit(":", 1)[1].split("/", maxsplit=1)[0])]
    else:
        ports = request.getfixturevalue("redis_cluster")
        for port in ports:
            subprocess.run(
                ["redis-cli", "-p", str(port), "FLUSHALL"], capture_output=True, check=False
            )
        url = f"redis+cluster://127.0.0.1:{ports[0]}"
    made: list[SharedLimiter] = []

    def make(on_error: str = "allow", store_url: str = url, timeout: float = 0.5) -> SharedLimiter:
        client = resp_client_from_url(store_url)
        fallback = LocalLimiter(quotas=False)  # as app.limiter_for makes it
        limiter = SharedLimiter(client, timeout, on_error, fallback)  # type: ignore[arg-type]
        made.append(limiter)
        return limiter

    yield make, ports
    for limiter in made:
        await limiter.close()


async def test_one_tick_is_one_script_call_and_burst_is_exact(
    deployment: tuple[Factory, list[int]],
) -> None:
    make, ports = deployment
    limiter = make()
    await limiter.open()
    key = limits("a" * 22, rate=Rate(1, 60.0), burst=5)
    await limiter.check(limits("z" * 22, rate=Rate(1, 1.0)), "")  # the script is loaded
    before = _script_calls(ports)
    decisions = await asyncio.gather(*(limiter.check(key, "") for _ in range(8)))
    assert _script_calls(ports) - before == 1  # eight requests, one coalesced call
    assert [d.refusal is None for d in decisions] == [True] * 5 + [False] * 3
    assert isinstance(decisions[5].refusal, RateLimited)
    assert int(decisions[5].refusal.headers["Retry-After"]) >= 1
    assert decisions[4].headers()["RateLimit-Remaining"] == "0"


async def test_two_limiters_share_one_bucket(deployment: tuple[Factory, list[int]]) -> None:
    make, _ = deployment
    one, two = make(), make()
    await one.open()
    await two.open()
    key = limits("b" * 22, rate=Rate(1, 60.0), burst=4)
    first = [await one.check(key, "") for _ in range(3)]
    second = [await two.check(key, "") for _ in range(3)]
    assert [d.refusal is None for d in first + second] == [True] * 4 + [False] * 2


async def test_ip_and_customer_buckets_across_slots(deployment: tuple[Factory, list[int]]) -> None:
    make, _ = deployment
    limiter = make()
    await limiter.open()
    customer = Customer("acme", max_rate=Rate(1, 60.0), max_burst=3)
    keys = [limits(c * 22, customer, rate=Rate(100, 1.0), burst=100) for c in "cde"]
    results = [await limiter.check(keys[i % 3], "") for i in range(5)]
    assert [r.refusal is None for r in results] == [True] * 3 + [False] * 2
    per_ip = limits("f" * 22, rate=Rate(100, 1.0), burst=100, ip_rate=Rate(1, 60.0), ip_burst=1)
    assert (await limiter.check(per_ip, "10.0.0.1")).refusal is None
    assert (await limiter.check(per_ip, "10.0.0.1")).refusal is not None
    assert (await limiter.check(per_ip, "10.0.0.2")).refusal is None


async def test_request_and_byte_quotas(deployment: tuple[Factory, list[int]]) -> None:
    make, _ = deployment
    limiter = make()
    await limiter.open()
    by_requests = limits("g" * 22, rate=Rate(100, 1.0), burst=100, quota_requests=3)
    outcomes = await asyncio.gather(*(limiter.check(by_requests, "") for _ in range(5)))
    assert [o.refusal is None for o in outcomes] == [True] * 3 + [False] * 2
    assert isinstance(outcomes[3].refusal, QuotaExceeded)
    by_bytes = limits("h" * 22, quota_bytes=1000)  # a quota and no bucket
    assert (await limiter.check(by_bytes, "")).refusal is None
    limiter.sent(by_bytes, 1000)
    assert isinstance((await limiter.check(by_bytes, "")).refusal, QuotaExceeded)


async def test_unreachable_store_decides_locally_or_denies(
    deployment: tuple[Factory, list[int]],
) -> None:
    make, _ = deployment
    dead = f"redis://127.0.0.1:{free_port()}/0"
    allow, deny = make("allow", dead), make("deny", dead)
    await allow.open()
    await deny.open()
    key = limits("i" * 22, rate=Rate(1, 60.0), burst=2)
    assert [(await allow.check(key, "")).refusal is None for _ in range(3)] == [True, True, False]
    assert isinstance((await deny.check(key, "")).refusal, Unavailable)
    assert not allow.healthy


# --- leases: a busy key decides most requests with no store call ---------------------------


async def test_a_busy_key_decides_from_its_lease_without_store_calls(
    deployment: tuple[Factory, list[int]],
) -> None:
    make, ports = deployment
    limiter = make()
    await limiter.open()
    key = limits("l" * 22, rate=Rate(1_000_000, 1.0), burst=1_000_000)
    await limiter.check(limits("z" * 22, rate=Rate(1, 1.0)), "")  # the script is loaded
    before = _script_calls(ports)
    decisions = []
    for _ in range(50):  # 50 ticks of 8 concurrent requests, as 8 connections make
        decisions += await asyncio.gather(*(limiter.check(key, "") for _ in range(8)))
    calls = _script_calls(ports) - before
    assert all(d.refusal is None for d in decisions)
    assert calls < 50 / 2, f"{calls} script calls for 400 requests in 50 ticks"
    remaining = [int(d.headers()["RateLimit-Remaining"]) for d in decisions]
    assert min(remaining) >= 1_000_000 - 400 - 2 * 256 and max(remaining) <= 1_000_000


async def test_a_lease_that_runs_dry_grows_instead_of_starting_over(
    deployment: tuple[Factory, list[int]],
) -> None:
    # Requests can spend a lease before its refill's reply is read. The one that then
    # waits for Redis asks for a tick's demand (a token or two), and that smaller grant
    # must not shrink the lease back: it keeps growing to LEASE_MAX, and a script call
    # serves about LEASE_MAX / 2 requests (it served 25 when leases started over).
    make, ports = deployment
    limiter = make()
    await limiter.open()
    key = limits("g" * 22, rate=Rate(10_000_000, 1.0), burst=10_000_000)
    await limiter.check(limits("z" * 22, rate=Rate(1, 1.0)), "")  # the script is loaded
    before = _script_calls(ports)
    for i in range(19_200):  # one busy connection; the loop polls for I/O now and then
        await limiter.check(key, "")
        if i % 50 == 0:
            await asyncio.sleep(0)
    calls = _script_calls(ports) - before
    assert calls <= 19_200 / (LEASE_MAX / 2) + 20, f"{calls} script calls for 19,200 requests"


async def test_leases_never_admit_past_the_shared_burst(
    deployment: tuple[Factory, list[int]],
) -> None:
    # Two instances drain one bucket (burst 10,000, no refill to speak of) with leases:
    # together they admit at most the burst, and leave little of it in lapsed leases.
    make, _ = deployment
    one, two = make(), make()
    await one.open()
    await two.open()
    key = limits("m" * 22, rate=Rate(1, 3600.0), burst=10_000)

    async def drain(limiter: SharedLimiter) -> int:
        admitted = 0
        for _ in range(800):
            ticks = await asyncio.gather(*(limiter.check(key, "") for _ in range(8)))
            admitted += sum(d.refusal is None for d in ticks)
        return admitted

    admitted = sum(await asyncio.gather(drain(one), drain(two)))
    assert 10_000 - 2 * 2 * 100 <= admitted <= 10_000


async def test_small_buckets_and_quota_keys_do_not_lease(
    deployment: tuple[Factory, list[int]],
) -> None:
    # Below a burst of 100, or with a monthly quota, every tick asks Redis: exactness.
    make, ports = deployment
    limiter = make()
    await limiter.open()
    await limiter.check(limits("z" * 22, rate=Rate(1, 1.0)), "")  # the script is loaded
    for key in (
        limits("n" * 22, rate=Rate(1000, 1.0), burst=99),
        limits("o" * 22, rate=Rate(1_000_000, 1.0), burst=1_000_000, quota_requests=10**9),
    ):
        before = _script_calls(ports)
        for _ in range(10):
            await asyncio.gather(*(limiter.check(key, "") for _ in range(4)))
        assert _script_calls(ports) - before == 10


# --- issue 12 item 6: a refusal never spends someone else's tokens or quota -------------


async def test_an_ip_refusal_spends_neither_the_key_nor_its_quota(
    deployment: tuple[Factory, list[int]],
) -> None:
    make, _ = deployment
    limiter = make()
    await limiter.open()
    key = limits("p" * 22, rate=Rate(1, 60.0), burst=4, ip_rate=Rate(1, 60.0), ip_burst=2,
                 quota_requests=3)  # fmt: skip
    one = await asyncio.gather(*(limiter.check(key, "10.0.0.1") for _ in range(12)))
    assert [d.refusal is None for d in one] == [True] * 2 + [False] * 10
    assert all(isinstance(d.refusal, RateLimited) for d in one[2:])
    assert (await limiter.check(key, "10.0.0.2")).refusal is None  # 3 of the quota
    assert isinstance((await limiter.check(key, "10.0.0.3")).refusal, QuotaExceeded)


async def test_a_customer_refusal_gives_the_key_its_tokens_back(
    deployment: tuple[Factory, list[int]],
) -> None:
    make, _ = deployment
    limiter = make()
    await limiter.open()
    capped = Customer("acme", max_rate=Rate(1, 60.0), max_burst=2, quota_requests=100)
    key = limits("q" * 22, capped, rate=Rate(1, 60.0), burst=3, quota_requests=100)
    decided = await asyncio.gather(*(limiter.check(key, "") for _ in range(6)))
    assert [d.refusal is None for d in decided] == [True] * 2 + [False] * 4
    await asyncio.sleep(0.05)  # the refunds ride the next tick
    uncapped = limits("q" * 22, rate=Rate(1, 60.0), burst=3, quota_requests=3)
    assert [(await limiter.check(uncapped, "")).refusal is None for _ in range(2)] == [True, False]


async def test_an_ip_refusal_spends_nothing_of_the_customer(
    deployment: tuple[Factory, list[int]],
) -> None:
    make, _ = deployment
    limiter = make()
    await limiter.open()
    customer = Customer("acme", max_rate=Rate(1, 60.0), max_burst=4, quota_requests=4)
    key = limits("r" * 22, customer, rate=Rate(100, 1.0), burst=100, ip_rate=Rate(1, 60.0),
                 ip_burst=2)  # fmt: skip
    for _ in range(3):  # one client, refused, refused again
        await asyncio.gather(*(limiter.check(key, "10.0.0.1") for _ in range(4)))
        await asyncio.sleep(0.02)
    assert [(await limiter.check(key, "10.0.0.2")).refusal is None for _ in range(2)] == [True] * 2
    assert isinstance((await limiter.check(key, "10.0.0.3")).refusal, RateLimited)


async def test_a_customer_quota_is_one_pool_for_all_its_keys(
    deployment: tuple[Factory, list[int]],
) -> None:
    make, _ = deployment
    limiter = make()
    await limiter.open()
    customer = Customer("pooled", quota_requests=5, quota_bytes=10_000)
    keys = [KeyLimits.of(KeyRecord(c * 22, "pooled"), customer, DEFAULTS) for c in "st"]
    served = [(await limiter.check(keys[i % 2], "")).refusal is None for i in range(7)]
    assert served == [True] * 5 + [False] * 2
    bytes_only = Customer("bytes", quota_bytes=1000)
    keys = [KeyLimits.of(KeyRecord(c * 22, "bytes"), bytes_only, DEFAULTS) for c in "uv"]
    assert (await limiter.check(keys[0], "")).refusal is None
    limiter.sent(keys[0], 600)
    limiter.sent(keys[1], 400)
    assert isinstance((await limiter.check(keys[1], "")).refusal, QuotaExceeded)


# --- review of issue 12, finding 6: a refund survives a store that fails or is slow ---------

CAPPED = Customer("acme", max_rate=Rate(1, 3600.0), max_burst=5, quota_requests=100)


def _cli(port: int, *args: str) -> str:
    command = ["redis-cli", "-c", "-p", str(port), *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


def _node(ports: list[int], key: str) -> int:
    """The port of the master holding `key` (conftest splits the slots three ways)."""
    return ports[min(key_slot(key) // 5462, len(ports) - 1)]


def _key_elsewhere(ports: list[int]) -> str:
    """A key id whose stage sits on another cluster node than the customer's."""
    customer_node = _node([0, 1, 2], "kf:b:{c:acme}")
    return next(c * 22 for c in "abcdefghijk" if _node([0, 1, 2], c * 22) != customer_node)


def _stage_state(port: int, bucket: str, quota: str, month: str) -> tuple[float, int]:
    """(tokens in `bucket`, requests counted in `month`): a missing bucket is full."""
    tokens, requests = _cli(port, "HGET", bucket, "t"), _cli(port, "HGET", f"{quota}:{month}", "r")
    return float(tokens) if tokens else 5.0, int(requests) if requests else 0


async def _until(probe: Callable[[], bool], within: float = 4.0) -> bool:
    deadline = time.monotonic() + within
    while not probe():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _customer(ports: list[int]) -> tuple[float, int]:
    return _stage_state(ports[0], "kf:b:{c:acme}", "kf:q:{c:acme}", month_of(time.time()))


async def test_a_failed_key_stage_gives_the_customer_its_token_and_count_back(
    deployment: tuple[Factory, list[int]],
) -> None:
    # The key's call fails (a real error reply: its bucket is no hash) while its
    # customer's admits: the request is decided by the fallback, and the customer's
    # token and pooled quota count go back (they stayed spent: finding 6a).
    make, ports = deployment
    limiter = make()
    await limiter.open()
    key_id = _key_elsewhere(ports)
    key = limits(key_id, CAPPED, rate=Rate(1, 3600.0), burst=5)
    _cli(ports[0], "SET", f"kf:b:{{{key_id}}}", "not a bucket")
    await limiter.check(key, "")
    assert not limiter.healthy
    assert await _until(lambda: _customer(ports)[0] > 4.99 and _customer(ports)[1] == 0), _customer(
        ports
    )


async def test_a_stage_that_times_out_gives_back_what_it_admitted(
    deployment: tuple[Factory, list[int]],
) -> None:
    # The key's node is paused past store_timeout: the request gives up and is decided
    # by the fallback. What the customer's stage admitted (on time on a cluster, late on
    # one server) and what the key's admits once the pause ends both go back.
    make, ports = deployment
    limiter = make(timeout=0.1)
    await limiter.open()
    key_id = _key_elsewhere(ports)
    key = limits(key_id, CAPPED, rate=Rate(1, 3600.0), burst=5, quota_requests=100)
    await limiter.check(limits("z" * 22, rate=Rate(1, 1.0)), "")  # the script is loaded
    _cli(_node(ports, f"kf:b:{{{key_id}}}"), "CLIENT", "PAUSE", "400", "ALL")
    await limiter.check(key, "")
    assert not limiter.healthy
    month = month_of(time.time())

    def key_state() -> tuple[float, int]:
        return _stage_state(ports[0], f"kf:b:{{{key_id}}}", f"kf:q:{{{key_id}}}", month)

    assert await _until(lambda: _customer(ports)[0] > 4.99 and _customer(ports)[1] == 0), _customer(
        ports
    )
    assert await _until(lambda: key_state()[0] > 4.99 and key_state()[1] == 0), key_state()


async def test_a_refund_whose_call_fails_is_sent_again(
    deployment: tuple[Factory, list[int]],
) -> None:
    # A client refused by its per-IP bucket queues the customer's refund; the store
    # drops every connection before that refund's call: it is kept and sent again
    # (it was dropped: finding 6b).
    make, ports = deployment
    limiter = make()
    await limiter.open()
    key = limits(_key_elsewhere(ports), CAPPED, rate=Rate(1, 3600.0), burst=5,
                 ip_rate=Rate(1, 3600.0), ip_burst=1)  # fmt: skip
    assert (await limiter.check(key, "10.0.0.1")).refusal is None
    assert (await limiter.check(key, "10.0.0.1")).refusal is not None  # its refund is queued
    for port in ports:  # before the loop sends the refund
        _cli(port, "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    assert await _until(lambda: _customer(ports)[0] > 3.99 and _customer(ports)[1] == 1), _customer(
        ports
    )


async def test_a_refund_goes_to_the_month_its_request_was_counted_in(
    deployment: tuple[Factory, list[int]],
) -> None:
    # Admitted by the customer in the last second of January, refused by its per-IP
    # bucket, refunded in February: January's count goes down, February's stays (it
    # went down, a unit of quota out of nothing: finding 6c).
    make, ports = deployment
    limiter = make()
    january_end = calendar.timegm((2026, 1, 31, 23, 59, 59))
    limiter.clock = lambda: january_end
    await limiter.open()
    _cli(ports[0], "HSET", "kf:q:{c:acme}:202602", "r", "7")
    key = limits(_key_elsewhere(ports), CAPPED, rate=Rate(1, 3600.0), burst=5,
                 ip_rate=Rate(1, 3600.0), ip_burst=1)  # fmt: skip
    assert (await limiter.check(key, "10.0.0.1")).refusal is None
    assert (await limiter.check(key, "10.0.0.1")).refusal is not None  # its refund is queued
    limiter.clock = lambda: january_end + 2.0  # the refund leaves in February

    def counts() -> tuple[str, str]:
        return (_cli(ports[0], "HGET", "kf:q:{c:acme}:202601", "r"),
                _cli(ports[0], "HGET", "kf:q:{c:acme}:202602", "r"))  # fmt: skip

    assert await _until(lambda: counts() == ("1", "7"), within=1.0), counts()


async def test_quota_used_reads_the_counters_and_spends_nothing(
    deployment: tuple[Factory, list[int]],
) -> None:
    """GET /admin/v1/me's read (issue 15): the script's counters, bytes not yet sent
    included, and the read itself changes nothing; the refusal names the bytes."""
    make, _ = deployment
    limiter = make()
    await limiter.open()
    customer = Customer("acme", quota_requests=5, quota_bytes=1000)
    key = limits("u" * 22, customer)
    owner = customer_quota_owner("acme")
    assert await limiter.quota_used(owner) == (0, 0)
    assert all([(await limiter.check(key, "")).refusal is None for _ in range(2)])
    limiter.sent(key, 300)
    assert await limiter.quota_used(owner) == (2, 300)
    assert await limiter.quota_used(owner) == (2, 300)  # a read spends nothing
    limiter.sent(key, 700)
    refused = (await limiter.check(key, "")).refusal
    assert isinstance(refused, QuotaExceeded) and "customer's quota" in refused.message
    assert (refused.headers["X-Quota-Limit"], refused.headers["X-Quota-Unit"]) == ("1000", "bytes")
    assert await limiter.quota_used(owner) == (2, 1000)
    await limiter.close()
