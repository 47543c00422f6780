"""Every parser of untrusted text, timed on adversarial input (issue 12 item 3).

Client headers, paths, keys, referrers, signed-link parameters, an origin's
Cache-Control and S3 error documents, and the admin API's values (a customer token's
JSON) are all read on the event loop that serves every client, so each parse must be
linear in its input and cheap at the sizes a request can carry. Each input here is
timed in CPU time of this thread: a couple of milliseconds would be slow, BOUND allows
for a loaded machine; the backtracking regexes this replaced took a second or more on
the hand-written cases, and Hypothesis builds more of the same shape (long runs of the
characters each grammar repeats).
"""

from __future__ import annotations

import contextlib
import ipaddress
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.accept_encoding import choose as choose_encoding
from proxy.accept_encoding import parse as parse_accept_encoding
from proxy.accesslog import referrer_host
from proxy.admin.handlers import _moment
from proxy.cache.entry import CacheEntry
from proxy.cache.freshness import lifetime, storable
from proxy.conditional import (
    Validators,
    if_range_holds,
    not_modified,
    parse_range,
    preconditions_hold,
    single_range,
)
from proxy.errors import Invalid, Refusal
from proxy.keys import KeySigner, is_key_id, key_id_of
from proxy.manage.settings import (
    CUSTOMER_SETTINGS,
    KEY_SETTINGS,
    ROLL_SETTINGS,
    parse_cidr,
    parse_customer_id,
    parse_expiry,
    parse_key_id,
    parse_path_prefix,
    parse_positive,
    parse_referrer,
    read_settings,
)
from proxy.origin.s3 import _ERROR_CODE, _match, _one_strong_tag
from proxy.origin.s3 import _OBJECT_SIZE as _SIZE
from proxy.pipeline import _bearer
from proxy.policy import ReferrerRules, check_link, client_ip, cors_headers, normalise_path
from proxy.redirect import redirect_host
from proxy.request_ids import RequestIds
from proxy.units import parse_duration, parse_rate, parse_size

from conftest import SECRET

BOUND = 0.020  # seconds of CPU per input: ~100x what a linear parse takes here
SIGNER = KeySigner("pk", {1: SECRET})
VALIDATORS = Validators(100, '"abc"', 1_700_000_000.0)


TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.0/8"))
RULES = ReferrerRules.compile(
    ["example.com", "*.example.org", "https://app.example.net/embed/*", "[::1]:8080"], False
)
ENTRY = CacheEntry(
    "k", "n", 200, 100, {"ETag": '"abc"', "Last-Modified": "Sun, 06 Nov 1994 08:49:37 GMT"},
    0.0, 0, 0,
)  # fmt: skip


