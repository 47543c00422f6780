"""Referrer and Origin patterns (SPEC section 2, check 6), pure and without I/O.

A pattern is a host (`example.com`, any scheme, port and path), a wildcard host
(`*.example.com`: any depth of subdomain, never the apex), either with an optional
port, or an http(s) URL whose path may end in `*`. A key's patterns are compiled once,
by `ReferrerRules.compile`, as part of the key's `policy.KeyPolicy`; a request then
pays a set lookup for plain hosts and a few string compares for the rest. Referer
parses are cached per process (bounded), as the same pages refer over and over (the
timings are in policy.py).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

_DEFAULT_PORTS = {"http": 80, "https": 443}
# A serialised URL as browsers send it in Referer / Origin: ASCII, no userinfo (the
# Referrer Policy spec strips it), no whitespace. Anything else is "unparsable".
_URL = re.compile(
    r"([a-z][a-z0-9+.-]*)://(\[[0-9a-f:.]+\]|[a-z0-9_.~-]+)(?::([0-9]{1,5}))?([/?#][!-~]*)?",
    re.IGNORECASE,
)
_AUTHORITY = re.compile(r"(\*\.)?(\[[0-9a-f:.]+\]|[^:\[\]/]+)(?::([0-9]{1,5}))?", re.IGNORECASE)
_HOSTNAME = re.compile(r"[a-z0-9_~-]+(?:\.[a-z0-9_~-]+)*\.?")
_PATTERN_PATH = re.compile(r"/[!-~]*")

Url = tuple[str, str, int | None, str]  # scheme, canonical host, effective port, path
_MAX_CACHED_URL = 1024  # bounds the cache's memory: 4096 x 1 KiB
# Browsers cap Referer at 4 KiB (Chrome, Firefox); a longer one is unparsable before
# any regex sees it (issue 12 item 3). The regexes are linear anyway: each quantified
# class is followed by a character it cannot match.
MAX_URL = 4096
_url_cache: dict[str, Url | None] = {}  # per process; the same pages refer over and over


def _parse_url(value: str) -> Url | None:
    """Referer / Origin as (scheme, host, port, path); None when unparsable."""
    try:
        return _url_cache[value]
    except KeyError:
        pass
    url = _parse_url_uncached(value)
    if len(value) <= _MAX_CACHED_URL:
        if len(_url_cache) >= 4096:
            _url_cache.clear()  # cheaper than LRU bookkeeping on every hit
        _url_cache[value] = url
    return url


def page_origin(value: str) -> str | None:
    """The page's origin ("https://host", ":port" when not the scheme's default) of a
    Referer or Origin value, None when unparsable: what per-key analytics count (SPEC
    section 15), in the form `ReferrerRules.allows` judges again for a what-if."""
    url = _parse_url(value)
    if url is None:
        return None
    scheme, host, port, _ = url
    return (
        f"{scheme}://{host}" if port == _DEFAULT_PORTS.get(scheme) else f"{scheme}://{host}:{port}"
    )


def _parse_url_uncached(value: str) -> Url | None:
    if len(value) > MAX_URL:
        return None
    match = _URL.fullmatch(value)
    if match is None:
        return None
    scheme, host, port_text, rest = match.groups()
    scheme = scheme.lower()
    try:
        port = _port(port_text, scheme)
        host = _canonical_host(host)
    except ValueError:
        return None
    path = (rest or "").partition("?")[0].partition("#")[0] or "/"  # Origin has no path
    return scheme, host, port, path


def _port(written: str | None, scheme: str | None) -> int | None:
    """The port as written, else the scheme's default (RFC 6454 origins); None for a
    bare host pattern without one, which matches any port (SPEC section 2)."""
    if not written:
        return _DEFAULT_PORTS.get(scheme or "")
    if int(written) > 65535:
        raise ValueError(f"port {written} is out of range")
    return int(written)


def _canonical_host(host: str) -> str:
    """Lowercase, one trailing dot dropped (the same DNS name), IPv6 compressed."""
    if host.startswith("["):
        return f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
    host = host.lower()
    if not host.isascii():
        host = host.encode("idna").decode()  # patterns only: browsers send punycode
    if not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{host!r} is not a host name")
    return host.removesuffix(".")


@dataclass(frozen=True, slots=True)
class _Pattern:
    scheme: str | None  # None: any scheme
    host: str  # exact host, or for "*.example.com" the suffix ".example.com"
    wildcard: bool
    port: int | None  # None: any port
    path: str | None  # None: any path
    prefix: bool  # the path ended in "*"

    @property
    def is_plain_host(self) -> bool:
        """ "example.com": any scheme, port and path, so a set lookup decides it."""
        return not (self.scheme or self.wildcard or self.path) and self.port is None

    def matches(self, url: Url) -> bool:
        scheme, host, port, path = url
        # Canonical hosts never start with ".", so the suffix implies a non-empty label:
        # "*.example.com" matches any depth of subdomain, never the apex.
        if not (host.endswith(self.host) if self.wildcard else host == self.host):
            return False
        if self.scheme is not None and scheme != self.scheme:
            return False
        if self.port is not None and port != self.port:
            return False
        if self.path is None:
            return True
        return path.startswith(self.path) if self.prefix else path == self.path


def _compile_pattern(text: str) -> _Pattern:
    """Raises ValueError with a message fit for the CLI."""
    if len(text) > MAX_URL:
        raise ValueError(f"a pattern has at most {MAX_URL} characters")
    written, sep, rest = text.strip().partition("://")
    if not sep:
        written, rest = "", written
    elif written.lower() not in _DEFAULT_PORTS:
        raise ValueError("the scheme must be http or https")
    scheme = written.lower() or None
    authority, slash, path = rest.partition("/")
    if slash and not scheme:
        raise ValueError("a path pattern needs a scheme, e.g. https://example.com/path/*")
    match = _AUTHORITY.fullmatch(authority)
    if match is None:
        raise ValueError("expected a host, *.host, or an http(s) URL")
    wildcard, host, port_text = match.groups()
    port = _port(port_text, scheme)
    host = _canonical_host(host)
    if wildcard and host.startswith("["):
        raise ValueError("*. needs a domain name, not an IP address")
    return _Pattern(
        scheme, "." + host if wildcard else host, bool(wildcard), port, *_pattern_path(path, slash)
    )


def _pattern_path(path: str, slash: str) -> tuple[str | None, bool]:
    if not slash:
        return None, False
    path = "/" + path
    prefix = path.endswith("*")
    path = path.removesuffix("*")
    if "*" in path or "?" in path or "#" in path or not _PATTERN_PATH.fullmatch(path):
        raise ValueError("a path pattern is a URL path, optionally ending in *")
    return path, prefix


def validate_referrer_pattern(pattern: str) -> str | None:
    """None if `pattern` is valid, else what is wrong with it (for the CLI / admin API)."""
    try:
        _compile_pattern(pattern)
    except (ValueError, UnicodeError) as exc:
        return str(exc) or "not a referrer pattern"
    return None


def is_path_pattern(pattern: str) -> bool:
    """True if the pattern restricts the page's path, which browsers reveal only to
    same-origin requests by default (strict-origin-when-cross-origin): the CLI warns."""
    try:
        compiled = _compile_pattern(pattern)
    except (ValueError, UnicodeError):
        return False
    return compiled.path is not None and not (compiled.path == "/" and compiled.prefix)


class ReferrerRules:
    """A key's referrer patterns, compiled once (SPEC section 2, check 6)."""

    __slots__ = ("_allow_any", "_allow_none", "_hosts", "_patterns")

    def __init__(
        self, hosts: frozenset[str], patterns: tuple[_Pattern, ...], any_: bool, none: bool
    ) -> None:
        self._hosts = hosts  # plain "example.com" patterns: one set lookup
        self._patterns = patterns
        self._allow_any = any_  # no patterns: every referrer passes
        self._allow_none = none

    @classmethod
    def compile(cls, patterns: Sequence[str], allow_no_referrer: bool | None) -> ReferrerRules:
        """Invalid patterns match nothing (a key is never opened up by a typo)."""
        compiled = []
        for text in patterns:
            try:
                compiled.append(_compile_pattern(text))
            except (ValueError, UnicodeError):
                continue
        plain = [p for p in compiled if p.is_plain_host]
        others = tuple(p for p in compiled if not p.is_plain_host)
        none = not patterns if allow_no_referrer is None else allow_no_referrer
        return cls(frozenset(p.host for p in plain), others, not patterns, none)

    @property
    def allows_everything(self) -> bool:
        return self._allow_any and self._allow_none

    def allows(self, referer: str | None, origin: str | None) -> bool:
        # Origin stands in for an absent Referer. "Origin: null" (sandboxed frames,
        # privacy redirects) names no page, so it counts as no referrer at all.
        value = referer or (origin if origin != "null" else None)
        if not value:
            return self._allow_none
        if self._allow_any:
            return True
        url = _parse_url(value)
        if url is None:
            return False
        if url[1] in self._hosts:
            return True
        for pattern in self._patterns:  # noqa: SIM110 (any() with a generator: 2x slower)
            if pattern.matches(url):
                return True
        return False
