"""Loading the config file: read the YAML strictly, interpolate `${VAR}`, read the
tree into a Config (schema.py); and `describe()` for `keyfront config check`."""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from ..errors import ConfigError
from ..units import format_size
from .read import certificate_facts
from .schema import CONFIG, MAX_EXTERNAL_KEY, Config, ExternalKeysConfig
from .sections import WITHHELD, Unresolved, join

_VARIABLE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_SECRET_FILE = 64 * 1024  # bytes: a secret, not a document
# The secret fields that `need_secrets=False` may leave unread: the signing secrets
# (keys.secrets is then empty), the admin token, the imported keys' hash secret, the
# key API's token, S3 credentials. No command that takes it signs, verifies or serves.
_SECRET_FIELD = re.compile(
    r"keys\.secrets\.[^.]+|admin\.token|keys\.external\.(hash_secret|lookup\.token)"
    r"|routes\[[0-9]+\]\.s3\.(access_key_id|secret_access_key)"
    r"|export\.sinks\[[0-9]+\]\.(secret|api_key|token)|alerts\.secret"
)


def load(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    need_secrets: bool = True,
) -> Config:
    """The Config in `path` (else $KEYFRONT_CONFIG), with `${VAR}` taken from `environ`
    (default os.environ). Relative paths in it resolve against the file's folder.
    Raises ConfigError naming every bad field of the file, in the file's order (issue
    14); a YAML syntax error or an unreadable file is one error.

    `need_secrets=False` is for commands that only read the store (issue 15: a second
    terminal lists keys with only KEYFRONT_CONFIG set): a secret field whose `${VAR}`
    is not set reads as not given, `keys.secrets` as empty (no key can be minted or
    verified with such a Config). Every other field is checked as always."""
    env = os.environ if environ is None else environ
    path = path or env.get("KEYFRONT_CONFIG")
    if not path:
        raise ConfigError("", "no config file: pass -c FILE or set KEYFRONT_CONFIG")
    source = os.path.abspath(path)
    env = _Environment(env, Path(source).parent)
    tree = _interpolate(_read_yaml(source), "", env, need_secrets)
    config: Config = CONFIG(tree, "", Path(source).parent)
    return dataclasses.replace(config, source=source)


def _interpolate(node: Any, at: str, env: Mapping[str, str], need_secrets: bool) -> Any:
    """`${VAR}` / `${VAR:-default}` in every string scalar. Done after YAML parsing, so
    a secret's characters are never read as YAML; `$${` is a literal `${`. Without
    `need_secrets`, a secret field that cannot be resolved is WITHHELD."""
    if isinstance(node, dict):
        return {k: _interpolate(v, join(at, k), env, need_secrets) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, f"{at}[{i}]", env, need_secrets) for i, v in enumerate(node)]
    if isinstance(node, str):
        try:
            return _VARIABLE.sub(lambda match: _substitute(match, at, env), node)
        except ConfigError as exc:
            if not need_secrets and _SECRET_FIELD.fullmatch(at):
                return WITHHELD
            return Unresolved(exc.problems)
    return node


def _substitute(match: re.Match[str], at: str, env: Mapping[str, str]) -> str:
    if match.group(0) == "$${":
        return "${"
    if match.group(1) is None:
        raise ConfigError(at, "unterminated ${ (write $${ for a literal ${)")
    if match.group(1).startswith("file:"):
        return _secret_file(match.group(1).removeprefix("file:"), at, env)
    name, has_default, default = match.group(1).partition(":-")
    if not _NAME.fullmatch(name):
        raise ConfigError(at, f"bad variable reference ${{{match.group(1)}}}")
    value = env.get(name)
    if value is None and env.get(f"{name}_FILE"):  # Docker's convention: VAR_FILE=/run/...
        return _secret_file(env[f"{name}_FILE"], at, env)
    if has_default and not value:  # as in the shell and compose: unset or empty
        return default
    if value is None:
        raise ConfigError(at, f"environment variable {name} is not set")
    return value


class _Environment(dict[str, str]):
    """The environment `${...}` reads, and the folder a relative `${file:...}` path
    resolves against (the config file's, as every other relative path)."""

    def __init__(self, env: Mapping[str, str], base: Path) -> None:
        super().__init__(env)
        self.base = base


