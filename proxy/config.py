"""The config model (SPEC section 7): frozen, typed, built once by `load()`.

This module owns the YAML file's schema and its reading: the frozen dataclasses every
other module reads (nothing reads the YAML dict-of-dicts), `${VAR}` interpolation, the
parsing and checking of each field, and `describe()` for `keyfront config check`. It
is a leaf: it imports nothing of keyfront but `errors` and `units`, so any layer may
name a config type without an import cycle.

Each field is declared once, in its dataclass: its type, how its YAML value is read
(`Annotated[type, parser]`), and its default (a field without one is required). One
generic parser walks `dataclasses.fields()`; a field without a parser is an error at
import. `load()` raises one ConfigError listing every problem of the file, each with
its field path (`routes[1].origin: ...`), in the file's order (issue 14).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from difflib import get_close_matches
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal, get_type_hints
from urllib.parse import urlsplit

import yaml

from .errors import ConfigError
from .units import Rate, format_size, parse_duration, parse_rate, parse_size

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_EXTERNAL_PATTERN = "[A-Za-z0-9._~-]{8,128}"
MAX_EXTERNAL_KEY = 256  # characters: a longer presented key is key_invalid before any regex

_Parser = Callable[[Any, str, Path], Any]  # (raw YAML value, field path, config dir) -> value
_Found = Iterator[tuple[str, str]]  # problems found: (field path, what is wrong)
_KINDS = {type(None): "null", bool: "a boolean", int: "an integer", float: "a number"}
_KINDS |= {str: "a string", list: "a list", dict: "a mapping"}


# --- the schema (SPEC section 7): each field once, `Annotated[type, parser] = default` --


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class KeyDefaults:
    """Applied where a key record leaves a field unset."""

    # Rate is frozen, so sharing it is safe
    rate: Annotated[Rate | None, _optional(_rate)] = Rate(20, 1.0)  # noqa: RUF009
    burst: Annotated[int | None, _optional(_integer(1))] = 40
    quota_requests: Annotated[int | None, _optional(_integer(0))] = None
    quota_bytes: Annotated[int | None, _optional(_SIZE)] = None


# --- keys from an existing key system (SPEC section 13): the live lookup -------------


@dataclass(frozen=True, slots=True)
class LookupConfig:
    """The operator's key API (SPEC section 13): `POST {url}` `{"key": ...}`."""

    url: Annotated[str, _lookup_url]
    token: Annotated[str | None, _OPTIONAL_TEXT] = None  # sent as `Authorization: Bearer {token}`
    # the longest any request waits on a lookup
    timeout: Annotated[float, _POSITIVE_SECONDS] = 0.5
    fresh: Annotated[float, _SECONDS] = 60.0  # an answer is used as is for this long
    # then served while one background refresh runs, this long
    stale: Annotated[float, _SECONDS] = 600.0
    max_stale: Annotated[float, _SECONDS] = 3600.0  # past freshness, used while the key API fails
    negative_ttl: Annotated[float, _SECONDS] = 30.0  # a 404 (unknown key) is remembered this long
    concurrency: Annotated[int, _integer(1)] = 32  # lookups in flight at once, per process
    # lookups of uncached keys per client IP (Rate is frozen, so sharing it is safe)
    unknown_key_rate: Annotated[Rate, _rate] = Rate(5, 1.0)  # noqa: RUF009
    unknown_key_burst: Annotated[int, _integer(1)] = 20
    # answers remembered per process (not in SPEC: README)
    cache_size: Annotated[int, _integer(1)] = 100_000


def _max_stale_covers_stale(stale: float, max_stale: float) -> _Found:
    if max_stale < stale:
        # A stale answer is served without asking during `stale`; `max_stale` bounds
        # what is served when the key API fails, so it cannot be the shorter.
        yield "max_stale", "must be at least `stale`"


