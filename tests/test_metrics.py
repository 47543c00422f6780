"""/metrics (SPEC section 10): the SPEC names, parseable, bounded labels, merged workers."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sqlite3
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from proxy.keys import KeySigner, new_key_id
from proxy.metrics import Metrics
from proxy.records import Customer, KeyRecord
from proxy.store import store_from_url

from conftest import SECRET, HttpOriginServer, start_keyfront

# SPEC section 10, as prometheus_client's parser names the families (no _total).
SPEC_NAMES = {
    "keyfront_requests",
    "keyfront_request_duration_seconds",
    "keyfront_response_bytes",
    "keyfront_denied",
    "keyfront_origin_requests",
    "keyfront_origin_duration_seconds",
    "keyfront_origin_bytes",
    "keyfront_cache_size_bytes",
    "keyfront_cache_objects",
    "keyfront_cache_evictions",
    "keyfront_cache_coalesced",
    "keyfront_cache_write_errors",
    "keyfront_key_cache",
    "keyfront_store_errors",
    "keyfront_usage_pending",
    "keyfront_usage_pending_rows",  # the same, with its unit (issue 15)
    "keyfront_customer_requests",
    "keyfront_customer_bytes",
    "keyfront_compression_bytes",  # SPEC section 17
    # SPEC section 16: the usage export, by sink
    "keyfront_export_pending",
    "keyfront_export_delivered",
    "keyfront_export_errors",
}


Families = dict[str, list[tuple[dict[str, str], float]]]


def scrape(url: str) -> Families:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        family.name: [(sample.labels, sample.value) for sample in family.samples]
        for family in text_string_to_metric_families(text)
    }


def scrape_when(url: str, ready: Callable[[Families], bool], within: float = 10.0) -> Families:
    """The first scrape that shows `ready`: workers publish their counters every second
    (PUBLISH_INTERVAL), so a fixed wait of 1.5 s was mostly idle; a deadline instead.
    Not where customers are counted: each scrape gives the busiest customers seen so
    far their labels (proxy/metrics.py), so scraping early changes which get one."""
    deadline = time.monotonic() + within
    while True:
        families = scrape(url)
        if ready(families):
            return families
        assert time.monotonic() < deadline, f"not published within {within} s: {families}"
        time.sleep(0.1)


def total(families: Families, name: str) -> float:
    """The sum of a counter family's samples."""
    return sum(value for _, value in families.get(name, []))


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_metrics_count_requests_across_workers_without_key_ids(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.txt").write_bytes(b"a" * 10)
    body = f"""
store: sqlite://{tmp_path}/kf.db
keys: {{secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}, defaults: {{rate: null, burst: null}}}}
routes: [{{prefix: /f/, origin: "file://{tmp_path}/files/"}}]
metrics: {{customer_labels: 2}}
access_log: "off"
"""
    kf = start_keyfront(body, str(tmp_path), "--workers", "2")
    try:
        keys = []
        for customer in ("c1", "c2", "c3"):
            kf.given("customers", "create", customer)
            created = kf.given("keys", "create", "--customer", customer, "--json")
            keys.append(json.loads(created)["key"])
        for i, key in enumerate(keys):
            for _ in range(3 - i):  # c1 busiest, c3 least
                assert get(f"{kf.url}/f/a.txt?key={key}") == 200
        assert get(f"{kf.url}/f/a.txt") == 401
        time.sleep(1.5)  # workers publish their counters every second
        families = scrape(kf.admin_url)  # once: a scrape gives customers their labels
        assert set(families) >= SPEC_NAMES
        served = sum(
            v for labels, v in families["keyfront_requests"] if labels.get("status") == "200"
        )
        assert served == 6  # summed over both workers, whichever answered the scrape
        denied = dict((labels["code"], v) for labels, v in families["keyfront_denied"])
        assert denied["key_missing"] == 1
        customers = {labels["customer"]: v for labels, v in families["keyfront_customer_requests"]}
        assert customers == {"c1": 3, "c2": 2, "other": 1}
        text = json.dumps(families)
        assert all(key.split("_")[2] not in text for key in keys)  # never a key id
    finally:
        assert kf.stop() == 0


def test_customer_counters_never_fall_when_the_top_customers_change(tmp_path: Path) -> None:
    """Issue 15: ranked by requests, a customer with few requests and many bytes sat in
    `other`; when it moved into the top N, `other` fell (400,000 to 873), which rate()
    reads as a counter reset. Labels given are kept, and every series only grows."""
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "small").write_bytes(b"s" * 10)
    (tmp_path / "files" / "large").write_bytes(b"L" * 100_000)
    body = f"""
store: sqlite://{tmp_path}/kf.db
keys: {{secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}, defaults: {{rate: null, burst: null}}}}
routes: [{{prefix: /f/, origin: "file://{tmp_path}/files/"}}]
metrics: {{customer_labels: 1}}
access_log: "off"
"""
    kf = start_keyfront(body, str(tmp_path), "--workers", "2")
    try:
        key = {}
        for customer in ("busy", "big"):
            kf.given("customers", "create", customer)
            created = kf.given("keys", "create", "--customer", customer, "--json")
            key[customer] = json.loads(created)["key"]
        scrapes = []

        def requests(customer: str, name: str, count: int) -> None:
            for _ in range(count):
                assert get(f"{kf.url}/f/{name}?key={key[customer]}") == 200
            time.sleep(1.5)  # workers publish their counters every second
            families = scrape(kf.admin_url)  # once: a scrape gives customers their labels
            scrapes.append(
                {
                    (family, labels["customer"]): value
                    for family in ("keyfront_customer_requests", "keyfront_customer_bytes")
                    for labels, value in families[family]
                }
            )

        requests("busy", "small", 5)  # busy takes the one label
        requests("big", "large", 2)  # big's bytes are in other
        requests("big", "small", 10)  # big is now the busiest: before, other fell
        for before, after in itertools.pairwise(scrapes):
            for series, value in before.items():
                assert after.get(series, 0) >= value, (series, before, after)
        last = scrapes[-1]
        assert last[("keyfront_customer_bytes", "other")] >= 200_000
        assert ("keyfront_customer_requests", "big") not in last  # the one label is busy's
        assert sum(v for (f, _), v in last.items() if f == "keyfront_customer_requests") == 17
    finally:
        assert kf.stop() == 0


