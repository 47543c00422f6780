"""The process: health endpoints, graceful shutdown, workers, refusing a bad config."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import KEYFRONT, HttpOriginServer, start_keyfront, write_config


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[HttpOriginServer]:
    (tmp_path / "hello.txt").write_bytes(b"hello")
    server = HttpOriginServer(str(tmp_path))
    server.start()
    yield server
    server.stop()


def config_body(tmp_path: Path, origin_url: str) -> str:
    return f"""
store: sqlite://{tmp_path}/kf.db
keys: {{secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}}}
routes:
  - {{prefix: /open/, origin: "{origin_url}", auth: none}}
shutdown_timeout: 10s
"""


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_health_and_readiness(tmp_path: Path, origin: HttpOriginServer) -> None:
    kf = start_keyfront(config_body(tmp_path, origin.url), str(tmp_path))
    try:
        assert fetch(f"{kf.admin_url}/healthz")[0] == 200
        status, body = fetch(f"{kf.admin_url}/readyz")
        assert status == 200, body
        origin.stop()
        # An origin's outage does not make the instance unready (issue 16: every pod
        # would leave the load balancer, and cache hits with them) ...
        status, body = fetch(f"{kf.admin_url}/readyz")
        assert status == 200, body
        # ... but is there to see when asked for.
        status, body = fetch(f"{kf.admin_url}/readyz?origins=1")
        assert status == 503
        assert "origin /open/" in json.loads(body)["failed"]
    finally:
        assert kf.stop() == 0


def test_sigterm_finishes_in_flight_responses_then_exits_zero(
    tmp_path: Path, origin: HttpOriginServer
) -> None:
    kf = start_keyfront(config_body(tmp_path, origin.url), str(tmp_path))
    result: dict[str, object] = {}

    def download() -> None:
        result["reply"] = fetch(f"{kf.url}/open/slow/40000")

    thread = threading.Thread(target=download)
    thread.start()
    time.sleep(0.3)  # the response is under way: headers sent, body trickling
    kf.process.send_signal(signal.SIGTERM)
    thread.join(10)
    assert kf.process.wait(15) == 0
    assert result["reply"] == (200, b"x" * 40000)


def test_workers_share_the_port(tmp_path: Path, origin: HttpOriginServer) -> None:
    kf = start_keyfront(config_body(tmp_path, origin.url), str(tmp_path), "--workers", "2")
    try:
        deadline = time.monotonic() + 10
        while len(_children(kf.process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_children(kf.process.pid)) == 2
        for _ in range(20):
            assert fetch(f"{kf.url}/open/hello.txt") == (200, b"hello")
    finally:
        assert kf.stop() == 0


def test_sigterm_during_a_worker_restart_stops_the_supervisor(
    tmp_path: Path, origin: HttpOriginServer
) -> None:
    # A worker dies; the supervisor pauses 1 s before restarting it. A SIGTERM in that
    # pause must still stop everything, the restarted worker included.
    kf = start_keyfront(config_body(tmp_path, origin.url), str(tmp_path), "--workers", "2")
    try:
        deadline = time.monotonic() + 10
        while len(_children(kf.process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        first, second = _children(kf.process.pid)
        os.kill(int(first), signal.SIGKILL)
        time.sleep(0.5)  # the supervisor has seen it die (it polls every 0.1 s)
        kf.process.send_signal(signal.SIGTERM)
        assert kf.process.wait(10) == 0
        assert not os.path.exists(f"/proc/{second}")
    finally:
        if kf.process.poll() is None:
            for child in _children(kf.process.pid):
                os.kill(int(child), signal.SIGKILL)
            kf.process.kill()
            kf.process.wait(5)


def _children(pid: int) -> list[str]:
    path = f"/proc/{pid}/task/{pid}/children"
    with open(path) as f:
        return f.read().split()


def test_a_bad_config_refuses_to_start_naming_the_field(tmp_path: Path) -> None:
    path = write_config(
        str(tmp_path),
        f"store: sqlite://{tmp_path}/kf.db\nkeys: {{secrets: {{1: short}}}}\n"
        f"routes: [{{prefix: /f/, origin: 'file://{tmp_path}/'}}]\n",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYFRONT_")}
    done = subprocess.run(
        [KEYFRONT, "serve", "-c", path],
        check=False,
        env=env,
        capture_output=True,
        timeout=30,
        text=True,
    )
    assert done.returncode == 2
    assert "keys.secrets.1" in done.stderr


def test_access_log_lines_never_hold_the_key(tmp_path: Path, origin: HttpOriginServer) -> None:
    log = tmp_path / "access.log"
    body = config_body(tmp_path, origin.url).replace(
        "routes:", f'access_log: {log}\nroutes:\n  - {{prefix: /k/, origin: "{origin.url}"}}'
    )
    kf = start_keyfront(body, str(tmp_path))
    kf.given("customers", "create", "acme")
    created = json.loads(kf.given("keys", "create", "--customer", "acme", "--json"))
    key, mac = created["key"], created["key"].rsplit("_", 1)[1]
    assert fetch(f"{kf.url}/k/hello.txt?key={key}") == (200, b"hello")
    wrong = key[:-1] + ("1" if key.endswith("0") else "0")  # (a MAC may end in 0)
    assert fetch(f"{kf.url}/k/hello.txt?key={wrong}")[0] == 401
    assert fetch(f"{kf.url}/open/hello.txt")[0] == 200
    assert kf.stop() == 0  # SIGTERM flushes the buffer
    text = log.read_text()
    assert mac not in text and key not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert [(x["route"], x["status"], x["bytes"]) for x in lines] == [
        ("/k/", 200, 5),
        ("/k/", 401, 0),
        ("/open/", 200, 5),
    ]
    first = lines[0]
    assert first["key_id"] == created["key_id"] and first["customer_id"] == "acme"
    assert first["path"] == "/k/hello.txt" and first["client_ip"] == "127.0.0.1"
    assert first["cache"] in {"HIT", "MISS", "BYPASS"} and first["duration_ms"] >= 0
    assert set(first) >= {"time", "request_id", "referrer_host"}


async def test_shutdown_stops_waiting_on_a_task_that_swallows_its_cancellation() -> None:
    """A cancel that lands as a driver's own timeout expires comes out as TimeoutError;
    a loop that suppresses it runs on. Shutdown used to await such a task for ever (a
    SIGTERM'd keyfront seen still up 50 minutes later): now it waits `grace`."""
    import asyncio
    import time

    from proxy.periodic import stop_tasks

    swallowed = asyncio.Event()

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed.is_set():
                    raise
                swallowed.set()  # the first cancel is lost, as a driver's timeout loses it

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    started = time.monotonic()
    await stop_tasks([task], grace=0.2)
    assert swallowed.is_set() and not task.done()
    assert time.monotonic() - started < 1.0
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_driver_error_raised_while_cancelled_is_the_cancellation() -> None:
    import asyncio

    from proxy.store.redis import _cancelled_meanwhile

    async def feed() -> None:
        task = asyncio.current_task()
        assert task is not None
        _cancelled_meanwhile(TimeoutError("not cancelled: a real timeout"))  # no effect
        task.cancel()
        _cancelled_meanwhile(TimeoutError("a cancel that came out as a timeout"))

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(feed())
