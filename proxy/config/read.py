"""How one YAML value becomes a typed config value: sizes, durations, rates, paths,
URLs, CIDRs, secrets, key patterns. Each reader is `(raw, field path, config dir) ->
value` and raises ConfigError naming the field path; a list reads every item and
reports every bad one (sections.py)."""

from __future__ import annotations

import ipaddress
import math
import os
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError
from ..units import Rate, parse_duration, parse_rate, parse_size
from .sections import FAILED, WITHHELD, Reader, attempt, convert, each, expect, join, raise_any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def optional(parse: Reader, empty: tuple[object, ...] = (None,)) -> Reader:
    return lambda raw, at, base: None if raw is WITHHELD or raw in empty else parse(raw, at, base)


def integer(minimum: int) -> Reader:
    def parse(raw: Any, at: str, base: Path) -> int:
        if isinstance(raw, str) and re.fullmatch(r"\s*[0-9]+\s*", raw):  # as `${VAR}` gives it
            raw = int(raw)
        expect(raw, int, "an integer", at)
        if raw < minimum:
            raise ConfigError(at, f"must be at least {minimum}")
        return int(raw)

    return parse


def measure(unit: Callable[[Any], float], what: str, above_zero: bool = False) -> Reader:
    """A size or duration: never negative, and greater than 0 if `above_zero`."""

    def parse(raw: Any, at: str, base: Path) -> float:
        expect(raw, (str, int, float), what, at)
        if isinstance(raw, float) and not math.isfinite(raw):  # YAML's .inf and .nan
            raise ConfigError(at, f"expected {what}, got {raw}")
        value: float = convert(at, unit, raw)
        if not math.isfinite(value):
            raise ConfigError(at, f"{raw!r} is too large")
        if value < 0 or (above_zero and value == 0):
            raise ConfigError(at, f"must be {'greater than' if above_zero else 'at least'} 0")
        return value

    return parse


def boolean(raw: Any, at: str, base: Path) -> bool:
    """true or false (YAML's booleans, or the words as `${VAR}` gives them)."""
    if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
        return raw.strip().lower() == "true"
    if not isinstance(raw, bool):
        raise ConfigError(at, f"expected true or false, got {raw!r}")
    return raw


def text(pattern: str = r"(?s).*", what: str = "", min_length: int = 0) -> Reader:
    def parse(raw: Any, at: str, base: Path) -> str:
        expect(raw, str, "a string", at)
        if len(raw) < min_length:
            raise ConfigError(at, f"must be at least {min_length} characters long")
        if not re.fullmatch(pattern, raw):
            raise ConfigError(at, f"{raw!r} is not {what}")
        return str(raw)

    return parse


def rate(raw: Any, at: str, base: Path) -> Rate:
    expect(raw, str, "a rate (e.g. 10/s) or null", at)
    value: Rate = convert(at, parse_rate, raw)
    return value


def local_path(raw: Any, at: str, base: Path) -> str:
    """A file-system path; a relative one resolves against the config file's folder."""
    expect(raw, str, "a path", at)
    if not raw:
        raise ConfigError(at, "must not be empty")
    return os.path.normpath(os.path.join(base, raw))


def readable_file(raw: Any, at: str, base: Path) -> str:
    """A path to a file keyfront can read now (a certificate or key, SPEC section 14)."""
    path = local_path(raw, at, base)
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(at, f"cannot read {path}: {exc.strerror}") from None
    return path


@dataclass(frozen=True, slots=True)
class CertificateFacts:
    """What keyfront needs from a certificate: its DNS names (lowercased, in order;
    SNI picks by them) and its notAfter (a Unix time)."""

    names: tuple[str, ...]
    not_after: float


def certificate_facts(cert: str) -> CertificateFacts:
    """The names and expiry of the PEM certificate (the chain's first) in file `cert`.
    `ssl._ssl._test_decode_cert` is private but has decoded a PEM file into the dict
    `getpeercert()` answers since Python 3.2; the stdlib has no public parser and a
    dependency for two fields is not worth it. tests/test_aiohttp_internals.py checks
    it still exists. Raises ValueError (or OSError) when it does not decode."""
    try:
        decoded = ssl._ssl._test_decode_cert(cert)  # type: ignore[attr-defined]
    except ssl.SSLError as exc:
        raise ValueError(f"not a PEM certificate: {exc.reason or exc}") from None
    names = [v.lower() for kind, v in decoded.get("subjectAltName", ()) if kind == "DNS"]
    if not names:  # no DNS SAN: the subject's commonName, as old clients matched
        subject = decoded.get("subject", ())
        names = [v.lower() for rdn in subject for k, v in rdn if k == "commonName"]
    return CertificateFacts(tuple(names), ssl.cert_time_to_seconds(decoded["notAfter"]))


