"""The usage export end to end (SPEC section 16): keyfront as a real process, a real
aiohttp receiver in the test that verifies each request's Standard Webhooks signature
the way the spec tells a receiver to.

Periods: the SPEC's shortest is a minute, and a test that waited for minute ends
would take minutes; keyfront reads KEYFRONT_TEST_EXPORT_PERIOD (seconds, tests only,
proxy/export/outbox.py) so that a period here lasts 2 s. Nothing else differs."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import shutil
import signal
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import libfaketime
import pytest
from aiohttp import web

from proxy.export.events import iso
from proxy.records import Customer
from proxy.store import store_from_url
from proxy.units import Rate

from conftest import KeyfrontProcess, RedisServer, empty_store_url, free_port, start_keyfront
from test_e2e_limits import config, provision

KEY = base64.b64encode(b"export-test-secret-0123456789ab").decode()
SECRET = f"whsec_{KEY}"
PERIOD = "2"  # seconds (KEYFRONT_TEST_EXPORT_PERIOD)
ENV = {"KEYFRONT_TEST_EXPORT_PERIOD": PERIOD}
UNLIMITED = Rate(1_000_000, 1.0)
ADMIN = "admin-token-0123456789"


@dataclass
class Receiver:
    """A billing endpoint: verifies each request, answers as `answer` says (a status,
    or "hang": no answer within keyfront's timeout), keeps the events it took."""

    answer: int | str = 204
    events: list[dict[str, Any]] = field(default_factory=list)
    refused: list[list[str]] = field(default_factory=list)  # the ids of each batch not taken
    arrivals: list[float] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)  # what failed verification
    clock: float = 0.0  # seconds keyfront's clock is ahead of ours (libfaketime)
    url: str = ""
    runner: web.AppRunner | None = None
    site: Any = None

    async def listen(self, port: int | None = None) -> None:
        assert self.runner is not None
        port = port or int(self.url.split(":")[2].split("/")[0])
        self.site = web.TCPSite(self.runner, "127.0.0.1", port)
        await self.site.start()
        self.url = f"http://127.0.0.1:{port}/bill"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        problem = verify(request.headers, body, now=time.time() + self.clock)
        if problem:
            self.bad.append(problem)
            return web.Response(status=400)
        batch, answer = json.loads(body), self.answer
        if answer != 204:
            self.refused.append([e["id"] for e in batch])
            if answer == "hang":
                await asyncio.sleep(5)  # keyfront gives up first: nothing is taken
            return web.Response(status=503)
        self.events += batch
        self.arrivals += [time.time()] * len(batch)
        return web.Response(status=204)

    def totals(self, key_id: str) -> dict[str, int]:
        mine = [e["data"] for e in self.events if e["data"]["key_id"] == key_id]
        return {k: sum(d[k] for d in mine) for k in ("requests", "bytes", "hits", "misses")}

    def ids(self) -> list[str]:
        return [e["id"] for e in self.events]


def verify(
    headers: Any,
    body: bytes,
    content_type: str = "application/cloudevents-batch+json",
    secret: str = SECRET,
    now: float | None = None,
) -> str | None:
    """Standard Webhooks, as a receiver checks it: all three headers, a timestamp within
    5 minutes, `v1,` + base64 HMAC-SHA256 of id.timestamp.body with the decoded key."""
    if headers.get("content-type") != content_type:
        return f"content-type {headers.get('content-type')}"
    msg_id, stamp = headers.get("webhook-id"), headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature", "").split()
    if not msg_id or not stamp or not signatures:
        return "a header is missing"
    if abs((time.time() if now is None else now) - int(stamp)) > 300:
        return "stale timestamp"
    signed = f"{msg_id}.{stamp}.".encode() + body
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    if not any(hmac.compare_digest(s.encode(), b"v1," + expected) for s in signatures):
        return "bad signature"
    return None


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/bill", found.handle)
    found.runner = web.AppRunner(app, shutdown_timeout=0.1)
    await found.runner.setup()
    await found.listen(free_port())
    yield found
    await found.runner.cleanup()


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.txt").write_bytes(b"a" * 1000)
    return tmp_path / "files"


def export_config(store_url: str, files: Path, receiver: Receiver, flush: str = "200ms") -> str:
    extra = f"""usage: {{flush_interval: {flush}}}
admin: {{token: {ADMIN}}}
export:
  period: 1m
  sinks:
    - {{type: webhook, url: "{receiver.url}", secret: "{SECRET}", timeout: 1s}}
"""
    return config(store_url, files, extra)


