"""proxy/store/resp.py against a real redis-server and a real 3-master Redis Cluster."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import AsyncIterator

import pytest

from proxy.errors import StoreError
from proxy.store import resp
from proxy.store.resp import (
    PipelinedClient,
    RespClient,
    RespCluster,
    RespConnection,
    RespError,
    key_slot,
    resp_client_from_url,
)

from conftest import RedisServer, redis_cli

SCRIPT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()


# --- fixtures and helpers -----------------------------------------------------------


@pytest.fixture
async def conn(redis_server: RedisServer, redis_url: str) -> AsyncIterator[RespConnection]:
    connection = await RespConnection.open("127.0.0.1", redis_server.port)
    yield connection
    connection.close()
    await connection.wait_closed()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[RespClient]:
    opened = RespClient.from_url(redis_url)
    await opened.ensure_connected()
    yield opened
    opened.close()
    await opened.wait_closed()


@pytest.fixture
async def cluster(redis_cluster: list[int]) -> AsyncIterator[RespCluster]:
    """A connected client of conftest's session cluster, emptied first."""
    for port in redis_cluster:
        redis_cli(port, "FLUSHALL")
    hosts = ",".join(f"127.0.0.1:{port}" for port in redis_cluster)
    opened = RespCluster.from_url(f"redis+cluster://{hosts}")
    await opened.ensure_connected()
    yield opened
    opened.close()
    await opened.wait_closed()


async def eventually(client: PipelinedClient, *args: str) -> object:
    """The first reply to `args` within 5 s that is not a StoreError: calls fail at once
    while the client reconnects."""
    deadline = time.monotonic() + 5.0
    while True:
        try:
            return await client.call(*args)
        except StoreError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


def commandstat(server: RedisServer, command: str) -> int:
    """How many times the server ran `command` since CONFIG RESETSTAT."""
    for line in server.cli("INFO", "commandstats").splitlines():
        if line.startswith(f"cmdstat_{command}:calls="):
            return int(line.split("=")[1].split(",")[0])
    return 0


def errorstat(port: int, kind: str) -> int:
    """How many `kind` error replies (MOVED, ASK) the node sent since CONFIG RESETSTAT."""
    for line in redis_cli(port, "INFO", "errorstats").splitlines():
        if line.startswith(f"errorstat_{kind}:count="):
            return int(line.rpartition("=")[2])
    return 0


# --- RespConnection -----------------------------------------------------------------


async def test_the_calls_of_one_tick_leave_in_one_write(
    conn: RespConnection, redis_server: RedisServer
) -> None:
    redis_server.cli("CONFIG", "RESETSTAT")
    replies = [conn.call("INCR", "n") for _ in range(1000)]
    assert await asyncio.gather(*replies) == list(range(1, 1001))
    assert conn.writes == 1
    assert commandstat(redis_server, "incr") == 1000


async def test_every_reply_type_resolves_and_an_error_fails_only_its_own_call(
    conn: RespConnection,
) -> None:
    await asyncio.gather(conn.call("SET", "s", "v"), conn.call("RPUSH", "l", "a", b"\xff"))
    replies = [
        conn.call("GET", "missing"),
        conn.call("INCR", "n"),
        conn.call("GET", "s"),
        conn.call("LRANGE", "l", 0, -1),
        conn.call("HGET", "s", "field"),  # WRONGTYPE
        conn.call("PING"),
        conn.call("SET", "f", 1.5),
        conn.call("GET", "f"),
        conn.call("EVAL", "return {1, redis.error_reply('inner'), 'x'}", 0),
    ]
    results = await asyncio.gather(*replies, return_exceptions=True)
    assert results[:4] == [None, 1, b"v", [b"a", b"\xff"]]
    assert isinstance(results[4], RespError)
    assert results[4].message.startswith("WRONGTYPE")
    assert results[5:8] == [b"PONG", b"OK", b"1.5"]
    nested = results[8]
    assert isinstance(nested, list) and isinstance(nested[1], RespError)
    assert (nested[0], nested[1].message, nested[2]) == (1, "ERR inner", b"x")


async def test_a_cancelled_waiter_does_not_shift_later_replies(conn: RespConnection) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await conn.call("BLPOP", "queue", "0.2")  # answers nil, after we stopped waiting
    dropped = conn.call("SET", "a", "1")
    dropped.cancel()
    assert await conn.call("INCR", "n") == 1
    assert await conn.call("GET", "a") == b"1"


async def test_a_closed_connection_fails_calls_at_once(conn: RespConnection) -> None:
    pending = conn.call("BLPOP", "queue", "0")
    conn.close()
    late = conn.call("PING")
    assert conn.closed and pending.done() and late.done()
    for future in (pending, late):
        with pytest.raises(StoreError):
            await future


# --- RespClient ---------------------------------------------------------------------


