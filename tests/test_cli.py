"""The command line (SPEC section 8), run in-process through `main()` against a real
config file and a real SQLite store in a temporary directory; one test runs the
installed `keyfront` console script as a process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from proxy.cli import main
from proxy.keys import KeySigner
from proxy.policy import check_link, normalise_path

SECRET = "a-secret-of-at-least-16-chars"
SIGNER = KeySigner("pk", {1: SECRET})
LINK_SECRET = "link-secret-0123456789"


def write_config(tmp_path: Path, **overrides: str) -> Path:
    files = tmp_path / "files"
    files.mkdir(exist_ok=True)
    (files / "a.txt").write_text("hello")
    settings = {
        "store": f"sqlite://{tmp_path}/kf.db",
        "origin": f"file://{files}/",
        "rate": "20/s",
    } | overrides
    path = tmp_path / "keyfront.yaml"
    path.write_text(
        f"store: {settings['store']}\n"
        "keys:\n"
        f"  secrets: {{1: {SECRET}}}\n"
        f"  defaults: {{rate: {settings['rate']}, burst: 40}}\n"
        "routes:\n"
        f"  - {{prefix: /files/, origin: '{settings['origin']}'}}\n"
        f"cache: {{dir: {tmp_path}/cache}}\n"
    )
    return path


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Cli:
    """`keyfront -c <config> ARGS...` in process; asserts the exit status."""

    config: Path
    capsys: pytest.CaptureFixture[str]

    def __call__(self, *args: str, expect: int = 0) -> Result:
        code = main(["-c", str(self.config), *args])
        out, err = self.capsys.readouterr()
        assert code == expect, f"exit {code}\nstdout: {out}\nstderr: {err}"
        return Result(code, out, err)

    def json(self, *args: str) -> Any:
        return self("--json", *args).json()

    def new_key(self, *args: str, customer: str = "acme") -> dict[str, Any]:
        created: dict[str, Any] = self.json("keys", "create", "--customer", customer, *args)
        return created


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(write_config(tmp_path), capsys)


@pytest.fixture
def acme(cli: Cli) -> Cli:
    """A CLI whose store holds customer `acme` with plan caps."""
    cli(
        "customers",
        "create",
        "acme",
        "--name",
        "Acme",
        "--max-rate",
        "10/s",
        "--max-burst",
        "20",
        "--quota-requests",
        "1000",
        "--quota-bytes",
        "1GiB",
    )
    return cli


# --- customers ---


def test_customer_create_list_show_update_disable(cli: Cli) -> None:
    created = cli.json("customers", "create", "acme", "--name", "Acme Inc", "--max-rate", "600/m")
    assert created["customer_id"] == "acme" and created["max_rate"] == "600/m"
    assert created["status"] == "active" and abs(created["created_at"] - time.time()) < 5
    cli("customers", "create", "zeta")

    listing = cli("customers", "list").out.splitlines()
    assert listing[0].split()[:3] == ["customer_id", "name", "status"]
    assert [line.split()[0] for line in listing[1:]] == ["acme", "zeta"]
    assert "Acme Inc" in listing[1] and "600/m" in listing[1]

    shown = cli("customers", "show", "acme").out
    assert "name:" in shown and "Acme Inc" in shown
    assert datetime.fromtimestamp(created["created_at"], UTC).strftime("%Y-%m-%dT") in shown

    updated = cli.json("customers", "update", "acme", "--max-burst", "50", "--quota-bytes", "2GiB")
    assert (updated["max_burst"], updated["quota_bytes"]) == (50, 2 * 1024**3)
    assert updated["name"] == "Acme Inc" and updated["max_rate"] == "600/m"  # kept
    assert cli.json("customers", "disable", "acme")["status"] == "disabled"
    assert cli.json("customers", "update", "acme", "--status", "active")["status"] == "active"
    assert [c["customer_id"] for c in cli.json("customers", "list")] == ["acme", "zeta"]


def test_customer_billing_id_and_alert_webhook(cli: Cli) -> None:
    # SPEC section 16: exported usage carries billing_id; alerts go to alert_webhook.
    cli("customers", "create", "acme")
    updated = cli.json("customers", "update", "acme", "--billing-id", "cus_NffrFeUfNV2Hib",
                       "--alert-webhook", "https://hooks.acme.example/keyfront")  # fmt: skip
    assert updated["billing_id"] == "cus_NffrFeUfNV2Hib"
    assert updated["alert_webhook"] == "https://hooks.acme.example/keyfront"
    assert cli.json("customers", "show", "acme")["billing_id"] == "cus_NffrFeUfNV2Hib"
    local = cli.json("customers", "update", "acme", "--alert-webhook", "http://127.0.0.1:9/a")
    assert local["alert_webhook"] == "http://127.0.0.1:9/a"  # a relay on this host
    for url, problem in (
        ("http://hooks.acme.example/", "plain http only to"),
        ("https://169.254.169.254/latest/meta-data/", "not a public host"),
        ("https://10.0.0.5/", "not a public host"),
        ("https://[fd00::1]/", "not a public host"),
        ("https://localhost/", "not a public host"),
        ("https://metadata.google.internal/", "not a public host"),
        ("https://user:pw@hooks.acme.example/", "no user:password@"),
        ("ftp://hooks.acme.example/", "expected https://"),
        ("https://hooks.acme.example:99999/", "bad port"),
    ):
        assert problem in cli("customers", "update", "acme", "--alert-webhook", url, expect=2).err
    assert "printable" in cli("customers", "update", "acme", "--billing-id", "a b", expect=2).err


def test_duplicate_customer_is_refused(cli: Cli) -> None:
    cli("customers", "create", "acme")
    result = cli("customers", "create", "acme", expect=3)  # a conflict (issue 15)
    assert "acme already exists" in result.err and result.out == ""


def test_unknown_customer_and_bad_customer_id(cli: Cli) -> None:
    assert "no such customer: nobody" in cli("customers", "show", "nobody", expect=1).err
    assert "no such customer" in cli("customers", "disable", "nobody", expect=1).err
    assert "customer id" in cli("customers", "create", "bad id!", expect=2).err


# --- keys ---


def test_key_create_prints_a_key_that_verifies_and_is_never_shown_again(acme: Cli) -> None:
    created = acme.new_key("--name", "website", "--rate", "5/s", "--ip", "10.1.2.3/8")
    parsed = SIGNER.verify(created["key"])
    assert (parsed.key_id, parsed.version) == (created["key_id"], 1)
    assert created["customer_id"] == "acme" and created["name"] == "website"
    assert created["rate"] == "5/s" and created["ips"] == ["10.0.0.0/8"]  # normalised CIDR

    shown = acme.json("keys", "show", created["key_id"])
    assert shown["key_id"] == created["key_id"] and "key" not in shown
    by_full_key = acme("keys", "show", created["key"]).out  # a full key is accepted too
    assert created["key_id"] in by_full_key and created["key"] not in by_full_key
    listing = acme("keys", "list", "--customer", "acme").out
    assert created["key_id"] in listing and created["key"] not in listing


def test_key_create_text_output(acme: Cli) -> None:
    result = acme("keys", "create", "--customer", "acme")
    lines = dict(line.split(":", 1) for line in result.out.splitlines())
    key = lines["key"].strip()
    assert SIGNER.verify(key).key_id == lines["key_id"].strip()
    assert lines["customer_id"].strip() == "acme"
    assert "only this once" in result.err


def test_key_create_refuses_unknown_or_disabled_customer(acme: Cli) -> None:
    assert "no such customer: ghost" in acme("keys", "create", "--customer", "ghost", expect=1).err
    acme("customers", "disable", "acme")
    assert "disabled" in acme("keys", "create", "--customer", "acme", expect=3).err
    assert acme.json("keys", "list") == []


@pytest.mark.parametrize(
    ("option", "value", "cap"),
    [
        ("--rate", "11/s", "max_rate 10/s"),
        ("--rate", "3600/m", "max_rate 10/s"),
        ("--burst", "21", "max_burst 20"),
        ("--ip-rate", "11/s", "max_rate 10/s"),
        ("--ip-burst", "21", "max_burst 20"),
        ("--quota-requests", "1001", "quota_requests 1000"),
        ("--quota-bytes", "2GiB", "quota_bytes 1GiB"),
    ],
)
def test_key_settings_above_the_plan_caps_are_refused(
    acme: Cli, option: str, value: str, cap: str
) -> None:
    err = acme("keys", "create", "--customer", "acme", option, value, expect=2).err
    assert f"argument {option}:" in err and cap in err
    assert acme.json("keys", "list") == []


def test_key_settings_at_the_plan_caps_are_accepted(acme: Cli) -> None:
    created = acme.new_key(
        "--rate", "600/m", "--burst", "20", "--quota-requests", "1000", "--quota-bytes", "1GiB"
    )
    assert (created["rate"], created["burst"], created["quota_bytes"]) == ("600/m", 20, 1024**3)
    updated = acme("keys", "update", created["key_id"], "--burst", "21", expect=2)
    assert "--burst" in updated.err and "max_burst 20" in updated.err


def test_key_rate_per_client_ip_create_update_clear(acme: Cli) -> None:
    created = acme.new_key("--rate", "10/s", "--ip-rate", "120/m", "--ip-burst", "5")
    assert (created["ip_rate"], created["ip_burst"]) == ("120/m", 5)
    key_id = created["key_id"]
    shown = acme("keys", "show", key_id).out
    assert "ip_rate:" in shown and "120/m" in shown and "ip_burst:" in shown
    assert acme.json("keys", "list")[0]["ip_rate"] == "120/m"

    updated = acme.json("keys", "update", key_id, "--ip-burst", "20")
    assert (updated["ip_rate"], updated["ip_burst"], updated["rate"]) == ("120/m", 20, "10/s")
    refused = acme("keys", "update", key_id, "--ip-rate", "3600/m", expect=2).err
    assert "argument --ip-rate:" in refused and "max_rate 10/s" in refused
    cleared = acme.json("keys", "update", key_id, "--clear-ip-rate")
    assert (cleared["ip_rate"], cleared["ip_burst"], cleared["rate"]) == (None, None, "10/s")
    assert acme.json("keys", "show", key_id) == cleared
    assert acme.new_key()["ip_rate"] is None


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--ip", "10.0.0.300/8"),
        ("--ip", "not-an-ip"),
        ("--path", "files/"),
        ("--referrer", "https://"),
        ("--rate", "fast"),
        ("--ip-rate", "0/s"),
        ("--ip-burst", "0"),
        ("--quota-bytes", "lots"),
        ("--expires", "2000-01-01"),
        ("--expires", "5"),
        ("--link-secret", "short"),
    ],
)
def test_bad_key_values_are_refused_naming_the_option(acme: Cli, option: str, value: str) -> None:
    err = acme("keys", "create", "--customer", "acme", option, value, expect=2).err
    assert f"argument {option}" in err
    assert acme.json("keys", "list") == []


def test_path_referrer_pattern_warns_about_browser_referrer_policy(acme: Cli) -> None:
    quiet = acme("keys", "create", "--customer", "acme", "--referrer", "*.example.com")
    assert "warning" not in quiet.err
    loud = acme(
        "--json",
        "keys",
        "create",
        "--customer",
        "acme",
        "--referrer",
        "https://app.example.com/maps/*",
    )
    assert "warning" in loud.err and "strict-origin-when-cross-origin" in loud.err
    assert loud.json()["referrers"] == ["https://app.example.com/maps/*"]


def test_expiry_as_date_or_duration(acme: Cli) -> None:
    in_30_days = acme.new_key("--expires", "30d")["expires_at"]
    assert abs(in_30_days - (time.time() + 30 * 86400)) < 5
    assert acme.new_key("--expires", "2099-01-01")["expires_at"] == 4070908800  # UTC midnight
    dated = acme.new_key("--expires", "2099-01-01T02:00:00+02:00")["expires_at"]
    assert dated == 4070908800


def test_key_update_replaces_lists_and_clears(acme: Cli) -> None:
    key_id = acme.new_key(
        "--referrer",
        "a.example.com",
        "--referrer",
        "b.example.com",
        "--ip",
        "10.0.0.0/8",
        "--path",
        "/files/x/",
        "--expires",
        "1d",
    )["key_id"]
    updated = acme.json("keys", "update", key_id, "--referrer", "c.example.com", "--name", "n")
    assert updated["referrers"] == ["c.example.com"] and updated["name"] == "n"
    assert updated["ips"] == ["10.0.0.0/8"] and updated["paths"] == ["/files/x/"]  # untouched
    cleared = acme.json(
        "keys",
        "update",
        key_id,
        "--clear-ips",
        "--clear-paths",
        "--no-expiry",
        "--status",
        "disabled",
        "--no-allow-no-referrer",
    )
    assert (cleared["ips"], cleared["paths"], cleared["expires_at"]) == ([], [], None)
    assert cleared["status"] == "disabled" and cleared["allow_no_referrer"] is False
    assert acme.json("keys", "show", key_id) == cleared
    assert "no such key" in acme("keys", "update", "A" * 22, "--name", "x", expect=1).err


def test_signed_links_secret_is_generated_and_shown_only_when_set(acme: Cli) -> None:
    created = acme.new_key("--require-signed-links")
    assert created["require_signed_links"] is True and len(created["link_secret"]) >= 32
    shown = acme.json("keys", "show", created["key_id"])
    assert "link_secret" not in shown and shown["has_link_secret"] is True
    assert created["link_secret"] not in acme("keys", "show", created["key_id"]).out
    renamed = acme.json("keys", "update", created["key_id"], "--name", "x")
    assert "link_secret" not in renamed
    replaced = acme.json("keys", "update", created["key_id"], "--link-secret", LINK_SECRET)
    assert replaced["link_secret"] == LINK_SECRET


def test_revoke_is_final(acme: Cli) -> None:
    key_id = acme.new_key()["key_id"]
    assert acme("keys", "revoke", key_id).out.strip() == f"revoked {key_id}"
    assert acme.json("keys", "show", key_id)["status"] == "revoked"
    assert "revoked" in acme("keys", "update", key_id, "--status", "active", expect=3).err
    assert "revoked" in acme("keys", "roll", key_id, expect=3).err
    assert acme.json("keys", "show", key_id)["status"] == "revoked"


def test_roll_mints_a_new_key_with_the_same_settings_and_retires_the_old(acme: Cli) -> None:
    old = acme.new_key(
        "--name",
        "site",
        "--referrer",
        "*.example.com",
        "--ip",
        "192.0.2.0/24",
        "--path",
        "/files/",
        "--rate",
        "5/s",
        "--burst",
        "10",
        "--require-signed-links",
    )
    rolled = acme.json("keys", "roll", old["key_id"], "--grace", "1h")
    assert SIGNER.verify(rolled["key"]).key_id == rolled["key_id"] != old["key_id"]
    assert rolled["replaces"] == old["key_id"]
    identity = ("key", "key_id", "created_at", "replaces", "replaced_expires_at")
    settings = {k: v for k, v in old.items() if k not in identity}
    assert {k: v for k, v in rolled.items() if k not in identity} == settings

    retired = acme.json("keys", "show", old["key_id"])
    assert abs(retired["expires_at"] - (time.time() + 3600)) < 5
    assert retired["expires_at"] == rolled["replaced_expires_at"] and retired["status"] == "active"
    assert acme.json("keys", "show", rolled["key_id"])["expires_at"] is None


def test_roll_default_grace_and_grace_zero(acme: Cli) -> None:
    first = acme.new_key()["key_id"]
    second = acme.json("keys", "roll", first)["key_id"]
    assert abs(acme.json("keys", "show", first)["expires_at"] - (time.time() + 86400)) < 5
    acme("keys", "roll", second, "--grace", "0")
    assert acme.json("keys", "show", second)["expires_at"] <= time.time()
    assert len(acme.json("keys", "list", "--customer", "acme")) == 3


# --- sign ---


def test_sign_adds_a_signature_the_proxy_accepts(acme: Cli) -> None:
    key = acme.new_key("--require-signed-links", "--link-secret", LINK_SECRET)["key"]
    signed = acme.json(
        "sign",
        "https://cdn.example.com/files/dir/a%20b.svg?v=2&key=old",
        "--key",
        key,
        "--link-secret",
        LINK_SECRET,
        "--ttl",
        "1h",
    )
    url = urlsplit(signed["url"])
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert (url.netloc, url.path) == ("cdn.example.com", "/files/dir/a%20b.svg")
    assert query["v"] == "2" and query["key"] == key
    assert int(query["expires"]) == signed["expires"]
    assert abs(signed["expires"] - (time.time() + 3600)) < 5
    now = time.time()
    path = normalise_path(url.path)
    check_link(path, query["expires"], query["sig"], LINK_SECRET, True, now)  # does not raise
    with pytest.raises(Exception, match="signature"):
        check_link("/files/other.svg", query["expires"], query["sig"], LINK_SECRET, True, now)


def test_sign_a_path_in_text_mode(acme: Cli) -> None:
    key = acme.new_key()["key"]
    out = acme("sign", "/files/a.txt", "--key", key, "--link-secret", LINK_SECRET).out.strip()
    assert out.startswith("/files/a.txt?key=") and "&expires=" in out and "&sig=" in out
    assert (
        "argument --key"
        in acme("sign", "/files/a.txt", "--key", "nope", "--link-secret", LINK_SECRET, expect=2).err
    )
    assert (
        "argument URL"
        in acme(
            "sign", "/files/../etc/passwd", "--key", key, "--link-secret", LINK_SECRET, expect=2
        ).err
    )


# --- config, global options, errors ---


def test_config_check_ok(cli: Cli) -> None:
    assert cli("config", "check").out.startswith("ok: ")
    checked = cli.json("config", "check")
    assert checked["ok"] is True and checked["file"] == str(cli.config)


def test_broken_config_exits_2_naming_the_field(tmp_path: Path, cli: Cli) -> None:
    cli.config = write_config(tmp_path, rate="fast")
    err = cli("config", "check", expect=2).err
    assert err.startswith("config error: keys.defaults.rate")
    assert "keys.defaults.rate" in cli("customers", "list", expect=2).err


def test_global_options_before_or_after_the_command(
    cli: Cli, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cli("customers", "create", "acme")
    assert main(["customers", "list", "--json", "-c", str(cli.config)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["customer_id"] == "acme"
    assert main(["--json", "customers", "--config", str(cli.config), "show", "acme"]) == 0
    assert json.loads(capsys.readouterr().out)["customer_id"] == "acme"
    monkeypatch.setenv("KEYFRONT_CONFIG", str(cli.config))
    assert main(["customers", "show", "acme"]) == 0
    assert "acme" in capsys.readouterr().out
    monkeypatch.delenv("KEYFRONT_CONFIG")
    assert main(["customers", "list"]) == 2
    assert "KEYFRONT_CONFIG" in capsys.readouterr().err


def test_store_error_exits_4(tmp_path: Path, cli: Cli) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    cli.config = write_config(tmp_path, store=f"sqlite://{blocker}/kf.db")
    assert cli("customers", "list", expect=4).err.startswith("store error: ")


def test_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("keyfront")
    executable = str(script) if script.exists() else shutil.which("keyfront")
    assert executable, "the keyfront console script is not installed"
    config = str(write_config(tmp_path))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [executable, *args, "-c", config], check=False, capture_output=True, text=True
        )

    assert run("customers", "create", "acme").returncode == 0
    created = run("keys", "create", "--customer", "acme", "--json")
    assert created.returncode == 0, created.stderr
    assert SIGNER.verify(json.loads(created.stdout)["key"])
    module = subprocess.run(
        [sys.executable, "-m", "proxy", "keys", "list", "-c", config],
        check=False,
        capture_output=True,
        text=True,
    )
    assert module.returncode == 0 and json.loads(created.stdout)["key_id"] in module.stdout
    assert run("keys", "show", "nokeyidlikethis00000", "--json").returncode == 1


def test_config_check_and_start_up_name_every_error_of_the_file(tmp_path: Path) -> None:
    # Issue 14: every error at once, each with its field path, not only the first.
    files = tmp_path / "files"
    files.mkdir()
    config = tmp_path / "broken.yaml"
    config.write_text(
        "workers: 0\n"
        "keys:\n"
        "  secrets: {1: short}\n"
        "  defaults: {rate: fast, burst: 40}\n"
        "admin: {token: '${KEYFRONT_TEST_UNSET_TOKEN}'}\n"
        "routes:\n"
        f"  - {{prefix: /files/, origin: 'file://{tmp_path}/nope/'}}\n"
        "  - {prefix: /open/, origin: 'https://o.example/', auth: token}\n"
        f"  - {{prefix: /s3/, origin: 'file://{files}/', s3: {{region: eu}}}}\n"
        f"cache: {{dir: {tmp_path}/cache, max_size: lots}}\n"
    )
    fields = ["workers", "keys.secrets.1", "keys.defaults.rate", "admin.token"]
    fields += ["routes[0].origin", "routes[1].auth", "routes[2].s3", "cache.max_size"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYFRONT_")}
    keyfront = str(Path(sys.executable).with_name("keyfront"))

    for command in (["config", "check"], ["serve"]):
        done = subprocess.run(
            [keyfront, *command, "-c", str(config)],
            check=False,
            capture_output=True,
            env=env,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2, done.stderr
        lines = [line.removeprefix("config error: ") for line in done.stderr.splitlines()]
        named = [line.split(": ", 1)[0] for line in lines]
        assert sorted(named) == sorted(fields), done.stderr  # one line each, nothing else