async def start(body: str, tmp_path: Path, *args: str, **kwargs: Any) -> KeyfrontProcess:
    return await asyncio.to_thread(start_keyfront, body, str(tmp_path), *args, env=ENV, **kwargs)


async def serve(url: str, count: int) -> int:
    """`count` GETs; the body bytes served."""
    sent = 0
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            async with session.get(url) as response:
                assert response.status == 200
                sent += len(await response.read())
    return sent


async def metrics(kf: KeyfrontProcess) -> str:
    return await asyncio.to_thread(metrics_now, kf)


def metrics_now(kf: KeyfrontProcess) -> str:
    with urllib.request.urlopen(f"{kf.admin_url}/metrics", timeout=10) as response:
        return str(response.read().decode())


def iso_seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def until(check: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def billed(store_url: str, billing_id: str) -> str:
    key = await provision(store_url, rate=UNLIMITED, burst=UNLIMITED.count)
    store = store_from_url(store_url)
    await store.open()
    try:
        await store.put_customer(Customer("acme", billing_id=billing_id))
    finally:
        await store.close()
    return key


@pytest.mark.parametrize("setup", ["sqlite", "redis", "sqlite --workers 2"])
async def test_a_periods_usage_arrives_exactly_and_signed(
    tmp_path: Path, files: Path, receiver: Receiver, redis_server: RedisServer, setup: str
) -> None:
    kind, *args = setup.split()  # workers: each runs an exporter, one holds the lease
    store_url = empty_store_url(kind, redis_server, str(tmp_path))
    key = await billed(store_url, "cus_acme")
    key_id = key.split("_")[2]
    body = export_config(store_url, files, receiver)
    kf = await start(body, tmp_path, *args)
    try:
        sent = await serve(f"{kf.url}/files/a.txt?key={key}", 12)
        await until(lambda: receiver.totals(key_id)["requests"] >= 12)
        await asyncio.sleep(int(PERIOD) + 0.5)  # nothing more comes

        assert receiver.bad == []
        assert receiver.totals(key_id) == {"requests": 12, "bytes": sent, "hits": 0, "misses": 0}
        assert len(set(receiver.ids())) == len(receiver.ids())  # each event once
        event = receiver.events[0]
        assert {k: event[k] for k in ("specversion", "source", "type", "subject")} == {
            "specversion": "1.0", "source": "keyfront", "type": "keyfront.usage",
            "subject": "acme",
        }  # fmt: skip
        data = event["data"]
        assert (data["customer_id"], data["billing_id"], data["revision"]) == (
            "acme",
            "cus_acme",
            0,
        )
        assert event["time"] == data["period_start"] < data["period_end"]
        # from each event's period end to its arrival: the settle delay (2 x 200 ms
        # flushes + 1 s), up to a 1 s tick, the delivery; generous for a loaded machine
        lags = [at - iso_seconds(e["data"]["period_end"]) for at, e in zip(
            receiver.arrivals, receiver.events, strict=True)]  # fmt: skip
        print(f"lag from period end to delivery: {min(lags):.2f}-{max(lags):.2f} s")
        assert min(lags) > 0 and max(lags) < 1.4 + 1 + 3
    finally:
        kf.stop()


async def test_a_refusing_receiver_then_kill_9_loses_nothing_and_the_same_id_arrives(
    tmp_path: Path, files: Path, receiver: Receiver
) -> None:
    store_url = empty_store_url("sqlite", None, str(tmp_path))
    key = await billed(store_url, "cus_1")
    key_id = key.split("_")[2]
    body = export_config(store_url, files, receiver)
    receiver.answer = 503
    kf = await start(body, tmp_path)
    try:
        sent = await serve(f"{kf.url}/files/a.txt?key={key}", 5)
        await until(lambda: len(receiver.refused) >= 2)  # refused, then retried
        first = receiver.refused[0]
        (waiting,) = json.loads(kf.cli("export", "status", "--json").stdout)
        assert waiting["sink"] == "webhook" and waiting["waiting"] == len(first)
        assert "answered 503" in waiting["last_error"] and waiting["last_period_delivered"] is None
        page = await metrics(kf)
        assert f'keyfront_export_pending{{sink="webhook"}} {len(first)}.0' in page
        assert 'keyfront_export_errors_total{sink="webhook"}' in page
        os.kill(kf.process.pid, signal.SIGKILL)
        kf.process.wait(5)
        receiver.answer = 204
        kf = await start(body, tmp_path, port=kf.port)  # the same instance, restarted
        await until(lambda: receiver.totals(key_id)["requests"] >= 5)

        assert set(first) <= set(receiver.ids())  # the refused events, with their ids
        await until(lambda: 'keyfront_export_pending{sink="webhook"} 0.0' in metrics_now(kf))
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{kf.admin_url}/admin/v1/export", headers={"Authorization": f"Bearer {ADMIN}"}
            ) as answer,
        ):
            (shown,) = await answer.json()  # fmt: skip
        assert shown["waiting"] == 0 and shown["last_period_delivered"] is not None
        assert shown["last_period_delivered"] <= shown["last_period_exported"]
        page = await metrics(kf)
        assert f'keyfront_export_delivered_total{{sink="webhook"}} {len(receiver.ids())}.0' in page
        assert receiver.totals(key_id)["requests"] == 5
        assert receiver.totals(key_id)["bytes"] == sent
        assert receiver.bad == []
    finally:
        kf.stop()


