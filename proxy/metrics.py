"""Prometheus metrics (SPEC section 10), cheap on the request path.

prometheus-client's multiprocess mode writes an mmap'ed file on every `inc()` (1.7 µs
each) and a histogram observation costs 1.8-3.5 µs (NOTES.md): five of them would be
a quarter of a cache hit's budget. Here a request updates plain dicts (well under a
microsecond), and prometheus-client only formats them when /metrics is scraped.

Workers of one host: each writes its counters to `<dir>/<pid>.json` every second and
at exit; the worker that answers a scrape sums every file with its own live counters
(the directory is wiped by the supervisor at start). Host gauges (the shared cache
folder's size and object count) are read by every worker alike: the largest is kept,
not the sum. Labels are bounded: routes and
codes come from config and the SPEC, customers only for the `metrics.customer_labels`
busiest (others are summed as `other`), never a key id.
"""

from __future__ import annotations

import bisect
import contextlib
import glob
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from .periodic import Periodic

PUBLISH_INTERVAL = 1.0  # seconds: how stale another worker's counts in /metrics may be
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
Snapshot = dict[str, dict[str, Any]]


class Metrics(Collector):
    def __init__(self, directory: str | None = None, customer_labels: int = 50) -> None:
        self._dir = directory
        self._top = customer_labels
        # Each counter: {label values joined by "\0": value}. Live in this process.
        self.counters: dict[str, dict[str, float]] = {
            name: {}
            for name in (
                "requests",
                "response_bytes",
                "denied",
                "customer_requests",
                "customer_bytes",
                "key_cache",
                "key_lookups",
                "store_errors",
                "cache_evictions",
                "cache_coalesced",
                "cache_write_errors",
                "client_connections_refused",
                "client_send_timeouts",
                "client_heads_too_large",
                "origin_requests",
                "origin_bytes",
            )
        }
        # Histograms by route: bucket counts, then +Inf, sum and count.
        self.durations: dict[str, list[float]] = {}  # answering a request
        self.origin_durations: dict[str, list[float]] = {}  # an origin's answer (headers)
        self.gauges: dict[str, float] = {}  # per process: summed across workers
        self.host_gauges: dict[str, float] = {}  # the host's (the cache folder): not summed
        # Called before each publish and scrape to copy in what other parts count
        # themselves (record cache hits, usage rows pending, cache size).
        self.sources: list[Callable[[Metrics], None]] = []
        self._publisher = Periodic("metrics publish", PUBLISH_INTERVAL, self.publish)

    # --- the request path: dict updates only ---

    def count(self, name: str, labels: str, value: float = 1) -> None:
        series = self.counters[name]
        series[labels] = series.get(labels, 0) + value

    def request(self, route: str, status: int, cache: str, sent: int, seconds: float) -> None:
        self.count("requests", f"{route}\0{status}\0{cache}")
        self.count("response_bytes", route, sent)
        _observe(self.durations, route, seconds)

    def origin(self, route: str, status: str, seconds: float) -> None:
        """One origin fetch answered (`status`: its HTTP status, or `error`/`timeout`)."""
        self.count("origin_requests", f"{route}\0{status}")
        _observe(self.origin_durations, route, seconds)

    # --- sharing between workers ---

    def start(self) -> None:
        if self._dir is not None:
            self._publisher.start()

    async def close(self) -> None:
        await self._publisher.stop()  # and a last publish

    def publish(self) -> None:
        if self._dir is None:
            return
        path = os.path.join(self._dir, f"{os.getpid()}.json")
        with contextlib.suppress(OSError):
            with open(path + ".tmp", "w") as f:
                json.dump(self._snapshot(), f)
            os.replace(path + ".tmp", path)

    def _snapshot(self) -> Snapshot:
        for source in self.sources:
            source(self)
        return {
            "counters": self.counters,
            "durations": self.durations,
            "origin_durations": self.origin_durations,
            "gauges": self.gauges,
            "host_gauges": self.host_gauges,
        }

    def _merged(self) -> Snapshot:
        merged: Snapshot = json.loads(json.dumps(self._snapshot()))
        if self._dir is None:
            return merged
        mine = os.path.join(self._dir, f"{os.getpid()}.json")
        for path in glob.glob(os.path.join(self._dir, "*.json")):
            if path != mine:
                with contextlib.suppress(OSError, ValueError), open(path) as f:
                    _add(merged, json.load(f))
        return merged

    # --- scrape ---

    def collect(self) -> Iterator[Any]:
        snap = self._merged()
        c = snap["counters"]
        yield _counter(
            "requests", "Requests answered.", ["route", "status", "cache"], c["requests"]
        )
        yield _histogram("request_duration_seconds", "Time to answer, by route.", snap["durations"])
        yield _histogram(
            "origin_duration_seconds",
            "Time to an origin's answer (its headers), by route.",
            snap["origin_durations"],
        )
        yield _counter("response_bytes", "Body bytes sent.", ["route"], c["response_bytes"])
        yield _counter("denied", "Requests refused, by SPEC code.", ["code"], c["denied"])
        yield _counter(
            "origin_requests", "Origin fetches.", ["route", "status"], c["origin_requests"]
        )
        yield _counter("origin_bytes", "Body bytes from origins.", ["route"], c["origin_bytes"])
        yield _counter("key_cache", "Record cache look-ups.", ["result"], c["key_cache"])
        yield _counter(
            "key_lookups", "External keys: key API answers and cache hits.", ["result"],
            c.get("key_lookups", {}),
        )  # fmt: skip
        yield _counter("store_errors", "Store failures.", ["op"], c["store_errors"])
        for name, doc in (
            ("cache_evictions", "Objects evicted."),
            ("cache_coalesced", "Misses served by another request's fetch."),
            ("cache_write_errors", "Cache writes that failed."),
            ("client_connections_refused", "Client connections closed at once: max_connections."),
            ("client_send_timeouts", "Clients reset for taking none of a response for send."),
            ("client_heads_too_large", "Connections closed: a request head over 64 KiB."),
        ):
            yield _counter(name, doc, [], c[name])
        for name, doc in (
            ("customer_requests", "Requests served, top customers."),
            ("customer_bytes", "Bytes sent, top customers."),
        ):
            yield _counter(
                name, doc, ["customer"], _top(c[name], c["customer_requests"], self._top)
            )
        for name, value in sorted({**snap["gauges"], **snap["host_gauges"]}.items()):
            gauge = GaugeMetricFamily(f"keyfront_{name}", name.replace("_", " "))
            gauge.add_metric([], value)
            yield gauge