def certificate_problem(cert: str, key: str) -> tuple[str, str] | None:
    """(field, problem) if the pair cannot serve: the certificate does not decode or
    has expired (`cert`), or the key does not load or does not match it (`key`)."""
    try:
        facts = certificate_facts(cert)
    except (ValueError, OSError) as exc:
        return "cert", str(exc)
    if facts.not_after < time.time():
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(facts.not_after))
        return "cert", f"{cert} expired at {when}"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        return "key", f"{key} does not load or does not match {cert}: {reason}"
    except OSError as exc:
        return "key", f"cannot read {key}: {exc.strerror}"
    return None


def networks(raw: Any, at: str, base: Path) -> tuple[IPNetwork, ...]:
    expect([] if raw is None else raw, list, "a list of CIDRs (e.g. [10.0.0.0/8])", at)
    problems: list[tuple[str, str]] = []
    networks = tuple(network for _, network in each(_network, raw or [], at, base, problems))
    raise_any(problems)
    return networks


def _network(raw: Any, at: str, base: Path) -> IPNetwork:
    expect(raw, str, "a CIDR (e.g. 10.0.0.0/8)", at)
    parse = partial(ipaddress.ip_network, strict=False)
    network: IPNetwork = convert(at, parse, raw, f"{raw!r} is not a CIDR (e.g. 10.0.0.0/8)")
    return network


def store(raw: Any, at: str, base: Path) -> str:
    expect(raw, str, "a store URL (sqlite://PATH, redis://HOST:PORT/DB)", at)
    scheme, _, rest = raw.partition("://")
    if scheme.lower() == "sqlite" and rest:
        return "sqlite://" + local_path(rest, at, base)  # absolute: sqlite:///dir/x.db
    if scheme.lower() in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
        _host(raw, at)
        return str(raw)
    raise ConfigError(
        at,
        f"{raw!r}: use sqlite://PATH, redis://, rediss://, redis+cluster:// or rediss+cluster://",
    )


def _host(url: str, at: str) -> None:
    parts = urlsplit(url)
    convert(at, lambda p: p.port, parts, f"{url!r} has a bad port")
    if not parts.hostname:
        raise ConfigError(at, f"{url!r} has no host")


def origin(raw: Any, at: str, base: Path) -> str:
    """The stored form is absolute and ends in "/": file:///dir/, https://host/base/,
    s3://bucket/prefix/ (s3://bucket/ without a prefix)."""
    expect(raw, str, "an origin URL (file://, http(s)://, s3://)", at)
    scheme, _, rest = raw.partition("://")
    if scheme.lower() == "file":
        return _file_origin(rest, at, base)
    if scheme.lower() in ("http", "https"):
        return http_url(raw, at) + "/"
    if scheme.lower() == "s3" and rest.partition("/")[0]:
        return "/".join(["s3:/", *filter(None, rest.split("/")), ""])
    if scheme.lower() == "s3":
        raise ConfigError(at, "an s3:// origin needs a bucket: s3://bucket/prefix/")
    raise ConfigError(at, f"{raw!r}: the scheme must be file://, http://, https:// or s3://")


def _file_origin(rest: str, at: str, base: Path) -> str:
    folder = local_path(rest, at, base)
    if not os.path.isdir(folder):
        problem = "is not a directory" if os.path.exists(folder) else "does not exist"
        raise ConfigError(at, f"folder {folder} {problem}")
    return "file://" + folder.rstrip("/") + "/"


def http_url(raw: Any, at: str, base: Path | None = None) -> str:
    """An http(s) URL with a host and no query, without its trailing slash."""
    expect(raw, str, "an http(s):// URL", at)
    _host(raw, at)
    parts = urlsplit(raw)
    if parts.scheme.lower() not in ("http", "https") or parts.query or parts.fragment:
        raise ConfigError(at, f"{raw!r} is not an http(s):// URL without a query")
    return str(parts.geturl()).rstrip("/")