async def test_a_receiver_that_hangs_or_is_down_for_a_while_loses_nothing(
    tmp_path: Path, files: Path, receiver: Receiver
) -> None:
    store_url = empty_store_url("sqlite", None, str(tmp_path))
    key = await billed(store_url, "cus_2")
    key_id = key.split("_")[2]
    receiver.answer = "hang"
    kf = await start(export_config(store_url, files, receiver), tmp_path)
    try:
        sent = await serve(f"{kf.url}/files/a.txt?key={key}", 4)
        await until(lambda: len(receiver.refused) >= 1)  # the receiver holds the batch
        # keyfront gave up at its 1 s timeout, before the receiver's 5 s were out: on
        # the condition itself, not a fixed wait that the backoff (doubling from 1 s)
        # made 15 s long
        await until(lambda: "TimeoutError" in last_error(kf))
        await receiver.site.stop()  # down: connections refused
        receiver.answer = 204
        await until(lambda: "Cannot connect" in last_error(kf))  # and tried while down
        assert receiver.events == []
        await receiver.listen()
        await until(lambda: receiver.totals(key_id)["requests"] >= 4, within=15)

        assert receiver.totals(key_id)["bytes"] == sent
        assert receiver.totals(key_id)["requests"] == 4
    finally:
        kf.stop()


async def test_two_instances_sharing_redis_export_each_period_once(
    tmp_path: Path, files: Path, receiver: Receiver, redis_server: RedisServer
) -> None:
    store_url = empty_store_url("redis", redis_server, str(tmp_path))
    key = await billed(store_url, "cus_3")
    key_id = key.split("_")[2]
    body = export_config(store_url, files, receiver)
    one = await start(body, tmp_path)
    two = await start(body, tmp_path)
    try:
        sent = 0
        for _ in range(3):  # over a few periods, both serving
            sent += await serve(f"{one.url}/files/a.txt?key={key}", 4)
            sent += await serve(f"{two.url}/files/a.txt?key={key}", 3)
            await asyncio.sleep(1)
        await until(lambda: receiver.totals(key_id)["requests"] >= 21, within=15)
        await asyncio.sleep(int(PERIOD) + 1.5)  # a second exporter would send by now

        assert receiver.totals(key_id) == {"requests": 21, "bytes": sent, "hits": 0, "misses": 0}
        assert len(set(receiver.ids())) == len(receiver.ids())  # each id's counts once
        assert receiver.bad == []
    finally:
        one.stop()
        two.stop()


async def test_a_redis_outage_loses_no_exported_count(
    tmp_path: Path, files: Path, receiver: Receiver
) -> None:
    # Counts held by keyfront while Redis is down reach the store when it returns, and
    # the outbox in Redis (AOF, fsync always) survives the restart: nothing lost, no
    # id twice, the sum exact.
    redis = RedisServer.launch("--appendonly", "yes", "--appendfsync", "always")
    try:
        key = await billed(redis.url, "cus_4")
        key_id = key.split("_")[2]
        kf = await start(export_config(redis.url, files, receiver), tmp_path)
        try:
            url = f"{kf.url}/files/a.txt?key={key}"
            sent = await serve(url, 5)
            await until(lambda: receiver.totals(key_id)["requests"] >= 5)
            await asyncio.to_thread(redis.stop)
            sent += await serve(url, 6)  # counted in keyfront meanwhile
            await asyncio.sleep(3)
            await asyncio.to_thread(redis.start)
            await until(lambda: receiver.totals(key_id)["requests"] >= 11, within=20)
            await asyncio.sleep(int(PERIOD) + 1.5)

            assert receiver.totals(key_id) == {
                "requests": 11,
                "bytes": sent,
                "hits": 0,
                "misses": 0,
            }
            assert len(set(receiver.ids())) == len(receiver.ids())
        finally:
            kf.stop()
    finally:
        redis.stop()
        shutil.rmtree(redis.workdir, ignore_errors=True)


