"""config.load(): the SPEC section 7 file becomes frozen dataclasses, or a ConfigError
that names the field path."""

from __future__ import annotations

import ast
import dataclasses
import ipaddress
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, get_args, get_type_hints

import pytest
import yaml

import proxy.config as config_module
from proxy.config import (
    AdminConfig,
    CacheConfig,
    ClientTimeouts,
    Config,
    ExternalKeysConfig,
    KeyDefaults,
    KeysConfig,
    Listen,
    LookupConfig,
    MetricsConfig,
    OriginTimeouts,
    Route,
    S3Settings,
    UsageConfig,
    describe,
    load,
)
from proxy.config.read import certificate_facts
from proxy.errors import ConfigError
from proxy.units import Rate

SECRET = "s3cret-#: {x}[y] 'q' \"z\" &a *b !c"  # YAML-special characters, 34 long
TOKEN = "admin-token-0123456789"
ENV = {"KEYFRONT_KEY_SECRET": SECRET, "KEYFRONT_ADMIN_TOKEN": TOKEN}

SPEC_EXAMPLE = """\
listen: 0.0.0.0:8080
admin_listen: 127.0.0.1:9080
workers: 1
store: sqlite://{tmp}/db/keyfront.db
store_timeout: 50ms
on_store_error: allow
trusted_proxies: []
keys:
  prefix: pk
  secrets:
    1: ${{KEYFRONT_KEY_SECRET}}
  record_cache_ttl: 60s
  defaults: {{rate: 20/s, burst: 40}}
admin:
  token: ${{KEYFRONT_ADMIN_TOKEN}}
routes:
  - prefix: /files/
    origin: file://{tmp}/srv/files
  - prefix: /request/
    origin: s3://assets-bucket/public/
    s3: {{endpoint_url: http://127.0.0.1:8333, region: us-east-1}}
    cache_control: private, max-age=3600
  - prefix: /open/
    origin: https://origin.example.com/static/
    auth: none
cache:
  dir: {tmp}/cache
  max_size: 10GiB
  max_object_size: 512MiB
  max_objects: 100000
  ttl: 1h
  stale_while_revalidate: 1m
  stale_if_error: 1d
  negative_ttl: 30s
origin_timeouts: {{connect: 2s, first_byte: 10s, idle: 30s}}
usage:
  flush_interval: 1s
  max_pending: 100000
metrics:
  customer_labels: 50
shutdown_timeout: 30s
access_log: "-"
"""


