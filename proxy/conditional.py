"""Conditional requests and byte ranges (RFC 9110 sections 13 and 14), as pure functions.

    plan(asked, validators)         -> (status, bytes to send): THE planner, in RFC 9110
                                       section 13.2.2's order: If-Match, else
                                       If-Unmodified-Since (412); If-None-Match, else
                                       If-Modified-Since (304); then Range (206 / 416),
                                       honoured only while If-Range holds (else 200)
    preconditions_hold(asked, v)    -> If-Match / If-Unmodified-Since alone (412 if not)
    if_range_holds(If-Range, v)     -> may a range of this version be sent?
    not_modified(If-None-Match, If-Modified-Since, validators)  -> answer 304?
    parse_range(Range, size)        -> ByteRange (206) | None (200 full) | UNSATISFIABLE (416)
    single_range(Range)             -> the header if worth forwarding to an origin, else None

No I/O. Every path answers through `plan`: a cache hit or fill on its entry's
validators (cache/serve.py), the file origin on os.stat (origin/file.py), and
pass-through judges the origin's own answer with `preconditions_hold` and
`if_range_holds` (delivery.py), so no path can answer differently (issue 14 item 2).
"""

from __future__ import annotations

import calendar
import enum
import functools
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_tz
from typing import Final

from aiohttp import hdrs


@dataclass(frozen=True, slots=True)
class Validators:
    """What conditionals and ranges are judged against: the object's size, its ETag
    (as sent, quotes and any W/ included) and Last-Modified in unix seconds."""

    size: int
    etag: str | None
    last_modified: float | None


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes `start` to `end` of an object, both inclusive (as in Content-Range)."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


class Unsatisfiable(enum.Enum):
    """A Range no byte of the object satisfies: answer 416 with `unsatisfied_range`."""

    RANGE = "unsatisfiable"


UNSATISFIABLE: Final = Unsatisfiable.RANGE


def unsatisfied_range(size: int) -> str:
    """The Content-Range of a 416 (RFC 9110 section 14.4)."""
    return f"bytes */{size}"


# What the planner reads of a request: its conditional and range headers, by name. A
# request's own headers are passed as they are (a lookup per header the planner gets
# to, ~70 ns each: a plain GET pays five); an OriginRequest gives `conditionals()`.
Asked = Mapping[str, str]
# aiohttp's names are multidict istr, which carry their case-folded form: a lookup in
# a request's CIMultiDict then costs ~18 ns instead of ~41 ns for a str (timeit).
_IF_MATCH = hdrs.IF_MATCH
_IF_UNMODIFIED_SINCE = hdrs.IF_UNMODIFIED_SINCE
_IF_NONE_MATCH = hdrs.IF_NONE_MATCH
_IF_MODIFIED_SINCE = hdrs.IF_MODIFIED_SINCE
_RANGE_HEADER = hdrs.RANGE
_IF_RANGE = hdrs.IF_RANGE


def plan(asked: Asked, v: Validators) -> tuple[int, ByteRange | None]:
    """The status a GET or HEAD of an object with validators `v` gets, and the bytes
    it sends (None for 304, 412 and 416), in RFC 9110 section 13.2.2's order."""
    get = asked.get
    if not _preconditions_hold(get(_IF_MATCH), get, v):
        return 412, None
    if_none_match = get(_IF_NONE_MATCH)
    if if_none_match is not None:
        if _etag_matches(if_none_match, v.etag):
            return 304, None
    elif (since := get(_IF_MODIFIED_SINCE)) is not None and not_modified(None, since, v):
        return 304, None
    wanted = get(_RANGE_HEADER)
    if wanted is None:
        return 200, ByteRange(0, v.size - 1)
    if_range = get(_IF_RANGE)
    if if_range is not None and not if_range_holds(if_range, v):
        return 200, ByteRange(0, v.size - 1)  # another version: the whole of it
    selected = parse_range(wanted, v.size)
    if selected is UNSATISFIABLE:
        return 416, None
    if selected is None:
        return 200, ByteRange(0, v.size - 1)
    return 206, selected