async def test_a_key_with_a_quota_of_10_alerts_once_at_8_and_once_at_10(
    tmp_path: Path, files: Path, redis_server: RedisServer
) -> None:
    # SPEC section 16: once per threshold per key per month, with two instances serving.
    alerts: list[tuple[Any, dict[str, Any]]] = []
    acme_secret: list[str] = []  # what GET /customers/acme shows the customer

    async def take(request: web.Request) -> web.Response:
        body = await request.read()
        # Signed with acme's own secret, derived from alerts.secret: not the shared one,
        # which any customer could then use to forge alerts to the others.
        assert verify(request.headers, body, "application/json", acme_secret[0]) is None
        assert verify(request.headers, body, "application/json", SECRET) == "bad signature"
        alerts.append((request.headers["webhook-id"], json.loads(body)))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/alert", take)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    store_url = empty_store_url("redis", redis_server, str(tmp_path))
    key = await provision(store_url, rate=UNLIMITED, burst=UNLIMITED.count, quota_requests=10)
    key_id = key.split("_")[2]
    store = store_from_url(store_url)
    await store.open()
    await store.put_customer(Customer("acme", alert_webhook=f"http://127.0.0.1:{port}/alert"))
    await store.close()
    extra = f"usage: {{flush_interval: 200ms}}\nalerts: {{secret: {SECRET}}}\n"
    one = await start(config(store_url, files, extra), tmp_path)
    two = await start(config(store_url, files, extra), tmp_path)
    try:
        shown = json.loads(one.cli("customers", "show", "acme", "--json").stdout)
        acme_secret.append(shown["alert_secret"])
        assert acme_secret[0].startswith("whsec_") and acme_secret[0] != SECRET
        for kf in (one, two, one, two):
            await serve(f"{kf.url}/files/a.txt?key={key}", 2)
        await until(lambda: len(alerts) >= 1)
        await serve(f"{two.url}/files/a.txt?key={key}", 2)
        await until(lambda: len(alerts) >= 2)
        async with aiohttp.ClientSession() as session:
            for kf in (one, two, one):  # over the quota: refused, and no alert again
                async with session.get(f"{kf.url}/files/a.txt?key={key}") as response:
                    assert response.status == 429
        await asyncio.sleep(3)  # an alert check runs every 2 s

        found = [(event["data"]["threshold"], event["data"]["used"]) for _, event in alerts]
        assert found == [("80%", 8), ("100%", 10)]
        first = alerts[0][1]
        assert (first["type"], first["subject"], first["data"]["key_id"]) == (
            "keyfront.alert",
            "acme",
            key_id,
        )
        assert first["data"]["limit"] == 10 and first["data"]["metric"] == "requests"
        assert [webhook_id for webhook_id, _ in alerts] == [e["id"] for _, e in alerts]
        (outbox,) = json.loads(one.cli("export", "status", "--json").stdout)
        assert (outbox["sink"], outbox["waiting"], outbox["last_error"]) == ("alerts", 0, None)
    finally:
        one.stop()
        two.stop()
        await runner.cleanup()


