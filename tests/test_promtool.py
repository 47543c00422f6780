"""A live /metrics page passes `promtool check metrics` (issue 15): the exposition
format and Prometheus' own lint rules (counter names end in _total, every family has
help text, units in base units). The page is scraped from two workers after traffic of
every kind a page shows: hits, misses, refusals, an origin's 404."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from conftest import start_keyfront

PROMTOOL = shutil.which("promtool")


def test_a_live_metrics_page_passes_promtool(tmp_path: Path) -> None:
    assert PROMTOOL is not None, "promtool is missing: `make test` installs it (Debian: prometheus)"
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.txt").write_bytes(b"a" * 10_000)
    body = f"""
store: sqlite://{tmp_path}/kf.db
keys: {{secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}}}
routes: [{{prefix: /f/, origin: "file://{tmp_path}/files/"}}]
cache: {{dir: "{tmp_path}/cache"}}
metrics: {{customer_labels: 2}}
access_log: "off"
"""
    kf = start_keyfront(body, str(tmp_path), "--workers", "2")
    try:
        kf.given("customers", "create", "acme")
        key = json.loads(kf.given("keys", "create", "--customer", "acme", "--json"))["key"]
        for path in (f"/f/a.txt?key={key}", f"/f/a.txt?key={key}", f"/f/b.txt?key={key}"):
            _get(kf.url + path)
        _get(kf.url + "/f/a.txt?key=garbage")
        _get(kf.url + "/f/a.txt")
        with urllib.request.urlopen(f"{kf.admin_url}/metrics", timeout=10) as response:
            page = response.read()
    finally:
        kf.stop()
    assert b"keyfront_requests_total" in page
    checked = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=page, capture_output=True, check=False, timeout=30
    )
    assert checked.returncode == 0, (checked.stdout + checked.stderr).decode()
    assert not checked.stdout.strip(), checked.stdout.decode()  # no lint findings either


def _get(url: str) -> None:
    try:
        urllib.request.urlopen(url, timeout=10).close()
    except urllib.error.HTTPError as error:
        error.close()
