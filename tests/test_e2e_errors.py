"""An unexpected exception inside keyfront (issue 14, SPEC section 1): a real process
with a failpoint armed (proxy/failpoints.py) answers 500 `internal_error` as JSON with
the request id, logs the traceback, counts it, and goes on serving, on the public
listener and on the admin listener alike.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import KEYFRONT, SECRET, KeyfrontProcess, free_port, start_keyfront, write_config

ADMIN_TOKEN = "operator-token-for-the-error-tests"
BODY = b"<svg>an object</svg>"


def start_armed(tmp_path: Path, failpoints: str) -> tuple[KeyfrontProcess, Path]:
    """keyfront with KEYFRONT_FAILPOINTS set, its stderr (the log) kept in a file."""
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.svg").write_bytes(BODY)
    log = tmp_path / "keyfront.log"
    with open(log, "wb") as stderr:
        instance = start_keyfront(
            f"""store: sqlite://{tmp_path}/kf.db
keys: {{secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}}}
routes:
  - {{prefix: /files/, origin: "file://{tmp_path}/files/"}}
  - {{prefix: /open/, origin: "file://{tmp_path}/files/", auth: none}}
cache: {{dir: {tmp_path}/cache}}
admin: {{token: "{ADMIN_TOKEN}"}}
access_log: "off"
""",
            str(tmp_path),
            env={"KEYFRONT_FAILPOINTS": failpoints},
            stderr=stderr,
        )
    return instance, log


@pytest.fixture
def armed(tmp_path: Path) -> Iterator[tuple[KeyfrontProcess, Path]]:
    kf, log = start_armed(tmp_path, "request.after_key,admin.list_customers")
    yield kf, log
    assert kf.stop() == 0


def get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def metric(kf: KeyfrontProcess, series: str) -> float:
    _, _, page = get(f"{kf.admin_url}/metrics")
    for line in page.decode().splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def assert_internal_error(status: int, headers: dict[str, str], body: bytes) -> str:
    """The SPEC error body of a 500 internal_error; its request id, the header's."""
    assert status == 500, body
    assert headers["Content-Type"].startswith("application/json")
    assert headers["Server"] == "keyfront"
    error = json.loads(body)["error"]
    assert (error["code"], error["message"]) == ("internal_error", "internal error")
    assert error["request_id"] == headers["X-Request-Id"]
    return str(error["request_id"])


def test_an_unexpected_exception_in_a_request_is_a_json_500_and_the_process_goes_on(
    armed: tuple[KeyfrontProcess, Path],
) -> None:
    kf, log = armed
    kf.given("customers", "create", "acme")
    key = json.loads(kf.given("keys", "create", "--customer", "acme", "--json"))["key"]
    status, headers, body = get(f"{kf.url}/files/a.svg?key={key}", **{"X-Request-Id": "req-42"})
    assert assert_internal_error(status, headers, body) == "req-42"
    assert key.encode() not in body
    status, headers, body = get(f"{kf.url}/files/a.svg?key={key}")
    request_id = assert_internal_error(status, headers, body)
    assert request_id != "req-42"  # generated when the client sends none
    # The process goes on: a route the failpoint does not reach is served.
    assert get(f"{kf.url}/open/a.svg")[::2] == (200, BODY)
    assert metric(kf, 'keyfront_internal_errors_total{listener="public"}') == 2
    assert metric(kf, 'keyfront_denied_total{code="internal_error"}') == 2
    assert metric(kf, 'keyfront_requests_total{cache="BYPASS",route="/files/",status="500"}') == 2
    logged = log.read_text()
    assert "req-42 internal_error" in logged and f"{request_id} internal_error" in logged
    assert "Traceback" in logged and "FailpointHit: request.after_key" in logged


def test_an_unexpected_exception_in_an_admin_handler_is_the_same_json_500(
    armed: tuple[KeyfrontProcess, Path],
) -> None:
    kf, log = armed
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    status, headers, body = get(
        f"{kf.admin_url}/admin/v1/customers", **auth, **{"X-Request-Id": "adm-7"}
    )
    assert assert_internal_error(status, headers, body) == "adm-7"
    assert metric(kf, 'keyfront_internal_errors_total{listener="admin"}') == 1
    logged = log.read_text()
    assert "adm-7 admin API internal_error" in logged
    assert "Traceback" in logged and "FailpointHit: admin.list_customers" in logged
    # The admin API goes on: another route answers, and on a kept-alive connection.
    assert get(f"{kf.admin_url}/admin/v1/keys", **auth)[0] == 200
    assert get(f"{kf.admin_url}/healthz")[0] == 200


@pytest.mark.parametrize(
    ("armed", "said"),
    [
        ("request.after_kye", "unknown failpoint(s) request.after_kye"),
        ("usage.flush=some", "'usage.flush=some': the count after '=' must be a whole number"),
    ],
)
def test_an_unknown_failpoint_stops_start_up(tmp_path: Path, armed: str, said: str) -> None:
    """A typo must not pass for a failpoint that never fires."""
    config_path = write_config(
        str(tmp_path),
        f"""listen: 127.0.0.1:{free_port()}
admin_listen: 127.0.0.1:{free_port()}
store: sqlite://{tmp_path}/kf.db
keys: {{secrets: {{1: "{SECRET}"}}}}
routes: [{{prefix: /open/, origin: "file://{tmp_path}/", auth: none}}]
cache: {{dir: {tmp_path}/cache}}
""",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYFRONT_")}
    done = subprocess.run(
        [KEYFRONT, "serve", "-c", config_path],
        env={**env, "KEYFRONT_FAILPOINTS": armed},
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert said in done.stderr
