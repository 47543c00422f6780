"""The command line as scripts and a second terminal use it (issue 15, "CLI and admin
API that scripts can trust", and "First run"): the installed `keyfront` console script
run as a process, with only the environment a test gives it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import importlib.metadata
import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from proxy.cli import build_parser, main
from proxy.store import UsageRow, store_from_url

from conftest import free_port, start_keyfront

KEYFRONT = str(Path(sys.executable).with_name("keyfront"))
SECRET = "a-signing-secret-of-some-length"
LINK_SECRET = "link-secret-0123456789"
# SPEC section 4's counters, and section 1's refusal codes (its table and "Other statuses")
COUNTERS = ["requests", "bytes", "hits", "misses", "not_modified"]
SPEC_CODES = [
    "key_missing", "key_invalid", "key_unknown", "key_revoked", "key_disabled", "key_expired",
    "link_invalid", "link_expired", "link_required", "referrer_not_allowed", "ip_not_allowed",
    "path_not_allowed", "rate_limited", "quota_exceeded", "bad_path", "not_found",
    "origin_error", "origin_timeout", "unavailable",
]  # fmt: skip


class Keyfront:
    """`keyfront ARGS... -c CONFIG` as a process. `secret`: whether KEYFRONT_KEY_SECRET
    is in its environment (a second terminal may have only KEYFRONT_CONFIG)."""

    def __init__(self, config: Path, db: Path) -> None:
        self.config, self.db = config, db

    def __call__(
        self, *args: str, expect: int = 0, secret: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYFRONT_")}
        env["KEYFRONT_CONFIG"] = str(self.config)
        if secret:
            env["KEYFRONT_KEY_SECRET"] = SECRET
        done = subprocess.run(
            [KEYFRONT, *args], env=env, capture_output=True, text=True, check=False, timeout=30
        )
        assert done.returncode == expect, (args, done.returncode, done.stdout, done.stderr)
        return done

    def json(self, *args: str, secret: bool = True) -> Any:
        return json.loads(self("--json", *args, secret=secret).stdout)

    def given(self, *args: str) -> Any:
        """Set-up, not under test: `keyfront --json ARGS` in this process (no interpreter
        start-up, so each test stays well under 5 s); its JSON output."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            assert main(["--json", "-c", str(self.config), *args]) == 0, args
        return json.loads(out.getvalue())

    def add_usage(self, rows: list[UsageRow]) -> None:
        async def add() -> None:
            store = store_from_url(f"sqlite://{self.db}")
            await store.open()
            try:
                await store.add_usage(f"batch-{time.monotonic_ns()}", rows)
            finally:
                await store.close()

        asyncio.run(add())


def config_text(tmp_path: Path, store: str) -> str:
    files = tmp_path / "files"
    files.mkdir(exist_ok=True)
    return (
        f"store: {store}\n"
        "keys:\n"
        "  secrets:\n"
        "    1: ${KEYFRONT_KEY_SECRET}\n"
        "routes:\n"
        f"  - {{prefix: /files/, origin: 'file://{files}/'}}\n"
        "  - {prefix: /v/, origin: 'http://127.0.0.1:9/', variant_params: [w]}\n"
        f"cache: {{dir: {tmp_path}/cache}}\n"
    )


@pytest.fixture
def kf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Keyfront:
    monkeypatch.setenv("KEYFRONT_KEY_SECRET", SECRET)  # for `given`, in this process
    config = tmp_path / "keyfront.yaml"
    config.write_text(config_text(tmp_path, f"sqlite://{tmp_path}/kf.db"))
    return Keyfront(config, tmp_path / "kf.db")


@pytest.fixture
def acme(kf: Keyfront) -> Keyfront:
    kf.given("customers", "create", "acme")
    return kf


# --- 1. a second terminal: read-only commands need no signing secret ---------------------


def test_read_only_commands_need_no_signing_secret(acme: Keyfront) -> None:
    key_id = acme.given("keys", "create", "--customer", "acme")["key_id"]
    listed = acme.json("keys", "list", secret=False)
    assert [k["key_id"] for k in listed] == [key_id]
    assert acme.json("keys", "show", key_id, secret=False)["key_id"] == key_id
    assert acme.json("customers", "show", "acme", secret=False)["customer_id"] == "acme"
    assert acme.json("usage", "--customer", "acme", secret=False) == []
    assert acme("keys", "update", key_id, "--name", "site", secret=False).returncode == 0