def _add(into: Snapshot, other: Snapshot) -> None:
    for name, series in other.get("counters", {}).items():
        target = into["counters"].setdefault(name, {})
        for labels, value in series.items():
            target[labels] = target.get(labels, 0) + value
    for name, value in other.get("gauges", {}).items():  # per-process gauges: summed
        into["gauges"][name] = into["gauges"].get(name, 0) + value
    # The host's gauges (the cache folder) are read live by the answering worker; another
    # worker's copy is up to a second old, or frozen forever if that worker died, so it
    # only stands in for a gauge the answering worker does not have.
    for name, value in other.get("host_gauges", {}).items():
        into["host_gauges"].setdefault(name, value)
    for kind in ("durations", "origin_durations"):
        for route, hist in other.get(kind, {}).items():
            mine = into[kind].setdefault(route, [0.0] * len(hist))
            into[kind][route] = [a + b for a, b in zip(mine, hist, strict=True)]


def _counter(
    name: str, doc: str, labels: list[str], series: dict[str, float]
) -> CounterMetricFamily:
    family = CounterMetricFamily(f"keyfront_{name}", doc, labels=labels)
    for joined, value in sorted(series.items()):
        family.add_metric(joined.split("\0") if labels else [], value)
    if not labels and not series:
        family.add_metric([], 0)
    return family


def _observe(histograms: dict[str, list[float]], route: str, seconds: float) -> None:
    hist = histograms.get(route)
    if hist is None:
        hist = histograms[route] = [0.0] * (len(DURATION_BUCKETS) + 3)  # +Inf, sum, count
    hist[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
    hist[-2] += seconds
    hist[-1] += 1


def _histogram(name: str, doc: str, durations: dict[str, list[float]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(f"keyfront_{name}", doc, labels=["route"])
    for route, hist in sorted(durations.items()):
        cumulative, buckets = 0.0, []
        for bound, count in zip([*map(str, DURATION_BUCKETS), "+Inf"], hist[:-2], strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        family.add_metric([route], buckets, hist[-2])
    return family


def _top(series: dict[str, float], by: dict[str, float], n: int) -> dict[str, float]:
    """The `n` busiest customers by requests get their own label; the rest `other`."""
    keep = set(sorted(by, key=lambda k: by[k], reverse=True)[:n])
    out: dict[str, float] = {}
    for customer, value in series.items():
        label = customer if customer in keep else "other"
        out[label] = out.get(label, 0) + value
    return out