def _swallow(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """The parser, with the refusals it is allowed to raise on bad input."""

    def run(text: str) -> Any:
        try:
            return parse(text)
        except (ValueError, UnicodeError, Refusal, Invalid):
            return None

    return run


def _json(settings_table: dict[str, Any]) -> Callable[[str], Any]:
    """Each field of an admin API body set to the text, as a string and in a list."""

    def run(text: str) -> None:
        for name in settings_table:
            for value in (text, [text], [text] * 3):
                with contextlib.suppress(Invalid):
                    read_settings({name: value}, settings_table)

    return run


PARSERS: dict[str, Callable[[str], Any]] = {
    # request headers
    "If-None-Match": lambda t: not_modified(t, None, VALIDATORS),
    "If-Modified-Since": lambda t: not_modified(None, t, VALIDATORS),
    "Range": lambda t: (parse_range(t, 1000), single_range(t)),
    "If-Range": lambda t: if_range_holds(t, ENTRY.validators),
    "If-Match": lambda t: preconditions_hold({"If-Match": t}, VALIDATORS),
    "If-Unmodified-Since": lambda t: preconditions_hold({"If-Unmodified-Since": t}, VALIDATORS),
    "Authorization": lambda t: _bearer({"Authorization": t}),
    # the cap is checked first: the slices time the parse itself at its longest
    "Accept-Encoding": lambda t: [
        (choose_encoding(t[:n], ("br", "zstd", "gzip")), parse_accept_encoding(t[-n:]))
        for n in (len(t), 512)
    ],
    "X-Forwarded-For": lambda t: client_ip("127.0.0.1", t, TRUSTED),
    "X-Request-Id": RequestIds(),
    "Referer": lambda t: RULES.allows(t, None),
    "Origin": lambda t: (RULES.allows(None, t), cors_headers(t)),
    "Referer in the access log": referrer_host,
    "Host on the redirect listener": redirect_host,
    # paths, keys, signed links
    "path": _swallow(normalise_path),
    "key": _swallow(SIGNER.verify),
    "key id": lambda t: (key_id_of(t), is_key_id(t)),
    "link expires": _swallow(lambda t: check_link("/a", t, "x" * 43, "s" * 16, False, 0.0)),
    "link sig": _swallow(lambda t: check_link("/a", "99", t, "s" * 16, False, 0.0)),
    # an origin's headers and error documents
    "Cache-Control": lambda t: (storable({"Cache-Control": t}), lifetime({"Cache-Control": t})),
    "Expires": lambda t: lifetime({"Expires": t, "Date": t}),
    "S3 error": lambda t: [_match(p, t.encode(errors="replace")) for p in (_ERROR_CODE, _SIZE)],
    "S3 If-None-Match": _one_strong_tag,
    # units, admin API and command-line values
    "size": _swallow(parse_size),
    "duration": _swallow(parse_duration),
    "rate": _swallow(parse_rate),
    "customer id": _swallow(parse_customer_id),
    "key id argument": _swallow(parse_key_id),
    "positive": _swallow(parse_positive),
    "cidr": _swallow(parse_cidr),
    "path prefix": _swallow(parse_path_prefix),
    "referrer pattern": _swallow(parse_referrer),
    "expiry": _swallow(parse_expiry),
    "key settings": _json(KEY_SETTINGS),
    "customer settings": _json(CUSTOMER_SETTINGS),
    "roll settings": _json(ROLL_SETTINGS),
    "usage from/to": _swallow(_moment),
}

# Hand-written: the shapes that make a backtracking regex go quadratic or worse, at the
# sizes a header (8 KiB) or an admin body (64 KiB, and more before the cap) can carry.
ADVERSARIAL = [
    '"x",' + " " * 8_100 + "x",  # the If-None-Match: ~1 s with the old regex
    "1" + " " * 20_000 + "!",  # the size string: seconds with the old regex
    "1" + " " * 100_000 + "!",
    "W/" + '"a", ' * 2_000 + "x",
    '"' * 10_000,
    "," * 50_000 + "x",
    "\t" * 30_000 + '"',
    "9" * 100_000,
    "9" * 400 + "d",
    "1." + "1" * 50_000 + "x",
    "bytes=" + " " * 10_000 + "1-2x",
    "a" * 60_000 + "!",
    "http://" + "a." * 20_000 + "!",
    "https://" + "a" * 50_000 + ":99999999/",
    "*." + "a-" * 20_000,
    "/" + "%2" * 20_000,
    "/" + "a/." * 20_000,
    "/" + "//" * 20_000 + "\x00",
    "pk_1_" + "A" * 50_000,
    "pk_" + "1_" * 20_000,
    "1.1.1.1," * 10_000,
    "127.0.0.1, " * 8_000 + "x",
    "max-age=" + "9" * 10_000 + ", " * 10_000,
    "<Code>" + "A" * 50_000 + "</Code" * 1_000,
    "2026-01-01T" + "0" * 50_000,
    "10/" + " " * 50_000 + "x",
    "\udcff" * 10_000,
]


def _cpu(parse: Callable[[str], Any], text: str) -> float:
    started = time.thread_time()
    parse(text)
    return time.thread_time() - started


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_each_parser_is_fast_on_hand_written_adversarial_input(name: str) -> None:
    parse = PARSERS[name]
    slow = {}
    for text in ADVERSARIAL:
        spent = _cpu(parse, text)
        if spent > BOUND:
            slow[f"{text[:20]!r}... ({len(text)} chars)"] = f"{spent * 1000:.0f} ms"
    assert not slow, f"{name}: {slow}"


# What makes a backtracking regex explode: a prefix its grammar accepts, a long run of a
# character it repeats, then one it cannot end on ("x", + blanks + x). Or any mix of such
# runs (blanks, commas, quotes, digits, dots, slashes, escapes), each up to thousands long.
_PREFIXES = [
    "",
    '"x",',
    'W/"x" ,',
    "1",
    "1.5",
    "bytes=",
    "bytes=1-",
    "https://",
    "*.",
    "pk_1_",
    "max-age=",
    "<Code>",
    "10/",
    "/a",
    "2026-01-01T",
    "127.0.0.1,",
    "gzip;q=",
]
_RUNS = [" ", "\t", ",", '"', "0", "9", "a", ".", "/", "%", "-", "a.", ", ", "%2", "\udcff"]
_ENDS = ["", "!", "x", '"', "\x00", "é", "/", ":", "GiB", "/s"]
SHAPED = st.builds(
    lambda prefix, run, count, end: prefix + run * count + end,
    st.sampled_from(_PREFIXES), st.sampled_from(_RUNS), st.integers(1_000, 25_000),
    st.sampled_from(_ENDS),
)  # fmt: skip
_PIECES = st.sampled_from(_PREFIXES + _RUNS + _ENDS)
MIXED = st.lists(st.tuples(_PIECES, st.integers(1, 4_000)), min_size=1, max_size=6).map(
    lambda runs: "".join(piece * count for piece, count in runs)[:100_000]
)
ADVERSARIAL_TEXT = st.one_of(SHAPED, MIXED)


@settings(
    max_examples=150,
    deadline=None,  # timed below, in CPU time, which a loaded machine does not inflate
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
@given(text=ADVERSARIAL_TEXT)
def test_every_parser_is_fast_on_generated_adversarial_input(text: str) -> None:
    slow = {}
    for name, parse in PARSERS.items():
        spent = _cpu(parse, text)
        if spent > BOUND:
            slow[name] = f"{spent * 1000:.0f} ms"
    assert not slow, f"{text[:40]!r}... ({len(text)} chars): {slow}"
