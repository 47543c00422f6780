"""The exporter against a real store (SQLite and redis-server) and a real receiver:
the ledger, late counts as a delta with a new id, the lease (SPEC section 16).

These drive `Exporter.step(now)` with chosen clocks, so that an hour closes without
waiting for one; the end-to-end tests (test_e2e_export.py) run keyfront itself."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from aiohttp import web

from proxy.config import (
    AlertsConfig,
    ExportConfig,
    KeyDefaults,
    LagoSink,
    OpenMeterSink,
    StripeSink,
    WebhookSink,
)
from proxy.errors import StoreError
from proxy.export.alerts import QuotaAlerts
from proxy.export.events import Exported, Owner, event_id, gained, usage_event
from proxy.export.outbox import Exporter
from proxy.export.signing import customer_secret, secret_key, signature
from proxy.export.sinks import SinkError, sink_for
from proxy.export.sinks.alert import AlertSink
from proxy.export.sinks.webhook import Webhook
from proxy.records import Customer, KeyRecord
from proxy.store import OutboxEvent, Store, UsageRow, store_from_url

from conftest import RedisServer, empty_store_url, free_port, redis_cli

SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"


def test_an_event_id_is_stable_and_names_key_period_and_revision() -> None:
    assert event_id("k1", 3600, 0) == event_id("k1", 3600, 0)
    assert len({event_id("k1", 3600, 0), event_id("k1", 3600, 1), event_id("k1", 7200, 0),
                event_id("k2", 3600, 0)}) == 4  # fmt: skip


def test_a_row_gains_only_what_grew_and_the_ledger_round_trips() -> None:
    assert gained({"requests": 7, "bytes": 70, "hits": 1}, {"requests": 5, "bytes": 70}) == {
        "requests": 2, "hits": 1,
    }  # fmt: skip
    entry = Exported(3600, 2, {"requests": 7})
    assert Exported.loads(entry.dumps()) == entry


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    taken: list[dict[str, Any]] = []

    async def take(request: web.Request) -> web.Response:
        taken.extend(json.loads(await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/", take)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/", taken
    await runner.cleanup()


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer
) -> AsyncIterator[Store]:
    if request.param == "redis-cluster":  # the outbox's scripts on one slot: {x}
        ports: list[int] = request.getfixturevalue("redis_cluster")
        for port in ports:
            redis_cli(port, "FLUSHALL")
        url = f"redis+cluster://127.0.0.1:{ports[0]}"
    else:
        url = empty_store_url(request.param, redis_server, str(tmp_path))
    opened = store_from_url(url)
    await opened.open()
    await opened.create_customer(Customer("acme", billing_id="cus_A"))
    await opened.create_key(KeyRecord("k1", "acme"))
    yield opened
    await opened.close()


def exporter_for(store: Store, url: str, holder: str = "h1") -> tuple[Exporter, Webhook]:
    sink_config = WebhookSink("webhook", url, SECRET)
    config = ExportConfig(sinks=(sink_config,), period=3600)
    sink = Webhook(sink_config)
    return Exporter(store, config, [sink], flush_interval=1.0, holder=holder), sink


async def test_late_counts_go_out_as_a_delta_with_a_new_id(
    store: Store, receiver: tuple[str, list[dict[str, Any]]]
) -> None:
    url, taken = receiver
    exporter, sink = exporter_for(store, url)
    hour = (int(time.time()) // 3600 - 3) * 3600
    await store.add_usage("b1", [UsageRow("key", "k1", hour, {"requests": 5, "bytes": 500})])
    try:
        for now in (hour + 3600 + 5, hour + 3600 + 9):  # the store seen up for `settle`
            await exporter.step(now)
        assert await exporter.deliver_once(sink) == 1
        # a flush held back (a store outage) brings counts of that hour after its export
        await store.add_usage("b2", [UsageRow("key", "k1", hour, {"requests": 2, "bytes": 200})])
        await exporter.step(hour + 7200 + 9)
        assert await exporter.deliver_once(sink) == 1
        await exporter.step(hour + 10800 + 9)  # nothing new: nothing more
        assert await exporter.deliver_once(sink) == 0
    finally:
        await sink.close()

    first, late = taken
    assert first["id"] == event_id("k1", hour, 0) and late["id"] == event_id("k1", hour, 1)
    assert (first["data"]["requests"], first["data"]["bytes"]) == (5, 500)
    assert (late["data"]["requests"], late["data"]["bytes"], late["data"]["revision"]) == (
        2,
        200,
        1,
    )
    assert late["data"]["period_start"] == first["data"]["period_start"] == first["time"]
    assert (late["subject"], late["data"]["billing_id"]) == ("acme", "cus_A")


async def export_hour_then_its_window_moves_on(
    exporter: Exporter, sink: Webhook, hour: int
) -> None:
    """Export `hour` (one event), then pass 4 more hours, so that the pass's window (the
    current hour and the two before) has left it behind."""
    for now in (hour + 3600 + 5, hour + 3600 + 9):  # the store seen up for `settle`
        await exporter.step(now)
    assert await exporter.deliver_once(sink) == 1
    for later in range(2, 6):
        await exporter.step(hour + later * 3600 + 9)


async def test_counts_hours_late_go_out_as_a_delta_with_a_new_id(
    store: Store, receiver: tuple[str, list[dict[str, Any]]]
) -> None:
    """Issue 19: a spool flushed by a start 3+ hours after its hour (a killed host), or
    an instance cut off from the store for hours while others export, brings counts of
    an hour the pass no longer re-reads: they still go out, as exactly the difference."""
    url, taken = receiver
    exporter, sink = exporter_for(store, url)
    hour = (int(time.time()) // 3600 - 8) * 3600
    await store.add_usage("b1", [UsageRow("key", "k1", hour, {"requests": 5, "bytes": 500})])
    try:
        await export_hour_then_its_window_moves_on(exporter, sink, hour)
        await store.add_usage("b2", [UsageRow("key", "k1", hour, {"requests": 2, "bytes": 200})])
        await exporter.step(hour + 6 * 3600 + 9)
        assert await exporter.deliver_once(sink) == 1
        await exporter.step(hour + 7 * 3600 + 9)  # nothing new: nothing more
        assert await exporter.deliver_once(sink) == 0
    finally:
        await sink.close()
    first, late = taken
    assert first["id"] == event_id("k1", hour, 0) and late["id"] == event_id("k1", hour, 1)
    assert (late["data"]["requests"], late["data"]["bytes"], late["data"]["revision"]) == (
        2,
        200,
        1,
    )
    assert hour not in await store.export_touched()  # the mark is gone once enqueued


@pytest.mark.parametrize("crash", ["before the enqueue", "after the enqueue"])
async def test_a_pass_that_dies_around_a_late_hour_loses_and_doubles_nothing(
    store: Store,
    receiver: tuple[str, list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
    crash: str,
) -> None:
    """The mark of a late hour is cleared only after its events are enqueued: a pass
    that dies before leaves it for the next pass; one that dies after it enqueued
    leaves a mark whose re-scan the ledger makes harmless."""
    url, taken = receiver
    exporter, sink = exporter_for(store, url)
    hour = (int(time.time()) // 3600 - 8) * 3600
    await store.add_usage("b1", [UsageRow("key", "k1", hour, {"requests": 5, "bytes": 500})])
    name = "export_enqueue" if crash == "before the enqueue" else "export_untouch"
    real = getattr(store, name)

    async def dies_once(*args: Any) -> Any:
        monkeypatch.setattr(store, name, real)
        raise StoreError(f"the exporter died {crash}")

    try:
        await export_hour_then_its_window_moves_on(exporter, sink, hour)
        await store.add_usage("b2", [UsageRow("key", "k1", hour, {"requests": 2, "bytes": 200})])
        monkeypatch.setattr(store, name, dies_once)
        with pytest.raises(StoreError):
            await exporter.step(hour + 6 * 3600 + 9)
        assert hour in await store.export_touched()
        for now in (hour + 6 * 3600 + 13, hour + 6 * 3600 + 17, hour + 7 * 3600 + 9):
            await exporter.step(now)
        while await exporter.deliver_once(sink):
            pass
    finally:
        await sink.close()
    assert [(e["id"], e["data"]["requests"]) for e in taken] == [
        (event_id("k1", hour, 0), 5),
        (event_id("k1", hour, 1), 2),
    ]
    assert hour not in await store.export_touched()


async def test_counts_that_land_while_a_pass_reads_a_late_hour_are_not_lost(
    store: Store, receiver: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush that lands after the pass read an hour's rows re-marks the hour, so the
    pass's clearing of the mark (compare and delete) leaves the new mark in place."""
    url, taken = receiver
    exporter, sink = exporter_for(store, url)
    hour = (int(time.time()) // 3600 - 8) * 3600
    await store.add_usage("b1", [UsageRow("key", "k1", hour, {"requests": 5, "bytes": 500})])
    read = store.hour_usage

    async def a_flush_lands_meanwhile(start: int) -> list[UsageRow]:
        rows = await read(start)
        if start == hour:
            monkeypatch.setattr(store, "hour_usage", read)
            await store.add_usage("b3", [UsageRow("key", "k1", hour, {"requests": 1, "bytes": 10})])
        return rows

    try:
        await export_hour_then_its_window_moves_on(exporter, sink, hour)
        await store.add_usage("b2", [UsageRow("key", "k1", hour, {"requests": 2, "bytes": 200})])
        monkeypatch.setattr(store, "hour_usage", a_flush_lands_meanwhile)
        await exporter.step(hour + 6 * 3600 + 9)
        await exporter.step(hour + 7 * 3600 + 9)
        while await exporter.deliver_once(sink):
            pass
    finally:
        await sink.close()
    # The outbox delivers in no promised order (the deltas add up whatever their order)
    assert sorted((e["data"]["revision"], e["id"], e["data"]["requests"]) for e in taken) == [
        (0, event_id("k1", hour, 0), 5),
        (1, event_id("k1", hour, 1), 2),
        (2, event_id("k1", hour, 2), 1),
    ]


async def test_only_the_lease_holder_exports(
    store: Store, receiver: tuple[str, list[dict[str, Any]]]
) -> None:
    url, taken = receiver
    one, sink_one = exporter_for(store, url, "one")
    two, sink_two = exporter_for(store, url, "two")
    hour = (int(time.time()) // 3600 - 2) * 3600
    await store.add_usage("b1", [UsageRow("key", "k1", hour, {"requests": 3, "bytes": 30})])
    try:
        for now in (hour + 3600 + 5, hour + 3600 + 9):
            assert await one.step(now) is True
            assert await two.step(now) is False
        # a stale holder's enqueue is fenced: nothing it writes lands
        assert not await store.export_enqueue("two", hour, {"k1": "x"}, [], ["webhook"])
        assert await one.deliver_once(sink_one) == 1
        assert await two.deliver_once(sink_two) == 0
    finally:
        await sink_one.close()
        await sink_two.close()
    assert [e["data"]["requests"] for e in taken] == [3]


# --- the vendors' requests, checked as their API references define them ---------------


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[str, list[tuple[str, str, Any, bytes]]]]:
    """A receiver that records each request: (method, path, headers, body)."""
    seen: list[tuple[str, str, Any, bytes]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((request.method, request.path, request.headers, await request.read()))
        return web.json_response({}, status=200)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


def two_events() -> list[dict[str, Any]]:
    """A usage event of a billed customer (period 2026-12-07T10:00Z), and one whose
    customer has no billing id."""
    billed = usage_event(
        "k1",
        Owner("acme", "cus_NffrFeUfNV2Hib"),
        1796637600,
        3600,
        revision=0,
        counts={"requests": 12, "bytes": 3456, "denied_quota": 2},
    )
    unbilled = usage_event("k2", Owner("zeta", None), 1796637600, 3600, revision=0,
                           counts={"requests": 1, "bytes": 1})  # fmt: skip
    return [billed, unbilled]


async def test_stripe_gets_one_meter_event_per_metric(
    recorder: tuple[str, list[tuple[str, str, Any, bytes]]],
) -> None:
    url, seen = recorder
    sink = sink_for(StripeSink("stripe", "sk_test_4eC39HqLyjWDarjtT1zdp7dc", url=url))
    events = two_events()
    try:
        await sink.deliver(events)
    finally:
        await sink.close()

    assert len(seen) == 2  # requests and bytes of the billed customer; no billing id: none
    for (method, path, headers, body), metric, value in zip(
        seen, ("requests", "bytes"), ("12", "3456"), strict=True
    ):
        identifier = f"{events[0]['id']}:{metric}"
        assert (method, path) == ("POST", "/v1/billing/meter_events")
        assert headers["Authorization"] == "Bearer sk_test_4eC39HqLyjWDarjtT1zdp7dc"
        assert headers["Idempotency-Key"] == identifier
        assert headers["Content-Type"] == "application/x-www-form-urlencoded"
        assert parse_qs(body.decode(), strict_parsing=True) == {
            "event_name": [f"keyfront_{metric}"],
            "identifier": [identifier],
            "payload[stripe_customer_id]": ["cus_NffrFeUfNV2Hib"],
            "payload[value]": [value],
            "timestamp": ["1796637600"],
        }


async def test_openmeter_gets_the_cloudevents_as_they_are(
    recorder: tuple[str, list[tuple[str, str, Any, bytes]]],
) -> None:
    url, seen = recorder
    sink = sink_for(OpenMeterSink("openmeter", url + "/", token="om_secret_token"))
    events = two_events()
    try:
        await sink.deliver(events)
    finally:
        await sink.close()

    ((method, path, headers, body),) = seen
    assert (method, path) == ("POST", "/api/v1/events")
    assert headers["Authorization"] == "Bearer om_secret_token"
    assert headers["Content-Type"] == "application/cloudevents-batch+json"
    assert json.loads(body) == events


async def test_lago_gets_a_batch_with_transaction_ids_per_metric(
    recorder: tuple[str, list[tuple[str, str, Any, bytes]]],
) -> None:
    url, seen = recorder
    sink = sink_for(LagoSink("lago", url, "lago_api_key_123"))
    events = two_events()
    try:
        await sink.deliver(events)
    finally:
        await sink.close()

    ((method, path, headers, body),) = seen
    assert (method, path) == ("POST", "/api/v1/events/batch")
    assert headers["Authorization"] == "Bearer lago_api_key_123"
    assert headers["Content-Type"] == "application/json"
    common = {"external_subscription_id": "cus_NffrFeUfNV2Hib", "timestamp": 1796637600}
    assert json.loads(body) == {"events": [
        {"transaction_id": f"{events[0]['id']}:requests", "code": "keyfront_requests",
         "properties": {"value": 12, "key_id": "k1", "customer_id": "acme"}, **common},
        {"transaction_id": f"{events[0]['id']}:bytes", "code": "keyfront_bytes",
         "properties": {"value": 3456, "key_id": "k1", "customer_id": "acme"}, **common},
    ]}  # fmt: skip


async def test_a_sink_nobody_answers_raises_sink_error() -> None:
    sink = sink_for(LagoSink("lago", f"http://127.0.0.1:{free_port()}", "k" * 9))
    try:
        with pytest.raises(SinkError, match=r"ClientConnectorError"):
            await sink.deliver(two_events())
    finally:
        await sink.close()


# --- alerts: a customer's pooled quota and the refusal spike, with chosen clocks -------


async def test_a_customers_pooled_quota_alerts_once_per_threshold(store: Store) -> None:
    await store.put_customer(Customer("acme", quota_requests=10))
    alerts = QuotaAlerts(store, AlertsConfig(refusal_spike=None), KeyDefaults(quota_requests=None))
    hour = int(time.time()) // 3600 * 3600
    await store.add_usage("b1", [UsageRow("key", "k1", hour, {"requests": 9}),
                                 UsageRow("customer", "acme", hour, {"requests": 9})])  # fmt: skip
    await alerts.check(hour + 60, "h1")
    await alerts.check(hour + 70, "h1")  # once
    assert alerts.counts == {"80%": 1}
    await store.add_usage("b2", [UsageRow("key", "k1", hour, {"requests": 1}),
                                 UsageRow("customer", "acme", hour, {"requests": 1})])  # fmt: skip
    again = QuotaAlerts(store, AlertsConfig(refusal_spike=None), KeyDefaults(quota_requests=None))
    await again.check(hour + 80, "h2")  # another instance: 80% was sent, 100% is new
    assert again.counts == {"100%": 1}


async def test_a_refusal_spike_alerts_once_after_10_minutes_above_the_share(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    await store.create_key(KeyRecord("k2", "acme"))
    alerts = QuotaAlerts(store, AlertsConfig(quota_thresholds=(1.0,)), KeyDefaults())
    hour = int(time.time()) // 3600 * 3600
    calm = {"requests": 100, "denied_referrer_refused": 1}  # k2: 1% refused, no spike
    await store.add_usage("b1", [UsageRow("key", "k1", hour, {"requests": 10, "denied_ip": 1}),
                                 UsageRow("key", "k2", hour, calm)])  # fmt: skip
    await alerts.check(hour + 60, "h1")
    await store.add_usage("b2", [UsageRow("key", "k1", hour, {"requests": 5, "denied_ip": 30}),
                                 UsageRow("key", "k2", hour, calm)])  # fmt: skip
    await alerts.check(hour + 400, "h1")
    assert alerts.counts == {}  # refused 30 of 35, but for less than 10 minutes
    await alerts.check(hour + 700, "h1")
    await alerts.check(hour + 800, "h1")

    assert alerts.counts == {"50%": 1}
    (line,) = [r.getMessage() for r in caplog.records if "refused share" in r.getMessage()]
    assert "key k1 of customer acme at 50% of its refused share over 10 minutes (30 of 35)" in line


async def test_an_alert_endpoint_that_fails_holds_back_no_other_customers_alert(
    store: Store, recorder: tuple[str, list[tuple[str, str, Any, bytes]]]
) -> None:
    base, seen = recorder
    url = base + "/alerts"
    sink = AlertSink(SECRET)
    exporter = Exporter(store, None, [], 1.0, "h1", alert_sink=sink)
    await store.export_lease("h1", 10)
    dead = f"http://127.0.0.1:{free_port()}/alerts"
    wrappers = [
        {"url": dead, "event": {"id": "a-dead", "subject": "a"}},
        {"url": url, "event": {"id": "b-live", "subject": "b"}},
    ]
    queued = [OutboxEvent(w["event"]["id"], 1, json.dumps(w)) for w in wrappers]
    assert await store.export_enqueue("h1", 0, {}, queued, ["alerts"])
    try:
        with pytest.raises(SinkError, match="1 of 2 alerts"):
            await exporter.deliver_once(sink)
    finally:
        await sink.close()

    ((method, _, headers, body),) = seen  # the live one arrived, signed, and left the outbox
    live = {"id": "b-live", "subject": "b"}
    assert (method, json.loads(body), headers["webhook-id"]) == ("POST", live, "b-live")
    stamp = int(headers["webhook-timestamp"])  # signed with customer b's own secret
    assert headers["webhook-signature"] == signature(
        secret_key(customer_secret(SECRET, "b")), "b-live", stamp, body
    )
    waiting, _ = await store.export_status("alerts")
    assert waiting == 1  # the dead one waits for its retry


async def test_stripe_events_taken_before_a_refusal_leave_the_batch() -> None:
    answers = iter([200, 200, 503])  # event 1: both metrics taken; event 2: refused

    async def meter(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({}, status=next(answers))

    app = web.Application()
    app.router.add_post("/v1/billing/meter_events", meter)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    first, _ = two_events()
    second = usage_event("k3", Owner("acme", "cus_B"), 1796637600, 3600, revision=0,
                         counts={"requests": 1, "bytes": 1})  # fmt: skip
    sink = sink_for(StripeSink("stripe", "sk_test_0123456789", url=f"http://127.0.0.1:{port}"))
    try:
        with pytest.raises(SinkError, match="answered 503") as caught:
            await sink.deliver([first, second])
    finally:
        await sink.close()
        await runner.cleanup()
    assert caught.value.taken == {first["id"]}