@dataclass(frozen=True, slots=True)
class ExternalKeysConfig:
    """Keys from an existing key system (SPEC section 13): `pattern` is what check 2
    asks of a key not in keyfront's format. `hash_secret` keys the hash that imported
    keys are stored under; None: a secret keyfront generates once and keeps in the
    store (README "Bringing your existing keys")."""

    pattern: Annotated[re.Pattern[str], _key_pattern] = re.compile(DEFAULT_EXTERNAL_PATTERN)
    hash_secret: Annotated[str | None, _optional(_SECRET, _UNSET_IF_EMPTY)] = None
    # the operator's key API; None: imported keys only
    lookup: Annotated[LookupConfig | None, _optional(_LOOKUP)] = None


@dataclass(frozen=True, slots=True)
class KeysConfig:
    secrets: Annotated[dict[int, str], _secrets]  # version -> secret; the highest signs
    prefix: Annotated[str, _text(r"[a-z]{1,8}", "1 to 8 lowercase letters")] = "pk"
    query_param: Annotated[str, _QUERY_PARAM] = "key"
    record_cache_ttl: Annotated[float, _SECONDS] = 60.0
    record_cache_size: Annotated[int, _integer(1)] = 100_000
    defaults: Annotated[KeyDefaults, _section(KeyDefaults)] = field(default_factory=KeyDefaults)
    external: Annotated[ExternalKeysConfig, _section(ExternalKeysConfig)] = field(
        default_factory=ExternalKeysConfig  # SPEC section 13
    )

    @property
    def signing_version(self) -> int:
        return max(self.secrets)


@dataclass(frozen=True, slots=True)
class AdminConfig:
    # None: the admin API answers 401 to everything
    token: Annotated[str | None, _optional(_SECRET, _UNSET_IF_EMPTY)] = None
    # Live keys a customer token may hold when its customer record sets no max_keys
    # (issue 12): bounds what one token can write to the store. None: no cap.
    customer_max_keys: Annotated[int | None, _optional(_integer(1))] = 1000


@dataclass(frozen=True, slots=True)
class S3Settings:
    endpoint_url: Annotated[str | None, _optional(_http_url, _UNSET_IF_EMPTY)] = None
    region: Annotated[str | None, _OPTIONAL_TEXT] = None
    access_key_id: Annotated[str | None, _OPTIONAL_TEXT] = None  # from AWS_* env when absent
    secret_access_key: Annotated[str | None, _OPTIONAL_TEXT] = None


@dataclass(frozen=True, slots=True)
class Route:
    prefix: Annotated[str, _ROUTE_PREFIX]  # starts and ends with "/"
    # absolute URL: file:///abs/dir/, http(s)://host/base/, s3://bucket/prefix/
    origin: Annotated[str, _origin]
    auth: Annotated[Literal["key", "none"], _text("key|none", "key or none")] = "key"
    cache_control: Annotated[str, _text()] = "private, max-age=3600"
    s3: Annotated[S3Settings | None, _section(S3Settings)] = None
    # SPEC section 5: the cache's freshness comes from cache.ttl unless the route
    # respects the origin's Cache-Control (README "Decisions").
    origin_cache_control: Annotated[
        Literal["ignore", "respect"], _text("ignore|respect", "ignore or respect")
    ] = "ignore"
    # SPEC section 5: query parameters that select a variant (e.g. w, format): part of
    # the cache key and sent on to the origin. http(s) origins only.
    variant_params: Annotated[tuple[str, ...], _names] = ()


def _s3_origin_only(origin: str, s3: S3Settings | None) -> _Found:
    if s3 is not None and not origin.startswith("s3://"):
        yield "s3", "s3 settings are only allowed on an s3:// origin"


def _variants_from_http_only(origin: str, variant_params: tuple[str, ...]) -> _Found:
    if variant_params and not origin.startswith(("http://", "https://")):
        problem = "only an http(s):// origin can serve variants (a file or S3 object has one)"
        yield "variant_params", problem


