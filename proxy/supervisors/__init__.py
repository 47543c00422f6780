"""Process supervisors: how `keyfront serve --workers N` runs N worker processes
(SPEC section 11), after uvicorn's `supervisors/` package.

    multiprocess.py   supervise(config, count): spawn N workers sharing the ports
                      through SO_REUSEPORT, restart one that dies, forward
                      SIGTERM/SIGINT and wait for each to drain; the environment a
                      worker learns its place from (is_worker, worker_count,
                      shared_metrics_dir)

This package owns processes, signals and the environment between a supervisor and its
workers; it knows nothing of requests. It must not import proxy.app (which calls it),
the request path (pipeline, delivery, cache, origin, store) or the admin API: a worker
is a fresh `python -m proxy serve` process, and the supervisor itself serves nothing.
"""

from __future__ import annotations

from .multiprocess import is_worker, shared_metrics_dir, supervise, worker_count

__all__ = ["is_worker", "shared_metrics_dir", "supervise", "worker_count"]
