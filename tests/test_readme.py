"""Every YAML block in README.md is a config that `keyfront config check` accepts
(issue 15: the README's own example did not parse). A block that shows only some
sections is checked inside the smallest config that completes it; the folders it names
are made under a temporary root, and the environment variables it names are set."""

from __future__ import annotations

import base64
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import KEYFRONT

README = Path(__file__).resolve().parent.parent / "README.md"
SECRET = "a-signing-secret-of-32-characters"
# Standard Webhooks secrets (export sinks, alerts) have a shape of their own
WHSEC = "whsec_" + base64.b64encode(b"a-webhook-secret-of-32-bytes-0123").decode()


def yaml_blocks() -> list[tuple[int, str]]:
    """(line number, text) of each fenced ```yaml block."""
    blocks, lines, start = [], README.read_text().splitlines(), None
    for number, line in enumerate(lines, 1):
        if start is None and line.strip() == "```yaml":
            start = number
        elif start is not None and line.strip() == "```":
            blocks.append((start, "\n".join(lines[start : number - 1])))
            start = None
    return blocks


BLOCKS = yaml_blocks()


def test_the_readme_has_yaml_blocks() -> None:
    assert len(BLOCKS) >= 3  # the reference config, S3 origins, external keys


@pytest.mark.parametrize(("line", "text"), BLOCKS, ids=[f"README.md:{n}" for n, _ in BLOCKS])
def test_a_readme_yaml_block_passes_config_check(line: int, text: str, tmp_path: Path) -> None:
    # Absolute paths (/srv/files, /var/cache/keyfront, /etc/keyfront/tls/...) move
    # under tmp_path.
    text = re.sub(r"(?<=[ /])/(srv|var|etc)/", f"{tmp_path}/\\1/", text)
    fragment = yaml.safe_load(text)
    assert isinstance(fragment, dict), f"README.md:{line} is not a YAML mapping"
    config = _complete(fragment, tmp_path)
    for pair in (config.get("tls") or {}).get("certificates", []):
        _certificate(Path(pair["cert"]), Path(pair["key"]))
    for route in config["routes"]:
        if route["origin"].startswith("file://"):
            Path(route["origin"].removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    path = tmp_path / "keyfront.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "KEYFRONT_KEY_SECRET": SECRET}
    for name in set(re.findall(r"\$\{([A-Z0-9_]+)", text)):
        env[name] = WHSEC if name.endswith(("WEBHOOK_SECRET", "ALERT_SECRET")) else SECRET
    result = subprocess.run(
        [KEYFRONT, "config", "check", "-c", str(path)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, f"README.md:{line}: {result.stderr or result.stdout}"


def _certificate(cert: Path, key: Path) -> None:
    """A self-signed pair where the block names one, for the name in its file name."""
    name = cert.name.removesuffix(".pem")
    cert.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}",
         "-addext", f"subjectAltName=DNS:{name}"],
        capture_output=True, check=True, timeout=30,
    )  # fmt: skip


def _complete(fragment: dict[str, Any], root: Path) -> dict[str, Any]:
    """The fragment, with the two required sections added where it lacks them."""
    config = dict(fragment)
    keys = dict(config.get("keys") or {})
    keys.setdefault("secrets", {1: "${KEYFRONT_KEY_SECRET}"})
    config["keys"] = keys
    config.setdefault("routes", [{"prefix": "/request/", "origin": f"file://{root}/files/"}])
    config.setdefault("store", f"sqlite://{root}/keyfront.db")
    return config