@dataclass(frozen=True, slots=True)
class CacheConfig:
    dir: Annotated[str, _local_path] = "/var/cache/keyfront"
    max_size: Annotated[int, _SIZE] = 10 * 1024**3
    max_object_size: Annotated[int, _SIZE] = 512 * 1024**2
    # Objects in the folder, 404s included (issue 12): what bounds each worker's index
    # (~650 B an entry measured, at most ~1 KiB counted, so <= ~100 MiB) and the
    # folder's inodes when clients request many small or absent objects.
    max_objects: Annotated[int, _integer(1)] = 100_000
    ttl: Annotated[float, _SECONDS] = 3600.0
    stale_while_revalidate: Annotated[float, _SECONDS] = 60.0
    stale_if_error: Annotated[float, _SECONDS] = 86400.0
    negative_ttl: Annotated[float, _SECONDS] = 30.0


@dataclass(frozen=True, slots=True)
class OriginTimeouts:
    connect: Annotated[float, _POSITIVE_SECONDS] = 2.0
    first_byte: Annotated[float, _POSITIVE_SECONDS] = 10.0
    idle: Annotated[float, _POSITIVE_SECONDS] = 30.0


@dataclass(frozen=True, slots=True)
class ClientTimeouts:
    """Deadlines for public clients (issue 12 items 4 and 5; SPEC is silent, README
    "Limits and timeouts"). None is reset by bytes trickling in or out."""

    # a new connection's first request line and headers, from open
    headers: Annotated[float, _POSITIVE_SECONDS] = 10.0
    # the next request's headers, from the end of a response
    keepalive: Annotated[float, _POSITIVE_SECONDS] = 15.0
    # a client that takes none of its response for this long is cut
    send: Annotated[float, _POSITIVE_SECONDS] = 30.0
    # Bytes a second a client must take on average, over the time keyfront waits on it
    # for one response, once that wait passes `send` (review finding 3): a client that
    # drains a little every `send` no longer holds a pass-through's origin connection
    # for days. 2 KiB/s is below GPRS (~5 KB/s), the slowest mobile data in service.
    # 0: no minimum. Written as a size (a size a second).
    min_send_rate: Annotated[int, _SIZE] = 2048


@dataclass(frozen=True, slots=True)
class UsageConfig:
    flush_interval: Annotated[float, _POSITIVE_SECONDS] = 1.0
    max_pending: Annotated[int, _integer(1)] = 100_000


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    customer_labels: Annotated[int, _integer(0)] = 50


@dataclass(frozen=True, slots=True)
class Config:
    keys: Annotated[KeysConfig, _section(KeysConfig)]
    routes: Annotated[tuple[Route, ...], _routes]
    listen: Annotated[Listen, _listen] = Listen("0.0.0.0", 8080)
    admin_listen: Annotated[Listen, _listen] = Listen("127.0.0.1", 9080)
    workers: Annotated[int, _integer(1)] = 1
    # sqlite:/// paths made absolute
    store: Annotated[str, _store] = "sqlite:///var/lib/keyfront/keyfront.db"
    store_timeout: Annotated[float, _POSITIVE_SECONDS] = 0.05
    on_store_error: Annotated[Literal["allow", "deny"], _text("allow|deny", "allow or deny")] = (
        "allow"
    )
    trusted_proxies: Annotated[tuple[IPNetwork, ...], _networks] = ()
    admin: Annotated[AdminConfig, _section(AdminConfig)] = field(default_factory=AdminConfig)
    cache: Annotated[CacheConfig, _section(CacheConfig)] = field(default_factory=CacheConfig)
    origin_timeouts: Annotated[OriginTimeouts, _section(OriginTimeouts)] = field(
        default_factory=OriginTimeouts
    )
    client_timeouts: Annotated[ClientTimeouts, _section(ClientTimeouts)] = field(
        default_factory=ClientTimeouts
    )
    # public client connections per worker (proxy/listener.py)
    max_connections: Annotated[int, _integer(1)] = 10_000
    usage: Annotated[UsageConfig, _section(UsageConfig)] = field(default_factory=UsageConfig)
    metrics: Annotated[MetricsConfig, _section(MetricsConfig)] = field(
        default_factory=MetricsConfig
    )
    shutdown_timeout: Annotated[float, _SECONDS] = 30.0
    access_log: Annotated[str, _access_log] = "-"  # "-" (stdout), a file path, or "off"
    # not in SPEC: README "Decisions"
    event_loop: Annotated[Literal["uvloop", "asyncio"], _EVENT_LOOP] = "uvloop"
    # the file it was loaded from (for messages and worker processes)
    source: Annotated[str, _SET_BY_LOAD] = ""


