"""The config model (SPEC section 7): frozen dataclasses, each field declared once as
`name: Annotated[type, reader] = default` (no default: required). `CONFIG` reads a
whole file's tree; the cross-field checks sit next to their section."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from ..errors import ConfigError
from ..units import Rate
from . import read
from .export import ALERTS, EXPORT, AlertsConfig, ExportConfig
from .read import IPNetwork
from .sections import SET_BY_LOAD, Check, Found, convert, each, expect, raise_any, section

DEFAULT_EXTERNAL_PATTERN = "[A-Za-z0-9._~-]{8,128}"
MAX_EXTERNAL_KEY = 256  # characters: a longer presented key is key_invalid before any regex


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
    rate: Annotated[Rate | None, read.optional(read.rate)] = Rate(20, 1.0)  # noqa: RUF009
    burst: Annotated[int | None, read.optional(read.integer(1))] = 40
    quota_requests: Annotated[int | None, read.optional(read.integer(0))] = None
    quota_bytes: Annotated[int | None, read.optional(read.SIZE)] = None


# --- keys from an existing key system (SPEC section 13): the live lookup -------------


@dataclass(frozen=True, slots=True)
class LookupConfig:
    """The operator's key API (SPEC section 13): `POST {url}` `{"key": ...}`."""

    url: Annotated[str, read.lookup_url]
    # sent as `Authorization: Bearer {token}`
    token: Annotated[str | None, read.OPTIONAL_TEXT] = None
    # the longest any request waits on a lookup
    timeout: Annotated[float, read.POSITIVE_SECONDS] = 0.5
    fresh: Annotated[float, read.SECONDS] = 60.0  # an answer is used as is for this long
    # then served while one background refresh runs, this long
    stale: Annotated[float, read.SECONDS] = 600.0
    # past freshness, used while the key API fails
    max_stale: Annotated[float, read.SECONDS] = 3600.0
    # a 404 (unknown key) is remembered this long
    negative_ttl: Annotated[float, read.SECONDS] = 30.0
    concurrency: Annotated[int, read.integer(1)] = 32  # lookups in flight at once, per process
    # lookups of uncached keys per client IP (Rate is frozen, so sharing it is safe)
    unknown_key_rate: Annotated[Rate, read.rate] = Rate(5, 1.0)  # noqa: RUF009
    unknown_key_burst: Annotated[int, read.integer(1)] = 20
    # answers remembered per process (not in SPEC: README)
    cache_size: Annotated[int, read.integer(1)] = 100_000


def _max_stale_covers_stale(stale: float, max_stale: float) -> Found:
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

    pattern: Annotated[re.Pattern[str], read.key_pattern] = re.compile(DEFAULT_EXTERNAL_PATTERN)
    hash_secret: Annotated[str | None, read.optional(read.SECRET, read.UNSET_IF_EMPTY)] = None
    # the operator's key API; None: imported keys only
    lookup: Annotated[LookupConfig | None, read.optional(_LOOKUP)] = None


@dataclass(frozen=True, slots=True)
class KeysConfig:
    # version -> secret; the highest signs. Empty only in a Config loaded with
    # need_secrets=False (load.py), which mints and verifies no key.
    secrets: Annotated[dict[int, str], read.secrets]
    prefix: Annotated[str, read.text(r"[a-z]{1,8}", "1 to 8 lowercase letters")] = "pk"
    query_param: Annotated[str, read.QUERY_PARAM] = "key"
    record_cache_ttl: Annotated[float, read.SECONDS] = 60.0
    record_cache_size: Annotated[int, read.integer(1)] = 100_000
    defaults: Annotated[KeyDefaults, section(KeyDefaults)] = field(default_factory=KeyDefaults)
    external: Annotated[ExternalKeysConfig, section(ExternalKeysConfig)] = field(
        default_factory=ExternalKeysConfig  # SPEC section 13
    )

    @property
    def signing_version(self) -> int:
        return max(self.secrets)


@dataclass(frozen=True, slots=True)
class AdminConfig:
    # None: the admin API answers 401 to everything
    token: Annotated[str | None, read.optional(read.SECRET, read.UNSET_IF_EMPTY)] = None
    # Live keys a customer token may hold when its customer record sets no max_keys
    # (issue 12): bounds what one token can write to the store. None: no cap.
    customer_max_keys: Annotated[int | None, read.optional(read.integer(1))] = 1000