async def test_a_stopped_server_fails_calls_fast_and_the_same_client_recovers(
    client: RespClient, redis_server: RedisServer
) -> None:
    blocked = client.call("BLPOP", "queue", "0")
    await asyncio.sleep(0.02)  # sent, and waiting in the server
    try:
        redis_server.stop()
        started = time.perf_counter()
        with pytest.raises(StoreError):
            await blocked
        with pytest.raises(StoreError):
            await client.call("PING")
        assert time.perf_counter() - started < 0.05
        with pytest.raises(StoreError):
            await client.ensure_connected()
    finally:
        redis_server.start()
    assert await eventually(client, "PING") == b"PONG"
    await client.ensure_connected()
    assert await client.call("INCR", "n") == 1


async def test_a_probe_drops_a_connection_whose_replies_stopped_coming(
    client: RespClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A half-open socket (peer gone without FIN) looks like a server that stopped
    # answering; a BLPOP that never returns stands in for it.
    monkeypatch.setattr(resp, "STALL_LIMIT", 0.05)
    stuck = client.call("BLPOP", "queue", "0")
    await asyncio.sleep(0.1)
    await client.ensure_connected()  # the probe: aborts the stalled connection, reconnects
    with pytest.raises(StoreError, match="no reply"):
        await stuck
    assert await client.call("PING") == b"PONG"


async def test_evalsha_falls_back_to_eval_once_when_the_script_is_missing(
    client: RespClient, redis_server: RedisServer
) -> None:
    redis_server.cli("CONFIG", "RESETSTAT")
    assert await client.evalsha(SHA, SCRIPT, ["n"], [10]) == 10  # loaded in the same write
    assert commandstat(redis_server, "eval") == 0
    redis_server.cli("SCRIPT", "FLUSH")
    assert await client.evalsha(SHA, SCRIPT, ["n"], [5]) == 15  # NOSCRIPT: one EVAL
    assert await client.evalsha(SHA, SCRIPT, ["n"], [1]) == 16  # EVAL cached it again
    assert commandstat(redis_server, "eval") == 1
    assert commandstat(redis_server, "script|load") == 1


async def test_scripts_are_loaded_again_on_reconnect(
    client: RespClient, redis_server: RedisServer
) -> None:
    assert await client.evalsha(SHA, SCRIPT, ["n"], [1]) == 1
    redis_server.cli("SCRIPT", "FLUSH")
    redis_server.cli("CLIENT", "KILL", "TYPE", "normal")
    await eventually(client, "PING")
    redis_server.cli("CONFIG", "RESETSTAT")
    assert await client.evalsha(SHA, SCRIPT, ["n"], [1]) == 2
    assert commandstat(redis_server, "eval") == 0


async def test_a_url_with_credentials_and_db_authenticates_and_selects(
    redis_server: RedisServer, redis_url: str
) -> None:
    redis_server.cli("ACL", "SETUSER", "kf", "on", ">p@ss", "~*", "+@all")
    port = redis_server.port
    try:
        good = resp_client_from_url(f"redis://kf:p%40ss@127.0.0.1:{port}/2")
        await good.ensure_connected()
        assert await good.call("SET", "in-db-2", "yes") == b"OK"
        good.close()
        assert redis_server.cli("-n", "2", "GET", "in-db-2").strip() == "yes"
        bad = RespClient.from_url(f"redis://kf:wrong@127.0.0.1:{port}/0")
        with pytest.raises(StoreError, match="WRONGPASS"):
            await bad.ensure_connected()
    finally:
        redis_server.cli("ACL", "DELUSER", "kf")


def test_urls_choose_the_client() -> None:
    assert isinstance(resp_client_from_url("redis://127.0.0.1:1/0"), RespClient)
    assert isinstance(resp_client_from_url("rediss://example.com"), RespClient)
    assert isinstance(resp_client_from_url("redis+cluster://a:1,b:2"), RespCluster)
    with pytest.raises(ValueError, match="redis://"):
        RespClient.from_url("http://127.0.0.1")


async def test_client_cpu_per_call(client: RespClient, capsys: pytest.CaptureFixture[str]) -> None:
    """Not asserted: prints µs of client CPU per EVALSHA (docs/dependencies.md "Redis": 7-13 µs)."""
    await client.evalsha(SHA, SCRIPT, ["warm"], [1])
    calls, batch = 10_000, 64
    started = time.process_time()
    for first in range(0, calls, batch):
        n = min(batch, calls - first)
        await asyncio.gather(*(client.evalsha(SHA, SCRIPT, [f"k{i}"], [1]) for i in range(n)))
    per_call = (time.process_time() - started) / calls * 1e6
    with capsys.disabled():
        print(f"\nRespClient: {per_call:.1f} µs of client CPU per EVALSHA (batches of {batch})")


# --- RespCluster --------------------------------------------------------------------


async def test_key_slot_agrees_with_the_server(redis_cluster: list[int]) -> None:
    keys: list[str | bytes | int] = ["foo", "{user1000}.following", "foo{}{bar}", "foo{{bar}}zap"]
    keys += ["{}", "a{b", "kf:b:{k1}", "kf:q:{k1}:202611", b"\xff{\x00}", 12345]
    node = await RespConnection.open("127.0.0.1", redis_cluster[0])
    try:
        assert [key_slot(k) for k in keys] == await asyncio.gather(
            *(node.call("CLUSTER", "KEYSLOT", k) for k in keys)
        )
    finally:
        node.close()


async def test_key_slot_agrees_with_the_server_over_many_keys(redis_cluster: list[int]) -> None:
    """Issue 14: key_slot is redis-py's now; it must still give the server's answer for
    every shape of key, hash tags (`{...}`, empty, unclosed, nested, several) included."""
    rng = random.Random(14)
    alphabet = b"ab{}:x\x00\xff"
    keys: list[str | bytes | int] = [bytes(rng.choices(alphabet, k=rng.randint(0, 12)))
                                     for _ in range(1500)]  # fmt: skip
    keys += [f"kf:b:{{k_{rng.getrandbits(64):x}}}" for _ in range(300)]
    keys += [f"kf:q:{{c:{i}}}:2026{i % 12 + 1:02d}" for i in range(100)]
    keys += list(range(-50, 50))
    node = await RespConnection.open("127.0.0.1", redis_cluster[0])
    try:
        expected = await asyncio.gather(*(node.call("CLUSTER", "KEYSLOT", k) for k in keys))
    finally:
        node.close()
    assert [key_slot(k) for k in keys] == expected


async def test_keys_in_every_slot_range_route_to_their_node(
    cluster: RespCluster, redis_cluster: list[int]
) -> None:
    keys = [f"kf:b:{{key{i}}}" for i in range(300)]
    assert await asyncio.gather(*(cluster.call("SET", k, k) for k in keys)) == [b"OK"] * 300
    assert await asyncio.gather(*(cluster.call("GET", k) for k in keys)) == [
        k.encode() for k in keys
    ]
    per_node = [int(redis_cli(port, "DBSIZE")) for port in redis_cluster]
    assert sum(per_node) == 300 and min(per_node) > 50
    replies = [cluster.evalsha(SHA, SCRIPT, [k + ":n"], [2]) for k in keys]
    assert await asyncio.gather(*replies) == [2] * 300


async def test_a_stale_slot_map_recovers_through_moved(
    cluster: RespCluster, redis_cluster: list[int]
) -> None:
    wrong = ("127.0.0.1", redis_cluster[0])
    redis_cli(redis_cluster[0], "CONFIG", "RESETSTAT")
    cluster._slots = [wrong] * 16384  # as if every slot had moved away from this node
    keys = [f"{{t{i}}}" for i in range(60)]
    assert await asyncio.gather(*(cluster.call("INCR", k) for k in keys)) == [1] * 60
    assert errorstat(redis_cluster[0], "MOVED") > 20  # two thirds of 60 keys, once each
    await asyncio.sleep(0.1)  # the background CLUSTER SLOTS refresh
    assert len(set(cluster._slots)) == 3
    cluster._slots = [wrong] * 16384
    replies = [cluster.evalsha(SHA, SCRIPT, [k], [1]) for k in keys]
    assert await asyncio.gather(*replies) == [2] * 60


async def test_ask_during_a_slot_migration_is_followed(
    cluster: RespCluster, redis_cluster: list[int]
) -> None:
    key, slot = "{asked}", key_slot("{asked}")
    owner = next(port for port in redis_cluster if _owns(port, slot))
    target = next(port for port in redis_cluster if port != owner)
    owner_id, target_id = (redis_cli(p, "CLUSTER", "MYID").strip() for p in (owner, target))
    try:
        redis_cli(owner, "CONFIG", "RESETSTAT")
        redis_cli(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", owner_id)
        redis_cli(owner, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
        # The key is not on the owner, so the owner answers ASK: the command goes to the
        # importing node, preceded by ASKING, and the slot map stays as it was.
        assert await cluster.call("SET", key, "there") == b"OK"
        assert redis_cli(target, "DBSIZE").strip() == "1"
        assert await cluster.call("GET", key) == b"there"
        assert errorstat(owner, "ASK") == 2
    finally:
        for port in (owner, target):
            redis_cli(port, "CLUSTER", "SETSLOT", str(slot), "STABLE")
            redis_cli(port, "FLUSHALL")


def _owns(port: int, slot: int) -> bool:
    """Whether the node on `port` serves `slot`, by its own CLUSTER NODES line."""
    for line in redis_cli(port, "CLUSTER", "NODES").splitlines():
        fields = line.split()  # id addr flags master ping pong epoch link slot-range...
        if "myself" in fields[2]:
            return any(_in_range(r, slot) for r in fields[8:])
    return False


def _in_range(text: str, slot: int) -> bool:
    low, _, high = text.partition("-")
    return low.isdigit() and int(low) <= slot <= int(high or low)
