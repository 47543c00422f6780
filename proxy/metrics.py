"""Prometheus metrics (SPEC section 10), cheap on the request path.

prometheus-client's multiprocess mode writes an mmap'ed file on every `inc()` (1.7 µs
each) and a histogram observation costs 1.8-3.5 µs (docs/dependencies.md): five of them
would be a quarter of a cache hit's budget. Here a request updates plain dicts (well under a
microsecond), and prometheus-client only formats them when /metrics is scraped.

Workers of one host: each writes its counters to `<dir>/<pid>.json` every second and
at exit; the worker that answers a scrape sums every file with its own live counters
(the directory is wiped by the supervisor at start). Host gauges (the shared cache
folder's size and object count) are read by every worker alike: the largest is kept,
not the sum. Labels are bounded: routes and
codes come from config and the SPEC, customers only for the `metrics.customer_labels`
busiest (others are summed as `other`), never a key id.

Counters never decrease, or `rate()` reads a reset (issue 15: `other` fell from 400,000
to 873 when a customer moved into the top N). So a customer, once given a label of its
own, keeps it for the life of the workers (`CustomerLabels`, shared through the same
directory), and its series counts from that moment: what it did before stays in
`other`. The busiest customers by requests take the free labels; none is taken back.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import glob
import json
import os
import platform
from collections.abc import Callable, Iterator
from importlib.metadata import version
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from .periodic import Periodic

PUBLISH_INTERVAL = 1.0  # seconds: how stale another worker's counts in /metrics may be
# Up to a minute: a large download over a slow link is a request too (issue 15).
DURATION_BUCKETS = (
    *(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    *(5.0, 10.0, 30.0, 60.0),
)
Snapshot = dict[str, dict[str, Any]]

# Gauges by the name parts of keyfront set them under: exported name (units in it) and
# what it measures. Per-process gauges are summed over the workers; host gauges are not.
LABELLED_GAUGES = {
    "export_pending": (
        "export_pending",
        "sink",
        "Usage events waiting in each sink's outbox, as the store holds them.",
    ),
    "tls_certificate_expiry_timestamp_seconds": (
        "tls_certificate_expiry_timestamp_seconds",
        "name",
        "notAfter of each certificate the public listener serves, by its first DNS name.",
    ),
}
GAUGES = {
    "client_connections": (
        "client_connections",
        "Public client connections open now, all workers.",
    ),
    "usage_pending": (
        "usage_pending_rows",
        "Usage rows counted but not yet written to the store, all workers.",
    ),
    "store_degraded": (
        "store_degraded",
        "Workers whose store circuit breaker is open (limits checked in process); 0: healthy.",
    ),
    "requests_in_flight": (
        "requests_in_flight",
        "Requests being answered now, all workers.",
    ),
    "cache_size_bytes": (
        "cache_size_bytes",
        "Disk cache size in allocated filesystem blocks, as du counts them.",
    ),
    "cache_objects": ("cache_objects", "Objects in the disk cache, cached 404s included."),
    "imported_keys": ("imported_keys", "External keys imported into this host's key set."),
}
# Gauges exported under a name with its unit (issue 15) and under SPEC section 10's
# name as well, which dashboards and alerts written to the SPEC read.
SPEC_NAMES = frozenset({"usage_pending"})
# process_* of every worker: counters and sizes summed, the start time the earliest.
PROCESS = {
    "process_cpu_seconds_total": "Worker CPU time (user and system), all workers, seconds.",
    "process_resident_memory_bytes": "Resident memory of all workers, bytes.",
    "process_virtual_memory_bytes": "Virtual memory of all workers, bytes.",
    "process_open_fds": "Open file descriptors of all workers.",
    "process_start_time_seconds": "Start time of the oldest worker, seconds since the epoch.",
}
BUILD = {
    "version": version("keyfront"),
    "python": platform.python_version(),
    "aiohttp": version("aiohttp"),
}


class Metrics(Collector):
    def __init__(self, directory: str | None = None, customer_labels: int = 50) -> None:
        self._dir = directory
        # Each counter: {label values joined by "\0": value}. Live in this process.
        self.counters: dict[str, dict[str, float]] = {
            name: {}
            for name in (
                "requests",
                "response_bytes",
                "denied",
                "internal_errors",
                "customer_requests",
                "customer_bytes",
                "key_cache",
                "key_lookups",
                "store_errors",
                "usage_dropped_requests",
                "usage_spool_refused",
                "cache_evictions",
                "cache_coalesced",
                "cache_write_errors",
                "compression_bytes",
                "client_connections_refused",
                "client_send_timeouts",
                "client_heads_too_large",
                "origin_requests",
                "origin_bytes",
                "export_delivered",
                "export_errors",
                "alerts",
            )
        }
        # Histograms by route: bucket counts, then +Inf, sum and count.
        self.durations: dict[str, list[float]] = {}  # answering a request
        self.origin_durations: dict[str, list[float]] = {}  # an origin's answer (headers)
        self.gauges: dict[str, float] = {}  # per process: summed across workers
        self.host_gauges: dict[str, float] = {}  # the host's (the cache folder): not summed
        # host gauges with one label: name -> (label name, {label value: value})
        self.labelled_host_gauges: dict[str, tuple[str, dict[str, float]]] = {}
        # Called before each publish and scrape to copy in what other parts count
        # themselves (record cache hits, usage rows pending, cache size).
        self.sources: list[Callable[[Metrics], None]] = []
        self.in_flight = 0  # public requests being answered (the pipeline counts them)
        self._publisher = Periodic("metrics publish", PUBLISH_INTERVAL, self.publish)
        self._labels = CustomerLabels(directory, customer_labels)
        self._process = ProcessCollector(registry=None)

    # --- the request path: dict updates only ---

    def count(self, name: str, labels: str, value: float = 1) -> None:
        series = self.counters[name]
        series[labels] = series.get(labels, 0) + value

    def request(self, route: str, status: int, cache: str, sent: int, seconds: float) -> None:
        self.count("requests", f"{route}\0{status}\0{cache}")
        self.count("response_bytes", route, sent)
        _observe(self.durations, f"{route}\0{cache}", seconds)

    def origin(self, route: str, status: str, seconds: float) -> None:
        """One origin fetch answered (`status`: its HTTP status, or `error`/`timeout`)."""
        self.count("origin_requests", f"{route}\0{status}")
        _observe(self.origin_durations, route, seconds)

    def _process_samples(self) -> dict[str, float]:
        """This process's process_* values, published with its counters."""
        return {
            sample.name: sample.value
            for family in self._process.collect()
            for sample in family.samples
            if sample.name in PROCESS
        }

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
        self.gauges["requests_in_flight"] = self.in_flight
        for source in self.sources:
            source(self)
        return {
            "counters": self.counters,
            "durations": self.durations,
            "origin_durations": self.origin_durations,
            "gauges": self.gauges,
            "host_gauges": self.host_gauges,
            "labelled_host_gauges": self.labelled_host_gauges,
            "process": self._process_samples(),
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
        info = GaugeMetricFamily(
            "keyfront_build_info", "keyfront's version and what it runs on.", labels=list(BUILD)
        )
        info.add_metric(list(BUILD.values()), 1)
        yield info
        yield _counter(
            "requests", "Requests answered.", ["route", "status", "cache"], c["requests"]
        )
        yield _histogram(
            "request_duration_seconds",
            "Time to answer a request, by route and cache outcome (X-Cache).",
            ["route", "cache"],
            snap["durations"],
        )
        yield _histogram(
            "origin_duration_seconds",
            "Time to an origin's answer (its headers), by route.",
            ["route"],
            snap["origin_durations"],
        )
        yield _counter("response_bytes", "Body bytes sent.", ["route"], c["response_bytes"])
        yield _counter("denied", "Requests refused, by SPEC code.", ["code"], c["denied"])
        yield _counter(
            "internal_errors", "Unexpected failures answered 500 internal_error, by listener.",
            ["listener"], c["internal_errors"],
        )  # fmt: skip
        yield _counter(
            "origin_requests", "Origin fetches.", ["route", "status"], c["origin_requests"]
        )
        yield _counter("origin_bytes", "Body bytes from origins.", ["route"], c["origin_bytes"])
        yield _counter(
            "compression_bytes",
            "Bytes of compressed responses (SPEC section 17): the identity bytes they stand "
            "for (stage original) and the bytes sent (stage sent), by coding.",
            ["encoding", "stage"], c.get("compression_bytes", {}),
        )  # fmt: skip
        yield _counter("key_cache", "Record cache look-ups.", ["result"], c["key_cache"])
        yield _counter(
            "key_lookups", "External keys: key API answers and cache hits.", ["result"],
            c.get("key_lookups", {}),
        )  # fmt: skip
        yield _counter("store_errors", "Store failures.", ["op"], c["store_errors"])
        for name, doc in (
            ("usage_dropped_requests", "Requests not metered: the usage buffer was full."),
            ("usage_spool_refused", "Usage spool files of dead processes refused unread."),
            ("cache_evictions", "Objects evicted."),
            ("cache_coalesced", "Misses served by another request's fetch."),
            ("cache_write_errors", "Cache writes that failed."),
            ("client_connections_refused", "Client connections closed at once: max_connections."),
            ("client_send_timeouts", "Clients reset for taking none of a response for send."),
            ("client_heads_too_large", "Connections closed: a request head over 64 KiB."),
        ):
            yield _counter(name, doc, [], c[name])
        for name, doc in (
            ("export_delivered", "Usage events a sink took (2xx), by sink."),
            ("export_errors", "Usage deliveries that failed and wait to be retried, by sink."),
        ):
            yield _counter(name, doc, ["sink"], c[name])
        yield _counter("alerts", "Quota alerts raised, by threshold.", ["threshold"], c["alerts"])
        requests, sent = self._labels.series(c["customer_requests"], c["customer_bytes"])
        yield _counter(
            "customer_requests", "Requests served, top customers.", ["customer"], requests
        )
        yield _counter("customer_bytes", "Body bytes sent, top customers.", ["customer"], sent)
        for name, value in sorted({**snap["gauges"], **snap["host_gauges"]}.items()):
            exported, doc = GAUGES.get(name, (name, name.replace("_", " ") + "."))
            gauge = GaugeMetricFamily(f"keyfront_{exported}", doc)
            gauge.add_metric([], value)
            yield gauge
            if name in SPEC_NAMES:  # SPEC section 10's name too: the contract's
                spec = GaugeMetricFamily(f"keyfront_{name}", f"{doc} (SPEC's name)")
                spec.add_metric([], value)
                yield spec
        labelled = snap.get("labelled_host_gauges", {})
        for name, (exported, label, doc) in LABELLED_GAUGES.items():
            # the family always, its TYPE line without samples when nothing sets it
            # (no `tls:`), so dashboards and alerts find the name
            gauge = GaugeMetricFamily(f"keyfront_{exported}", doc, labels=[label])
            for value_of_label, value in sorted(labelled.get(name, ("", {}))[1].items()):
                gauge.add_metric([value_of_label], value)
            yield gauge
        for name, value in sorted(snap.get("process", {}).items()):
            kind = CounterMetricFamily if name.endswith("_total") else GaugeMetricFamily
            family = kind(name.removesuffix("_total"), PROCESS[name])
            family.add_metric([], value)
            yield family


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
    for name, value in other.get("labelled_host_gauges", {}).items():
        into.setdefault("labelled_host_gauges", {}).setdefault(name, value)
    for kind in ("durations", "origin_durations"):
        for route, hist in other.get(kind, {}).items():
            mine = into[kind].setdefault(route, [0.0] * len(hist))
            if len(mine) == len(hist):  # (a file from an older release: other buckets)
                into[kind][route] = [a + b for a, b in zip(mine, hist, strict=True)]
    process = into.setdefault("process", {})
    for name, value in other.get("process", {}).items():
        if name == "process_start_time_seconds":
            process[name] = min(process.get(name, value), value)
        else:
            process[name] = process.get(name, 0) + value


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


def _histogram(
    name: str, doc: str, labels: list[str], durations: dict[str, list[float]]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(f"keyfront_{name}", doc, labels=labels)
    for joined, hist in sorted(durations.items()):
        values = joined.split("\0")
        if len(values) != len(labels) or len(hist) != len(DURATION_BUCKETS) + 3:
            continue  # a file from an older release
        cumulative, buckets = 0.0, []
        for bound, count in zip([*map(str, DURATION_BUCKETS), "+Inf"], hist[:-2], strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        family.add_metric(values, buckets, hist[-2])
    return family


class CustomerLabels:
    """Which customers have a label of their own, and what each had already shown inside
    `other` when it got it: its series counts on from there and `other` keeps that part,
    so neither ever falls and the series still add up to every request. A customer
    labelled before any scrape showed it in `other` counts from zero. Shared by the
    workers through `<dir>/customer-labels.state`, updated under a lock by whichever
    worker answers a scrape; at most `limit` labels, none ever taken back while the
    workers live (the supervisor wipes the directory at start, with the counters)."""

    def __init__(self, directory: str | None, limit: int) -> None:
        # (not *.json: those are the workers' snapshots)
        self._path = None if directory is None else os.path.join(directory, "customer-labels")
        self._limit = limit
        self._state: dict[str, dict[str, list[float]]] = {"labels": {}, "shown": {}}

    def series(
        self, requests: dict[str, float], sent: dict[str, float]
    ) -> tuple[dict[str, float], dict[str, float]]:
        """The customer_requests and customer_bytes series, from the merged raw counts
        per customer id."""
        with self._locked():
            self._load()
            labels, shown = self._state["labels"], self._state["shown"]
            room = self._limit - len(labels)
            if room > 0:
                busiest = sorted(requests, key=lambda k: (-requests[k], k))
                for customer in [c for c in busiest if c not in labels][:room]:
                    labels[customer] = shown.pop(customer, [0, 0])
            out_requests: dict[str, float] = {"other": 0}
            out_sent: dict[str, float] = {"other": 0}
            for customer in requests.keys() | sent.keys():
                counts = [requests.get(customer, 0), sent.get(customer, 0)]
                base = labels.get(customer)
                if base is None:
                    shown[customer] = counts
                    out_requests["other"] += counts[0]
                    out_sent["other"] += counts[1]
                else:
                    out_requests[customer] = counts[0] - base[0]
                    out_sent[customer] = counts[1] - base[1]
                    out_requests["other"] += base[0]
                    out_sent["other"] += base[1]
            self._save()
        return out_requests, out_sent

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._path is None:
            yield
            return
        try:
            lock = open(self._path + ".lock", "a")  # noqa: SIM115 (held across the yield)
        except OSError:
            yield
            return
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _load(self) -> None:
        if self._path is None:
            return
        with contextlib.suppress(OSError, ValueError), open(self._path + ".state") as f:
            stored = json.load(f)
            self._state = {"labels": dict(stored["labels"]), "shown": dict(stored["shown"])}

    def _save(self) -> None:
        if self._path is None:
            return
        with contextlib.suppress(OSError):
            with open(self._path + ".tmp", "w") as f:
                json.dump(self._state, f)
            os.replace(self._path + ".tmp", self._path + ".state")