def export_view(kf: KeyfrontProcess) -> dict[str, Any]:
    """The webhook sink's line of GET /admin/v1/export."""
    request = urllib.request.Request(
        f"{kf.admin_url}/admin/v1/export", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        (sink,) = json.loads(response.read())
    return dict(sink)


def exported(kf: KeyfrontProcess) -> str | None:
    """The newest period the export has passed."""
    passed = export_view(kf)["last_period_exported"]
    return str(passed) if passed else None


def last_error(kf: KeyfrontProcess) -> str:
    """The sink's last delivery error ("" before any)."""
    return str(export_view(kf)["last_error"] or "")


def clock_ahead_by(seconds: int) -> dict[str, str]:
    """The environment that runs a process `seconds` ahead of the real clock, through
    libfaketime's LD_PRELOAD (the monotonic clock is left alone: timeouts stay real)."""
    _, env = libfaketime.get_reload_information()
    return {**env, "FAKETIME": f"+{seconds}s"}


async def test_a_flush_late_for_its_hour_goes_out_as_a_delta_with_a_new_id(
    tmp_path: Path, files: Path, receiver: Receiver, redis_server: RedisServer
) -> None:
    # Issue 19: "a late flush produces a delta event with a new id". Two instances share
    # Redis; both serve a key in the last period of an hour, one's flushes fail (the
    # store refusing them, failpoint usage.flush) until that hour was exported. Its
    # counts reach the store late and go out as revision 1 of the same period: a new
    # id, exactly the difference. An hour end in seconds: both processes run with their
    # clock moved to shortly before one (libfaketime), with 4 s periods.
    period = 6
    lead = 10  # seconds of the faked hour left at start: the two start-ups
    now = time.time()
    ahead = int((now // 3600 + 1) * 3600 - lead - now) % 3600
    hour_end = int((now + ahead) // 3600 * 3600 + 3600)  # faked
    receiver.clock = ahead
    store_url = empty_store_url("redis", redis_server, str(tmp_path))
    key = await billed(store_url, "cus_5")
    key_id = key.split("_")[2]
    body = export_config(store_url, files, receiver)
    clock = {**clock_ahead_by(ahead), "KEYFRONT_TEST_EXPORT_PERIOD": str(period)}
    # 40 flushes 200 ms apart, from the first with counts: held 8 s, while the hour's
    # last period is exported at most 1.4 s (settle) + 1 s (tick) after the hour ends
    late_env = {**clock, "KEYFRONT_FAILPOINTS": "usage.flush=40"}
    started = await asyncio.gather(
        asyncio.to_thread(start_keyfront, body, str(tmp_path), env=clock),
        asyncio.to_thread(start_keyfront, body, str(tmp_path), env=late_env),
        return_exceptions=True,
    )
    for failed in started:
        if isinstance(failed, BaseException):
            for kf in started:
                if isinstance(kf, KeyfrontProcess):
                    kf.stop()
            raise failed
    on_time, late = (kf for kf in started if isinstance(kf, KeyfrontProcess))
    try:
        # Serve once the period before the hour's last was exported, so that what is
        # served now is in the last period's event (a sub-hour event carries what
        # reached the store by its end + settle: proxy/export/outbox.py).
        last_period = hour_end - period
        await until(lambda: exported(on_time) == iso(last_period - period), within=lead + 5)
        sent_on_time = await serve(f"{on_time.url}/files/a.txt?key={key}", 3)
        sent_late = await serve(f"{late.url}/files/a.txt?key={key}", 2)
        assert time.time() + ahead < hour_end - 0.5  # all served in the hour's last period
        await until(lambda: receiver.totals(key_id)["requests"] >= 5, within=25)
        await asyncio.sleep(3)  # nothing more comes

        assert receiver.bad == []
        mine = [e for e in receiver.events if e["data"]["key_id"] == key_id]
        first, delta = mine  # in the order they were exported
        assert first["data"]["period_start"] == delta["data"]["period_start"] == iso(last_period)
        assert (first["data"]["revision"], delta["data"]["revision"]) == (0, 1)
        assert first["id"] != delta["id"]
        assert (first["data"]["requests"], first["data"]["bytes"]) == (3, sent_on_time)
        assert (delta["data"]["requests"], delta["data"]["bytes"]) == (2, sent_late)
        assert delta["data"]["billing_id"] == "cus_5"
        assert receiver.totals(key_id) == {
            "requests": 5,
            "bytes": sent_on_time + sent_late,
            "hits": 0,
            "misses": 0,
        }
    finally:
        on_time.stop()
        late.stop()


async def test_a_crossing_that_reaches_the_store_after_its_hour_still_alerts(
    tmp_path: Path, files: Path, redis_server: RedisServer
) -> None:
    # Served in an hour's last second, counted in that hour, stored after it ended (the
    # flushes held 2 s by the usage.flush failpoint): the check then runs in an hour
    # with no usage yet. It failed: alerts checked only the current hour's keys.
    alerts: list[dict[str, Any]] = []

    async def take(request: web.Request) -> web.Response:
        alerts.append(json.loads(await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/alert", take)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    lead = 6  # seconds of the faked hour left at start: the start-up
    now = time.time()
    ahead = int((now // 3600 + 1) * 3600 - lead - now) % 3600
    hour_end = (now + ahead) // 3600 * 3600 + 3600  # faked
    store_url = empty_store_url("redis", redis_server, str(tmp_path))
    key = await provision(store_url, rate=UNLIMITED, burst=UNLIMITED.count, quota_requests=10)
    store = store_from_url(store_url)
    await store.open()
    await store.put_customer(Customer("acme", alert_webhook=f"http://127.0.0.1:{port}/alert"))
    await store.close()
    extra = f"usage: {{flush_interval: 200ms}}\nalerts: {{secret: {SECRET}}}\n"
    env = {**ENV, **clock_ahead_by(ahead), "KEYFRONT_FAILPOINTS": "usage.flush=10"}
    kf = await asyncio.to_thread(
        start_keyfront, config(store_url, files, extra), str(tmp_path), env=env
    )
    try:
        await asyncio.sleep(max(0.0, hour_end - 1.0 - (time.time() + ahead)))
        await serve(f"{kf.url}/files/a.txt?key={key}", 8)
        assert time.time() + ahead < hour_end  # served in the hour that ends
        await until(lambda: len(alerts) >= 1, within=15)
        assert [a["data"]["threshold"] for a in alerts] == ["80%"]
        assert alerts[0]["data"]["used"] == 8
    finally:
        kf.stop()
        await runner.cleanup()


async def test_a_dead_hosts_spool_flushed_hours_later_goes_out_as_a_delta(
    tmp_path: Path, files: Path, receiver: Receiver
) -> None:
    # Issue 19: counts that reach the store more than 2 h after their hour, after it was
    # exported, still go out, as a new id carrying exactly the difference. A exports an
    # hour's first counts; B, its clock 4 h ahead, then leads the export, so its pass
    # has left that hour behind; C serves 2 requests of that hour, cannot flush them
    # (failpoint usage.flush) and is SIGKILLed; D, 4 h ahead too, starts on the same
    # spool folder and flushes C's counts: 4 h late. Every clock is moved (libfaketime)
    # to the middle of an hour, so that no hour ends during the test.
    store_url = empty_store_url("sqlite", None, str(tmp_path))
    key = await billed(store_url, "cus_7")
    key_id = key.split("_")[2]
    now = time.time()
    base, ahead = int(1800 - now % 3600) % 3600, 4 * 3600
    hour = int(now + base) // 3600 * 3600  # faked, for A and C
    body = export_config(store_url, files, receiver)

    async def launch(env: dict[str, str], text: str = body) -> KeyfrontProcess:
        return await asyncio.to_thread(start_keyfront, text, str(tmp_path), env={**ENV, **env})

    receiver.clock = base
    a = await launch(clock_ahead_by(base))
    try:
        sent_on_time = await serve(f"{a.url}/files/a.txt?key={key}", 3)
        await until(lambda: receiver.totals(key_id)["requests"] >= 3)
    finally:
        a.stop()
    receiver.clock = base + ahead  # B signs with its clock
    b = await launch(clock_ahead_by(base + ahead))
    c = d = None
    try:
        passed = lambda: iso_seconds(exported(b) or "1970-01-01T00:00:00Z")  # noqa: E731
        await until(lambda: passed() >= hour + ahead)  # B's window: 2 h before its hour
        unflushed = {**clock_ahead_by(base), "KEYFRONT_FAILPOINTS": "usage.flush=100000"}
        c = await launch(unflushed, config(store_url, files, "usage: {flush_interval: 200ms}"))
        sent_late = await serve(f"{c.url}/files/a.txt?key={key}", 2)
        await asyncio.sleep(0.5)  # counted in C's spool, whose flushes fail
        os.kill(c.process.pid, signal.SIGKILL)
        c.process.wait(5)
        d = await launch(clock_ahead_by(base + ahead))
        await until(lambda: receiver.totals(key_id)["requests"] >= 5, within=15)
        await asyncio.sleep(3)  # nothing more comes

        assert receiver.bad == []
        first, delta = [e for e in receiver.events if e["data"]["key_id"] == key_id]
        assert first["id"] != delta["id"]
        assert (first["data"]["requests"], first["data"]["bytes"]) == (3, sent_on_time)
        assert (delta["data"]["requests"], delta["data"]["bytes"]) == (2, sent_late)
        assert int(iso_seconds(delta["data"]["period_start"])) // 3600 * 3600 == hour
        assert delta["data"]["billing_id"] == "cus_7"
    finally:
        for kf in (b, c, d):
            if kf is not None:
                kf.stop()
