"""Compression (SPEC section 17, issue 17): what a coded hit costs, and what it saves.

    python -m bench.compression [--rounds N] [--duration S] [--connections C]
                                [--baseline-src DIR]

Starts the benchmark's HTTP origin and keyfront (sqlite store, every check on, the
default `compression:` section), pinned as `make bench` pins them, then:

1. bandwidth: each sample SVG of config/samples/ and a 10 KB SVG chart, fetched through
   keyfront's cached route in each coding (after the representation is made), against
   its identity size; and what each coding would make of the samples were they above
   `compression.min_size` (they are 176-308 bytes: sent as they are);
2. hits, interleaved rounds of bounded wrk runs (A B C ... each round): the 10 KB SVG
   with `Accept-Encoding: br` (the coded representation) and without (the identity),
   and a 10 KB object of a type never coded (application/octet-stream). With
   `--baseline-src` (a checkout of keyfront before compression, e.g. made with `git
   worktree add`), the same identity hits on that keyfront too, started alongside from
   the same virtualenv: the hot path's cost of negotiation and Vary.

`make bench` runs it after its own tables when given `--compression` (bench/run.py).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from proxy.codings import CODINGS, encode

from .load import Sample, finish_wrk, start_wrk, wrk_argv
from .servers import REFERER, Server, keyfront_config, start_keyfront, start_origin
from .system import BenchError, Cores, Processes, core_busy_seconds, cpu_times, cpu_used

SAMPLES = Path(__file__).resolve().parent.parent / "config" / "samples"
CHART = "chart-10k.svg"
OPAQUE = "opaque-10k.bin"


def chart(size: int = 10_000, seed: int = 17) -> bytes:
    """A bar chart of about `size` bytes: the text a charting library writes."""
    rng = random.Random(seed)
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="1200" height="600">\n']
    while sum(map(len, parts)) < size:
        x, h = rng.randrange(1200), rng.randrange(600)
        parts.append(f'<rect x="{x}" y="{600 - h}" width="2" height="{h}" class="bar"/>\n')
    parts.append("</svg>\n")
    return "".join(parts).encode()


def samples() -> dict[str, bytes]:
    found = {str(p.relative_to(SAMPLES)): p.read_bytes() for p in sorted(SAMPLES.rglob("*.svg"))}
    return {name.replace("/", "-"): body for name, body in found.items()}


@dataclass(frozen=True)
class Variant:
    label: str
    server: Server
    url: str
    accept: str | None  # Accept-Encoding sent, if any


def fetch(url: str, accept: str | None) -> tuple[dict[str, str], bytes]:
    headers = {"Referer": REFERER}
    if accept:
        headers["Accept-Encoding"] = accept
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
        return dict(r.headers), r.read()


def coded_size(url: str, coding: str) -> int:
    """The bytes keyfront sends for `url` in `coding`, once it has made them."""
    deadline = time.monotonic() + 10
    while True:
        headers, body = fetch(url, coding)
        if headers.get("Content-Encoding") == coding or time.monotonic() > deadline:
            return len(body)
        time.sleep(0.05)


def bandwidth_table(base: str, key: str, objects: dict[str, bytes]) -> str:
    rows = ["| object | identity | " + " | ".join(CODINGS) + " | saved with br |"]
    rows.append("|---|---:|" + "---:|" * len(CODINGS) + "---:|")
    total_identity = total_br = 0
    for name, body in objects.items():
        url = f"{base}/request/{name}?key={key}"
        sizes = {coding: coded_size(url, coding) for coding in CODINGS}
        total_identity += len(body)
        total_br += sizes["br"]
        cells = " | ".join(f"{sizes[c]:,}" for c in CODINGS)
        saved = 1 - sizes["br"] / len(body)
        rows.append(f"| {name} | {len(body):,} | {cells} | {saved:.0%} |")
    rows.append(f"| all | {total_identity:,} | | | | {1 - total_br / total_identity:.0%} |")
    return "\n".join(rows)


def would_be_table(objects: dict[str, bytes]) -> str:
    """What each coding makes of the bodies, were they above min_size."""
    rows = ["| sample | identity | " + " | ".join(CODINGS) + " |"]
    rows.append("|---|---:|" + "---:|" * len(CODINGS))
    for name, body in objects.items():
        cells = " | ".join(f"{len(encode(body, c)):,}" for c in CODINGS)
        rows.append(f"| {name} | {len(body):,} | {cells} |")
    return "\n".join(rows)


def run_variant(cores: Cores, variant: Variant, connections: int, duration: float) -> Sample:
    argv = wrk_argv(variant.url, connections, duration)
    if variant.accept:
        argv[-1:-1] = ["-H", f"Accept-Encoding: {variant.accept}"]
    pids = variant.server.pids()
    before, core_before = cpu_times(pids), core_busy_seconds(cores.server)
    result = finish_wrk(start_wrk(cores, argv), duration + 15)
    core = core_busy_seconds(cores.server) - core_before
    return Sample(result, cpu_used(before, cpu_times(pids)), core_seconds=core)


def hits_table(
    cores: Cores, variants: Sequence[Variant], rounds: int, connections: int, duration: float
) -> str:
    samples_by: dict[str, list[Sample]] = {v.label: [] for v in variants}
    order = list(variants)
    for round_ in range(rounds):
        for variant in order:
            sample = run_variant(cores, variant, connections, duration)
            if sample.wrk.non_2xx or sample.wrk.socket_errors:
                raise BenchError(f"{variant.label}: errors in round {round_ + 1}")
            samples_by[variant.label].append(sample)
        order = order[1:] + order[:1]  # rotate: no variant always first
    first = variants[0].label
    rows = [
        f"| 10 KB hit, c{connections}, median of {rounds} | req/s | CPU µs/req | p99 ms "
        f"| req/s vs {first} (same-round median) |",
        "|---|---:|---:|---:|---:|",
    ]
    for variant in variants:
        runs = samples_by[variant.label]
        ratio = statistics.median(
            s.wrk.rps / a.wrk.rps for s, a in zip(runs, samples_by[first], strict=True)
        )
        rows.append(
            f"| {variant.label} | {statistics.median(s.wrk.rps for s in runs):,.0f} "
            f"| {statistics.median(s.cpu_us_per_request for s in runs):.1f} "
            f"| {statistics.median(s.wrk.p99_ms for s in runs):.2f} | {ratio:.3f} |"
        )
    return "\n".join(rows)


def start_baseline(
    procs: Processes, cores: Cores, root: Path, *, origin: str, objects: Path, source: Path
) -> tuple[Server, str]:
    """keyfront from another checkout's sources (`source`), on this virtualenv."""
    folder = root / "baseline"
    config = keyfront_config(folder, f"sqlite://{folder}/kf.db", origin, objects, {})
    # The CLI calls and the server alike import `source`'s proxy package: first on the
    # path, and run with -P (servers._interpreter does so for an interpreter named
    # otherwise than this one), so that the working folder's does not come first.
    python = str(Path(sys.executable).with_name("python3"))
    os.environ["PYTHONPATH"] = str(source)
    try:
        started = start_keyfront(procs, cores, "keyfront-baseline", folder, config, python=python)
    finally:
        del os.environ["PYTHONPATH"]
    return started.server, started.key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.compression", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--baseline-src", type=Path, help="keyfront before compression")
    parser.add_argument("--client-core", type=int, default=0)
    parser.add_argument("--server-core", type=int, default=1)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="keyfront-compression-"))
    procs = Processes(root)
    try:
        cores = Cores.pick(args.client_core, args.server_core)
        text = measure(
            procs, cores, root, args.rounds, args.duration,
            connections=args.connections, baseline_src=args.baseline_src,
        )  # fmt: skip
        print(text)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    return 0


