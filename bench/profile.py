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
from pathlib import Path

from .load import finish_wrk, start_wrk, wrk_argv
from .servers import OBJECTS, Target
from .system import BenchError, Cores

RATE = 250  # samples a second
TOP = 18


def profile(
    cores: Cores, target: Target, duration: float, out: Path, garbage: Path | None = None
) -> str:
    """Folded stacks into `out` (py-spy's raw format), and a text summary. The load is
    10 KB hits at 64 connections, or with `garbage` (the flood's wrk script) random
    invalid keys."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise BenchError("py-spy is not installed (pip install py-spy)")
    argv = [spy, "record", "--format", "raw", "-r", str(RATE)]
    argv += ["-d", f"{duration + 1:.0f}", "-o", str(out), "-p", str(target.server.proc.pid)]
    recorder = subprocess.Popen(
        cores.wrap(cores.client, argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        url = target.url(OBJECTS["10k"][0])
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
