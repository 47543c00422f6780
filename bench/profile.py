"""`--profile`: sample keyfront with py-spy while wrk loads it, and summarise where the
time goes (self and inclusive share of samples per function). py-spy runs on the
client core. It pauses keyfront for each sample (a few µs, RATE times a second):
`--nonblocking` would not, but then reads torn stacks of the coroutines it catches
mid-step, which hides who called what. Time in a system call (send, recv) shows as
the self time of the Python function that made it."""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .load import finish_wrk, measure, start_wrk, wrk_argv
from .servers import OBJECTS, Target
from .system import BenchError, Cores

RATE = 250  # samples a second
TOP = 18


def profile(
    cores: Cores,
    target: Target,
    duration: float,
    out: Path,
    garbage: Path | None = None,
    *,
    size: str = "10k",
) -> str:
    """Folded stacks into `out` (py-spy's raw format), and a text summary. The load is
    hits of the `size` object at 64 connections, or with `garbage` (the flood's wrk
    script) random invalid keys."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise BenchError("py-spy is not installed (pip install py-spy)")
    argv = [spy, "record", "--format", "raw", "-r", str(RATE)]
    argv += ["-d", f"{duration + 1:.0f}", "-o", str(out), "-p", str(target.server.proc.pid)]
    recorder = subprocess.Popen(
        cores.wrap(cores.client, argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        url = target.url(OBJECTS[size][0])
        if garbage is not None:
            url = url.partition("?")[0]  # the script adds a random key
        load = start_wrk(cores, wrk_argv(url, 64, duration, garbage))
        finish_wrk(load, duration + 15)
        _, err = recorder.communicate(timeout=duration + 30)
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait()
    if recorder.returncode != 0 or not out.exists():
        raise BenchError(f"py-spy failed: {err.decode(errors='replace').strip()}")
    return summarise(out.read_text())


IDLE_WORKER = "_worker (concurrent/futures/thread.py)"  # an executor thread waiting for work


def summarise(folded: str) -> str:
    """Self time of the hottest functions, and inclusive time of keyfront's own
    (proxy/) functions, as shares of the event loop thread's samples."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in folded.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_short(frame) for frame in stack.split(";")]
        if frames[-1] == IDLE_WORKER:
            continue
        samples += int(count)
        own[frames[-1]] += int(count)
        for frame in set(_below_loop(frames)):
            if "(proxy/" in frame:
                total[frame] += int(count)
    if not samples:
        return "py-spy recorded no samples"
    return "\n".join(
        [
            f"{samples} samples of the event loop; self time by package: {_packages(own, samples)}",
            "self time:",
            *_top(own, samples),
            "inclusive time, keyfront's own functions:",
            *_top(total, samples),
        ]
    )


PACKAGES = (
    ("waiting in epoll", "EpollSelector.select "),
    ("keyfront", "(proxy/"),
    ("aiohttp", "(aiohttp/"),
    ("asyncio", "(asyncio/"),
)


def _packages(own: collections.Counter[str], samples: int) -> str:
    shares = collections.Counter[str]()
    for frame, count in own.items():
        group = next((name for name, mark in PACKAGES if mark in frame), "other")
        shares[group] += count
    return ", ".join(f"{name} {100 * n / samples:.0f}%" for name, n in shares.most_common())


def _below_loop(frames: list[str]) -> list[str]:
    """The frames the event loop called (a callback, a task step): not start-up's."""
    for index in range(len(frames) - 1, -1, -1):
        if frames[index].startswith(("Handle._run ", "BaseEventLoop._run_once ")):
            return frames[index + 1 :]
    return frames


def _top(counter: collections.Counter[str], samples: int) -> list[str]:
    return [f"  {100 * n / samples:5.1f}%  {frame}" for frame, n in counter.most_common(TOP)]


def _short(frame: str) -> str:
    """`handle (/work/main/proxy/pipeline.py:80)` -> `handle (proxy/pipeline.py)`."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    for marker in ("site-packages/", "/proxy/", "lib/python3"):
        if marker in path:
            path = path[path.index(marker) :].lstrip("/")
            break
    return f"{name} ({path})"


# --- perf: where a server's CPU goes by shared object (TLS rows) ---------------------

PERF_RATE = "999"  # samples a second
PERF_TOP = 12


def perf_split(
    cores: Cores, target: Target, duration: float, out: Path, *, size: str, close: bool = False
) -> str:
    """`perf record` of the server's processes while wrk loads them with hits of the
    `size` object at 64 connections: the share of samples by shared object
    (libcrypto: the encryption; libpython, uvloop, aiohttp's extensions: the Python
    side; the kernel: TCP and the copies into it; libc: memcpy and malloc) and the
    hottest symbols, each also as µs of the server's CPU per request of that run.
    `close`: a new connection (a TLS handshake) for every request."""
    if shutil.which("perf") is None:
        return "perf is not installed (Debian: linux-perf)"
    pids = ",".join(str(pid) for pid in target.server.pids())
    argv = ["perf", "record", "-F", PERF_RATE, "-o", str(out), "-p", pids]
    argv += ["--", "sleep", f"{duration + 1:.0f}"]
    recorder = subprocess.Popen(
        cores.wrap(cores.client, argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        time.sleep(0.5)  # perf attached before the load starts
        url, pids = target.url(OBJECTS[size][0]), target.server.pids()
        sample = measure(cores, url, pids, 64, duration, close=close)
        _, err = recorder.communicate(timeout=duration + 30)
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait()
    if recorder.returncode != 0 or not out.exists():
        raise BenchError(f"perf record failed: {err.decode(errors='replace').strip()}")
    per_request = sample.cpu_us_per_request
    lines = [f"{sample.wrk.rps:,.0f} req/s, {per_request:.0f} µs CPU/request; by shared object:"]
    lines += _perf_top(out, "dso", per_request)
    lines += ["hottest symbols:", *_perf_top(out, "dso,sym", per_request)]
    return "\n".join(lines)


def _perf_top(data: Path, keys: str, per_request: float) -> list[str]:
    argv = ["perf", "report", "-i", str(data), "--stdio", "-q", "--sort", keys]
    report = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    rows = []
    for line in report.splitlines():
        share, _, what = line.strip().partition("%")
        try:
            fraction = float(share) / 100
        except ValueError:
            continue
        name = " ".join(what.replace("[.]", "").replace("[k]", "").split())
        rows.append(f"  {100 * fraction:5.1f}%  {fraction * per_request:5.0f} µs  {name}")
    return rows[:PERF_TOP]
