"""The machine side of the benchmark: OS packages, CPU pinning, the processes the tool
starts (and stops, by PID, whatever happens) and what /proc says about them."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parent.parent  # children run `-m bench.*` from here
STOP_TIMEOUT = 10.0  # seconds a process gets to exit after SIGTERM before SIGKILL

# binary -> the Debian package that provides it
PACKAGES = {
    "nginx": "nginx",
    "wrk": "wrk",
    "redis-server": "redis-server",
    "redis-cli": "redis-tools",
    "taskset": "util-linux",
    "callgrind_control": "valgrind",  # bench/instructions.py
}


class BenchError(RuntimeError):
    """Something the benchmark needs is missing or misbehaves; the message says what."""


def ensure_tools() -> None:
    """Install the Debian packages of the binaries that are missing (apt-get; sudo when
    not root). Elsewhere, say what to install."""
    missing = sorted({pkg for binary, pkg in PACKAGES.items() if shutil.which(binary) is None})
    if missing:
        if shutil.which("apt-get") is None:
            raise BenchError(f"install these packages, then run again: {' '.join(missing)}")
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        print(f"installing {' '.join(missing)} with apt-get", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
        install = [*sudo, "apt-get", "install", "-y", "-qq", *missing]
        subprocess.run(install, check=True, env=env, stdout=subprocess.DEVNULL)
    if "secure_link" not in nginx_build():
        raise BenchError("this nginx lacks the secure_link module (Debian's `nginx` has it)")


def nginx_build() -> str:
    return subprocess.run(["nginx", "-V"], capture_output=True, text=True, check=True).stderr


def raise_file_limit() -> None:
    """1,000 concurrent requests need more descriptors than the usual soft limit of
    1024; children inherit the raised limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


@dataclass(frozen=True)
class Cores:
    """Load generator on one core, every server on another (docs/dependencies.md: wrk pinned to one
    core, the server on the other). None: no pinning (a one-core machine)."""

    client: int | None
    server: int | None

    @classmethod
    def pick(cls, client: int, server: int) -> Cores:
        available = os.sched_getaffinity(0)
        if {client, server} <= available and client != server:
            return cls(client, server)
        print(f"cores {client} and {server} are not both available: not pinning", file=sys.stderr)
        return cls(None, None)

    def pin_self(self) -> None:
        """The tool itself is part of the load generator (the Python scenario clients)."""
        if self.client is not None:
            os.sched_setaffinity(0, {self.client})

    @staticmethod
    def wrap(core: int | None, argv: list[str]) -> list[str]:
        return argv if core is None else ["taskset", "-c", str(core), *argv]


@dataclass
class Processes:
    """Every long-running process the tool starts. `stop_all` ends them by PID, newest
    first; `run.main` calls it in a `finally`, so Ctrl-C and errors stop them too."""

    logs: Path
    started: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            start_new_session=True,  # Ctrl-C reaches the tool, which stops them in order
        )
        log.close()
        self.started.append((name, proc))
        return proc

    def check_alive(self) -> None:
        for name, proc in self.started:
            if proc.poll() is not None:
                log = self.logs / f"{name}.log"
                raise BenchError(f"{name} exited with {proc.returncode}; see {log}")

    def stop_all(self) -> None:
        for _name, proc in reversed(self.started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for _name, proc in reversed(self.started):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.started.clear()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(url: str, timeout: float = 15.0) -> None:
    """Until `url` answers anything at all over HTTP."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1.0):
                return
        except urllib.error.HTTPError:
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise BenchError(f"{url} does not answer after {timeout:.0f} s") from exc
            time.sleep(0.05)


# --- /proc ---------------------------------------------------------------------------


CpuTimes = dict[int, tuple[float, float]]  # pid -> (user, system) seconds


def cpu_times(pids: Iterable[int]) -> CpuTimes:
    """(user, system) CPU seconds of each of these processes (all their threads) that
    still exists (nginx's cache loader exits a minute after start-up)."""
    times = {}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            continue
        # The command name may hold spaces: the fields start after its closing ")".
        fields = stat.rpartition(")")[2].split()
        times[pid] = (int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS)
    return times


def cpu_used(before: CpuTimes, after: CpuTimes) -> float:
    """CPU seconds (user + system) spent between two `cpu_times`, by the processes in both."""
    return sum(sum(after[pid]) - sum(before[pid]) for pid in after.keys() & before.keys())


def system_used(before: CpuTimes, after: CpuTimes) -> float:
    """The system (kernel) part of `cpu_used`: system calls and the network stack."""
    return sum(after[pid][1] - before[pid][1] for pid in after.keys() & before.keys())


def with_children(pid: int) -> list[int]:
    """The process and its descendants (nginx: the master, its worker and cache
    processes), read from /proc/<pid>/task/*/children."""
    found = [pid]
    try:
        children = [c for task in Path(f"/proc/{pid}/task").iterdir() for c in _children(task)]
    except FileNotFoundError:  # it exited meanwhile
        return found
    for child in children:
        found += with_children(child)
    return found


def _children(task: Path) -> list[int]:
    return [int(child) for child in (task / "children").read_text().split()]


def core_busy_seconds(core: int | None) -> float:
    """Seconds the CPU `core` spent on anything but idle, from /proc/stat (0 unpinned)."""
    if core is None:
        return 0.0
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            ticks = [int(n) for n in line.split()[1:]]
            idle = ticks[3] + ticks[4]  # idle, iowait
            return (sum(ticks[:8]) - idle) / CLOCK_TICKS  # up to steal; guest is in user
    raise BenchError(f"no cpu{core} in /proc/stat")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for process {pid}")


def machine() -> dict[str, str]:
    """What docs/performance.md records about the machine a table came from."""
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "nginx": nginx_build().splitlines()[0].partition("/")[2],
    }