def _variants_not_reserved(keys: KeysConfig, routes: tuple[Route, ...]) -> _Found:
    """Variant parameters may not be the parameters that carry the key or a signed
    link: those never enter the cache key (SPEC section 5)."""
    reserved = {keys.query_param, "expires", "sig"}
    for i, route in enumerate(routes):
        clash = reserved.intersection(route.variant_params)
        if clash:
            problem = f"{sorted(clash)[0]!r} carries a key or a link signature, not a variant"
            yield f"routes[{i}].variant_params", problem


# --- loading: read the YAML, interpolate ${VAR}, then parse field by field ------------

_VARIABLE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def load(path: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """The Config in `path` (else $KEYFRONT_CONFIG), with `${VAR}` taken from `environ`
    (default os.environ). Relative paths in it resolve against the file's folder.
    Raises ConfigError naming every bad field of the file, in the file's order (issue
    14); a YAML syntax error or an unreadable file is one error."""
    env = os.environ if environ is None else environ
    path = path or env.get("KEYFRONT_CONFIG")
    if not path:
        raise ConfigError("", "no config file: pass -c FILE or set KEYFRONT_CONFIG")
    source = os.path.abspath(path)
    tree = _interpolate(_read_yaml(source), "", env)
    config: Config = _CONFIG(tree, "", Path(source).parent)
    return dataclasses.replace(config, source=source)


def _interpolate(node: Any, at: str, env: Mapping[str, str]) -> Any:
    """`${VAR}` / `${VAR:-default}` in every string scalar. Done after YAML parsing, so
    a secret's characters are never read as YAML; `$${` is a literal `${`."""
    if isinstance(node, dict):
        return {k: _interpolate(v, _join(at, k), env) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, f"{at}[{i}]", env) for i, v in enumerate(node)]
    if isinstance(node, str):
        try:
            return _VARIABLE.sub(lambda match: _substitute(match, at, env), node)
        except ConfigError as exc:
            return _Unresolved(exc.problems)
    return node


@dataclass(frozen=True, slots=True)
class _Unresolved:
    """A string whose `${VAR}` could not be resolved. Its problem is reported where a
    parser reaches it, so it takes its place in the file's order among the others."""

    problems: tuple[tuple[str, str], ...]


def _substitute(match: re.Match[str], at: str, env: Mapping[str, str]) -> str:
    if match.group(0) == "$${":
        return "${"
    if match.group(1) is None:
        raise ConfigError(at, "unterminated ${ (write $${ for a literal ${)")
    name, has_default, default = match.group(1).partition(":-")
    if not _NAME.fullmatch(name):
        raise ConfigError(at, f"bad variable reference ${{{match.group(1)}}}")
    value = env.get(name)
    if has_default and not value:  # as in the shell and compose: unset or empty
        return default
    if value is None:
        raise ConfigError(at, f"environment variable {name} is not set")
    return value


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
    lines += [f"route {r.prefix} -> {r.origin} (auth {r.auth})" for r in config.routes]
    return "\n".join(lines)


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


# --- every error at once (issue 14) ---------------------------------------------------
# A parser returns its value or raises ConfigError with every problem it found. A
# container (section, list, mapping) parses each of its items with `_attempt`, which
# records an item's problems and goes on, then raises them all together.

_FAILED: Any = object()  # an item that did not parse; its problems are recorded
_SET_BY_LOAD: Any = object()  # marks a field that is not read from the file


def _attempt(parse: _Parser, raw: Any, at: str, base: Path, problems: list[Any]) -> Any:
    """`parse(raw)`, or _FAILED with its problems added to `problems`."""
    if isinstance(raw, _Unresolved):
        problems.extend(raw.problems)
        return _FAILED
    try:
        return parse(raw, at, base)
    except ConfigError as exc:
        problems.extend(exc.problems)
        return _FAILED