def write(tmp_path: Path, text: str, name: str = "keyfront.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


HOOK = {"type": "webhook", "url": "https://b.example/h", "secret": "whsec_" + "A" * 24}


def minimal() -> dict[str, Any]:
    """The smallest valid config; `files/` must exist next to the file."""
    return {
        "keys": {"secrets": {1: "0123456789abcdef"}},
        "routes": [{"prefix": "/files/", "origin": "file://files/"}],
    }


def load_dict(tmp_path: Path, data: Any, environ: dict[str, str] | None = None) -> Config:
    (tmp_path / "files").mkdir(exist_ok=True)
    return load(write(tmp_path, yaml.safe_dump(data)), environ or {})


def test_spec_example_loads_into_the_model(tmp_path: Path) -> None:
    (tmp_path / "srv" / "files").mkdir(parents=True)
    path = write(tmp_path, SPEC_EXAMPLE.format(tmp=tmp_path))

    config = load(path, ENV)

    assert config == Config(
        listen=Listen("0.0.0.0", 8080),
        admin_listen=Listen("127.0.0.1", 9080),
        workers=1,
        store=f"sqlite://{tmp_path}/db/keyfront.db",
        store_timeout=0.05,
        on_store_error="allow",
        trusted_proxies=(),
        keys=KeysConfig(
            prefix="pk",
            secrets={1: SECRET},
            record_cache_ttl=60.0,
            defaults=KeyDefaults(rate=Rate(20, 1.0), burst=40),
        ),
        admin=AdminConfig(token=TOKEN),
        routes=(
            Route("/files/", f"file://{tmp_path}/srv/files/"),
            Route(
                "/request/",
                "s3://assets-bucket/public/",
                s3=S3Settings(endpoint_url="http://127.0.0.1:8333", region="us-east-1"),
                cache_control="private, max-age=3600",
            ),
            Route("/open/", "https://origin.example.com/static/", auth="none"),
        ),
        cache=CacheConfig(
            dir=f"{tmp_path}/cache",
            max_size=10 * 1024**3,
            max_object_size=512 * 1024**2,
            max_objects=100_000,
            ttl=3600.0,
            stale_while_revalidate=60.0,
            stale_if_error=86400.0,
            negative_ttl=30.0,
        ),
        origin_timeouts=OriginTimeouts(connect=2.0, first_byte=10.0, idle=30.0),
        usage=UsageConfig(flush_interval=1.0, max_pending=100_000),
        metrics=MetricsConfig(customer_labels=50),
        shutdown_timeout=30.0,
        access_log="-",
        source=path,
    )
    assert config.keys.signing_version == 1


def test_absent_fields_take_the_defaults(tmp_path: Path) -> None:
    config = load_dict(tmp_path, minimal())

    expected_route = Route("/files/", f"file://{tmp_path}/files/")
    assert config == Config(
        keys=KeysConfig(secrets={1: "0123456789abcdef"}),
        routes=(expected_route,),
        source=str(tmp_path / "keyfront.yaml"),
    )
    assert config.keys.defaults == KeyDefaults(Rate(20, 1.0), 40, None, None)
    assert config.admin.token is None
    assert config.listen == Listen("0.0.0.0", 8080)


def test_empty_sections_keep_their_defaults(tmp_path: Path) -> None:
    config = load_dict(tmp_path, minimal() | {"admin": None, "cache": {}, "trusted_proxies": None})

    assert config.admin == AdminConfig()
    assert config.cache == CacheConfig()
    assert config.trusted_proxies == ()


def test_every_value_of_every_kind(tmp_path: Path) -> None:
    data = minimal() | {
        "listen": "[::1]:8443",
        "admin_listen": ":9090",
        "workers": 4,
        "store": "rediss://user:pw@redis.example:6380/2",
        "on_store_error": "deny",
        "trusted_proxies": ["10.1.2.3/8", "::1/128"],
        "admin": {"token": TOKEN},
        "metrics": {"customer_labels": 0},
        "shutdown_timeout": 0,
        "access_log": "logs/access.log",
        "event_loop": "asyncio",
    }
    data["keys"] |= {"prefix": "acme", "query_param": "api_key", "record_cache_size": 10}
    data["keys"]["defaults"] = {"rate": "600/m", "burst": 5, "quota_bytes": "1.5KB"}
    data["keys"]["defaults"] |= {"quota_requests": 1000}

    config = load_dict(tmp_path, data)

    assert (config.listen, config.admin_listen) == (Listen("::1", 8443), Listen("0.0.0.0", 9090))
    assert str(config.listen) == "[::1]:8443"
    assert config.workers == 4
    assert config.store == "rediss://user:pw@redis.example:6380/2"
    assert config.on_store_error == "deny"
    assert config.event_loop == "asyncio"
    nets = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert config.trusted_proxies == nets
    assert config.keys.prefix == "acme"
    assert config.keys.query_param == "api_key"
    assert config.keys.record_cache_size == 10
    assert config.keys.defaults == KeyDefaults(Rate(600, 60.0), 5, 1000, 1500)
    assert config.metrics.customer_labels == 0
    assert config.shutdown_timeout == 0.0
    assert config.access_log == str(tmp_path / "logs" / "access.log")


def test_client_limits_have_defaults_and_take_values(tmp_path: Path) -> None:
    # Issue 12 items 4 and 5: slowloris and stalled readers (README "Limits and timeouts").
    defaults = ClientTimeouts(10.0, 15.0, 30.0, min_send_rate=2048)
    assert load_dict(tmp_path, minimal()).client_timeouts == defaults
    assert load_dict(tmp_path, minimal()).max_connections == 10_000
    data = minimal() | {
        "client_timeouts": {"headers": "2s", "keepalive": "500ms", "send": "1m"}
        | {"min_send_rate": "4KiB"},  # review finding 3: bytes a second
        "max_connections": 20,
    }
    config = load_dict(tmp_path, data)
    assert config.client_timeouts == ClientTimeouts(
        headers=2.0, keepalive=0.5, send=60.0, min_send_rate=4096
    )
    off = minimal() | {"client_timeouts": {"min_send_rate": 0}}
    assert load_dict(tmp_path, off).client_timeouts.min_send_rate == 0
    assert config.max_connections == 20


def test_rate_and_burst_may_be_null_for_no_limit(tmp_path: Path) -> None:
    data = minimal()
    data["keys"]["defaults"] = {"rate": None, "burst": None}

    assert load_dict(tmp_path, data).keys.defaults == KeyDefaults(None, None, None, None)


def test_secret_versions_may_be_digit_strings_and_the_highest_signs(tmp_path: Path) -> None:
    data = minimal()
    data["keys"]["secrets"] = {1: "a" * 16, "3": "c" * 16, 2: "b" * 16}

    config = load_dict(tmp_path, data)

    assert config.keys.secrets == {1: "a" * 16, 3: "c" * 16, 2: "b" * 16}
    assert config.keys.signing_version == 3


@pytest.mark.parametrize(
    ("origin", "stored"),
    [
        ("https://origin.example.com", "https://origin.example.com/"),
        ("https://origin.example.com/static", "https://origin.example.com/static/"),
        ("http://127.0.0.1:8000/a/b/", "http://127.0.0.1:8000/a/b/"),
        ("s3://bucket", "s3://bucket/"),
        ("s3://bucket/", "s3://bucket/"),
        ("s3://bucket/public", "s3://bucket/public/"),
        ("s3://bucket/a/b/", "s3://bucket/a/b/"),
    ],
)
def test_origins_are_stored_with_a_trailing_slash(tmp_path: Path, origin: str, stored: str) -> None:
    data = minimal()
    data["routes"] = [{"prefix": "/", "origin": origin}]

    assert load_dict(tmp_path, data).routes[0].origin == stored


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "etc" / "keyfront"
    (conf / "samples").mkdir(parents=True)
    text = yaml.safe_dump(minimal()).replace("file://files/", "file://samples/")
    text += "store: sqlite://../../data/keyfront.db\ncache: {dir: ../../data/cache}\n"
    path = write(conf, text + "access_log: access.log\n")
    monkeypatch.chdir(tmp_path / "etc")  # the working directory must not matter

    config = load(path, {})

    assert config.routes[0].origin == f"file://{conf}/samples/"
    assert config.store == f"sqlite://{tmp_path}/data/keyfront.db"
    assert config.cache.dir == f"{tmp_path}/data/cache"
    assert config.access_log == f"{conf}/access.log"
    assert config.source == path


def test_relative_config_path_becomes_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_dict(tmp_path, minimal())
    monkeypatch.chdir(tmp_path)

    assert load("keyfront.yaml", {}).source == str(tmp_path / "keyfront.yaml")


def test_the_path_may_come_from_keyfront_config(tmp_path: Path) -> None:
    load_dict(tmp_path, minimal())
    path = str(tmp_path / "keyfront.yaml")

    assert load(None, {"KEYFRONT_CONFIG": path}).source == path


def test_no_path_at_all_is_an_error() -> None:
    with pytest.raises(ConfigError, match="pass -c FILE or set KEYFRONT_CONFIG"):
        load(None, {})


def test_environ_defaults_to_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = minimal()
    data["keys"]["secrets"] = {1: "${TEST_KEYFRONT_SECRET}"}
    monkeypatch.setenv("TEST_KEYFRONT_SECRET", "from-the-environment")
    (tmp_path / "files").mkdir()

    config = load(write(tmp_path, yaml.safe_dump(data)))

    assert config.keys.secrets == {1: "from-the-environment"}


def test_env_interpolation(tmp_path: Path) -> None:
    data = minimal() | {
        "listen": "${LISTEN:-127.0.0.1:8081}",
        "admin_listen": "${ADMIN_LISTEN:-127.0.0.1:9999}",
        "workers": "${WORKERS}",
        "access_log": "${LOG:-off}",
        "admin": {"token": "${TOKEN:-}"},
    }
    data["keys"]["secrets"] = {1: "${SECRET}", 2: "prefix-$${NOT_A_VAR}-${EMPTY:-dflt}"}
    environ = {"SECRET": SECRET, "WORKERS": "3", "ADMIN_LISTEN": "[::]:9000", "EMPTY": ""}

    config = load_dict(tmp_path, data, environ)

    assert config.keys.secrets == {1: SECRET, 2: "prefix-${NOT_A_VAR}-dflt"}
    assert config.listen == Listen("127.0.0.1", 8081)
    assert config.admin_listen == Listen("::", 9000)
    assert config.workers == 3
    assert config.access_log == "off"
    assert config.admin.token is None  # `${TOKEN:-}` leaves it unset


def test_bare_off_is_the_access_log_off(tmp_path: Path) -> None:
    text = yaml.safe_dump(minimal()) + "access_log: off\n"  # YAML 1.1 reads it as false
    (tmp_path / "files").mkdir()

    assert load(write(tmp_path, text), {}).access_log == "off"


Change = Callable[[dict[str, Any]], None]


def put(path: str, value: Any) -> Change:
    """A change that sets one dotted path (`keys.defaults.rate`, `routes.0.origin`)."""

    def change(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        node[int(last) if isinstance(node, list) else last] = value

    return change


def drop(path: str) -> Change:
    def change(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[part]
        del node[last]

    return change


def add_route(**route: Any) -> Change:
    return lambda data: data["routes"].append(route)


BROKEN: list[tuple[str, Change, str, str]] = [
    ("unknown top field", put("cahce", {}), "cahce", "unknown field (did you mean cache?)"),
    ("unknown nested", put("cache.max_szie", "1GiB"), "cache.max_szie", "expected one of dir"),
    ("unknown route field", put("routes.0.orign", "x"), "routes[0].orign", "unknown field"),
    ("empty file", lambda d: d.clear(), "keys", "required field is missing"),
    ("section not a mapping", put("cache", [1]), "cache", "expected a mapping, got a list"),
    ("bad size", put("cache.max_size", "lots"), "cache.max_size", "is not a size"),
    ("bad size unit", put("cache.max_object_size", "5XB"), "cache.max_object_size", "unit"),
    ("no objects", put("cache.max_objects", 0), "cache.max_objects", "at least 1"),
    ("objects a size", put("cache.max_objects", "1GiB"), "cache.max_objects", "an integer"),
    ("bad duration", put("store_timeout", "soon"), "store_timeout", "is not a duration"),
    ("huge size", put("cache.max_size", "9" * 400), "cache.max_size", "too large"),
    ("huge duration", put("cache.ttl", "9" * 400 + "s"), "cache.ttl", "too large"),
    ("infinite size", put("cache.max_size", float("inf")), "cache.max_size", "got inf"),
    ("nan duration", put("cache.ttl", float("nan")), "cache.ttl", "got nan"),
    ("workers digits", put("workers", "²"), "workers", "expected an integer, got a string"),
    ("route prefix ..", put("routes.0.prefix", "/a/../"), "routes[0].prefix", "starts and ends"),
    ("zero duration", put("store_timeout", "0ms"), "store_timeout", "greater than 0"),
    ("negative ttl", put("cache.ttl", -1), "cache.ttl", "at least 0"),
    ("zero timeout", put("origin_timeouts.idle", 0), "origin_timeouts.idle", "greater than 0"),
    ("zero send", put("client_timeouts.send", "0s"), "client_timeouts.send", "greater than 0"),
    (
        "bad min_send_rate",
        put("client_timeouts.min_send_rate", "fast"),
        "client_timeouts.min_send_rate",
        "not a",
    ),
    (
        "bad keepalive",
        put("client_timeouts.keepalive", "soon"),
        "client_timeouts.keepalive",
        "not a",
    ),
    ("no connections", put("max_connections", 0), "max_connections", "at least 1"),
    ("zero flush", put("usage.flush_interval", "0s"), "usage.flush_interval", "greater than 0"),
    ("bad rate", put("keys.defaults.rate", "20 per s"), "keys.defaults.rate", "not a rate"),
    ("rate number", put("keys.defaults.rate", 20), "keys.defaults.rate", "got an integer"),
    ("burst zero", put("keys.defaults.burst", 0), "keys.defaults.burst", "at least 1"),
    (
        "quota text",
        put("keys.defaults.quota_requests", "many"),
        "keys.defaults.quota_requests",
        "integer",
    ),
    ("bad listen", put("listen", "localhost"), "listen", "host:port"),
    ("listen port 0", put("listen", ":0"), "listen", "1 to 65535"),
    ("listen port big", put("admin_listen", "127.0.0.1:70000"), "admin_listen", "1 to 65535"),
    ("listen bare ipv6", put("listen", "::1:8080"), "listen", "brackets"),
    ("listen bad ipv6", put("listen", "[fe::zz]:8080"), "listen", "not IPv6"),
    ("listen int", put("listen", 8080), "listen", "got an integer"),
    ("workers zero", put("workers", 0), "workers", "at least 1"),
    ("workers bool", put("workers", True), "workers", "got a boolean"),
    ("workers float", put("workers", 1.5), "workers", "got a number"),
    ("on_store_error", put("on_store_error", "ignore"), "on_store_error", "allow or deny"),
    ("event_loop", put("event_loop", "trio"), "event_loop", "uvloop or asyncio"),
    ("bad cidr", put("trusted_proxies", ["10.0.0.0/8", "ten"]), "trusted_proxies[1]", "CIDR"),
    ("cidrs not list", put("trusted_proxies", "10.0.0.0/8"), "trusted_proxies", "a list"),
    ("missing keys", drop("keys"), "keys", "required field is missing"),
    ("missing secrets", drop("keys.secrets"), "keys.secrets", "required field is missing"),
    ("empty secrets", put("keys.secrets", {}), "keys.secrets", "at least one secret"),
    ("short secret", put("keys.secrets", {1: "x" * 15}), "keys.secrets.1", "at least 16"),
    ("secret number", put("keys.secrets", {1: 10**20}), "keys.secrets.1", "expected a string"),
    ("version zero", put("keys.secrets", {0: "x" * 16}), "keys.secrets.0", "at least 1"),
    ("version word", put("keys.secrets", {"one": "x" * 16}), "keys.secrets.one", "integer"),
    (
        "version twice",
        put("keys.secrets", {1: "x" * 16, "1": "y" * 16}),
        "keys.secrets.1",
        "twice",
    ),
    ("bad key prefix", put("keys.prefix", "PK"), "keys.prefix", "lowercase letters"),
    ("long key prefix", put("keys.prefix", "abcdefghi"), "keys.prefix", "1 to 8"),
    ("bad query param", put("keys.query_param", "api key"), "keys.query_param", "query parameter"),
    ("empty query param", put("keys.query_param", ""), "keys.query_param", "query parameter"),
    ("cache size zero", put("keys.record_cache_size", 0), "keys.record_cache_size", "at least 1"),
    ("short admin token", put("admin.token", "short"), "admin.token", "at least 16"),
    (
        "no keys per customer",
        put("admin.customer_max_keys", 0),
        "admin.customer_max_keys",
        "at least 1",
    ),
    (
        "keys per customer text",
        put("admin.customer_max_keys", "many"),
        "admin.customer_max_keys",
        "an integer",
    ),
    ("missing routes", drop("routes"), "routes", "required field is missing"),
    ("empty routes", put("routes", []), "routes", "at least one route"),
    ("routes mapping", put("routes", {"prefix": "/"}), "routes", "a list of routes"),
    (
        "route prefix no slash",
        put("routes.0.prefix", "files/"),
        "routes[0].prefix",
        "starts and ends",
    ),
    (
        "route prefix no end",
        put("routes.0.prefix", "/files"),
        "routes[0].prefix",
        "starts and ends",
    ),
    ("route prefix //", put("routes.0.prefix", "/a//"), "routes[0].prefix", "starts and ends"),
    (  # compared with decoded paths: an escape would never match (issue 12 item 1)
        "route prefix escaped",
        put("routes.0.prefix", "/secre%74/"),
        "routes[0].prefix",
        "written unescaped",
    ),
    (
        "duplicate prefix",
        add_route(prefix="/files/", origin="s3://b"),
        "routes[1].prefix",
        "routes[0]",
    ),
    ("missing origin", put("routes.0", {"prefix": "/"}), "routes[0].origin", "required"),
    ("origin scheme", put("routes.0.origin", "ftp://host/x/"), "routes[0].origin", "scheme"),
    ("origin no scheme", put("routes.0.origin", "/srv/files"), "routes[0].origin", "scheme"),
    (
        "missing folder",
        put("routes.0.origin", "file://nope/"),
        "routes[0].origin",
        "does not exist",
    ),
    (
        "folder is a file",
        put("routes.0.origin", "file://keyfront.yaml"),
        "routes[0].origin",
        "not a directory",
    ),
    ("http no host", put("routes.0.origin", "https:///static/"), "routes[0].origin", "no host"),
    (
        "http bad port",
        put("routes.0.origin", "http://h:99999/"),
        "routes[0].origin",
        "has a bad port",
    ),
    (
        "http query",
        put("routes.0.origin", "http://h/a?b=1"),
        "routes[0].origin",
        "without a query",
    ),
    ("s3 no bucket", put("routes.0.origin", "s3:///prefix/"), "routes[0].origin", "needs a bucket"),
    ("s3 on a file route", put("routes.0.s3", {"region": "eu"}), "routes[0].s3", "s3:// origin"),
    (
        "s3 unknown field",
        add_route(prefix="/s3/", origin="s3://b", s3={"bucket": "b"}),
        "routes[1].s3.bucket",
        "unknown",
    ),
    (
        "s3 bad endpoint",
        add_route(prefix="/s3/", origin="s3://b", s3={"endpoint_url": "ftp://x"}),
        "routes[1].s3.endpoint_url",
        "http",
    ),
    ("auth", put("routes.0.auth", "token"), "routes[0].auth", "key or none"),
    (
        "cache_control type",
        put("routes.0.cache_control", 3600),
        "routes[0].cache_control",
        "string",
    ),
    (
        "origin_cache_control",
        put("routes.0.origin_cache_control", "obey"),
        "routes[0].origin_cache_control",
        "ignore or respect",
    ),
    (
        "variant_params not a list",
        add_route(prefix="/v/", origin="http://o.example/", variant_params="w"),
        "routes[1].variant_params",
        "a list of query parameter names",
    ),
    (
        "variant_params bad name",
        add_route(prefix="/v/", origin="http://o.example/", variant_params=["w", "a b"]),
        "routes[1].variant_params[1]",
        "query parameter name",
    ),
    (
        "variant_params twice",
        add_route(prefix="/v/", origin="http://o.example/", variant_params=["w", "w"]),
        "routes[1].variant_params[1]",
        "given twice",
    ),
    (
        "variant_params on a file route",
        put("routes.0.variant_params", ["w"]),
        "routes[0].variant_params",
        "only an http(s):// origin",
    ),
    (
        "variant_params carrying the key",
        add_route(prefix="/v/", origin="http://o.example/", variant_params=["w", "key"]),
        "routes[1].variant_params",
        "carries a key",
    ),
    ("store scheme", put("store", "postgres://db/x"), "store", "sqlite://PATH, redis://"),
    ("store empty sqlite", put("store", "sqlite://"), "store", "sqlite://PATH"),
    ("redis no host", put("store", "redis:///0"), "store", "no host"),
    ("empty cache dir", put("cache.dir", ""), "cache.dir", "must not be empty"),
    (
        "customer labels",
        put("metrics.customer_labels", -1),
        "metrics.customer_labels",
        "at least 0",
    ),
    ("max pending", put("usage.max_pending", 0), "usage.max_pending", "at least 1"),
    ("analytics", put("usage.analytics", "yes"), "usage.analytics", "expected true or false"),
    ("access_log true", put("access_log", True), "access_log", "got a boolean"),
    (
        "unset env",
        put("keys.secrets", {1: "${KEYFRONT_KEY_SECRET}"}),
        "keys.secrets.1",
        "environment variable KEYFRONT_KEY_SECRET is not set",
    ),
    (
        "unset env in list",
        put("routes.0.origin", "${ORIGIN}"),
        "routes[0].origin",
        "ORIGIN is not set",
    ),
    ("unterminated ${", put("listen", "${LISTEN"), "listen", "unterminated"),
    ("bad variable", put("listen", "${1X}"), "listen", "bad variable reference"),
    # keys.external (SPEC section 13)
    ("lookup without url", put("keys.external.lookup", {"token": "t"}),
     "keys.external.lookup.url", "required field is missing"),
    ("lookup url not http", put("keys.external.lookup", {"url": "ftp://keys/x"}),
     "keys.external.lookup.url", "not an http(s):// URL"),
    ("lookup unknown field", put("keys.external.lookup", {"url": "http://k/", "fersh": "1s"}),
     "keys.external.lookup.fersh", "did you mean fresh?"),
    ("lookup zero timeout", put("keys.external.lookup", {"url": "http://k/", "timeout": "0s"}),
     "keys.external.lookup.timeout", "must be greater than 0"),
    ("lookup bad rate", put("keys.external.lookup", {"url": "http://k/",
                                                     "unknown_key_rate": "5"}),
     "keys.external.lookup.unknown_key_rate", "is not a rate"),
    ("lookup zero burst", put("keys.external.lookup", {"url": "http://k/",
                                                       "unknown_key_burst": 0}),
     "keys.external.lookup.unknown_key_burst", "must be at least 1"),
    ("lookup zero concurrency", put("keys.external.lookup", {"url": "http://k/",
                                                             "concurrency": 0}),
     "keys.external.lookup.concurrency", "must be at least 1"),
    ("max_stale below stale", put("keys.external.lookup", {"url": "http://k/", "stale": "10m",
                                                           "max_stale": "1m"}),
     "keys.external.lookup.max_stale", "must be at least `stale`"),
    ("bad pattern", put("keys.external.pattern", "[a-z"), "keys.external.pattern",
     "not a regular expression"),
    # compression (SPEC section 17)
    ("compress not a bool", put("routes.0.compress", "no"), "routes[0].compress",
     "true or false"),
    ("unknown coding", put("compression.encodings", ["br", "deflate"]),
     "compression.encodings[1]", "br, zstd or gzip"),
    ("coding twice", put("compression.encodings", ["gzip", "br", "gzip"]),
     "compression.encodings[2]", "given twice"),
    ("encodings not a list", put("compression.encodings", "br"), "compression.encodings",
     "a list of codings"),
    ("bad media type", put("compression.types", ["text/*", "svg"]), "compression.types[1]",
     "type/subtype or type/*"),
    ("uppercase media type", put("compression.types", ["Text/HTML"]), "compression.types[0]",
     "lowercase"),
    ("bad min_size", put("compression.min_size", "big"), "compression.min_size", "a size"),
    # export and alerts (SPEC section 16)
    ("export period", put("export", {"period": "10m", "sinks": [HOOK]}), "export.period",
     "expected one of 1m, 5m, 1h"),
    ("export no sinks", put("export", {"sinks": []}), "export.sinks", "at least one sink"),
    ("export sinks missing", put("export", {"period": "1h"}), "export.sinks",
     "required field is missing"),
    ("sink type", put("export", {"sinks": [{**HOOK, "type": "kafka"}]}),
     "export.sinks[0].type", "expected one of webhook, stripe, openmeter, lago"),
    ("sink field of another type", put("export", {"sinks": [{**HOOK, "api_key": "x" * 9}]}),
     "export.sinks[0].api_key", "unknown field"),
    ("webhook url", put("export", {"sinks": [{**HOOK, "url": "ftp://b/"}]}),
     "export.sinks[0].url", "not an http(s):// URL"),
    ("webhook secret prefix", put("export", {"sinks": [{**HOOK, "secret": "A" * 24}]}),
     "export.sinks[0].secret", "whsec_"),
    ("webhook secret short", put("export", {"sinks": [{**HOOK, "secret": "whsec_MDEy"}]}),
     "export.sinks[0].secret", "16 to 64 random bytes"),
    ("webhook secret not base64", put("export", {"sinks": [{**HOOK, "secret": "whsec_!!!!" * 8}]}),
     "export.sinks[0].secret", "base64"),
    ("webhook batch", put("export", {"sinks": [{**HOOK, "batch_size": 501}]}),
     "export.sinks[0].batch_size", "at most 500"),
    ("sink names clash", put("export", {"sinks": [HOOK, HOOK]}), "export.sinks[1].name",
     "'webhook' is taken"),
    ("stripe key missing", put("export", {"sinks": [{"type": "stripe"}]}),
     "export.sinks[0].api_key", "required field is missing"),
    ("lago url missing", put("export", {"sinks": [{"type": "lago", "api_key": "k" * 9}]}),
     "export.sinks[0].url", "required field is missing"),
    ("stripe event name", put("export", {"sinks": [{"type": "stripe", "api_key": "k" * 9,
                                                    "bytes_event": "a b"}]}),
     "export.sinks[0].bytes_event", "is not 1-100"),
    ("sink name", put("export", {"sinks": [{**HOOK, "name": "Big Name"}]}),
     "export.sinks[0].name", "1-32 of a-z"),
    ("threshold not percent", put("alerts", {"quota_thresholds": ["80"]}),
     "alerts.quota_thresholds[0]", "not a percentage"),
    ("threshold above 100", put("alerts", {"quota_thresholds": ["80%", "120%"]}),
     "alerts.quota_thresholds[1]", "at most 100%"),
    ("threshold twice", put("alerts", {"quota_thresholds": ["80%", "80.0%"]}),
     "alerts.quota_thresholds", "given twice"),
    ("spike zero", put("alerts", {"refusal_spike": "0%"}), "alerts.refusal_spike",
     "above 0%"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "path", "problem"), [case[1:] for case in BROKEN], ids=[case[0] for case in BROKEN]
)
def test_errors_name_the_field_path(
    tmp_path: Path, change: Change, path: str, problem: str
) -> None:
    data = minimal()
    change(data)

    with pytest.raises(ConfigError) as caught:
        load_dict(tmp_path, data)

    assert caught.value.path == path
    assert problem in caught.value.problem
    assert str(caught.value).startswith(f"{path}: ")


def test_yaml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "listen: :8080\nkeys: {secrets: [1\nroutes: []\n")

    with pytest.raises(ConfigError) as caught:
        load(path, {})

    assert str(caught.value).startswith(f"{path}, line 3, column")


def test_a_key_written_twice_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "cache: {}\nworkers: 2\ncache: {ttl: 1h}\n")

    with pytest.raises(ConfigError, match=r"line 3, column 1: duplicate key 'cache'"):
        load(path, {})


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    path = str(tmp_path / "missing.yaml")

    with pytest.raises(ConfigError, match=f"cannot read config file {path}: No such file"):
        load(path, {})


def test_a_non_utf8_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("listen: ':8080' # caf\xe9\n".encode("latin-1"))

    with pytest.raises(ConfigError, match="cannot read config file"):
        load(str(path), {})


def test_interpolated_values_are_never_read_as_yaml(tmp_path: Path) -> None:
    data = minimal()
    data["keys"]["secrets"] = {1: "${SECRET}"}
    tricky = "a: b\n- c\n{d: [e]} # f\n${G}"

    config = load_dict(tmp_path, data, {"SECRET": tricky})

    assert config.keys.secrets == {1: tricky}  # and `${G}` inside the value stays as is


def test_describe_summarises_without_secrets(tmp_path: Path) -> None:
    data = minimal() | {"store": "redis://:hunter2-password@redis:6379/0", "workers": 2}
    data["routes"].append({"prefix": "/open/", "origin": "https://o.example/", "auth": "none"})
    config = load_dict(tmp_path, data)

    summary = describe(config)

    assert "listen 0.0.0.0:8080 (admin 127.0.0.1:9080), workers 2" in summary
    assert "store redis://:***@redis:6379/0" in summary
    assert f"route /files/ -> file://{tmp_path}/files/ (auth key)" in summary
    assert "route /open/ -> https://o.example/ (auth none)" in summary
    assert "hunter2" not in summary
    assert "0123456789abcdef" not in summary


def test_the_example_configs_in_the_repository_load() -> None:
    root = Path(__file__).parent.parent / "config"
    environ = {"KEYFRONT_KEY_SECRET": SECRET, "KEYFRONT_ADMIN_TOKEN": TOKEN}
    for path in (root / "local.yaml", root / "redis.yaml"):
        config = load(str(path), environ)
        assert config.source == os.path.abspath(path)


def test_external_key_lookup_takes_the_spec_defaults_and_values(tmp_path: Path) -> None:
    data = minimal()
    assert load_dict(tmp_path, data).keys.external == ExternalKeysConfig()
    assert ExternalKeysConfig().pattern.pattern == "[A-Za-z0-9._~-]{8,128}"
    data["keys"]["external"] = {"lookup": {"url": "https://keys.internal/keyfront/lookup/",
                                           "token": "${KEY_API_TOKEN}"}}  # fmt: skip
    lookup = load_dict(tmp_path, data, {"KEY_API_TOKEN": "tok-123"}).keys.external.lookup
    assert lookup == LookupConfig(
        url="https://keys.internal/keyfront/lookup/",  # as written: its slash is the API's
        token="tok-123",
        timeout=0.5,
        fresh=60.0,
        stale=600.0,
        max_stale=3600.0,
        negative_ttl=30.0,
        concurrency=32,
        unknown_key_rate=Rate(5, 1.0),
        unknown_key_burst=20,
    )
    data["keys"]["external"] = {
        "pattern": "[0-9a-f-]{36}",
        "lookup": {"url": "http://127.0.0.1:7000/k", "timeout": "250ms", "fresh": "5s",
                   "stale": "1m", "max_stale": "2h", "negative_ttl": "0s", "concurrency": 4,
                   "unknown_key_rate": "60/m", "unknown_key_burst": 3, "cache_size": 10},
    }  # fmt: skip
    external = load_dict(tmp_path, data).keys.external
    assert external.pattern.pattern == "[0-9a-f-]{36}"
    assert external.lookup == LookupConfig(
        "http://127.0.0.1:7000/k", None, 0.25, 5.0, 60.0, 7200.0, 0.0, 4, Rate(60, 60.0), 3, 10
    )


def test_customer_max_keys_defaults_to_1000_and_null_lifts_it(tmp_path: Path) -> None:
    assert load_dict(tmp_path, minimal()).admin.customer_max_keys == 1000
    lifted = load_dict(tmp_path, minimal() | {"admin": {"customer_max_keys": None}})
    assert lifted.admin.customer_max_keys is None
    assert load_dict(
        tmp_path, minimal() | {"admin": {"customer_max_keys": 5}}
    ).admin == AdminConfig(customer_max_keys=5)


# --- keys.external (SPEC section 13) ------------------------------------------------------


def test_external_keys_default_to_the_spec_pattern_and_a_store_kept_secret(
    tmp_path: Path,
) -> None:
    external = load_dict(tmp_path, minimal()).keys.external
    assert external.pattern.pattern == "[A-Za-z0-9._~-]{8,128}"
    assert external.hash_secret is None
    data = minimal()
    data["keys"]["external"] = {"pattern": "[0-9a-f]{8}-[0-9a-f]{4}", "hash_secret": "h" * 16}
    external = load_dict(tmp_path, data).keys.external
    assert external.pattern.fullmatch("0123abcd-ef01")
    assert external.hash_secret == "h" * 16
    # config check says how imported keys are hashed, and never shows the secret
    summary = describe(load_dict(tmp_path, data))
    assert "keys.external.hash_secret" in summary and "h" * 16 not in summary
    assert "kept in the store" in describe(load_dict(tmp_path, minimal()))


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("[a-z", "not a regular expression"),
        ("(a+)+", "quantifier inside a quantified group"),
        ("(?:[a-z0-9]+-?)*", "quantifier inside a quantified group"),
        ("(a|ab)+", "alternation inside a quantified group"),
        ("(a)\\1", "backreferences"),
        ("", "1 to 1024 characters"),
    ],
)
def test_external_key_patterns_that_backtrack_are_refused(
    tmp_path: Path, pattern: str, problem: str
) -> None:
    data = minimal()
    data["keys"]["external"] = {"pattern": pattern}
    with pytest.raises(ConfigError) as caught:
        load_dict(tmp_path, data)
    assert caught.value.path == "keys.external.pattern"
    assert problem in caught.value.problem


