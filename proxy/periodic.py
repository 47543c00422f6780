"""Background loops that run a step every few seconds, and stop with a final one.

    flusher = Periodic("usage flush", 1.0, meter.flush_quietly, final=meter.flush_all)
    flusher.start()        # in the running loop: a task runs the tick every interval
    await flusher.stop()   # cancel it (bounded), then run `final` (default: the tick)

The access log, the metrics files, usage counts, the limiters' quota counts and the
cache's sweep all need the same three things (issue 14: one helper, not five loops):
- a tick that raises is logged with its traceback and the loop goes on: before, an
  unexpected error ended the task silently, and with it every later flush of the
  process's life;
- a cancel that lands while a tick waits under a timeout of its own (a driver's, or
  `asyncio.timeout`) can come out as TimeoutError, which the tick may suppress: the
  loop checks for a pending cancellation after every tick, or it would run on and
  hold shutdown;
- stopping waits STOP_GRACE seconds at most for the task (`stop_tasks`), then runs the
  final step: what was counted since the last tick is written at shutdown.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable

log = logging.getLogger("keyfront")
STOP_GRACE = 2.0  # seconds a stopping task may take to end after its cancellation
Step = Callable[[], Awaitable[None] | None]  # sync or async


class Periodic:
    """Run `tick` every `interval` seconds from start() until stop(); stop() then runs
    `final` (the tick itself unless given) once, whether or not start() was called."""

    def __init__(
        self, name: str, interval: float, tick: Step, *, final: Step | None = None
    ) -> None:
        self.name = name
        self.interval = interval
        self._tick = tick
        self._final = tick if final is None else final
        self._task: asyncio.Task[None] | None = None
        self.failures = 0  # ticks that raised, over the process's life

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Cancel the loop, wait for it (bounded), then run the final step."""
        task, self._task = self._task, None
        if task is not None:
            await stop_tasks([task])
        await _run_step(self._final)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await _run_step(self._tick)
            except Exception:
                if not _cancelling():  # else: the cancel itself, come out as a timeout
                    self.failures += 1
                    log.exception("%s failed; it runs again in %.1f s", self.name, self.interval)
            if _cancelling():
                raise asyncio.CancelledError


async def _run_step(step: Step) -> None:
    result = step()
    if inspect.isawaitable(result):
        await result


def _cancelling() -> bool:
    """Whether the running task was asked to stop. A cancel that lands as a timeout
    expires comes out as TimeoutError, which a tick may suppress: without this check
    the loop would run on, and hold shutdown."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def stop_tasks(tasks: Iterable[asyncio.Task[None]], grace: float = STOP_GRACE) -> None:
    """Cancel `tasks` and wait for them, `grace` seconds at most: a task that swallows its
    cancellation (a driver turning a cancel into its own timeout error) must not hold a
    SIGTERM'd process for ever. One that does is named in the log, and so is one that
    failed."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    done, pending = await asyncio.wait(tasks, timeout=grace)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())
    for task in pending:
        log.warning(
            "task %s did not stop within %.0f s of its cancellation", task.get_name(), grace
        )