def _each(
    parse: _Parser, raw: list[Any], at: str, base: Path, problems: list[Any]
) -> Iterator[tuple[int, Any]]:
    """(index, value) of each item of `raw` that parsed; the others' problems are
    added to `problems`."""
    for i, item in enumerate(raw):
        value = _attempt(parse, item, f"{at}[{i}]", base, problems)
        if value is not _FAILED:
            yield i, value


def _raise_any(problems: list[tuple[str, str]]) -> None:
    if problems:
        raise ConfigError(*problems[0], *problems[1:])


@dataclass(frozen=True, slots=True)
class _Check:
    """A check across fields of one section, run when all its `inputs` parsed; `find`
    takes their values in that order and yields (path in the section, problem)."""

    inputs: tuple[str, ...]
    find: Callable[..., _Found]


def _section(cls: type[Any], *checks: _Check) -> _Parser:
    """The parser of dataclass `cls` from a mapping: each field read by the parser in
    its `Annotated` type, absent ones (and all of a section left empty, `admin:`) keep
    the dataclass default; a field without a default is required; an unknown name is
    an error (a typo). Problems come in the file's order, then missing fields, then
    the cross-field `checks`."""
    hints = get_type_hints(cls, include_extras=True)
    fields: dict[str, dataclasses.Field[Any]] = {}
    parsers: dict[str, _Parser] = {}
    for spec in dataclasses.fields(cls):
        reader = next(iter(getattr(hints[spec.name], "__metadata__", ())), None)
        if reader is None:
            raise TypeError(f"{cls.__name__}.{spec.name}: declare it Annotated[type, parser]")
        if reader is not _SET_BY_LOAD:
            fields[spec.name], parsers[spec.name] = spec, reader

    def parse(raw: Any, at: str, base: Path) -> Any:
        _expect({} if raw is None else raw, dict, "a mapping", at)
        problems: list[tuple[str, str]] = []
        values: dict[str, Any] = {}
        for name, item in (raw or {}).items():
            if name in parsers:
                values[name] = _attempt(parsers[name], item, _join(at, name), base, problems)
            else:
                problems.append((_join(at, name), _unknown(name, parsers)))
        for name, spec in fields.items():
            if name not in values:
                values[name] = _default(spec)
                if values[name] is _FAILED:
                    problems.append((_join(at, name), "required field is missing"))
        for check in checks:
            inputs = [values[name] for name in check.inputs]
            if not any(value is _FAILED for value in inputs):
                problems += [(_join(at, path), problem) for path, problem in check.find(*inputs)]
        _raise_any(problems)
        return cls(**values)

    return parse


def _unknown(name: object, known: Mapping[str, object]) -> str:
    hint = "".join(f" (did you mean {n}?)" for n in get_close_matches(str(name), known, 1))
    return f"unknown field{hint}; expected one of {', '.join(known)}"


def _default(spec: dataclasses.Field[Any]) -> Any:
    """The field's default, or _FAILED for a required field."""
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return _FAILED if spec.default is dataclasses.MISSING else spec.default


# --- reading one value: each parser is (raw, field path, config dir) -> typed value ---


def _join(at: str, name: object) -> str:
    return f"{at}.{name}" if at else str(name)


def _expect(raw: Any, types: type | tuple[type, ...], what: str, at: str) -> None:
    if isinstance(raw, bool) or not isinstance(raw, types):
        raise ConfigError(at, f"expected {what}, got {_KINDS.get(type(raw), 'something else')}")


def _convert(at: str, convert: Callable[[Any], Any], raw: Any, problem: str = "") -> Any:
    """`convert(raw)`, its ValueError turned into a ConfigError for field `at`."""
    try:
        return convert(raw)
    except ValueError as exc:
        raise ConfigError(at, problem or str(exc)) from None
    except OverflowError:
        raise ConfigError(at, problem or f"{raw!r} is too large") from None


def _optional(parse: _Parser, empty: tuple[object, ...] = (None,)) -> _Parser:
    return lambda raw, at, base: None if raw in empty else parse(raw, at, base)