def preconditions_hold(asked: Asked, v: Validators) -> bool:
    """If-Match (strong comparison, "*" matches any object), else If-Unmodified-Since
    (ignored if not a date or the object has none): False means 412 (RFC 9110 13.1.1,
    13.1.4)."""
    return _preconditions_hold(asked.get(_IF_MATCH), asked.get, v)


def _preconditions_hold(
    if_match: str | None, get: Callable[[str], str | None], v: Validators
) -> bool:
    if if_match is not None:
        return if_match.strip(" \t") == "*" or _strong_match(if_match, v.etag)
    unmodified = get(_IF_UNMODIFIED_SINCE)
    if unmodified is None or v.last_modified is None:
        return True
    since = parse_http_date(unmodified)
    return since is None or int(v.last_modified) <= since


def if_range_holds(if_range: str, v: Validators) -> bool:
    """If-Range (RFC 9110 section 13.1.5): a range of a client's partial download is
    sent only if the object is still the one it has: a strong ETag equal to the one
    given, or a Last-Modified equal to the date given. Else the whole object, so a
    resumed download never splices two versions (issue 14 item 1)."""
    if if_range.startswith("W/"):
        return False  # a weak tag never matches: RFC 9110 13.1.5
    if if_range.startswith('"'):
        return v.etag is not None and not v.etag.startswith("W/") and v.etag == if_range
    if v.last_modified is None:
        return False
    date = parse_http_date(if_range)
    return date is not None and date == int(v.last_modified)


def validators_of(size: int, headers: Mapping[str, str]) -> Validators:
    """The validators of an object from its (origin's) ETag and Last-Modified."""
    modified = headers.get("Last-Modified")
    return Validators(size, headers.get("ETag"), parse_http_date(modified) if modified else None)


# --- dates ----------------------------------------------------------------------------

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
LONGEST_DATE = 40  # RFC 850 form, the longest, is 33 characters; anything longer is junk


def http_date(timestamp: float) -> str:
    """`Sun, 06 Nov 1994 08:49:37 GMT` (IMF-fixdate, RFC 9110 section 5.6.7)."""
    return _http_date(int(timestamp))


@functools.lru_cache(maxsize=4096)
def _http_date(second: int) -> str:
    # Cached: Last-Modified is formatted on every response, mostly for the same few
    # thousand hot objects. Not strftime, whose %a/%b follow the locale.
    t = time.gmtime(second)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def parse_http_date(value: str) -> float | None:
    """Unix seconds of an HTTP-date in any of the three forms RFC 9110 section 5.6.7
    obliges a recipient to accept; None if it is not one."""
    if len(value) > LONGEST_DATE:
        return None
    return _parse_http_date(value)


@functools.lru_cache(maxsize=1024)
def _parse_http_date(value: str) -> float | None:
    # Cached: browsers send back the Last-Modified they were given, so the same few
    # strings arrive again and again. Length is bounded by the caller.
    parts = parsedate_tz(value)
    if parts is None:
        return None
    try:
        return float(calendar.timegm(parts[:9]) - (parts[9] or 0))
    except (ValueError, OverflowError):
        return None


# --- If-None-Match / If-Modified-Since --------------------------------------------------

# entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE, in a comma-separated list (RFC 9110 8.8.3).
# An etagc may itself be a comma but never a DQUOTE, so splitting on DQUOTE alternates
# the gaps between tags with the tags' insides: a linear parse, where the regex it
# replaces backtracked quadratically on a run of spaces (issue 12 item 3: 8,100 spaces
# held the event loop for a second). Empty list elements are skipped (RFC 9110 5.6.1.2).
_LONGEST_ETAG_LIST = 4096  # ~100 tags; a longer header is ignored (the object is sent)
_SEPARATORS = " \t,"


def not_modified(if_none_match: str | None, if_modified_since: str | None, v: Validators) -> bool:
    """True if a GET/HEAD with these headers is answered 304 (RFC 9110 section 13.2.2):
    If-None-Match by weak comparison ("*" matches any existing object); If-Modified-Since
    only when If-None-Match is absent, and only on a valid date."""
    if if_none_match is not None:
        return _etag_matches(if_none_match, v.etag)
    if if_modified_since is None or v.last_modified is None:
        return False
    since = parse_http_date(if_modified_since)
    # HTTP dates have whole seconds: a file modified at x.7 s was sent as x.
    return since is not None and int(v.last_modified) <= since