def test_the_page_says_what_runs_and_times_by_cache_outcome(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.txt").write_bytes(b"a" * 10)
    body = f"""
store: sqlite://{tmp_path}/kf.db
keys: {{secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}}}
routes: [{{prefix: /f/, origin: "file://{tmp_path}/files/", auth: none}}]
access_log: "off"
"""
    kf = start_keyfront(body, str(tmp_path), "--workers", "2")
    try:
        assert get(f"{kf.url}/f/a.txt") == 200
        families = scrape_when(kf.admin_url, lambda f: total(f, "keyfront_requests") >= 1)
    finally:
        assert kf.stop() == 0
    (info_labels, info), *_ = families["keyfront_build_info"]
    assert info == 1 and set(info_labels) == {"version", "python", "aiohttp"}
    assert families["process_cpu_seconds"][0][1] > 0  # summed over both workers
    assert families["process_resident_memory_bytes"][0][1] > 20_000_000
    timed = {
        (labels["route"], labels["cache"])
        for labels, _ in families["keyfront_request_duration_seconds"]
        if "le" in labels
    }
    assert len(timed) == 1 and next(iter(timed))[0] == "/f/"
    bounds = {labels.get("le") for labels, _ in families["keyfront_request_duration_seconds"]}
    assert "60.0" in bounds


def test_origin_fetches_and_the_cache_folder_are_counted_once_across_workers(
    tmp_path: Path,
) -> None:
    # Two workers share one cache folder: the origin counts come from whichever worker
    # fetched (summed), the folder's size and object count are the host's (not 2x).
    (tmp_path / "origin").mkdir()
    sizes = {"a.bin": 10_000, "b.bin": 200_000}
    for name, size in sizes.items():
        (tmp_path / "origin" / name).write_bytes(b"x" * size)
    origin = HttpOriginServer(str(tmp_path / "origin"))
    origin.start()
    body = f"""
store: sqlite://{tmp_path}/kf.db
keys: {{secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}}}
routes: [{{prefix: /o/, origin: "{origin.url}", auth: none}}]
access_log: "off"
"""
    kf = start_keyfront(body, str(tmp_path), "--workers", "2")
    try:
        # The first worker recounts the folder in the background at start-up; a fill
        # racing that recount can be counted twice (one block) until the next start, a
        # known drift (closing note of issue 12). This test is about counting once per
        # host, so it lets the recount of the empty folder finish first.
        time.sleep(1.0)
        for path in ("a.bin", "a.bin", "b.bin", "b.bin", "missing.bin", "missing.bin"):
            assert get(f"{kf.url}/o/{path}") == (404 if path == "missing.bin" else 200)
        families = scrape_when(kf.admin_url, lambda f: total(f, "keyfront_requests") >= 6)
    finally:
        assert kf.stop() == 0
        origin.stop()
    assert origin.gets == {"a.bin": 1, "b.bin": 1, "missing.bin": 1}
    fetched = {
        labels["status"]: v
        for labels, v in families["keyfront_origin_requests"]
        if labels["route"] == "/o/"
    }
    assert fetched == {"200": 2, "404": 1}
    assert families["keyfront_origin_bytes"] == [({"route": "/o/"}, sum(sizes.values()))]
    observed = dict((labels.get("le"), v) for labels, v in families[
        "keyfront_origin_duration_seconds"] if labels.get("le") == "+Inf")  # fmt: skip
    assert observed == {"+Inf": 3}
    on_disk = [
        p.stat().st_size
        for folder in ("objects", "absent")  # a cached 404 is kept apart (cache/files.py)
        for p in (tmp_path / "cache" / folder).rglob("*")
        if p.is_file()
    ]
    assert len(on_disk) == 3  # a, b and the cached 404
    assert families["keyfront_cache_objects"] == [({}, 3)]
    # The size is what the filesystem allocated to the folder's files (issue 12): whole
    # blocks, the bookkeeping `size` file included.
    allocated = [p.lstat().st_blocks * 512 for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert families["keyfront_cache_size_bytes"] == [({}, sum(allocated))]


def test_metrics_stay_bounded_with_ten_thousand_keys(tmp_path: Path) -> None:
    # 10,000 keys of 200 customers each make a request: /metrics must not grow with
    # them. Only the top `customer_labels` customers get a label; key ids never appear.
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.txt").write_bytes(b"a")
    store_url = f"sqlite://{tmp_path}/kf.db"
    keys = asyncio.run(_provision(store_url, customers=200, keys_each=50))
    body = f"""
store: {store_url}
keys: {{secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}, defaults: {{rate: null, burst: null}}}}
routes: [{{prefix: /f/, origin: "file://{tmp_path}/files/"}}]
metrics: {{customer_labels: 50}}
access_log: "off"
"""
    kf = start_keyfront(body, str(tmp_path))
    try:
        statuses = asyncio.run(_get_each(kf.url, [f"/f/a.txt?key={key}" for key in keys]))
        assert statuses == {200: len(keys)}
        with urllib.request.urlopen(f"{kf.admin_url}/metrics", timeout=10) as response:
            text = response.read().decode()
    finally:
        assert kf.stop() == 0
    families = list(text_string_to_metric_families(text))
    samples = [sample for family in families for sample in family.samples]
    assert len(samples) < 300, f"{len(samples)} series for {len(keys)} keys"
    customers = [s.labels["customer"] for s in samples if s.name.startswith("keyfront_customer_")]
    assert len(set(customers)) == 51  # 50 customers and "other"
    served = sum(s.value for s in samples if s.name == "keyfront_customer_requests_total")
    assert served == len(keys)
    key_ids = {key.split("_")[2] for key in keys}
    assert not any(key_id in text for key_id in key_ids)


async def _provision(store_url: str, customers: int, keys_each: int) -> list[str]:
    """Customers and their keys, written in one transaction (the CLI would take
    minutes for 10,000 keys, and the store API's one commit per record, each an
    fsync, about 12 s); the full keys, minted with the test secret. The store makes
    the file and its schema; the rows are those create_customer and create_key write
    (proxy/store/sqlite.py), less their change rows, which only a running keyfront
    reads, and none runs yet."""
    signer = KeySigner("pk", {1: SECRET})
    store = store_from_url(store_url)
    await store.open()
    await store.close()
    records = [
        KeyRecord(new_key_id(), f"c{c}", created_at=int(time.time()))
        for c in range(customers)
        for _ in range(keys_each)
    ]
    with contextlib.closing(sqlite3.connect(store_url.removeprefix("sqlite://"))) as db, db:
        db.executemany(
            "INSERT INTO customers (customer_id, body) VALUES (?, ?)",
            [(f"c{c}", Customer(f"c{c}").to_json()) for c in range(customers)],
        )
        db.executemany(
            "INSERT INTO keys (key_id, customer_id, created_at, body) VALUES (?, ?, ?, ?)",
            [(r.key_id, r.customer_id, r.created_at, r.to_json()) for r in records],
        )
    return [signer.mint(r.key_id) for r in records]


async def _get_each(base: str, paths: list[str]) -> dict[int, int]:
    """GET every path, 64 at a time; how many got each status."""
    statuses: dict[int, int] = {}
    gate = asyncio.Semaphore(64)
    async with aiohttp.ClientSession(base) as session:

        async def one(path: str) -> None:
            async with gate, session.get(path) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1

        await asyncio.gather(*(one(path) for path in paths))
    return statuses


def test_the_cache_gauges_are_the_answering_workers_live_reading(tmp_path: Path) -> None:
    # A worker that died left its last snapshot behind, cache gauges included; its
    # counters still count (they were served), but its reading of the shared cache
    # folder is stale and must not hide the live one, larger or smaller.
    dead = Metrics(str(tmp_path))
    dead.host_gauges.update(cache_objects=9, cache_size_bytes=90_000)
    dead.count("requests", "/f/\x00200\x00HIT", 4)
    dead.publish()
    (tmp_path / "1.json").write_bytes((tmp_path / f"{os.getpid()}.json").read_bytes())
    (tmp_path / f"{os.getpid()}.json").unlink()

    live = Metrics(str(tmp_path))
    live.sources.append(lambda m: m.host_gauges.update(cache_objects=2, cache_size_bytes=20))
    live.count("requests", "/f/\x00200\x00HIT", 1)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in live.collect()
        for s in family.samples
    }
    assert samples[("keyfront_cache_objects", ())] == 2
    assert samples[("keyfront_cache_size_bytes", ())] == 20
    hits = (("cache", "HIT"), ("route", "/f/"), ("status", "200"))
    assert samples[("keyfront_requests_total", hits)] == 5  # counters still sum
