"""Ranges and conditional requests (RFC 9110 sections 13, 14), proxy/conditional.py."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.conditional import (
    UNSATISFIABLE,
    ByteRange,
    Validators,
    http_date,
    if_range_holds,
    not_modified,
    parse_http_date,
    parse_range,
    plan,
    single_range,
    unsatisfied_range,
    validators_of,
)

SIZE = 1000


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        # a-b, clipped to the object
        ("bytes=0-0", ByteRange(0, 0)),
        ("bytes=0-499", ByteRange(0, 499)),
        ("bytes=500-999", ByteRange(500, 999)),
        ("bytes=500-5000", ByteRange(500, 999)),
        ("bytes=999-999", ByteRange(999, 999)),
        # open: a-
        ("bytes=0-", ByteRange(0, 999)),
        ("bytes=900-", ByteRange(900, 999)),
        # suffix: -n, the last n bytes; longer than the object means all of it
        ("bytes=-1", ByteRange(999, 999)),
        ("bytes=-100", ByteRange(900, 999)),
        ("bytes=-1000", ByteRange(0, 999)),
        ("bytes=-5000", ByteRange(0, 999)),
        # the unit is case-insensitive, whitespace around the spec tolerated
        ("Bytes=0-9", ByteRange(0, 9)),
        ("bytes= 0-9 ", ByteRange(0, 9)),
        # unsatisfiable: 416
        ("bytes=1000-", UNSATISFIABLE),
        ("bytes=1000-2000", UNSATISFIABLE),
        ("bytes=-0", UNSATISFIABLE),
        ("bytes=99999999999999999999999999-", UNSATISFIABLE),
        # ignored: 200 with the whole object
        (None, None),
        ("", None),
        ("bytes=", None),
        ("bytes=-", None),
        ("bytes=5-2", None),  # last < first: invalid
        ("bytes=0-1,5-9", None),  # several ranges
        ("bytes=0-1, 5-", None),
        ("bytes=a-b", None),
        ("bytes=1.5-2", None),
        ("bytes=+1-2", None),
        ("bytes=--1", None),
        ("bytes 0-1", None),
        ("items=0-1", None),
        ("bytes=0-1x", None),
        ("bytes=٣-٤", None),  # non-ASCII digits
        ("bytes=0-" + "9" * 200, None),  # absurdly long: not parsed at all
    ],
)
def test_parse_range(header: str | None, expected: object) -> None:
    assert parse_range(header, SIZE) == expected


def test_parse_range_on_an_empty_object() -> None:
    assert parse_range("bytes=0-", 0) is UNSATISFIABLE
    assert parse_range("bytes=0-0", 0) is UNSATISFIABLE
    assert parse_range("bytes=-0", 0) is UNSATISFIABLE
    # satisfiable, but no Content-Range can describe zero bytes: the whole (empty) object
    assert parse_range("bytes=-5", 0) is None


def test_byte_range_headers() -> None:
    part = ByteRange(10, 19)
    assert part.length == 10
    assert part.content_range(1000) == "bytes 10-19/1000"
    assert unsatisfied_range(1000) == "bytes */1000"


@pytest.mark.parametrize(
    ("header", "forwarded"),
    [
        ("bytes=0-9", "bytes=0-9"),
        ("bytes=-5", "bytes=-5"),
        ("bytes=5-", "bytes=5-"),
        ("bytes=0-1,5-9", None),
        ("bytes=9-0", None),
        ("garbage", None),
        (None, None),
    ],
)
def test_single_range_forwards_only_what_parse_range_would_honour(
    header: str | None, forwarded: str | None
) -> None:
    assert single_range(header) == forwarded


@given(header=st.text(max_size=40), size=st.integers(min_value=0, max_value=10**12))
def test_any_parsed_range_lies_within_the_object(header: str, size: int) -> None:
    check_range_within(header, size)


@given(
    first=st.one_of(st.none(), st.integers(min_value=0, max_value=10**13)),
    last=st.one_of(st.none(), st.integers(min_value=0, max_value=10**13)),
    size=st.integers(min_value=0, max_value=10**12),
)
def test_any_well_formed_range_lies_within_the_object(
    first: int | None, last: int | None, size: int
) -> None:
    header = f"bytes={'' if first is None else first}-{'' if last is None else last}"
    check_range_within(header, size)


def check_range_within(header: str, size: int) -> None:
    result = parse_range(header, size)
    if isinstance(result, ByteRange):
        assert 0 <= result.start <= result.end < size
        assert result.length == result.end - result.start + 1 >= 1
    if result is not None:
        assert single_range(header) == header  # what is parsed here is what is forwarded


# --- conditionals -----------------------------------------------------------------------

LAST_MODIFIED = 784111777.25  # Sun, 06 Nov 1994 08:49:37.25 GMT
STRONG = Validators(10, '"abc"', LAST_MODIFIED)
WEAK = Validators(10, 'W/"abc"', LAST_MODIFIED)
BARE = Validators(10, None, None)


@pytest.mark.parametrize(
    ("if_none_match", "if_modified_since", "validators", "expected"),
    [
        # If-None-Match: weak comparison, lists, "*"
        ('"abc"', None, STRONG, True),
        ('W/"abc"', None, STRONG, True),
        ('"abc"', None, WEAK, True),
        ('W/"abc"', None, WEAK, True),
        ('"xyz"', None, STRONG, False),
        ('"xyz", "abc"', None, STRONG, True),
        ('"xyz",W/"abc"', None, STRONG, True),
        ('"a,b", "abc"', None, STRONG, True),  # a comma inside a tag is not a separator
        ('"xyz", , "abc"', None, STRONG, True),  # empty list elements are skipped
        ('"ab"', None, STRONG, False),
        ("abc", None, STRONG, False),  # unquoted: malformed, no match
        ("*", None, STRONG, True),
        (" * ", None, BARE, True),
        ('"abc"', None, BARE, False),
        ("", None, STRONG, False),
        # If-Modified-Since: only on a valid date, whole seconds
        (None, "Sun, 06 Nov 1994 08:49:37 GMT", STRONG, True),
        (None, "Sun, 06 Nov 1994 08:49:38 GMT", STRONG, True),
        (None, "Sun, 06 Nov 1994 08:49:36 GMT", STRONG, False),
        (None, "Sunday, 06-Nov-94 08:49:37 GMT", STRONG, True),  # RFC 850 form
        (None, "Sun Nov  6 08:49:37 1994", STRONG, True),  # asctime form
        (None, "yesterday", STRONG, False),
        (None, "", STRONG, False),
        (None, "Sun, 06 Nov 1994 08:49:37 GMT", BARE, False),
        # If-None-Match present: If-Modified-Since is ignored (RFC 9110 13.1.3)
        ('"xyz"', "Sun, 06 Nov 1994 08:49:37 GMT", STRONG, False),
        ('"abc"', "Sun, 06 Nov 1994 08:49:36 GMT", STRONG, True),
        # neither
        (None, None, STRONG, False),
    ],
)
def test_not_modified(
    if_none_match: str | None, if_modified_since: str | None, validators: Validators, expected: bool
) -> None:
    assert not_modified(if_none_match, if_modified_since, validators) is expected


@pytest.mark.parametrize(
    ("timestamp", "text"),
    [
        (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
        (784111777, "Sun, 06 Nov 1994 08:49:37 GMT"),
        (784111777.99, "Sun, 06 Nov 1994 08:49:37 GMT"),
        (1709251199, "Thu, 29 Feb 2024 23:59:59 GMT"),
    ],
)
def test_http_date(timestamp: float, text: str) -> None:
    assert http_date(timestamp) == text
    assert parse_http_date(text) == int(timestamp)


@given(st.integers(min_value=0, max_value=253402300799))  # up to 9999-12-31
def test_http_date_round_trips(second: int) -> None:
    assert parse_http_date(http_date(second)) == second


@given(st.text(max_size=60))
def test_parse_http_date_never_raises(text: str) -> None:
    result = parse_http_date(text)
    assert result is None or isinstance(result, float)


# --- the planner: RFC 9110 section 13.2.2's order, on every path (issue 14 item 2) ------

TAG = '"v2"'
DATE = "Sun, 06 Nov 1994 08:49:37 GMT"  # = 784111777
EARLIER = "Sun, 06 Nov 1994 08:49:36 GMT"
OBJECT = Validators(100, TAG, 784111777.5)


@dataclass(frozen=True)
class Ask:
    if_match: str | None = None
    if_unmodified_since: str | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None
    range: str | None = None
    if_range: str | None = None


WHOLE = ByteRange(0, 99)


@pytest.mark.parametrize(
    ("asked", "expected"),
    [
        (Ask(), (200, WHOLE)),
        # If-Match: strong comparison, "*" for any object; failing it is 412
        (Ask(if_match=TAG), (200, WHOLE)),
        (Ask(if_match='"v1", "v2"'), (200, WHOLE)),
        (Ask(if_match="*"), (200, WHOLE)),
        (Ask(if_match='"v1"'), (412, None)),
        (Ask(if_match='W/"v2"'), (412, None)),  # a weak tag never matches strongly
        (Ask(if_match='"v1", W/"v2"'), (412, None)),
        # If-Unmodified-Since: only when If-Match is absent, only on a valid date
        (Ask(if_unmodified_since=DATE), (200, WHOLE)),
        (Ask(if_unmodified_since=EARLIER), (412, None)),
        (Ask(if_unmodified_since="yesterday"), (200, WHOLE)),
        (Ask(if_match=TAG, if_unmodified_since=EARLIER), (200, WHOLE)),
        # preconditions come before If-None-Match
        (Ask(if_match='"v1"', if_none_match=TAG), (412, None)),
        (Ask(if_none_match=TAG), (304, None)),
        (Ask(if_none_match='W/"v2"'), (304, None)),  # weak comparison for If-None-Match
        (Ask(if_modified_since=DATE), (304, None)),
        (Ask(if_none_match='"v1"', if_modified_since=DATE), (200, WHOLE)),
        # conditionals come before Range
        (Ask(if_none_match=TAG, range="bytes=0-9"), (304, None)),
        (Ask(range="bytes=0-9"), (206, ByteRange(0, 9))),
        (Ask(range="bytes=100-"), (416, None)),
        (Ask(range="bytes=junk"), (200, WHOLE)),
        # If-Range: the range only of the version the client has, else all of it
        (Ask(range="bytes=10-", if_range=TAG), (206, ByteRange(10, 99))),
        (Ask(range="bytes=10-", if_range='"v1"'), (200, WHOLE)),
        (Ask(range="bytes=10-", if_range='W/"v2"'), (200, WHOLE)),
        (Ask(range="bytes=10-", if_range=DATE), (206, ByteRange(10, 99))),
        (Ask(range="bytes=10-", if_range=EARLIER), (200, WHOLE)),
        (Ask(range="bytes=10-", if_range="garbage"), (200, WHOLE)),
        (Ask(range="bytes=100-", if_range='"v1"'), (200, WHOLE)),  # no 416 for another version
        (Ask(if_range='"v1"'), (200, WHOLE)),  # If-Range without Range: ignored
    ],
)
def test_plan(asked: Ask, expected: tuple[int, ByteRange | None]) -> None:
    assert plan(_headers(asked), OBJECT) == expected


def _headers(asked: Ask) -> dict[str, str]:
    names = {
        "if_match": "If-Match",
        "if_unmodified_since": "If-Unmodified-Since",
        "if_none_match": "If-None-Match",
        "if_modified_since": "If-Modified-Since",
        "range": "Range",
        "if_range": "If-Range",
    }
    return {names[k]: v for k, v in vars(asked).items() if v is not None}


def test_if_range_needs_a_strong_etag_on_the_object() -> None:
    weak = Validators(100, 'W/"v2"', None)
    assert not if_range_holds('W/"v2"', weak)
    assert not if_range_holds('"v2"', weak)
    assert not if_range_holds(DATE, weak)  # no Last-Modified to compare with


def test_validators_of_an_origin_answer() -> None:
    headers = {"ETag": TAG, "Last-Modified": DATE}
    assert validators_of(5, headers) == Validators(5, TAG, 784111777.0)
    assert validators_of(0, {}) == Validators(0, None, None)