def _etag_matches(if_none_match: str, etag: str | None) -> bool:
    if if_none_match == etag and etag is not None:
        return True  # what browsers send: the one ETag they were given, as it was given
    if if_none_match.strip(" \t") == "*":
        return True
    if etag is None:
        return False
    opaque = etag.removeprefix("W/")  # weak comparison: W/"x" and "x" are the same
    if len(opaque) < 2 or opaque[0] != '"' or opaque[-1] != '"':
        return False
    tags = etag_list(if_none_match)
    return tags is not None and opaque[1:-1] in tags


def _strong_match(if_match: str, etag: str | None) -> bool:
    """Strong comparison of an If-Match list with `etag`: neither may be weak."""
    if etag is None or etag.startswith("W/") or len(etag) < 2 or etag[0] != '"':
        return False
    if if_match == etag:
        return True
    if etag_list(if_match) is None:
        return False
    parts = if_match.split('"')
    opaque = etag[1:-1]
    # parts alternate gap, tag, gap...: a tag is weak when the gap before it ends in W/
    return any(
        parts[index] == opaque and not parts[index - 1].endswith("W/")
        for index in range(1, len(parts), 2)
    )


def etag_list(header: str) -> list[str] | None:
    """The opaque tags (without quotes or W/) of an If-None-Match list, or None if it is
    malformed or too long to consider (then it is ignored: the object is sent)."""
    if len(header) > _LONGEST_ETAG_LIST:
        return None
    parts = header.split('"')
    if len(parts) % 2 == 0:
        return None  # a quote left open
    tags = parts[1::2]
    for index, between in enumerate(parts[0::2]):
        # Before a tag, the gap may end in its weakness marker.
        gap = between.removesuffix("W/") if index < len(tags) else between
        if gap.strip(_SEPARATORS):
            return None  # anything but commas and blanks between tags
        if 0 < index < len(tags) and "," not in gap:
            return None  # two tags with no comma between them
    return tags


# --- Range --------------------------------------------------------------------------

# One byte-range-spec: "a-b", "a-" or "-n"; the unit is case-insensitive, OWS allowed
# around the spec (RFC 9110 section 14.1.1). A comma means several ranges.
_RANGE = re.compile(r"bytes=[ \t]*([0-9]*)-([0-9]*)[ \t]*", re.IGNORECASE | re.ASCII)
_LONGEST_RANGE = 100  # two 19-digit offsets fit many times over; bounds int() work


def parse_range(header: str | None, size: int) -> ByteRange | Unsatisfiable | None:
    """The single byte range `header` asks of an object of `size` bytes.

    None: no Range, or one to ignore (malformed, several ranges, or an empty object):
    serve 200 with everything. UNSATISFIABLE: the range starts at or past the end, or
    is an empty suffix: serve 416. Otherwise the range, clipped to the object."""
    spec = _range_spec(header)
    if spec is None:
        return None
    first, last = spec
    if first is None:  # suffix range "-n": the last n bytes
        assert last is not None
        if last == 0:
            return UNSATISFIABLE
        # A suffix of an empty object is satisfiable but has no bytes to show in a
        # Content-Range (RFC 9110 14.1.3): send the (empty) object with 200 instead.
        return ByteRange(max(0, size - last), size - 1) if size else None
    if first >= size:
        return UNSATISFIABLE
    return ByteRange(first, size - 1 if last is None else min(last, size - 1))


def single_range(header: str | None) -> str | None:
    """`header` if it is one well-formed byte range, else None. An origin is sent only
    these, so that it answers as `parse_range` would: 200 for malformed or multiple
    ranges, never a multipart/byteranges body."""
    return header if _range_spec(header) is not None else None


def _range_spec(header: str | None) -> tuple[int | None, int | None] | None:
    """(first, last) of a single well-formed range; either may be None, not both."""
    if header is None or len(header) > _LONGEST_RANGE:
        return None
    match = _RANGE.fullmatch(header)
    if match is None:
        return None
    first = int(match[1]) if match[1] else None
    last = int(match[2]) if match[2] else None
    if first is None and last is None:
        return None
    if first is not None and last is not None and last < first:
        return None  # invalid, so ignored (RFC 9110 section 14.1.1)
    return first, last