def test_a_short_hash_secret_is_refused(tmp_path: Path) -> None:
    data = minimal()
    data["keys"]["external"] = {"hash_secret": "short"}
    with pytest.raises(ConfigError) as caught:
        load_dict(tmp_path, data)
    assert caught.value.path == "keys.external.hash_secret"


# --- issue 14: every error of the file at once ---------------------------------------------


def problems_in(tmp_path: Path, data: dict[str, Any]) -> list[str]:
    """The field paths `load()` names for `data`, written in its own key order."""
    (tmp_path / "files").mkdir(exist_ok=True)
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, yaml.safe_dump(data, sort_keys=False)), {})
    lines = str(caught.value).splitlines()
    assert lines == [f"{path}: {problem}" for path, problem in caught.value.problems]
    assert (caught.value.path, caught.value.problem) == caught.value.problems[0]
    return [path for path, _ in caught.value.problems]


def test_every_error_of_the_file_is_reported_at_once(tmp_path: Path) -> None:
    data = minimal() | {"workers": 0, "listen": "nowhere", "cahce": {}}
    data["keys"] |= {"prefix": "PK", "record_cache_size": 0}
    data["keys"]["defaults"] = {"rate": "fast", "burst": 0}
    data["keys"]["external"] = {"lookup": {"url": "http://k/", "stale": "1h", "max_stale": "1m"}}
    data["routes"] += [
        {"prefix": "/a/", "origin": "ftp://x/"},  # a bad item between good ones
        {"prefix": "/files/", "origin": "s3://b"},  # a cross-item check: routes[0] parsed
        {"prefix": "/v/", "origin": "file://files/", "auth": "x", "s3": {"region": "eu"}},
        {"origin": "http://o.example/", "variant_params": ["w", "w", "a b"]},
    ]
    data["cache"] = {"max_size": "lots", "ttl": -1, "max_objects": 0}
    data["trusted_proxies"] = ["10.0.0.0/8", "nope", "::1/128", 7]

    # In the file's order; in a section, a missing field and then cross-field checks last.
    assert problems_in(tmp_path, data) == [
        "keys.prefix",
        "keys.record_cache_size",
        "keys.defaults.rate",
        "keys.defaults.burst",
        "keys.external.lookup.max_stale",
        "routes[1].origin",
        "routes[2].prefix",
        "routes[3].auth",
        "routes[3].s3",
        "routes[4].variant_params[1]",
        "routes[4].variant_params[2]",
        "routes[4].prefix",
        "workers",
        "listen",
        "cahce",
        "cache.max_size",
        "cache.ttl",
        "cache.max_objects",
        "trusted_proxies[1]",
        "trusted_proxies[3]",
    ]


