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

import shutil
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

DURATION = 12.0  # seconds of wrk under callgrind: ~3,000-6,000 hits
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
}


def available() -> bool:
    return shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None


def measure(launch: Launcher, store: str, wrapper_dir: Path) -> list[Count]:
    """One count per variant, each a keyfront of its own on `store`'s database."""
    counts = []
    for index, (label, extra) in enumerate(VARIANTS.items()):
        name = "callgrind-" + label.replace(" ", "-")
        out = wrapper_dir / f"{name}.out"
        wrapper = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
        wrapper += [f"--callgrind-out-file={out}"]
        merged = {**NO_FLUSH, "usage": {**NO_FLUSH["usage"], **extra.get("usage", {})}}
        kf = launch.keyfront(
            name, f"{store}/{8 + index}", {**extra, **merged}, wrapper=wrapper, ready_within=120
        )
        counts.append(_count(launch, label, kf, out))
    return counts


def _count(launch: Launcher, label: str, kf: Keyfront, out: Path) -> Count:
    url = f"{kf.server.base}/request/{OBJECTS['10k'][0]}?key={kf.key}"
    _warm(url)
    pid = str(kf.server.proc.pid)
    _control("-i", "on", pid)
    result = finish_wrk(
        start_wrk(launch.cores, wrk_argv(url, CONNECTIONS, DURATION)), DURATION + 60
    )
    _control("-i", "off", pid)
    _control("-d", pid)
    if result.non_2xx or result.socket_errors or not result.requests:
        raise BenchError(f"{label} under callgrind: {result}")
    return Count(label, result.requests, _instructions(out))


def _warm(url: str) -> None:
    request = urllib.request.Request(url, headers={"Referer": REFERER})
    for _ in range(WARM):
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
    time.sleep(0.5)


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=60)


def _instructions(out: Path) -> int:
    """The largest "totals:" of the dumps (the one taken with counting on)."""
    deadline = time.monotonic() + 30
    while True:
        found = [
            int(line.split()[1])
            for path in out.parent.glob(out.name + "*")
            for line in path.read_text(errors="replace").splitlines()
            if line.startswith("totals:")
        ]
        if found and max(found) > 0:
            return max(found)
        if time.monotonic() > deadline:
            raise BenchError(f"no callgrind totals in {out}*")
        time.sleep(0.5)


def render(counts: list[Count]) -> str:
    base = next((c for c in counts if c.label == "analytics off"), None)
    rows = [
        "| instructions per keyed 10 KB hit (callgrind, wrk -c8) | requests counted | "
        "instructions / request | x analytics off |",
        "|---|--:|--:|--:|",
    ]
    for count in counts:
        ratio = f"{count.per_request / base.per_request:.3f}x" if base else "-"
        rows.append(f"| {count.label} | {count.requests:,} | {count.per_request:,.0f} | {ratio} |")
    if base is not None and (on := next((c for c in counts if c.label == "keyfront"), None)):
        added = on.per_request / base.per_request - 1
        verdict = "met" if added <= 0.03 else "not met"
        rows.append("")
        rows.append(
            f"Per-key analytics add {added:.1%} to the instructions of a keyed 10 KB hit "
            f"(SPEC section 12: at most 3%): {verdict}."
        )
    return "\n".join(rows)