@dataclass(frozen=True, slots=True)
class S3Settings:
    endpoint_url: Annotated[str | None, read.optional(read.http_url, read.UNSET_IF_EMPTY)] = None
    region: Annotated[str | None, read.OPTIONAL_TEXT] = None
    access_key_id: Annotated[str | None, read.OPTIONAL_TEXT] = None  # from AWS_* env when absent
    secret_access_key: Annotated[str | None, read.OPTIONAL_TEXT] = None


@dataclass(frozen=True, slots=True)
class Route:
    prefix: Annotated[str, read.ROUTE_PREFIX]  # starts and ends with "/"
    # absolute URL: file:///abs/dir/, http(s)://host/base/, s3://bucket/prefix/
    origin: Annotated[str, read.origin]
    auth: Annotated[Literal["key", "none"], read.text("key|none", "key or none")] = "key"
    cache_control: Annotated[str, read.text()] = "private, max-age=3600"
    s3: Annotated[S3Settings | None, section(S3Settings)] = None
    # SPEC section 5: the cache's freshness comes from cache.ttl unless the route
    # respects the origin's Cache-Control (README "Decisions").
    origin_cache_control: Annotated[
        Literal["ignore", "respect"], read.text("ignore|respect", "ignore or respect")
    ] = "ignore"
    # SPEC section 5: query parameters that select a variant (e.g. w, format): part of
    # the cache key and sent on to the origin. http(s) origins only.
    variant_params: Annotated[tuple[str, ...], read.names] = ()
    # SPEC section 17: false sends every object of this route as the origin has it
    compress: Annotated[bool, read.boolean] = True


def _s3_origin_only(origin: str, s3: S3Settings | None) -> Found:
    if s3 is not None and not origin.startswith("s3://"):
        yield "s3", "s3 settings are only allowed on an s3:// origin"


def _variants_from_http_only(origin: str, variant_params: tuple[str, ...]) -> Found:
    if variant_params and not origin.startswith(("http://", "https://")):
        problem = "only an http(s):// origin can serve variants (a file or S3 object has one)"
        yield "variant_params", problem


@dataclass(frozen=True, slots=True)
class CacheConfig:
    dir: Annotated[str, read.local_path] = "/var/cache/keyfront"
    max_size: Annotated[int, read.SIZE] = 10 * 1024**3
    max_object_size: Annotated[int, read.SIZE] = 512 * 1024**2
    # Objects in the folder, 404s included (issue 12): what bounds each worker's index
    # (~650 B an entry measured, at most ~1 KiB counted, so <= ~100 MiB) and the
    # folder's inodes when clients request many small or absent objects.
    max_objects: Annotated[int, read.integer(1)] = 100_000
    ttl: Annotated[float, read.SECONDS] = 3600.0
    stale_while_revalidate: Annotated[float, read.SECONDS] = 60.0
    stale_if_error: Annotated[float, read.SECONDS] = 86400.0
    negative_ttl: Annotated[float, read.SECONDS] = 30.0


@dataclass(frozen=True, slots=True)
class CompressionConfig:
    """SPEC section 17. On by default, as on a CDN: the types listed are text, which
    every client that asks for a coding can decode. `encodings: []` turns it off."""

    # in order of preference when the client accepts several (ties in q)
    encodings: Annotated[tuple[str, ...], read.CODINGS] = ("br", "zstd", "gzip")
    types: Annotated[tuple[str, ...], read.MEDIA_TYPES] = (
        "image/svg+xml",
        "text/*",
        "application/json",
        "application/javascript",
        "application/xml",
    )
    # smaller bodies gain a few bytes at most: a 300 B SVG saves ~100 B with br
    min_size: Annotated[int, read.SIZE] = 1024


@dataclass(frozen=True, slots=True)
class OriginTimeouts:
    connect: Annotated[float, read.POSITIVE_SECONDS] = 2.0
    first_byte: Annotated[float, read.POSITIVE_SECONDS] = 10.0
    idle: Annotated[float, read.POSITIVE_SECONDS] = 30.0


@dataclass(frozen=True, slots=True)
class ClientTimeouts:
    """Deadlines for public clients (issue 12 items 4 and 5; SPEC is silent, README
    "Limits and timeouts"). None is reset by bytes trickling in or out."""

    # a new connection's first request line and headers, from open
    headers: Annotated[float, read.POSITIVE_SECONDS] = 10.0
    # the next request's headers, from the end of a response
    keepalive: Annotated[float, read.POSITIVE_SECONDS] = 15.0
    # a client that takes none of its response for this long is cut
    send: Annotated[float, read.POSITIVE_SECONDS] = 30.0
    # Bytes a second a client must take on average, over the time keyfront waits on it
    # for one response, once that wait passes `send` (review finding 3): a client that
    # drains a little every `send` no longer holds a pass-through's origin connection
    # for days. 2 KiB/s is below GPRS (~5 KB/s), the slowest mobile data in service.
    # 0: no minimum. Written as a size (a size a second).
    min_send_rate: Annotated[int, read.SIZE] = 2048