def test_every_unset_variable_is_reported_with_the_other_errors(tmp_path: Path) -> None:
    data = minimal() | {"admin": {"token": "${TOKEN}"}, "workers": "${WORKERS}"}
    data["keys"]["secrets"] = {1: "${SECRET}", 2: "${BAD"}
    data["cache"] = {"ttl": "soon"}

    assert problems_in(tmp_path, data) == [
        "keys.secrets.1",
        "keys.secrets.2",
        "admin.token",
        "workers",
        "cache.ttl",
    ]


def test_a_cross_section_check_runs_when_its_sections_parsed(tmp_path: Path) -> None:
    data = minimal() | {"workers": 0}
    data["routes"].append(
        {"prefix": "/v/", "origin": "http://o.example/", "variant_params": ["sig"]}
    )

    assert problems_in(tmp_path, data) == ["workers", "routes[1].variant_params"]


# --- issue 14: the schema is written once ---------------------------------------------------

EVERY_FIELD = """\
listen: 127.0.0.1:8081
admin_listen: 127.0.0.1:9081
workers: 2
store: redis://127.0.0.1:6379/1
store_timeout: 100ms
on_store_error: deny
trusted_proxies: [10.0.0.0/8]
max_connections: 50
listener: {fast_path: false}
shutdown_timeout: 5s
access_log: "off"
event_loop: asyncio
keys:
  secrets: {1: 0123456789abcdef}
  prefix: kf
  query_param: api_key
  record_cache_ttl: 5s
  record_cache_size: 10
  defaults: {rate: 5/s, burst: 6, quota_requests: 7, quota_bytes: 8MiB}
  external:
    pattern: "[0-9]{8}"
    hash_secret: hash-secret-0123456789
    lookup: {url: "http://127.0.0.1:7000/k", token: t, timeout: 1s, fresh: 2s, stale: 3s,
             max_stale: 4s, negative_ttl: 5s, concurrency: 6, unknown_key_rate: 7/s,
             unknown_key_burst: 8, cache_size: 9}
admin: {token: admin-token-0123456789, customer_max_keys: 5}
routes:
  - {prefix: /v/, origin: "http://o.example/", auth: none, cache_control: no-store,
     origin_cache_control: respect, variant_params: [w], compress: false}
  - {prefix: /s3/, origin: "s3://bucket/", s3: {endpoint_url: "http://127.0.0.1:8333",
     region: eu, access_key_id: a, secret_access_key: b}}
cache: {dir: cache, max_size: 1GiB, max_object_size: 1MiB, max_objects: 10, ttl: 1m,
        stale_while_revalidate: 2m, stale_if_error: 3m, negative_ttl: 4m}
compression: {encodings: [gzip], types: [image/svg+xml], min_size: 2KiB}
origin_timeouts: {connect: 1s, first_byte: 2s, idle: 3s}
client_timeouts: {headers: 1s, keepalive: 2s, send: 3s, min_send_rate: 1KiB}
usage: {flush_interval: 2s, max_pending: 10, analytics: false, spool_dir: spool}
metrics: {customer_labels: 5}
tls: {certificates: [{cert: tls.pem, key: tls.key}], min_version: "1.3", reload_interval: 5s}
redirect_http_listen: 127.0.0.1:8082
hsts: max-age=60
export:
  period: 5m
  max_pending: 7
  sinks:
    - {type: webhook, name: bill, url: "https://b.example/x",
       secret: whsec_MDEyMzQ1Njc4OWFiY2RlZg==, timeout: 2s, batch_size: 9}
    - {type: stripe, name: st, api_key: sk_test_0123456789, requests_event: r, bytes_event: b,
       url: "http://127.0.0.1:7001", timeout: 3s}
    - {type: openmeter, name: om, url: "https://om.example", token: om-token-123, timeout: 4s}
    - {type: lago, name: lg, url: "https://lago.example", api_key: lago-key-123,
       requests_code: rq, bytes_code: by, timeout: 5s}
alerts: {quota_thresholds: ["50%"], refusal_spike: 25%, secret: whsec_MDEyMzQ1Njc4OWFiY2RlZg==}
"""


