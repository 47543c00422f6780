"""The load generator: wrk, pinned to the client core, one thread, `--latency` for the
percentiles; and the server CPU each run cost, from /proc before and after."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .servers import REFERER
from .system import BenchError, Cores, core_busy_seconds, cpu_times, cpu_used, system_used

WRK_TIMEOUT = "2s"  # a request slower than this counts as a wrk timeout error
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}

# Random, well-formed keys with a wrong MAC: keyfront refuses them as key_invalid,
# nginx's secure_link as 403. `kid` is for nginx; keyfront ignores it.
FLOOD_LUA = """\
local alnum = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
local hex = "0123456789abcdef"
math.randomseed(os.time())
local function pick(chars, n)
  local out = {}
  for i = 1, n do
    local j = math.random(#chars)
    out[i] = chars:sub(j, j)
  end
  return table.concat(out)
end
request = function()
  local key = "pk_1_" .. pick(alnum, 22) .. "_" .. pick(hex, 32)
  return wrk.format(nil, wrk.path .. "?key=" .. key .. "&kid=" .. pick(alnum, 22))
end
"""
# Made-up keys of an existing key system's shape (SPEC section 13): opaque, matching
# keys.external.pattern's default, never imported.
OPAQUE_FLOOD_LUA = FLOOD_LUA.replace(
    '"pk_1_" .. pick(alnum, 22) .. "_" .. pick(hex, 32)', "pick(alnum, 24)"
)


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int


@dataclass(frozen=True)
class Sample:
    """One run against one server: what wrk saw and what the server spent."""

    wrk: WrkResult
    cpu_seconds: float  # the server's user + system CPU during the run
    store_cpu_seconds: float = 0.0  # its redis-server's, if it has one
    system_seconds: float = 0.0  # the kernel's part of cpu_seconds
    core_seconds: float = 0.0  # what the server core did in all, whoever for

    @property
    def cpu_us_per_request(self) -> float:
        return 1e6 * self.cpu_seconds / max(1, self.wrk.requests)

    @property
    def busy(self) -> float:
        """The share of one core the server used: near 1, it was the bottleneck; well
        below, the load generator (or the machine's other tenants) was."""
        return self.cpu_seconds / self.wrk.seconds if self.wrk.seconds > 0 else 0.0

    @property
    def others(self) -> float:
        """The share of the server core that went to other processes meanwhile (this
        machine's other tenants): the noise in this run."""
        stolen = self.core_seconds - self.cpu_seconds - self.store_cpu_seconds
        return max(0.0, stolen) / self.wrk.seconds if self.wrk.seconds > 0 else 0.0

    @property
    def system_share(self) -> float:
        return self.system_seconds / self.cpu_seconds if self.cpu_seconds > 0 else 0.0

    @property
    def store_cpu_us_per_request(self) -> float:
        return 1e6 * self.store_cpu_seconds / max(1, self.wrk.requests)


def wrk_argv(
    url: str,
    connections: int,
    duration: float,
    script: Path | None = None,
    *,
    close: bool = False,
) -> list[str]:
    """`close`: wrk opens a new connection for every request (a TLS handshake each)."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency"]
    argv += ["--timeout", WRK_TIMEOUT, "-H", f"Referer: {REFERER}"]
    if close:
        argv += ["-H", "Connection: close"]
    if script is not None:
        argv += ["-s", str(script)]
    return [*argv, url]


def start_wrk(cores: Cores, argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cores.wrap(cores.client, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish_wrk(proc: subprocess.Popen[str], timeout: float) -> WrkResult:
    """The parsed result of a started wrk; kills it if it overruns or on any error."""
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise BenchError(f"wrk failed ({proc.returncode}): {err.strip() or out.strip()}")
    return parse_wrk(out)


def measure(
    cores: Cores,
    url: str,
    pids: list[int],
    connections: int,
    duration: float,
    *,
    store_pids: Sequence[int] = (),
    close: bool = False,
) -> Sample:
    """One bounded wrk run, and the CPU the server processes `pids` (and, apart, its
    store's `store_pids`) spent meanwhile."""
    before, store_before = cpu_times(pids), cpu_times(store_pids)
    core_before = core_busy_seconds(cores.server)
    proc = start_wrk(cores, wrk_argv(url, connections, duration, close=close))
    result = finish_wrk(proc, duration + 15)
    core = core_busy_seconds(cores.server) - core_before
    after = cpu_times(pids)
    store_cpu = cpu_used(store_before, cpu_times(store_pids))
    return Sample(result, cpu_used(before, after), store_cpu, system_used(before, after), core)


def parse_wrk(out: str) -> WrkResult:
    done = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not done or not rps:
        raise BenchError(f"cannot read wrk's output:\n{out}")
    seconds = float(done.group(2)) * _UNITS[done.group(3)] / 1000.0
    socket = re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return WrkResult(
        requests=int(done.group(1)),
        seconds=seconds,
        rps=float(rps.group(1)),
        p50_ms=_percentile(out, "50"),
        p99_ms=_percentile(out, "99"),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in socket.groups()) if socket else 0,
    )


def _percentile(out: str, which: str) -> float:
    found = re.search(rf"^\s+{which}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.MULTILINE)
    if not found:
        raise BenchError(f"no {which}th percentile in wrk's output (--latency):\n{out}")
    return float(found.group(1)) * _UNITS[found.group(2)]