@dataclass(frozen=True, slots=True)
class UsageConfig:
    flush_interval: Annotated[float, read.POSITIVE_SECONDS] = 1.0
    max_pending: Annotated[int, read.integer(1)] = 100_000
    # SPEC section 15: per key and hour, the top referrer hosts, objects and client
    # addresses (proxy/analytics.py); false keeps only section 4's counters.
    analytics: Annotated[bool, read.boolean] = True
    # Issue 19: each process's unflushed counts, in files that outlive a SIGKILL
    # (proxy/usage_spool.py); None: `usage` in cache.dir, writable in every kit.
    spool_dir: Annotated[str | None, read.optional(read.local_path)] = None


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """The public listener's protocol (proxy/front.py, issue 20)."""

    # GET/HEAD/OPTIONS served by keyfront's own protocol, everything else handed to
    # aiohttp's connection; false: aiohttp's for every request
    fast_path: Annotated[bool, read.boolean] = True


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    customer_labels: Annotated[int, read.integer(0)] = 50


@dataclass(frozen=True, slots=True)
class CertificatePair:
    """A PEM chain and its key (SPEC section 14). Read from the files at load (tls.py
    `read_certificate`): a pair that does not load, does not match or has expired is a
    config error naming the field."""

    cert: Annotated[str, read.readable_file]
    key: Annotated[str, read.readable_file]


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """The public listener terminates TLS (SPEC section 14). The first certificate is
    the default for clients without SNI."""

    certificates: Annotated[tuple[CertificatePair, ...], _certificates]
    min_version: Annotated[Literal["1.2", "1.3"], read.text(r"1\.[23]", '"1.2" or "1.3"')] = "1.2"
    # changed files are re-read this often; new handshakes use them (proxy/tls.py)
    reload_interval: Annotated[float, read.POSITIVE_SECONDS] = 60.0


@dataclass(frozen=True, slots=True)
class Config:
    keys: Annotated[KeysConfig, section(KeysConfig)]
    routes: Annotated[tuple[Route, ...], _routes]
    listen: Annotated[Listen, _listen] = Listen("0.0.0.0", 8080)
    admin_listen: Annotated[Listen, _listen] = Listen("127.0.0.1", 9080)
    workers: Annotated[int, read.integer(1)] = 1
    # sqlite:/// paths made absolute
    store: Annotated[str, read.store] = "sqlite:///var/lib/keyfront/keyfront.db"
    store_timeout: Annotated[float, read.POSITIVE_SECONDS] = 0.05
    on_store_error: Annotated[
        Literal["allow", "deny"], read.text("allow|deny", "allow or deny")
    ] = "allow"
    trusted_proxies: Annotated[tuple[IPNetwork, ...], read.networks] = ()
    admin: Annotated[AdminConfig, section(AdminConfig)] = field(default_factory=AdminConfig)
    cache: Annotated[CacheConfig, section(CacheConfig)] = field(default_factory=CacheConfig)
    compression: Annotated[CompressionConfig, section(CompressionConfig)] = field(
        default_factory=CompressionConfig
    )
    origin_timeouts: Annotated[OriginTimeouts, section(OriginTimeouts)] = field(
        default_factory=OriginTimeouts
    )
    client_timeouts: Annotated[ClientTimeouts, section(ClientTimeouts)] = field(
        default_factory=ClientTimeouts
    )
    # public client connections per worker (proxy/listener.py)
    max_connections: Annotated[int, read.integer(1)] = 10_000
    listener: Annotated[ListenerConfig, section(ListenerConfig)] = field(
        default_factory=ListenerConfig
    )
    usage: Annotated[UsageConfig, section(UsageConfig)] = field(default_factory=UsageConfig)
    metrics: Annotated[MetricsConfig, section(MetricsConfig)] = field(default_factory=MetricsConfig)
    shutdown_timeout: Annotated[float, read.SECONDS] = 30.0
    access_log: Annotated[str, read.access_log] = "-"  # "-" (stdout), a file path, or "off"
    # SPEC section 14: HTTPS on `listen`; None: plain HTTP (behind a TLS-terminating LB)
    tls: Annotated[TLSConfig | None, read.optional(_TLS)] = None
    # a plain listener answering 308 to https:// (SPEC section 14); needs `tls`
    redirect_http_listen: Annotated[Listen | None, read.optional(_listen)] = None
    # Strict-Transport-Security on every HTTPS response; needs `tls`
    hsts: Annotated[str | None, read.optional(read.text(r"[ -~]{1,256}", "printable ASCII"))] = None
    # SPEC section 16: usage to billing systems; None: no export
    export: Annotated[ExportConfig | None, read.optional(EXPORT)] = None
    # SPEC section 16: quota and refusal alerts to customers; None: none
    alerts: Annotated[AlertsConfig | None, read.optional(ALERTS)] = None
    # not in SPEC: README "Decisions"
    event_loop: Annotated[Literal["uvloop", "asyncio"], read.EVENT_LOOP] = "uvloop"
    # the file it was loaded from (for messages and worker processes)
    source: Annotated[str, SET_BY_LOAD] = ""