def self_signed(folder: Path, name: str = "tls", days: int = 2) -> None:
    """`name`.pem and `name`.key in `folder`: a self-signed certificate for a.test."""
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt"),
            *("ec_paramgen_curve:prime256v1", "-nodes", "-days", str(days)),
            *("-keyout", str(folder / f"{name}.key"), "-out", str(folder / f"{name}.pem")),
            *("-subj", "/CN=a.test", "-addext", "subjectAltName=DNS:a.test,DNS:*.b.test"),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )


def section_fields(cls: type[Any], seen: set[str]) -> Iterator[str]:
    """`Class.field` for every field of `cls` and of the sections under it. A section is
    a dataclass whose fields are all `Annotated[type, parser]` (Listen, Rate are values)."""
    hints = get_type_hints(cls, include_extras=True)
    for spec in dataclasses.fields(cls):
        yield f"{cls.__name__}.{spec.name}"
        for inner in dataclass_types(hints[spec.name]):
            inner_hints = get_type_hints(inner, include_extras=True).values()
            section = all(hasattr(hint, "__metadata__") for hint in inner_hints)
            if section and inner.__name__ not in seen:
                seen.add(inner.__name__)
                yield from section_fields(inner, seen)


def dataclass_types(hint: Any) -> Iterator[type[Any]]:
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        yield hint
    for arg in get_args(hint):
        yield from dataclass_types(arg)