def measure(
    procs: Processes,
    cores: Cores,
    root: Path,
    rounds: int,
    duration: float,
    *,
    connections: int = 8,
    baseline_src: Path | None = None,
) -> str:
    """Both tables, as Markdown; servers started under `root` with `procs`."""
    objects = root / "objects"
    objects.mkdir(parents=True)
    bodies = {**samples(), CHART: chart()}
    for name, body in {**bodies, OPAQUE: os.urandom(10 * 1024)}.items():
        (objects / name).write_bytes(body)
    origin = start_origin(procs, cores, objects)
    folder = root / "keyfront"
    config = keyfront_config(folder, f"sqlite://{folder}/kf.db", origin, objects, {})
    kf = start_keyfront(procs, cores, "keyfront", folder, config)
    key = kf.key
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    base = kf.server.base
    text = ["## Compression (SPEC section 17)", ""]
    text += ["Bytes sent through keyfront's cached route, default `compression:`:", ""]
    text += [bandwidth_table(base, key, bodies), ""]
    text += ["The samples are under `min_size` (1 KiB), so keyfront sends them as they are;"]
    text += ["what each coding would make of them:", "", would_be_table(samples()), ""]
    url = f"{base}/request/{{}}?key={key}"
    fetch(url.format(OPAQUE), None)  # cached
    coded_size(url.format(CHART), "br")  # made
    variants = [
        Variant("SVG, identity (no Accept-Encoding)", kf.server, url.format(CHART), None),
        Variant("SVG, br (coded representation)", kf.server, url.format(CHART), "br"),
        Variant("octet-stream, never coded", kf.server, url.format(OPAQUE), None),
    ]
    if baseline_src:
        old, old_key = start_baseline(
            procs, cores, root, origin=origin, objects=objects, source=baseline_src
        )
        old_url = f"{old.base}/request/{{}}?key={old_key}"
        fetch(old_url.format(OPAQUE), None)
        fetch(old_url.format(CHART), None)
        variants += [
            Variant("before compression: SVG", old, old_url.format(CHART), None),
            Variant("before compression: octet-stream", old, old_url.format(OPAQUE), None),
        ]
    table = hits_table(cores, variants, rounds, connections, duration)
    text += [table]
    return "\n".join(text)


if __name__ == "__main__":
    sys.exit(main())
