"""The config model (SPEC section 7): frozen, typed, built once by `load()`.

Every other module reads these dataclasses; nothing reads the YAML dict-of-dicts.
`load()` raises ConfigError naming the field path (`routes[1].origin: ...`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from .units import Rate

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class KeyDefaults:
    """Applied where a key record leaves a field unset."""

    rate: Rate | None = Rate(20, 1.0)
    burst: int | None = 40
    quota_requests: int | None = None
    quota_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class KeysConfig:
    secrets: dict[int, str]  # version -> secret; the highest version signs new keys
    prefix: str = "pk"
    query_param: str = "key"
    record_cache_ttl: float = 60.0
    record_cache_size: int = 100_000
    defaults: KeyDefaults = field(default_factory=KeyDefaults)

    @property
    def signing_version(self) -> int:
        return max(self.secrets)


@dataclass(frozen=True, slots=True)
class AdminConfig:
    token: str | None = None  # None: the admin API answers 401 to everything


@dataclass(frozen=True, slots=True)
class S3Settings:
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None  # from AWS_* environment when absent
    secret_access_key: str | None = None


@dataclass(frozen=True, slots=True)
class Route:
    prefix: str  # starts and ends with "/"
    origin: str  # absolute URL: file:///abs/dir/, http(s)://host/base/, s3://bucket/prefix/
    auth: Literal["key", "none"] = "key"
    cache_control: str = "private, max-age=3600"
    s3: S3Settings | None = None


@dataclass(frozen=True, slots=True)
class CacheConfig:
    dir: str = "/var/cache/keyfront"
    max_size: int = 10 * 1024**3
    max_object_size: int = 512 * 1024**2
    ttl: float = 3600.0
    stale_while_revalidate: float = 60.0
    stale_if_error: float = 86400.0
    negative_ttl: float = 30.0


@dataclass(frozen=True, slots=True)
class OriginTimeouts:
    connect: float = 2.0
    first_byte: float = 10.0
    idle: float = 30.0


@dataclass(frozen=True, slots=True)
class UsageConfig:
    flush_interval: float = 1.0
    max_pending: int = 100_000


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    customer_labels: int = 50


@dataclass(frozen=True, slots=True)
class Config:
    keys: KeysConfig
    routes: tuple[Route, ...]
    listen: Listen = Listen("0.0.0.0", 8080)
    admin_listen: Listen = Listen("127.0.0.1", 9080)
    workers: int = 1
    store: str = "sqlite:///var/lib/keyfront/keyfront.db"  # sqlite:/// paths made absolute
    store_timeout: float = 0.05
    on_store_error: Literal["allow", "deny"] = "allow"
    trusted_proxies: tuple[IPNetwork, ...] = ()
    admin: AdminConfig = field(default_factory=AdminConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    origin_timeouts: OriginTimeouts = field(default_factory=OriginTimeouts)
    usage: UsageConfig = field(default_factory=UsageConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    shutdown_timeout: float = 30.0
    access_log: str = "-"  # "-" (stdout), a file path, or "off"
    source: str = ""  # the file it was loaded from (for messages and worker processes)
