"""The `export:` and `alerts:` sections (SPEC section 16): where each closed period of
usage goes, and when a customer is told that a key nears its quota.

A sink is a mapping whose `type` picks its dataclass; every other field is that type's
own, so a Stripe field on a webhook is an "unknown field" naming it. Secrets come
through `${VAR}` like every secret of the file (load.py lists them for
`need_secrets=False`: `keyfront export status` reads the outbox without them)."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from ..errors import ConfigError
from . import read
from .sections import WITHHELD, Check, Found, each, expect, raise_any, section

PERIODS = {"1m": 60, "5m": 300, "1h": 3600}  # SPEC section 16: nothing else
MAX_BATCH = 500  # events a request at most (SPEC section 16, the webhook's bound)
SINK_TYPES = ("webhook", "stripe", "openmeter", "lago")


def period(raw: Any, at: str, base: Path) -> int:
    """1m, 5m or 1h, as seconds: a period divides the hour, so that each exported
    period lies inside one of the store's hourly usage rows."""
    if raw not in PERIODS:
        raise ConfigError(at, f"expected one of {', '.join(PERIODS)}")
    return PERIODS[raw]


def sink_secret(raw: Any, at: str, base: Path) -> str:
    """A required secret (an API key, a token). Loaded with need_secrets=False and its
    `${VAR}` unset, it reads as "": the config can then list sinks, never deliver."""
    return (
        "" if raw is WITHHELD else str(read.text(r"[!-~]{8,512}", "8-512 printable")(raw, at, base))
    )


def webhook_secret(raw: Any, at: str, base: Path) -> str:
    """`whsec_` and the base64 of 16 to 64 random bytes (Standard Webhooks: the signing
    key is what the base64 decodes to)."""
    if raw is WITHHELD:
        return ""
    expect(raw, str, "a secret whsec_<base64>", at)
    body = raw.removeprefix("whsec_")
    try:
        key = base64.b64decode(body, validate=True) if body != raw else b""
    except (binascii.Error, ValueError):
        key = b""
    if not 16 <= len(key) <= 64:
        raise ConfigError(at, "expected whsec_ and the base64 of 16 to 64 random bytes")
    return str(raw)


SINK_NAME = read.text(r"[a-z0-9_-]{1,32}", "1-32 of a-z 0-9 _ -")
TIMEOUT = read.POSITIVE_SECONDS
EVENT_NAME = read.text(r"[A-Za-z0-9_.:-]{1,100}", "1-100 of A-Z a-z 0-9 _ . : -")


@dataclass(frozen=True, slots=True)
class WebhookSink:
    """POST a CloudEvents batch, signed per Standard Webhooks (sinks/webhook.py)."""

    type: Annotated[Literal["webhook"], read.text("webhook")]
    url: Annotated[str, read.lookup_url]
    secret: Annotated[str, webhook_secret]
    name: Annotated[str, SINK_NAME] = "webhook"  # its cursor's and metrics' label
    timeout: Annotated[float, TIMEOUT] = 10.0  # the whole request, body included
    batch_size: Annotated[int, read.integer(1)] = MAX_BATCH  # events a request


@dataclass(frozen=True, slots=True)
class StripeSink:
    """Stripe billing meter events, one a metric (sinks/stripe.py)."""

    type: Annotated[Literal["stripe"], read.text("stripe")]
    api_key: Annotated[str, sink_secret]
    requests_event: Annotated[str, EVENT_NAME] = "keyfront_requests"
    bytes_event: Annotated[str, EVENT_NAME] = "keyfront_bytes"
    url: Annotated[str, read.http_url] = "https://api.stripe.com"
    name: Annotated[str, SINK_NAME] = "stripe"
    timeout: Annotated[float, TIMEOUT] = 10.0


@dataclass(frozen=True, slots=True)
class OpenMeterSink:
    """OpenMeter's CloudEvents ingestion (sinks/openmeter.py)."""

    type: Annotated[Literal["openmeter"], read.text("openmeter")]
    url: Annotated[str, read.http_url]
    token: Annotated[str | None, read.optional(sink_secret, read.UNSET_IF_EMPTY)] = None
    name: Annotated[str, SINK_NAME] = "openmeter"
    timeout: Annotated[float, TIMEOUT] = 10.0