def _integer(minimum: int) -> _Parser:
    def parse(raw: Any, at: str, base: Path) -> int:
        if isinstance(raw, str) and re.fullmatch(r"\s*[0-9]+\s*", raw):  # as `${VAR}` gives it
            raw = int(raw)
        _expect(raw, int, "an integer", at)
        if raw < minimum:
            raise ConfigError(at, f"must be at least {minimum}")
        return int(raw)

    return parse


def _measure(unit: Callable[[Any], float], what: str, above_zero: bool = False) -> _Parser:
    """A size or duration: never negative, and greater than 0 if `above_zero`."""

    def parse(raw: Any, at: str, base: Path) -> float:
        _expect(raw, (str, int, float), what, at)
        if isinstance(raw, float) and not math.isfinite(raw):  # YAML's .inf and .nan
            raise ConfigError(at, f"expected {what}, got {raw}")
        value: float = _convert(at, unit, raw)
        if not math.isfinite(value):
            raise ConfigError(at, f"{raw!r} is too large")
        if value < 0 or (above_zero and value == 0):
            raise ConfigError(at, f"must be {'greater than' if above_zero else 'at least'} 0")
        return value

    return parse


def _text(pattern: str = r"(?s).*", what: str = "", min_length: int = 0) -> _Parser:
    def parse(raw: Any, at: str, base: Path) -> str:
        _expect(raw, str, "a string", at)
        if len(raw) < min_length:
            raise ConfigError(at, f"must be at least {min_length} characters long")
        if not re.fullmatch(pattern, raw):
            raise ConfigError(at, f"{raw!r} is not {what}")
        return str(raw)

    return parse


def _rate(raw: Any, at: str, base: Path) -> Rate:
    _expect(raw, str, "a rate (e.g. 10/s) or null", at)
    rate: Rate = _convert(at, parse_rate, raw)
    return rate


def _local_path(raw: Any, at: str, base: Path) -> str:
    """A file-system path; a relative one resolves against the config file's folder."""
    _expect(raw, str, "a path", at)
    if not raw:
        raise ConfigError(at, "must not be empty")
    return os.path.normpath(os.path.join(base, raw))