def _variants_not_reserved(keys: KeysConfig, routes: tuple[Route, ...]) -> Found:
    """Variant parameters may not be the parameters that carry the key or a signed
    link: those never enter the cache key (SPEC section 5)."""
    reserved = {keys.query_param, "expires", "sig"}
    for i, route in enumerate(routes):
        clash = reserved.intersection(route.variant_params)
        if clash:
            problem = f"{sorted(clash)[0]!r} carries a key or a link signature, not a variant"
            yield f"routes[{i}].variant_params", problem


def _https_only(
    tls: TLSConfig | None, redirect_http_listen: Listen | None, hsts: str | None
) -> Found:
    if tls is None and redirect_http_listen is not None:
        yield "redirect_http_listen", "redirects to https://, which needs a `tls:` section"
    if tls is None and hsts is not None:
        yield "hsts", "is sent on HTTPS responses, which needs a `tls:` section"


def _certificates(raw: Any, at: str, base: Path) -> tuple[CertificatePair, ...]:
    """Each pair read, then loaded from its files (the config check of SPEC section 14:
    a mismatched, unreadable or expired pair names its field)."""
    expect(raw, list, "a list of {cert, key} paths", at)
    if not raw:
        raise ConfigError(at, "at least one certificate is required")
    problems: list[tuple[str, str]] = []
    pairs: list[CertificatePair] = []
    for i, pair in each(_PAIR, raw, at, base, problems):
        found = read.certificate_problem(pair.cert, pair.key)
        if found is not None:
            problems.append((f"{at}[{i}].{found[0]}", found[1]))
        pairs.append(pair)
    raise_any(problems)
    return tuple(pairs)


def _listen(raw: Any, at: str, base: Path) -> Listen:
    expect(raw, str, "host:port (e.g. 0.0.0.0:8080, [::1]:8080, :8080)", at)
    host, _, port = raw.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = str(convert(at, ipaddress.IPv6Address, host[1:-1], f"{host} is not IPv6"))
    elif not re.fullmatch(r"[A-Za-z0-9.-]*", host):
        raise ConfigError(at, f"{raw!r}: bad host (write an IPv6 address in brackets)")
    if not re.fullmatch("[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
        raise ConfigError(at, f"{raw!r} is not host:port with a port from 1 to 65535")
    return Listen(host or "0.0.0.0", int(port))


def _routes(raw: Any, at: str, base: Path) -> tuple[Route, ...]:
    expect(raw, list, "a list of routes", at)
    if not raw:
        raise ConfigError(at, "at least one route is required")
    problems: list[tuple[str, str]] = []
    first: dict[str, int] = {}  # prefix -> the index of the route that has it
    routes: list[Route] = []
    for i, route in each(_ROUTE, raw, at, base, problems):
        if route.prefix in first:
            used = f"{route.prefix} is used by {at}[{first[route.prefix]}] too"
            problems.append((f"{at}[{i}].prefix", used))
        first.setdefault(route.prefix, i)
        routes.append(route)
    raise_any(problems)
    return tuple(routes)


# --- the sections' readers, built last: they read the annotations above (whose readers
# are all defined by now). A field without a reader fails here, at import.

_LOOKUP = section(LookupConfig, Check(("stale", "max_stale"), _max_stale_covers_stale))
_ROUTE = section(
    Route,
    Check(("origin", "s3"), _s3_origin_only),
    Check(("origin", "variant_params"), _variants_from_http_only),
)
_PAIR = section(CertificatePair)
_TLS = section(TLSConfig)
CONFIG = section(
    Config,
    Check(("keys", "routes"), _variants_not_reserved),
    Check(("tls", "redirect_http_listen", "hsts"), _https_only),
)