@dataclass(frozen=True, slots=True)
class LagoSink:
    """Lago's batch of usage events, one a metric (sinks/lago.py)."""

    type: Annotated[Literal["lago"], read.text("lago")]
    url: Annotated[str, read.http_url]
    api_key: Annotated[str, sink_secret]
    requests_code: Annotated[str, EVENT_NAME] = "keyfront_requests"
    bytes_code: Annotated[str, EVENT_NAME] = "keyfront_bytes"
    name: Annotated[str, SINK_NAME] = "lago"
    timeout: Annotated[float, TIMEOUT] = 10.0


Sink = WebhookSink | StripeSink | OpenMeterSink | LagoSink


def _batch_bound(batch_size: int) -> Found:
    if batch_size > MAX_BATCH:
        yield "batch_size", f"must be at most {MAX_BATCH} (SPEC section 16)"


_SINKS: dict[str, Any] = {
    "webhook": section(WebhookSink, Check(("batch_size",), _batch_bound)),
    "stripe": section(StripeSink),
    "openmeter": section(OpenMeterSink),
    "lago": section(LagoSink),
}


def _sink(raw: Any, at: str, base: Path) -> Sink:
    expect(raw, dict, "a mapping with a `type`", at)
    kind = raw.get("type")
    if kind not in _SINKS:
        raise ConfigError(f"{at}.type", f"expected one of {', '.join(SINK_TYPES)}")
    sink: Sink = _SINKS[kind](raw, at, base)
    return sink


def sinks(raw: Any, at: str, base: Path) -> tuple[Sink, ...]:
    expect(raw, list, "a list of sinks", at)
    if not raw:
        raise ConfigError(at, "at least one sink is required")
    problems: list[tuple[str, str]] = []
    found: list[Sink] = []
    for i, sink in each(_sink, raw, at, base, problems):
        if any(other.name == sink.name for other in found):
            problems.append((f"{at}[{i}].name", f"{sink.name!r} is taken: give each a name"))
        found.append(sink)
    raise_any(problems)
    return tuple(found)


@dataclass(frozen=True, slots=True)
class ExportConfig:
    """SPEC section 16: each closed period of usage, to every sink, from the outbox."""

    sinks: Annotated[tuple[Sink, ...], sinks]
    period: Annotated[int, period] = 3600  # seconds: 1m, 5m or 1h
    # Events waiting per sink, at most (issue 12: bounded tables). At the bound a
    # period is not turned into events yet: its usage waits in the store (35 days).
    max_pending: Annotated[int, read.integer(1)] = 100_000


_PERCENT = re.compile(r"\s*([0-9]{1,3}(?:\.[0-9]{1,4})?)\s*%\s*")


def percent(raw: Any, at: str, base: Path) -> float:
    """`80%` as 0.8: above 0, at most 100%."""
    expect(raw, str, "a percentage (e.g. 80%)", at)
    match = _PERCENT.fullmatch(raw)
    if match is None or not 0 < float(match.group(1)) <= 100:
        raise ConfigError(at, f"{raw!r} is not a percentage above 0% and at most 100%")
    return float(match.group(1)) / 100


def thresholds(raw: Any, at: str, base: Path) -> tuple[float, ...]:
    expect(raw, list, "a list of percentages (e.g. [80%, 100%])", at)
    problems: list[tuple[str, str]] = []
    found = [value for _, value in each(percent, raw, at, base, problems)]
    raise_any(problems)
    if len(set(found)) != len(found):
        raise ConfigError(at, "a threshold is given twice")
    return tuple(sorted(found))


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    """SPEC section 16: POSTed to each customer's `alert_webhook`."""

    quota_thresholds: Annotated[tuple[float, ...], thresholds] = (0.8, 1.0)
    # refused share of a key's requests over 10 minutes; None: no spike alert
    refusal_spike: Annotated[float | None, read.optional(percent)] = 0.5
    # signs each alert per Standard Webhooks (whsec_...); None: alerts are logged and
    # counted, not sent
    secret: Annotated[str | None, read.optional(webhook_secret, read.UNSET_IF_EMPTY)] = None


EXPORT = section(ExportConfig)
ALERTS = section(AlertsConfig)
