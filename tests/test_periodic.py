"""The periodic-task helper (proxy/periodic.py) behind the access log, metrics, usage,
quota and cache-sweep loops: ticks every interval, survives a failing tick, stops
within its grace, and runs a final step at stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import pytest

from proxy import metrics as metrics_module
from proxy.metrics import Metrics
from proxy.periodic import Periodic


async def test_it_ticks_every_interval_and_runs_the_final_step_once_at_stop() -> None:
    ticks: list[str] = []

    async def final() -> None:
        ticks.append("final")

    loop = Periodic("test", 0.01, lambda: ticks.append("tick"), final=final)
    loop.start()
    await asyncio.sleep(0.1)
    assert loop.running
    await loop.stop()
    assert not loop.running
    assert ticks.count("tick") >= 3 and ticks[-1] == "final" and ticks.count("final") == 1
    count = len(ticks)
    await asyncio.sleep(0.05)
    assert len(ticks) == count  # nothing after stop


async def test_stop_without_start_still_runs_the_final_step() -> None:
    ticks: list[str] = []
    await Periodic("test", 10.0, lambda: ticks.append("tick")).stop()
    assert ticks == ["tick"]  # the tick is the default final step: a last flush


async def test_a_failing_tick_is_logged_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    def tick() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("disk on fire")

    loop = Periodic("flaky flush", 0.01, tick)
    with caplog.at_level(logging.ERROR, logger="keyfront"):
        loop.start()
        await asyncio.sleep(0.1)
        await loop.stop()
    assert calls >= 3 and loop.failures == 1
    failed = [r for r in caplog.records if "flaky flush failed" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is not None  # with its traceback


async def test_a_cancel_that_comes_out_as_a_timeout_still_stops_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A tick waiting under its own timeout may see the cancel as TimeoutError and
    suppress it (as the limiter's flush does): the loop stops anyway, at once, and logs
    no failure."""
    inside = asyncio.Event()

    async def tick() -> None:
        inside.set()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.sleep(10)

    loop = Periodic("stubborn flush", 0.0, tick, final=lambda: None)
    with caplog.at_level(logging.WARNING, logger="keyfront"):
        loop.start()
        await inside.wait()
        started = time.monotonic()
        await loop.stop()
    assert time.monotonic() - started < 1.0  # not the 2 s grace: it ended on its own
    assert loop.failures == 0 and not caplog.records


async def test_metrics_keep_publishing_after_a_source_fails_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the helper, an error in one publish (a source that raised) ended the
    publishing task for the process's life: the other workers' /metrics never saw
    this one again."""
    monkeypatch.setattr(metrics_module, "PUBLISH_INTERVAL", 0.05, raising=False)
    failed = False

    def source(metrics: Metrics) -> None:
        nonlocal failed
        if not failed:
            failed = True
            raise RuntimeError("a gauge's source broke once")

    metrics = Metrics(str(tmp_path))
    metrics.sources.append(source)
    metrics.start()
    try:
        for _ in range(50):  # 2.5 s: the old loop ticked every second
            if list(tmp_path.glob("*.json")):
                break
            await asyncio.sleep(0.05)
        assert failed and list(tmp_path.glob("*.json"))
    finally:
        await metrics.close()