def fields_set(value: Any) -> Iterator[str]:
    """`Class.field` for every field of a loaded section (and those under it) that holds
    something other than its default, or that is required."""
    if isinstance(value, tuple):
        for item in value:
            yield from fields_set(item)
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return
    for spec in dataclasses.fields(value):
        has_factory = spec.default_factory is not dataclasses.MISSING
        default = spec.default_factory() if has_factory else spec.default
        held = getattr(value, spec.name)
        if default is dataclasses.MISSING or held != default:
            yield f"{type(value).__name__}.{spec.name}"
        yield from fields_set(held)


def test_every_field_of_every_section_is_settable_from_yaml(tmp_path: Path) -> None:
    # Issue 14: a field added to a dataclass without a parser is an error at import, and
    # one added without a value here fails this test.
    self_signed(tmp_path)
    config = load(write(tmp_path, EVERY_FIELD), {})

    schema = set(section_fields(Config, set())) - {"Config.source"}  # set by load()
    assert len(schema) > 60
    assert schema - set(fields_set(config)) == set()


def test_config_imports_nothing_of_keyfront_but_errors_and_units() -> None:
    # A leaf (STYLE 15; issue 14): any layer may name a config type without a cycle.
    package = Path(config_module.__file__ or "").parent
    outside: set[str] = set()  # `from ..x import`: what the package takes from keyfront
    absolute: set[str] = set()
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level > 1:
                outside.add(node.module or "")
            elif isinstance(node, ast.ImportFrom) and not node.level:
                absolute.add(node.module or "")
            elif isinstance(node, ast.Import):
                absolute |= {alias.name for alias in node.names}
    assert outside == {"errors", "units"}
    assert not [name for name in absolute if name.split(".")[0] == "proxy"]