def test_commands_that_sign_name_the_secret_they_need(acme: Keyfront) -> None:
    key_id = acme.given("keys", "create", "--customer", "acme")["key_id"]
    for command in (
        ["keys", "create", "--customer", "acme"],
        ["keys", "roll", key_id],
        ["serve"],
        ["config", "check"],
    ):
        refused = acme(*command, expect=2, secret=False)
        assert "KEYFRONT_KEY_SECRET" in refused.stderr and "keys.secrets.1" in refused.stderr
        assert refused.stdout == ""
    assert [k["key_id"] for k in acme.given("keys", "list")] == [key_id]  # nothing minted


def test_only_secrets_may_be_left_unset(tmp_path: Path) -> None:
    """The admin token (config/redis.yaml has no default for it) is a secret too; any
    other field's unset variable is still the config error it always was."""
    config = tmp_path / "keyfront.yaml"
    config.write_text(config_text(tmp_path, f"sqlite://{tmp_path}/kf.db") +
                      "admin: {token: '${KEYFRONT_ADMIN_TOKEN}'}\n")  # fmt: skip
    kf = Keyfront(config, tmp_path / "kf.db")
    assert kf.json("customers", "list", secret=False) == []
    config.write_text(config_text(tmp_path, "${KEYFRONT_TEST_STORE}"))
    refused = kf("customers", "list", expect=2, secret=False)
    assert refused.stderr.splitlines() == [
        "config error: store: environment variable KEYFRONT_TEST_STORE is not set"
    ]


# --- 2. usage CSV: one header whatever the data ----------------------------------------


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _header(text: str) -> list[str]:
    return text.splitlines()[0].split(",")


def test_usage_csv_has_one_header_whatever_the_data(acme: Keyfront) -> None:
    key_id = acme.given("keys", "create", "--customer", "acme")["key_id"]
    empty = acme("usage", "--format", "csv").stdout
    header = _header(empty)
    assert empty.splitlines() == [",".join(header)]  # no rows, the full header
    assert header[:3] == ["customer", "key", "period"]
    assert header[3:8] == COUNTERS
    assert set(header) >= {f"denied_{code}" for code in SPEC_CODES}
    assert len(set(header)) == len(header)

    hour = int(time.time()) // 3600 * 3600
    acme.add_usage([
        UsageRow("key", key_id, hour, {"requests": 2, "bytes": 20, "denied_rate_limited": 1}),
        UsageRow("customer", "acme", hour, {"requests": 2, "bytes": 20, "denied_rate_limited": 1}),
    ])  # fmt: skip
    first = acme("usage", "--format", "csv").stdout
    acme.add_usage([
        UsageRow("key", key_id, hour, {"hits": 1, "denied_ip_not_allowed": 3}),
        UsageRow("customer", "acme", hour, {"hits": 1, "denied_ip_not_allowed": 3}),
    ])  # fmt: skip
    second = acme("usage", "--format", "csv").stdout
    by_key = acme("usage", "--key", key_id, "--by", "hour", "--format", "csv").stdout
    assert _header(first) == _header(second) == _header(by_key) == header
    row = _csv(second)[0]
    assert (row["customer"], row["key"], row["requests"], row["hits"]) == ("acme", "", "2", "1")
    assert (row["denied_rate_limited"], row["denied_ip_not_allowed"]) == ("1", "3")
    assert row["denied_key_expired"] == "0" and row["not_modified"] == "0"
    keyed = _csv(by_key)[0]
    assert (keyed["key"], keyed["customer"], keyed["denied_ip_not_allowed"]) == (key_id, "", "3")


# --- 3. date rules: --from inclusive, --to exclusive, a time of day honoured -----------


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def test_usage_dates_from_inclusive_to_exclusive_with_a_time_of_day(acme: Keyfront) -> None:
    hour = int(time.time()) // 3600 * 3600
    hours = [hour - i * 3600 for i in range(4, 0, -1)]  # the four hours before this one
    acme.add_usage([UsageRow("customer", "acme", h, {"requests": 10**i}) for i, h in
                    enumerate(hours)])  # fmt: skip
    hourly = acme.json("usage", "--customer", "acme", "--by", "hour", "--from", _iso(hours[1]))
    assert [r["start"] for r in hourly] == hours[1:]  # --from is inclusive
    window = acme.json("usage", "--by", "hour", "--from", _iso(hours[1]), "--to", _iso(hours[2]))
    assert [(r["start"], r["requests"]) for r in window] == [(hours[1], 10)]  # --to exclusive
    # By day (and month), a --from with a time of day counts from that hour, not from
    # the day's start nor from the next day.
    for grain in ("day", "month"):
        rows = acme.json("usage", "--customer", "acme", "--by", grain, "--from", _iso(hours[1]))
        assert sum(r["requests"] for r in rows) == 10 + 100 + 1000, grain
        rows = acme.json("usage", "--by", grain, "--from", _iso(hours[1]), "--to", _iso(hours[3]))
        assert sum(r["requests"] for r in rows) == 10 + 100, grain
    for start, end in ((hours[2], hours[1]), (hours[1], hours[1])):
        refused = acme("usage", "--from", _iso(start), "--to", _iso(end), expect=2)
        assert "--to" in refused.stderr and refused.stdout == ""
    usage_help = acme("usage", "--help").stdout
    assert "inclusive" in usage_help and "exclusive" in usage_help


