"""Instructions per keyed 10 KB hit, counted by callgrind: the checks' costs without
the machine's noise (SPEC section 12's "analytics at most 3% more", "checks ≤ 10%").

    python -m bench.run --only checks       (this table comes after the wrk tables)

Why: on the 2-core VM the bench runs on, two identical keyfront instances measured by
interleaved wrk rounds differ by 3-15% in req/s (`--baseline` pointing at the same
checkout: 0.85x-1.03x across runs with other work on the machine), so a 3% cost cannot be
shown by req/s alone. Instructions executed are the same from run to run within
~0.1%, whatever else the machine does: what a feature adds to each request's work.
They are not time (a cache miss costs more than an add), so the report shows both.

How: each variant is started under `valgrind --tool=callgrind` with instrumentation
off, warmed, and counted only while a bounded `wrk -c8` runs (`callgrind_control -i
on/off`): instructions of the whole process (Python, aiohttp, uvloop, the kernel's
side excluded) divided by the requests wrk completed. Usage flushes are left out
(`usage.flush_interval` 1 h): they are paid per interval, not per request, and under
valgrind's ~50x slowdown a 1 s interval would be charged to 50x fewer requests.
"""

from __future__ import annotations

import statistics
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .load import finish_wrk, start_wrk, wrk_argv
from .servers import OBJECTS, REFERER, Keyfront
from .setup import Launcher
from .system import BenchError

DURATION = 8.0  # seconds of wrk under callgrind a window: ~2,000-3,000 hits
ROUNDS = 3  # windows per variant, interleaved; ratios are taken within a round
CONNECTIONS = 8
WARM = 200  # requests before counting: caches filled, code paths taken once
NO_FLUSH = {"usage": {"flush_interval": "1h"}}


@dataclass(frozen=True)
class Count:
    label: str
    requests: int
    instructions: int

    @property
    def per_request(self) -> float:
        return self.instructions / self.requests


VARIANTS: dict[str, dict[str, Any]] = {
    "keyfront": {},
    "analytics off": {"usage": {"analytics": False}},
    # the same keyfront again: how far two identical processes differ (hash seeds, memory
    # layout), the resolution of the comparison
    "keyfront, a second process": {},
}


def measure(launch: Launcher, store: str, folder: Path) -> list[list[Count]]:
    """ROUNDS rounds of one count per variant, each variant a keyfront of its own on
    `store`'s database, started once and counted in interleaved windows."""
    started = []
    for index, (label, extra) in enumerate(VARIANTS.items()):
        name = "callgrind-" + label.replace(" ", "-")
        out = folder / f"{name}.out"
        wrapper = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
        wrapper += [f"--callgrind-out-file={out}"]
        merged = {**NO_FLUSH, "usage": {**NO_FLUSH["usage"], **extra.get("usage", {})}}
        kf = launch.keyfront(
            name, f"{store}/{8 + index}", {**extra, **merged}, wrapper=wrapper, ready_within=120
        )
        url = f"{kf.server.base}/request/{OBJECTS['10k'][0]}?key={kf.key}"
        _warm(url)
        started.append((label, kf, url, out))
    rounds = []
    for number in range(ROUNDS):
        order = started if number % 2 == 0 else started[::-1]
        counts = {label: _count(launch, label, kf, url, out) for label, kf, url, out in order}
        rounds.append([counts[label] for label, *_ in started])
    return rounds


def _count(launch: Launcher, label: str, kf: Keyfront, url: str, out: Path) -> Count:
    """One window: counting on, a bounded wrk run, counting off, dumped to a file of
    its own (callgrind zeroes its counters at each dump)."""
    pid = str(kf.server.proc.pid)
    before = set(out.parent.glob(out.name + "*"))
    _control("-i", "on", pid)
    result = finish_wrk(
        start_wrk(launch.cores, wrk_argv(url, CONNECTIONS, DURATION)), DURATION + 60
    )
    _control("-i", "off", pid)
    _control("-d", pid)
    if result.non_2xx or result.socket_errors or not result.requests:
        raise BenchError(f"{label} under callgrind: {result}")
    return Count(label, result.requests, _instructions(out, before))


def _warm(url: str) -> None:
    request = urllib.request.Request(url, headers={"Referer": REFERER})
    for _ in range(WARM):
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
    time.sleep(0.5)


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=60)


def _instructions(out: Path, before: set[Path]) -> int:
    """The "totals:" of the dump written since `before` was listed."""
    deadline = time.monotonic() + 30
    while True:
        for path in set(out.parent.glob(out.name + "*")) - before:
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("totals:"):
                    return int(line.split()[1])
        if time.monotonic() > deadline:
            raise BenchError(f"no new callgrind dump of {out}")
        time.sleep(0.2)


def render(rounds: list[list[Count]]) -> str:
    labels = [count.label for count in rounds[0]]
    base = labels.index("analytics off")
    rows = [
        "| instructions per keyed 10 KB hit (callgrind, wrk -c8) | "
        + " | ".join(f"round {n + 1}" for n in range(len(rounds)))
        + " | median x analytics off |",
        "|---|" + "--:|" * (len(rounds) + 1),
    ]
    ratios: dict[str, float] = {}
    for index, label in enumerate(labels):
        cells = [f"{r[index].per_request:,.0f} ({r[index].requests:,} hits)" for r in rounds]
        ratio = statistics.median(r[index].per_request / r[base].per_request for r in rounds)
        ratios[label] = ratio
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {ratio:.3f}x |")
    added = ratios["keyfront"] - 1
    verdict = "met" if added <= 0.03 else "not met"
    rows.append("")
    rows.append(
        f"Per-key analytics add {added:.1%} to the instructions of a keyed 10 KB hit "
        f"(median of same-round ratios; SPEC section 12: at most 3%): {verdict}."
    )
    return "\n".join(rows)