@pytest.mark.parametrize("raw", [50, 0.5, "50", " 2 "])
def test_a_duration_without_its_unit_is_refused(tmp_path: Path, raw: object) -> None:
    """Issue 15: `store_timeout: 50` was 50 seconds, not the 50 ms default's scale, and
    config check said ok. SPEC section 7: a unit is required."""
    data = minimal()
    data["store_timeout"] = raw
    with pytest.raises(ConfigError) as caught:
        load_dict(tmp_path, data)
    assert caught.value.path == "store_timeout"
    assert "has no unit" in caught.value.problem


def test_a_zero_duration_needs_no_unit(tmp_path: Path) -> None:
    data = minimal()
    data["shutdown_timeout"] = 0
    assert load_dict(tmp_path, data).shutdown_timeout == 0


def test_a_secret_is_read_from_a_file_as_docker_and_kubernetes_mount_them(
    tmp_path: Path,
) -> None:
    """Issue 16: secrets only from environment variables did not fit Docker or
    Kubernetes secrets. `${file:PATH}` (relative to the config's folder) and `VAR_FILE`
    read a file; one trailing newline is dropped."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "key").write_text("a-signing-secret-from-a-file\n")
    (tmp_path / "admin").write_text("an-admin-token-from-a-file-0123\r\n")
    data = minimal()
    data["keys"]["secrets"] = {1: "${file:secrets/key}"}
    data["admin"] = {"token": "${KEYFRONT_ADMIN_TOKEN}"}
    config = load_dict(tmp_path, data, {"KEYFRONT_ADMIN_TOKEN_FILE": str(tmp_path / "admin")})
    assert config.keys.secrets == {1: "a-signing-secret-from-a-file"}
    assert config.admin.token == "an-admin-token-from-a-file-0123"


def test_an_unreadable_secret_file_names_its_field_and_never_its_content(
    tmp_path: Path,
) -> None:
    (tmp_path / "big").write_text("x" * 70_000)
    data = minimal()
    data["keys"]["secrets"] = {1: "${file:missing}", 2: "${file:big}"}
    data["admin"] = {"token": "${file:}"}
    with pytest.raises(ConfigError) as caught:
        load_dict(tmp_path, data)
    problems = dict(caught.value.problems)
    assert "cannot read secret file" in problems["keys.secrets.1"]
    assert "is over 65536 bytes" in problems["keys.secrets.2"]
    assert "needs a path" in problems["admin.token"]
    assert "xxxx" not in str(caught.value)


def test_tls_problems_name_their_field(tmp_path: Path) -> None:
    """SPEC section 14: a mismatched pair, an unreadable file, and redirect/HSTS without
    `tls:` are config errors naming the field, all reported at once."""
    self_signed(tmp_path, "one")
    self_signed(tmp_path, "two")
    base = minimal()
    (tmp_path / "files").mkdir()
    base["tls"] = {
        "certificates": [
            {"cert": "one.pem", "key": "one.key"},
            {"cert": "one.pem", "key": "two.key"},
            {"cert": "absent.pem", "key": "one.key"},
        ],
        "min_version": "1.1",
    }
    with pytest.raises(ConfigError) as raised:
        load(write(tmp_path, yaml.safe_dump(base)), {})
    fields = [field for field, _ in raised.value.problems]
    assert fields == [
        "tls.certificates[1].key",
        "tls.certificates[2].cert",
        "tls.min_version",
    ], raised.value.problems
    base["tls"] = None
    base |= {"redirect_http_listen": "127.0.0.1:8082", "hsts": "max-age=60"}
    with pytest.raises(ConfigError) as raised:
        load(write(tmp_path, yaml.safe_dump(base)), {})
    assert [field for field, _ in raised.value.problems] == ["redirect_http_listen", "hsts"]


def test_tls_reads_names_and_expiry(tmp_path: Path) -> None:
    self_signed(tmp_path)
    base = minimal()
    (tmp_path / "files").mkdir()
    base["tls"] = {"certificates": [{"cert": "tls.pem", "key": "tls.key"}]}
    config = load(write(tmp_path, yaml.safe_dump(base)), {})
    assert config.tls is not None
    assert (config.tls.min_version, config.tls.reload_interval) == ("1.2", 60.0)
    facts = certificate_facts(config.tls.certificates[0].cert)
    assert facts.names == ("a.test", "*.b.test")


def test_usage_analytics_is_on_by_default_and_reads_the_words_of_an_env_var(
    tmp_path: Path,
) -> None:
    # SPEC section 15's sketches can be turned off (the benchmark compares both).
    assert load_dict(tmp_path, minimal()).usage.analytics is True
    data = minimal() | {"usage": {"analytics": "${ANALYTICS}"}}
    assert load_dict(tmp_path, data, {"ANALYTICS": "false"}).usage.analytics is False


# --- compression (SPEC section 17) -------------------------------------------------------------


def test_compression_is_on_by_default_with_the_spec_example(tmp_path: Path) -> None:
    config = load_dict(tmp_path, minimal())

    assert config.compression.encodings == ("br", "zstd", "gzip")
    assert "image/svg+xml" in config.compression.types
    assert config.compression.min_size == 1024
    assert config.routes[0].compress is True


def test_describe_says_what_is_compressed(tmp_path: Path) -> None:
    data = minimal()
    data["routes"].append({"prefix": "/raw/", "origin": "https://o.example/", "compress": False})
    summary = describe(load_dict(tmp_path, data))
    assert "compression br, zstd, gzip of image/svg+xml, text/*," in summary
    assert "route /raw/ -> https://o.example/ (auth key, compress off)" in summary
    data["compression"] = {"encodings": []}
    assert "compression off" in describe(load_dict(tmp_path, data))


def test_every_bad_compression_field_is_named_at_once(tmp_path: Path) -> None:
    data = minimal()
    data["compression"] = {"encodings": ["br", "lzma", "br"], "types": ["x"], "min_size": -1}
    data["routes"][0]["compress"] = "off"

    assert problems_in(tmp_path, data) == [
        "routes[0].compress",
        "compression.encodings[1]",
        "compression.encodings[2]",
        "compression.types[0]",
        "compression.min_size",
    ]


def test_export_and_alerts_take_the_spec_example(tmp_path: Path) -> None:
    data = minimal()
    data["export"] = {
        "period": "1h",
        "sinks": [
            {"type": "webhook", "url": "https://billing.internal.example.com/keyfront",
             "secret": "${WEBHOOK_SECRET}"},
            {"type": "stripe", "api_key": "${STRIPE_API_KEY}",
             "requests_event": "keyfront_requests", "bytes_event": "keyfront_bytes"},
            {"type": "openmeter", "url": "https://openmeter.example.com",
             "token": "${OPENMETER_TOKEN}"},
            {"type": "lago", "url": "https://lago.example.com", "api_key": "${LAGO_API_KEY}"},
        ],
    }  # fmt: skip
    data["alerts"] = {"quota_thresholds": ["80%", "100%"], "refusal_spike": "50%"}
    env = {"WEBHOOK_SECRET": "whsec_" + "B" * 32, "STRIPE_API_KEY": "sk_test_123456789",
           "OPENMETER_TOKEN": "om_token_123", "LAGO_API_KEY": "lago_key_1234"}  # fmt: skip

    config = load_dict(tmp_path, data, env)

    assert config.export is not None and config.alerts is not None
    assert config.export.period == 3600 and config.export.max_pending == 100_000
    hook, stripe, openmeter, lago = config.export.sinks
    assert (hook.name, hook.secret, hook.batch_size) == ("webhook", env["WEBHOOK_SECRET"], 500)
    assert (stripe.name, stripe.api_key, stripe.url) == (
        "stripe",
        "sk_test_123456789",
        "https://api.stripe.com",
    )
    assert (openmeter.token, lago.api_key) == ("om_token_123", "lago_key_1234")
    assert config.alerts.quota_thresholds == (0.8, 1.0) and config.alerts.refusal_spike == 0.5
    assert "export every 60 min to webhook (webhook https://billing" in describe(config)
    assert env["WEBHOOK_SECRET"] not in describe(config)


def test_export_is_off_unless_configured_and_secrets_may_be_withheld(tmp_path: Path) -> None:
    assert load_dict(tmp_path, minimal()).export is None
    data = minimal()
    data["export"] = {"sinks": [{**HOOK, "secret": "${HOOK_SECRET}"},
                                {"type": "stripe", "api_key": "${STRIPE_KEY}"}]}  # fmt: skip
    (tmp_path / "files").mkdir(exist_ok=True)
    path = write(tmp_path, yaml.safe_dump(data))

    with pytest.raises(ConfigError) as caught:
        load(path, {})
    assert [p for p, _ in caught.value.problems] == [
        "export.sinks[0].secret",
        "export.sinks[1].api_key",
    ]
    config = load(path, {}, need_secrets=False)  # `keyfront export status` reads no secret
    assert config.export is not None
    assert [s.name for s in config.export.sinks] == ["webhook", "stripe"]