def secrets(raw: Any, at: str, base: Path) -> dict[int, str]:
    expect(raw, dict, "a mapping of version -> secret", at)
    if not raw:
        raise ConfigError(at, "at least one secret is required (e.g. 1: ${KEYFRONT_KEY_SECRET})")
    problems: list[tuple[str, str]] = []
    by_version: dict[int, str] = {}
    for version, given in raw.items():
        number = attempt(integer(1), version, join(at, version), base, problems)
        if number in by_version:
            problems.append((join(at, version), f"version {number} is given twice"))
        if given is WITHHELD:  # loaded with need_secrets=False (load.py)
            continue
        secret = attempt(SECRET, given, join(at, version), base, problems)
        if number is not FAILED and secret is not FAILED:
            by_version.setdefault(number, secret)
    raise_any(problems)
    return by_version


def key_pattern(raw: Any, at: str, base: Path) -> re.Pattern[str]:
    """A regex that a whole external key must match. It runs on client text, so it
    must compile and must not backtrack exponentially (STYLE 17): a quantifier inside
    a quantified group, and backreferences, are refused. Polynomial backtracking is
    bounded by the length cap (MAX_EXTERNAL_KEY) applied before it runs."""
    expect(raw, str, "a regular expression", at)
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


def names(raw: Any, at: str, base: Path) -> tuple[str, ...]:
    """A list of distinct query parameter names."""
    expect([] if raw is None else raw, list, "a list of query parameter names", at)
    problems: list[tuple[str, str]] = []
    seen: list[str] = []
    for i, name in each(PARAM_NAME, raw or [], at, base, problems):
        if name in seen:
            problems.append((f"{at}[{i}]", f"{name!r} is given twice"))
        else:
            seen.append(name)
    raise_any(problems)
    return tuple(seen)


def distinct(item: Reader, what: str) -> Reader:
    """A list of values read by `item`, each once (a repeat is named)."""

    def parse(raw: Any, at: str, base: Path) -> tuple[Any, ...]:
        expect(raw, list, what, at)
        problems: list[tuple[str, str]] = []
        seen: list[Any] = []
        for i, value in each(item, raw, at, base, problems):
            if value in seen:
                problems.append((f"{at}[{i}]", f"{value!r} is given twice"))
            else:
                seen.append(value)
        raise_any(problems)
        return tuple(seen)

    return parse


def access_log(raw: Any, at: str, base: Path) -> str:
    if raw is False:  # YAML 1.1 reads a bare `off` as false
        return "off"
    return str(raw) if raw in ("-", "off") else local_path(raw, at, base)


def lookup_url(raw: Any, at: str, base: Path) -> str:
    """An http(s) URL, kept as written (its trailing slash is the key API's business)."""
    http_url(raw, at)
    return str(raw)


SECRET = text(min_length=16)
SECONDS = measure(parse_duration, "a duration (e.g. 50ms, 30s, 1h)")
POSITIVE_SECONDS = measure(parse_duration, "a duration (e.g. 50ms, 30s, 1h)", above_zero=True)
SIZE = measure(parse_size, "a size (e.g. 10GiB, 512MiB)")
UNSET_IF_EMPTY = (None, "")  # `${VAR:-}` leaves an optional string unset
OPTIONAL_TEXT = optional(text(), UNSET_IF_EMPTY)
PARAM_NAME = text(r"[A-Za-z0-9_.~-]+", "a query parameter name ([A-Za-z0-9_.~-]+)")
QUERY_PARAM = text(r"[A-Za-z0-9_-]+", "a query parameter name ([A-Za-z0-9_-]+)")
# SPEC section 17: the content codings keyfront can make, and the media types it may
# compress (`type/subtype`, or `type/*` for every subtype; lowercase, as compared).
CODINGS = distinct(text("br|zstd|gzip", "br, zstd or gzip"), "a list of codings (br, zstd, gzip)")
_TOKEN = "[a-z0-9!#$&^_.+-]+"
MEDIA_TYPES = distinct(
    text(f"{_TOKEN}/(\\*|{_TOKEN})", "a lowercase media type: type/subtype or type/*"),
    "a list of media types",
)
EVENT_LOOP = text("uvloop|asyncio", "uvloop or asyncio")
# Compared with decoded request paths (routing.py), so written decoded: no "%" escape,
# which would never match (issue 12 item 1), and nothing a path could not hold.
ROUTE_PREFIX = text(
    r"(?!.*/\.\.?/)/(?:[A-Za-z0-9._~!$&'()*+,;=:@-]+/)*",
    "a path that starts and ends with / (e.g. /files/), written unescaped",
)
