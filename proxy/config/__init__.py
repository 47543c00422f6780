"""The config model (SPEC section 7): frozen, typed, built once by `load()`.

This package owns the YAML file's schema and its reading: the frozen dataclasses that
every other module reads (nothing reads the YAML dict-of-dicts), `${VAR}`
interpolation, the reading and checking of each field, and `describe()` for `keyfront
config check`. It is a leaf: it imports nothing of keyfront but `errors` and `units`,
so any layer may name a config type without an import cycle (a test checks it).

    schema.py    the dataclasses: each field once, `Annotated[type, reader] = default`
    sections.py  the one reader of a section, collecting every problem (issue 14)
    export.py    the `export:` and `alerts:` sections and their sinks (SPEC section 16)
    read.py      the readers of one value (sizes, durations, URLs, CIDRs, secrets, ...)
    load.py      the file: strict YAML, `${VAR}`, load(), describe()

`load()` raises one ConfigError listing every problem of the file, each with its field
path (`routes[1].origin: ...`), in the file's order (issue 14). `load(...,
need_secrets=False)`, for commands that only read the store, lets secrets whose
`${VAR}` is unset read as not given (`keys.secrets` then empty; issue 15).
"""

from .export import (
    AlertsConfig,
    ExportConfig,
    LagoSink,
    OpenMeterSink,
    Sink,
    StripeSink,
    WebhookSink,
)
from .load import describe, load
from .read import IPNetwork
from .schema import (
    DEFAULT_EXTERNAL_PATTERN,
    MAX_EXTERNAL_KEY,
    AdminConfig,
    CacheConfig,
    CertificatePair,
    ClientTimeouts,
    CompressionConfig,
    Config,
    ExternalKeysConfig,
    KeyDefaults,
    KeysConfig,
    Listen,
    ListenerConfig,
    LookupConfig,
    MetricsConfig,
    OriginTimeouts,
    Route,
    S3Settings,
    TLSConfig,
    UsageConfig,
)

__all__ = [
    "DEFAULT_EXTERNAL_PATTERN",
    "MAX_EXTERNAL_KEY",
    "AdminConfig",
    "AlertsConfig",
    "CacheConfig",
    "CertificatePair",
    "ClientTimeouts",
    "CompressionConfig",
    "Config",
    "ExportConfig",
    "ExternalKeysConfig",
    "IPNetwork",
    "KeyDefaults",
    "KeysConfig",
    "LagoSink",
    "Listen",
    "ListenerConfig",
    "LookupConfig",
    "MetricsConfig",
    "OpenMeterSink",
    "OriginTimeouts",
    "Route",
    "S3Settings",
    "Sink",
    "StripeSink",
    "TLSConfig",
    "UsageConfig",
    "WebhookSink",
    "describe",
    "load",
]