def _listen(raw: Any, at: str, base: Path) -> Listen:
    _expect(raw, str, "host:port (e.g. 0.0.0.0:8080, [::1]:8080, :8080)", at)
    host, _, port = raw.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = str(_convert(at, ipaddress.IPv6Address, host[1:-1], f"{host} is not IPv6"))
    elif not re.fullmatch(r"[A-Za-z0-9.-]*", host):
        raise ConfigError(at, f"{raw!r}: bad host (write an IPv6 address in brackets)")
    if not re.fullmatch("[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
        raise ConfigError(at, f"{raw!r} is not host:port with a port from 1 to 65535")
    return Listen(host or "0.0.0.0", int(port))


def _networks(raw: Any, at: str, base: Path) -> tuple[IPNetwork, ...]:
    _expect([] if raw is None else raw, list, "a list of CIDRs (e.g. [10.0.0.0/8])", at)
    problems: list[tuple[str, str]] = []
    networks = tuple(network for _, network in _each(_network, raw or [], at, base, problems))
    _raise_any(problems)
    return networks


def _network(raw: Any, at: str, base: Path) -> IPNetwork:
    _expect(raw, str, "a CIDR (e.g. 10.0.0.0/8)", at)
    parse = partial(ipaddress.ip_network, strict=False)
    network: IPNetwork = _convert(at, parse, raw, f"{raw!r} is not a CIDR (e.g. 10.0.0.0/8)")
    return network


def _store(raw: Any, at: str, base: Path) -> str:
    _expect(raw, str, "a store URL (sqlite://PATH, redis://HOST:PORT/DB)", at)
    scheme, _, rest = raw.partition("://")
    if scheme.lower() == "sqlite" and rest:
        return "sqlite://" + _local_path(rest, at, base)  # absolute: sqlite:///dir/x.db
    if scheme.lower() in ("redis", "rediss", "redis+cluster"):
        _host(raw, at)
        return str(raw)
    raise ConfigError(at, f"{raw!r}: use sqlite://PATH, redis://, rediss:// or redis+cluster://")


def _host(url: str, at: str) -> None:
    parts = urlsplit(url)
    _convert(at, lambda p: p.port, parts, f"{url!r} has a bad port")
    if not parts.hostname:
        raise ConfigError(at, f"{url!r} has no host")


def _origin(raw: Any, at: str, base: Path) -> str:
    """The stored form is absolute and ends in "/": file:///dir/, https://host/base/,
    s3://bucket/prefix/ (s3://bucket/ without a prefix)."""
    _expect(raw, str, "an origin URL (file://, http(s)://, s3://)", at)
    scheme, _, rest = raw.partition("://")
    if scheme.lower() == "file":
        return _file_origin(rest, at, base)
    if scheme.lower() in ("http", "https"):
        return _http_url(raw, at) + "/"
    if scheme.lower() == "s3" and rest.partition("/")[0]:
        return "/".join(["s3:/", *filter(None, rest.split("/")), ""])
    if scheme.lower() == "s3":
        raise ConfigError(at, "an s3:// origin needs a bucket: s3://bucket/prefix/")
    raise ConfigError(at, f"{raw!r}: the scheme must be file://, http://, https:// or s3://")


def _file_origin(rest: str, at: str, base: Path) -> str:
    folder = _local_path(rest, at, base)
    if not os.path.isdir(folder):
        problem = "is not a directory" if os.path.exists(folder) else "does not exist"
        raise ConfigError(at, f"folder {folder} {problem}")
    return "file://" + folder.rstrip("/") + "/"


def _http_url(raw: Any, at: str, base: Path | None = None) -> str:
    """An http(s) URL with a host and no query, without its trailing slash."""
    _expect(raw, str, "an http(s):// URL", at)
    _host(raw, at)
    parts = urlsplit(raw)
    if parts.scheme.lower() not in ("http", "https") or parts.query or parts.fragment:
        raise ConfigError(at, f"{raw!r} is not an http(s):// URL without a query")
    return str(parts.geturl()).rstrip("/")


def _secrets(raw: Any, at: str, base: Path) -> dict[int, str]:
    _expect(raw, dict, "a mapping of version -> secret", at)
    if not raw:
        raise ConfigError(at, "at least one secret is required (e.g. 1: ${KEYFRONT_KEY_SECRET})")
    problems: list[tuple[str, str]] = []
    secrets: dict[int, str] = {}
    for version, text in raw.items():
        number = _attempt(_integer(1), version, _join(at, version), base, problems)
        if number in secrets:
            problems.append((_join(at, version), f"version {number} is given twice"))
        secret = _attempt(_SECRET, text, _join(at, version), base, problems)
        if number is not _FAILED and secret is not _FAILED:
            secrets.setdefault(number, secret)
    _raise_any(problems)
    return secrets


def _key_pattern(raw: Any, at: str, base: Path) -> re.Pattern[str]:
    """A regex that a whole external key must match. It runs on client text, so it
    must compile and must not backtrack exponentially (STYLE 17): a quantifier inside
    a quantified group, and backreferences, are refused. Polynomial backtracking is
    bounded by the length cap (MAX_EXTERNAL_KEY) applied before it runs."""
    _expect(raw, str, "a regular expression", at)
    if not raw or len(raw) > 1024:
        raise ConfigError(at, "must be 1 to 1024 characters")
    try:
        pattern = re.compile(raw)
    except re.error as exc:
        raise ConfigError(at, f"not a regular expression: {exc}") from None
    problem = backtracking_problem(raw)
    if problem:
        raise ConfigError(at, problem)
    return pattern


def backtracking_problem(pattern: str) -> str | None:
    """Why `pattern` could backtrack without bound on hostile text, or None."""
    # The regex's parse tree: exact, unlike scanning its text (typeshed has no stub).
    import re._parser as sre  # type: ignore[import-not-found]

    def walk(items: Any, inside_repeat: bool) -> str | None:
        for op, value in items:
            name = str(op)
            if name in ("GROUPREF", "GROUPREF_EXISTS"):
                return "backreferences are not allowed"
            if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
                if inside_repeat:
                    return "a quantifier inside a quantified group can backtrack exponentially"
                found = walk(value[2], True)
            elif name == "SUBPATTERN":
                found = walk(value[3], inside_repeat)
            elif name in ("ATOMIC_GROUP", "ASSERT", "ASSERT_NOT"):
                found = walk(value if name == "ATOMIC_GROUP" else value[1], inside_repeat)
            elif name == "BRANCH" and inside_repeat:
                return "an alternation inside a quantified group can backtrack exponentially"
            elif name == "BRANCH":
                found = next((p for b in value[1] if (p := walk(b, False))), None)
            else:
                found = None
            if found:
                return found
        return None

    return walk(sre.parse(pattern), False)


def _routes(raw: Any, at: str, base: Path) -> tuple[Route, ...]:
    _expect(raw, list, "a list of routes", at)
    if not raw:
        raise ConfigError(at, "at least one route is required")
    problems: list[tuple[str, str]] = []
    first: dict[str, int] = {}  # prefix -> the index of the route that has it
    routes: list[Route] = []
    for i, route in _each(_ROUTE, raw, at, base, problems):
        if route.prefix in first:
            used = f"{route.prefix} is used by {at}[{first[route.prefix]}] too"
            problems.append((f"{at}[{i}].prefix", used))
        first.setdefault(route.prefix, i)
        routes.append(route)
    _raise_any(problems)
    return tuple(routes)


def _names(raw: Any, at: str, base: Path) -> tuple[str, ...]:
    """A list of distinct query parameter names."""
    _expect([] if raw is None else raw, list, "a list of query parameter names", at)
    problems: list[tuple[str, str]] = []
    names: list[str] = []
    for i, name in _each(_PARAM_NAME, raw or [], at, base, problems):
        if name in names:
            problems.append((f"{at}[{i}]", f"{name!r} is given twice"))
        else:
            names.append(name)
    _raise_any(problems)
    return tuple(names)


def _access_log(raw: Any, at: str, base: Path) -> str:
    if raw is False:  # YAML 1.1 reads a bare `off` as false
        return "off"
    return str(raw) if raw in ("-", "off") else _local_path(raw, at, base)


def _lookup_url(raw: Any, at: str, base: Path) -> str:
    """An http(s) URL, kept as written (its trailing slash is the key API's business)."""
    _http_url(raw, at)
    return str(raw)


_SECRET = _text(min_length=16)
_SECONDS = _measure(parse_duration, "a duration (e.g. 50ms, 30s, 1h)")
_POSITIVE_SECONDS = _measure(parse_duration, "a duration (e.g. 50ms, 30s, 1h)", above_zero=True)
_SIZE = _measure(parse_size, "a size (e.g. 10GiB, 512MiB)")
_UNSET_IF_EMPTY = (None, "")  # `${VAR:-}` leaves an optional string unset
_OPTIONAL_TEXT = _optional(_text(), _UNSET_IF_EMPTY)
_PARAM_NAME = _text(r"[A-Za-z0-9_.~-]+", "a query parameter name ([A-Za-z0-9_.~-]+)")
_QUERY_PARAM = _text(r"[A-Za-z0-9_-]+", "a query parameter name ([A-Za-z0-9_-]+)")
_EVENT_LOOP = _text("uvloop|asyncio", "uvloop or asyncio")
# Compared with decoded request paths (routing.py), so written decoded: no "%" escape,
# which would never match (issue 12 item 1), and nothing a path could not hold.
_ROUTE_PREFIX = _text(
    r"(?!.*/\.\.?/)/(?:[A-Za-z0-9._~!$&'()*+,;=:@-]+/)*",
    "a path that starts and ends with / (e.g. /files/), written unescaped",
)


# --- the sections' parsers, built last: they read the annotations above, whose parsers
# are all defined by now. A field without a parser fails here, at import.

_LOOKUP = _section(LookupConfig, _Check(("stale", "max_stale"), _max_stale_covers_stale))
_ROUTE = _section(
    Route,
    _Check(("origin", "s3"), _s3_origin_only),
    _Check(("origin", "variant_params"), _variants_from_http_only),
)
_CONFIG = _section(Config, _Check(("keys", "routes"), _variants_not_reserved))
