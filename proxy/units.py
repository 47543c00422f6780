"""Parsing of the human units the config and CLI accept: sizes, durations, rates.

`10GiB`, `512MiB`, `1.5KB`, plain bytes; `30s`, `50ms`, `1h`, `2d`, plain seconds;
`10/s`, `600/m`, `1000/h`, `86400/d`. Each parser raises ValueError with a message
fit to show after the field's name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}  # fmt: skip
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER_UNIT = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")


def _split(text: str | int | float, what: str) -> tuple[float, str]:
    if isinstance(text, bool):
        raise ValueError(f"expected a {what}, got a boolean")
    if isinstance(text, int | float):
        return float(text), ""
    match = _NUMBER_UNIT.fullmatch(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a {what}")
    return float(match.group(1)), match.group(2).lower()


def parse_size(text: str | int | float) -> int:
    """Bytes from `10GiB`, `512MiB`, `1.5KB`, `4096`."""
    number, unit = _split(text, "size (e.g. 10GiB, 512MiB, 4096)")
    if unit not in _SIZE_UNITS:
        raise ValueError(f"{text!r}: unknown size unit {unit!r} (use B, KiB, MiB, GiB, KB, MB, GB)")
    return int(number * _SIZE_UNITS[unit])


def parse_duration(text: str | int | float) -> float:
    """Seconds from `50ms`, `30s`, `1m`, `1h`, `2d`, or a plain number of seconds."""
    number, unit = _split(text, "duration (e.g. 50ms, 30s, 1h)")
    if unit not in _DURATION_UNITS:
        raise ValueError(f"{text!r}: unknown duration unit {unit!r} (use ms, s, m, h, d)")
    return number * _DURATION_UNITS[unit]


@dataclass(frozen=True, slots=True)
class Rate:
    """`count` requests per `period` seconds, e.g. Rate(10, 1.0) for `10/s`."""

    count: int
    period: float

    @property
    def per_second(self) -> float:
        return self.count / self.period

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "m", 3600.0: "h", 86400.0: "d"}.get(self.period)
        return f"{self.count}/{unit}" if unit else f"{self.count}/{self.period:g}s"


def parse_rate(text: str) -> Rate:
    """A Rate from `10/s`, `600/m`, `1000/h`, `86400/d`."""
    count, sep, period = str(text).strip().partition("/")
    if not sep or not count.strip().isdigit() or period.strip().lower() not in _RATE_PERIODS:
        raise ValueError(f"{text!r} is not a rate (use N/s, N/m, N/h or N/d, e.g. 10/s)")
    value = int(count)
    if value <= 0:
        raise ValueError(f"{text!r}: the rate must be positive")
    return Rate(value, _RATE_PERIODS[period.strip().lower()])


def format_size(n: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)
