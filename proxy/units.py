"""Parsing of the human units the config and CLI accept: sizes, durations, rates.

`10GiB`, `512MiB`, `1.5KB`, plain bytes; `30s`, `50ms`, `1h`, `2d`, plain seconds;
`10/s`, `600/m`, `1000/h`, `86400/d`. Each parser raises ValueError with a message
fit to show after the field's name.

The text may come from the admin API (a customer token's request body), so it is
parsed linearly with its length capped first (issue 12 item 3: the regex this replaced
backtracked for seconds on "1" + 20,000 spaces + "!"), and every result is finite
and bounded (item 10: 400 digits made `inf`, and a 500).
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}  # fmt: skip
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_LONGEST = 32  # "1.5GiB" is 6 characters; longer text is refused before it is read
MAX_SIZE = 2**53  # 8 PiB: any real size, exact in a float and in JSON
MAX_DURATION = 100 * 366 * 86400.0  # a century, in seconds
MAX_RATE = 10**9  # requests per period
_DIGITS = frozenset("0123456789")


def _split(text: str | int | float, what: str) -> tuple[float, str]:
    """(number, lowercase unit) of `12.5 KiB`: digits with an optional fraction, then
    letters, blanks allowed around both."""
    if isinstance(text, bool):
        raise ValueError(f"expected a {what}, got a boolean")
    if isinstance(text, int | float):
        if not math.isfinite(text):
            raise ValueError(f"{text!r} is not a {what}")
        return float(text), ""
    text = str(text)
    if len(text) > _LONGEST:
        raise ValueError(f"{text[:16]!r}...: too large for a {what} (too long to read)")
    stripped = text.strip()
    unit_start = len(stripped.rstrip(string.ascii_letters))
    number, unit = stripped[:unit_start].rstrip(), stripped[unit_start:]
    whole, dot, fraction = number.partition(".")
    if not (_is_digits(whole) and (not dot or _is_digits(fraction))):
        raise ValueError(f"{text!r} is not a {what}")
    return float(number), unit.lower()


def _is_digits(text: str) -> bool:
    return bool(text) and set(text) <= _DIGITS  # not str.isdigit: "²" is a digit to it


def _at_most(value: float, limit: float, text: object, what: str) -> float:
    if value > limit:
        raise ValueError(f"{text!r}: too large for a {what}")
    return value


def parse_size(text: str | int | float) -> int:
    """Bytes from `10GiB`, `512MiB`, `1.5KB`, `4096`."""
    number, unit = _split(text, "size (e.g. 10GiB, 512MiB, 4096)")
    if unit not in _SIZE_UNITS:
        raise ValueError(f"{text!r}: unknown size unit {unit!r} (use B, KiB, MiB, GiB, KB, MB, GB)")
    return int(_at_most(number * _SIZE_UNITS[unit], MAX_SIZE, text, "size"))


def parse_duration(text: str | int | float) -> float:
    """Seconds from `50ms`, `30s`, `1m`, `1h`, `2d`. The unit is required (SPEC section
    7): `store_timeout: 50` read as seconds was 1,000 times the 50 ms meant (issue 15).
    Only 0 needs none."""
    number, unit = _split(text, "duration (e.g. 50ms, 30s, 1h)")
    if not unit and number > 0:  # (a negative one is refused by its caller: "at least 0")
        shown = f"{number:g}"
        raise ValueError(f"{text!r} has no unit: write {shown}s, {shown}ms, {shown}m or {shown}h")
    if unit not in _DURATION_UNITS:
        raise ValueError(f"{text!r}: unknown duration unit {unit!r} (use ms, s, m, h, d)")
    return _at_most(number * _DURATION_UNITS[unit], MAX_DURATION, text, "duration")


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
    text = str(text)
    count, sep, period = text[: _LONGEST + 1].strip().partition("/")
    if len(text) > _LONGEST or not sep or not _is_digits(count.strip()):
        raise ValueError(f"{text[:_LONGEST]!r} is not a rate (use N/s, N/m, N/h or N/d, e.g. 10/s)")
    if period.strip().lower() not in _RATE_PERIODS:
        raise ValueError(f"{text!r} is not a rate (use N/s, N/m, N/h or N/d, e.g. 10/s)")
    value = int(count)
    if value <= 0:
        raise ValueError(f"{text!r}: the rate must be positive")
    if value > MAX_RATE:
        raise ValueError(f"{text!r}: at most {MAX_RATE} requests per period")
    return Rate(value, _RATE_PERIODS[period.strip().lower()])


def format_size(n: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)