def _secret_file(path: str, at: str, env: Mapping[str, str]) -> str:
    """A secret kept in a file, as Docker and Kubernetes mount them (issue 16):
    `${file:/run/secrets/key_secret}`, or `${VAR}` with `VAR_FILE` set instead of
    `VAR`. The content is used as is, less one trailing newline (what `echo` or a
    Secret's editor leaves). Its text never appears in an error; at most
    MAX_SECRET_FILE bytes are read."""
    if not path:
        raise ConfigError(at, "${file:} needs a path, e.g. ${file:/run/secrets/key_secret}")
    base = env.base if isinstance(env, _Environment) else Path.cwd()
    full = os.path.join(base, path)
    try:
        with open(full, "rb") as f:
            data = f.read(MAX_SECRET_FILE + 1)
    except OSError as exc:
        raise ConfigError(at, f"cannot read secret file {full}: {exc.strerror}") from None
    if len(data) > MAX_SECRET_FILE:
        raise ConfigError(at, f"secret file {full} is over {MAX_SECRET_FILE} bytes")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ConfigError(at, f"secret file {full} is not UTF-8 text") from None
    return text.removesuffix("\n").removesuffix("\r")


class _StrictLoader(yaml.SafeLoader):
    """Refuses a key written twice in one mapping, which PyYAML would silently let the
    last one win (two `cache:` sections, say)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = (key_node.tag, key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key_node.tag != "tag:yaml.org,2002:merge" and key in seen:
                problem = f"duplicate key {key_node.value!r}"
                raise yaml.MarkedYAMLError(problem=problem, problem_mark=key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _read_yaml(source: str) -> Any:
    try:
        with open(source, encoding="utf-8") as file:
            return yaml.load(file, Loader=_StrictLoader)  # a SafeLoader: plain data only
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError("", f"cannot read config file {source}: {reason}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError("", f"{source}{where}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{source}: {exc}") from None


def describe(config: Config) -> str:
    """A short summary for `keyfront config check`; shows no secret or password."""
    store = urlsplit(config.store)
    password = f":{store.password}@"
    lines = [
        f"listen {config.listen} (admin {config.admin_listen}), workers {config.workers}",
        f"store {config.store.replace(password, ':***@', 1) if store.password else config.store}",
        f"cache {config.cache.dir} ({format_size(config.cache.max_size)})",
        f"key secrets: versions {sorted(config.keys.secrets)}, prefix {config.keys.prefix}",
        _external_summary(config.keys.external),
    ]
    lines.append(_compression_summary(config))
    lines += [
        f"route {r.prefix} -> {r.origin} (auth {r.auth}{'' if r.compress else ', compress off'})"
        for r in config.routes
    ]
    if config.tls is not None:
        tls = config.tls
        lines.append(f"tls: TLS {tls.min_version}+, files re-read every {tls.reload_interval:g}s")
        for pair in tls.certificates:
            facts = certificate_facts(pair.cert)
            expires = time.strftime("%Y-%m-%d", time.gmtime(facts.not_after))
            lines.append(f"  certificate {pair.cert}: {', '.join(facts.names)}, until {expires}")
    if config.redirect_http_listen is not None:
        lines.append(f"redirect {config.redirect_http_listen} -> https:// (308)")
    if config.export is not None:  # SPEC section 16; URLs only, never a secret
        every = f"every {config.export.period // 60} min"
        lines += [f"export {every} to {s.name} ({s.type} {s.url})" for s in config.export.sinks]
    return "\n".join(lines)


def _compression_summary(config: Config) -> str:
    compression = config.compression
    if not compression.encodings:
        return "compression off (compression.encodings is empty)"
    return (
        f"compression {', '.join(compression.encodings)} of {', '.join(compression.types)}"
        f" from {format_size(compression.min_size)}"
    )


def _external_summary(external: ExternalKeysConfig) -> str:
    """How external keys are told apart and hashed: changing the hash secret makes
    every imported key unknown until the keys are imported again."""
    hashed = (
        "keys.external.hash_secret (changing it unlinks every imported key)"
        if external.hash_secret
        else "a secret generated at the first import and kept in the store; it survives "
        "signing-secret rotation (set keys.external.hash_secret to keep it out of the store)"
    )
    return (
        f"external keys: whole key matches {external.pattern.pattern!r} "
        f"(at most {MAX_EXTERNAL_KEY} characters); imported keys hashed with {hashed}"
    )