# --- 4. --json errors, conflicting flags, exit codes ------------------------------------


def _error(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.stdout == ""  # as gh and kubectl: stdout stays empty on an error
    error: dict[str, Any] = json.loads(done.stderr)["error"]
    assert isinstance(error["message"], str) and error["message"]
    return error


def test_json_errors_not_found_conflict_bad_usage(acme: Keyfront) -> None:
    assert _error(acme("--json", "keys", "show", "A" * 22, expect=1))["code"] == "not_found"
    conflict = _error(acme("customers", "create", "acme", "--json", expect=3))
    assert conflict["code"] == "conflict" and "already exists" in conflict["message"]
    bad_value = _error(acme("--json", "keys", "create", "--customer", "acme", "--rate", "x",
                            expect=2))  # fmt: skip
    assert bad_value["code"] == "bad_usage" and "--rate" in bad_value["message"]
    assert _error(acme("--json", "keys", "list", "--bogus", expect=2))["code"] == "bad_usage"


def test_conflicting_flags_and_a_revoked_key(acme: Keyfront) -> None:
    both = _error(acme("--json", "usage", "--format", "csv", expect=2))
    assert "--format" in both["message"] and "--json" in both["message"]
    assert acme("usage", "--format", "json", "--json").returncode == 0  # they agree
    key_id = acme.given("keys", "create", "--customer", "acme")["key_id"]
    acme.given("keys", "revoke", key_id)
    assert _error(acme("--json", "keys", "roll", key_id, expect=3))["code"] == "conflict"
    assert "revoked" in acme("keys", "roll", key_id, expect=3).stderr


def test_store_unreachable_bad_config_and_the_table_in_help(tmp_path: Path) -> None:
    down = tmp_path / "down.yaml"
    down.write_text(config_text(tmp_path, f"redis://127.0.0.1:{free_port()}/0"))
    unreachable = Keyfront(down, tmp_path / "unused.db")
    assert _error(unreachable("--json", "keys", "list", expect=4))["code"] == "unavailable"
    assert unreachable("keys", "list", expect=4).stderr.startswith("store error: ")
    broken = tmp_path / "broken.yaml"
    broken.write_text("routes: []\n")
    config = _error(Keyfront(broken, tmp_path / "x.db")("--json", "keys", "list", expect=2))
    assert config["code"] == "bad_config" and "routes" in config["message"]
    top = unreachable("--help").stdout
    for line in ("0 ", "1 ", "2 ", "3 ", "4 "):
        assert any(row.strip().startswith(line) for row in top.splitlines()), line


# --- 5. help on every option, --version --------------------------------------------------


def _parsers(parser: argparse.ArgumentParser, name: str) -> Iterator[tuple[str, Any]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")
        else:
            yield name, action


def test_every_option_has_help_text() -> None:
    missing = [
        f"{name}: {'/'.join(action.option_strings) or action.dest}"
        for name, action in _parsers(build_parser(), "keyfront")
        if not action.help or action.help == argparse.SUPPRESS
    ]
    assert missing == []


def test_version(kf: Keyfront) -> None:
    version = importlib.metadata.version("keyfront")
    assert kf("--version").stdout.strip() == f"keyfront {version}"


# --- 6. footgun warnings, keys list --status ---------------------------------------------


def test_footguns_warn_and_go_on(acme: Keyfront) -> None:
    outside = acme("--json", "keys", "create", "--customer", "acme", "--path", "/nowhere/")
    assert "warning" in outside.stderr and "/nowhere/" in outside.stderr
    assert json.loads(outside.stdout)["paths"] == ["/nowhere/"]
    host_bits = acme("--json", "keys", "create", "--customer", "acme", "--ip", "10.0.0.5/8",
                     "--ip", "::1", "--path", "/files/a/", "--path", "/")  # fmt: skip
    assert "10.0.0.5/8" in host_bits.stderr and "10.0.0.0/8" in host_bits.stderr
    assert host_bits.stderr.count("warning") == 1
    assert json.loads(host_bits.stdout)["ips"] == ["10.0.0.0/8", "::1/128"]


def test_rolling_a_key_with_a_live_successor_warns(acme: Keyfront) -> None:
    key_id = acme.given("keys", "create", "--customer", "acme", "--name", "site")["key_id"]
    acme.given("keys", "create", "--customer", "acme", "--name", "other")
    first = acme("keys", "roll", key_id)
    assert "warning" not in first.stderr
    again = acme("--json", "keys", "roll", key_id)
    successor = first.stdout.split("key_id:")[1].split()[0]
    assert "warning" in again.stderr and f"successor: {successor}" in again.stderr
    assert json.loads(again.stdout)["replaces"] == key_id  # it still ran


def test_keys_list_by_status(acme: Keyfront) -> None:
    def new() -> str:
        key_id: str = acme.given("keys", "create", "--customer", "acme")["key_id"]
        return key_id

    revoked, disabled, expired = new(), new(), new()
    acme.given("keys", "revoke", revoked)
    acme.given("keys", "update", disabled, "--status", "disabled")
    active = acme.given("keys", "roll", expired, "--grace", "0")["key_id"]
    for status, expected in (("active", active), ("revoked", revoked), ("disabled", disabled),
                             ("expired", expired)):  # fmt: skip
        listed = acme.json("keys", "list", "--status", status)
        assert [k["key_id"] for k in listed] == [expected], status
    assert "invalid choice" in acme("keys", "list", "--status", "gone", expect=2).stderr


# --- 7. cache purge refuses what can name no cached object -------------------------------


def test_cache_purge_refuses_a_query_or_a_path_outside_every_route(kf: Keyfront) -> None:
    for args, named in (
        (["/files/a.txt?v=2"], "/files/a.txt?v=2"),
        (["/nowhere/a.txt"], "/nowhere/a.txt"),
        (["/files/a.txt", "/other/b.txt"], "/other/b.txt"),
        (["--prefix", "/nowhere/"], "/nowhere/"),
    ):
        refused = kf("cache", "purge", *args, expect=2)
        assert named in refused.stderr and refused.stdout == "", args
    assert kf.json("cache", "purge", "/files/a.txt")["announced"] is True
    assert kf.given("cache", "purge", "--prefix", "/files/sub/")["announced"] is True
    assert kf.given("cache", "purge", "--prefix", "/")["announced"] is True  # every route
    # A route with variants: a query names the one variant (README "Variants").
    assert kf.given("cache", "purge", "/v/a.txt?w=100")["announced"] is True


# --- 8. sign: a URL usable as printed, that a real keyfront accepts ----------------------


def test_signed_url_is_percent_encoded_and_accepted(tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    name = "a b\u00e9.txt"  # a space and a non-ASCII letter
    (files / name).write_text("signed bytes")
    body = (
        f"store: sqlite://{tmp_path}/kf.db\n"
        'keys: {secrets: {1: "${KEYFRONT_KEY_SECRET}"}}\n'
        f"routes:\n  - {{prefix: /files/, origin: 'file://{files}/'}}\n"
    )
    instance = start_keyfront(body, str(tmp_path))
    try:
        instance.cli("customers", "create", "acme")
        created = instance.cli("--json", "keys", "create", "--customer", "acme",
                               "--require-signed-links", "--link-secret", LINK_SECRET)  # fmt: skip
        key = json.loads(created.stdout)["key"]
        signed = instance.cli("sign", f"/files/{name}", "--key", key, "--link-secret",
                              LINK_SECRET).stdout.strip()  # fmt: skip
        assert signed.isascii() and " " not in signed
        assert signed.startswith("/files/a%20b%C3%A9.txt?")
        with urllib.request.urlopen(instance.url + signed, timeout=10) as reply:
            assert (reply.status, reply.read()) == (200, b"signed bytes")
        full = instance.cli("--json", "sign", f"http://127.0.0.1:{instance.port}/files/{name}",
                            "--key", key, "--link-secret", LINK_SECRET)  # fmt: skip
        with urllib.request.urlopen(json.loads(full.stdout)["url"], timeout=10) as reply:
            assert reply.read() == b"signed bytes"
    finally:
        instance.stop()
