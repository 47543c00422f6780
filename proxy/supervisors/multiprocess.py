"""The supervisor of `--workers N`: N worker processes share the public and admin
ports through SO_REUSEPORT; each is `python -m proxy serve --workers 1` with its index
and the count in its environment, and runs app.serve() on its own.

The supervisor restarts a worker that dies (after a pause, so one that dies at once
does not spin the host), and on SIGTERM/SIGINT passes the signal on to every worker
and waits for all of them: each drains its own in-flight responses. Workers share
their metrics through files in a fresh folder (metrics.py), removed at the end.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from ..config import Config

log = logging.getLogger("keyfront")
WORKER_ENV = "KEYFRONT_WORKER"  # the worker's index: set in workers only
WORKER_COUNT_ENV = "KEYFRONT_WORKER_COUNT"
METRICS_DIR_ENV = "KEYFRONT_METRICS_DIR"  # where workers share their counters
RESTART_PAUSE = 1.0  # seconds before a dead worker is restarted
POLL_INTERVAL = 0.1  # seconds between looks at the workers


def is_worker() -> bool:
    """Whether this process is a worker a supervisor started."""
    return WORKER_ENV in os.environ


def worker_count() -> int:
    """How many workers share this host's ports (1 without a supervisor)."""
    return int(os.environ.get(WORKER_COUNT_ENV, "1"))


def shared_metrics_dir() -> str | None:
    """The folder the workers share their metrics through; None: not supervised."""
    return os.environ.get(METRICS_DIR_ENV)


def supervise(config: Config, count: int) -> int:
    """Run `count` worker processes sharing the listeners; restart one that dies,
    forward SIGTERM/SIGINT to all and wait for them (each drains on its own). The
    exit code: the highest of the workers'."""
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    metrics_dir = tempfile.mkdtemp(prefix="keyfront-metrics-")  # fresh: no stale counters
    os.environ[METRICS_DIR_ENV] = metrics_dir
    procs = [_spawn_worker(config, i, count) for i in range(count)]
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        for i, proc in enumerate(procs):
            if proc.poll() is not None and not stopping:
                log.error("worker %d exited with %s; restarting it", i, proc.returncode)
                time.sleep(RESTART_PAUSE)  # a worker that dies at once must not spin the host
                if stopping:
                    continue  # a signal came during the pause: nothing to restart
                procs[i] = _spawn_worker(config, i, count)
                if stopping:  # it came between the check and the spawn: pass it on
                    procs[i].send_signal(signal.SIGTERM)
        if stopping and all(p.poll() is not None for p in procs):
            shutil.rmtree(metrics_dir, ignore_errors=True)
            return max(p.returncode or 0 for p in procs)
        time.sleep(POLL_INTERVAL)


def _spawn_worker(config: Config, index: int, count: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, WORKER_ENV: str(index), WORKER_COUNT_ENV: str(count)}
    argv = [sys.executable, "-m", "proxy", "serve", "-c", config.source, "--workers", "1"]
    return subprocess.Popen(argv, env=env)
