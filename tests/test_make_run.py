"""`make run` as a new operator meets it (issue 15, "First run"): the script starts
keyfront on the embedded default, and what its banner prints works as printed: the curl
line answers the sample file, and the export lines give a second terminal a working CLI
and admin API (the admin API was off, so a customer token answered 401)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = os.path.dirname(sys.executable)


def test_make_run_prints_lines_that_work_from_a_second_terminal(tmp_path: Path) -> None:
    # A copy of what the script uses, so the checkout's own data/ is left alone.
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    shutil.copytree(ROOT / "config", tmp_path / "config")
    port, admin_port = free_port(), free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("KEYFRONT_")  # a fresh shell: nothing set by hand
    }
    env |= {
        "BIN": BIN,
        "KEYFRONT_LISTEN": f"127.0.0.1:{port}",
        "KEYFRONT_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
    }
    process = subprocess.Popen(
        ["bash", str(tmp_path / "deploy" / "run-local.sh")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        banner = _banner(process)
        curl = next(line.strip() for line in banner if line.strip().startswith("curl -i"))
        url = curl.split('"')[1]
        _wait_until_up(url)
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
            assert response.read() == (ROOT / "config/samples/12345.svg").read_bytes()

        # The second terminal: the printed lines, run as printed, in a clean shell.
        lines = [line.strip() for line in banner]
        start = lines.index("The CLI and the admin API, from a second terminal:")
        script = "\n".join(line for line in lines[start + 1 :] if line and "Ctrl-C" not in line)
        script = script.replace("curl -H", "curl -sf -H", 1)
        second = subprocess.run(
            ["bash", "-euc", script],
            check=False,
            env={k: v for k, v in env.items() if k != "BIN"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == 0, second.stderr
        assert "make run demo key" in second.stdout  # keys list
        assert '"demo"' in second.stdout  # the admin API's customer list
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)
        assert process.stdout is not None
        process.stdout.close()


def _banner(process: subprocess.Popen[str]) -> list[str]:
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"make run ended early: {''.join(lines)}")
        lines.append(line)
        if "Stop it with Ctrl-C" in line:
            return lines
    raise AssertionError("no banner within 60 s")


def _wait_until_up(url: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
