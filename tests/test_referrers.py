"""Referrer and Origin patterns: matching, validation, untrusted input (SPEC 2, check 6)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import policy, referrers
from proxy.referrers import ReferrerRules, is_path_pattern, validate_referrer_pattern

REFERRER_CASES = [
    # (patterns, allow_no_referrer, referer, origin, allowed)
    (["example.com"], None, "https://example.com/page", None, True),
    (["example.com"], None, "http://example.com/", None, True),  # any scheme
    (["example.com"], None, "https://example.com:8443/page", None, True),  # any port
    (["example.com"], None, "https://EXAMPLE.Com/page", None, True),  # hosts ignore case
    (["Example.COM"], None, "https://example.com/", None, True),
    (["example.com"], None, "https://example.com./page", None, True),  # FQDN trailing dot
    (["example.com"], None, "https://www.example.com/", None, False),
    (["example.com"], None, "https://example.com.evil.net/", None, False),
    (["example.com"], None, "https://evilexample.com/", None, False),
    (["example.com"], None, "https://example.com@evil.net/", None, False),  # userinfo
    (["example.com:8443"], None, "https://example.com:8443/", None, True),
    (["example.com:8443"], None, "https://example.com/", None, False),
    (["example.com:443"], None, "https://example.com/", None, True),  # the default port
    (["example.com:443"], None, "http://example.com/", None, False),
    (["*.example.com"], None, "https://cdn.example.com/", None, True),
    (["*.example.com"], None, "https://a.b.example.com/x", None, True),  # any depth
    (["*.example.com"], None, "https://example.com/", None, False),  # not the apex
    (["*.example.com"], None, "https://badexample.com/", None, False),
    (["*.example.com"], None, "https://example.com.evil.net/", None, False),
    (["*.example.com:8443"], None, "https://a.example.com:8443/", None, True),
    (["*.example.com:8443"], None, "https://a.example.com/", None, False),
    (["https://app.example.com/path/*"], None, "https://app.example.com/path/x.html", None, True),
    (["https://app.example.com/path/*"], None, "https://app.example.com/path/", None, True),
    (["https://app.example.com/path/*"], None, "https://app.example.com/other", None, False),
    (["https://app.example.com/path/*"], None, "https://app.example.com/path", None, False),
    (["https://app.example.com/path/*"], None, "http://app.example.com/path/x", None, False),
    (["https://app.example.com/path/*"], None, "https://app.example.com:8443/path/x", None, False),
    (["https://app.example.com/path/*"], None, "https://APP.example.com/path/x?q=1", None, True),
    (["https://app.example.com/path/*"], None, None, "https://app.example.com", False),
    (["https://app.example.com/page"], None, "https://app.example.com/page", None, True),
    (["https://app.example.com/page"], None, "https://app.example.com/page?x=1#f", None, True),
    (["https://app.example.com/page"], None, "https://app.example.com/page2", None, False),
    (["https://app.example.com"], None, "https://app.example.com/any/page", None, True),
    (["https://app.example.com"], None, None, "https://app.example.com", True),
    (["https://app.example.com/*"], None, None, "https://app.example.com", True),
    (["https://app.example.com:8443/*"], None, "https://app.example.com:8443/x", None, True),
    (["https://*.example.com/img/*"], None, "https://a.example.com/img/1", None, True),
    (["https://*.example.com/img/*"], None, "https://example.com/img/1", None, False),
    (["[::1]"], None, "http://[::1]:8080/", None, True),
    (["[2001:DB8:0:0::1]"], None, "https://[2001:db8::1]/", None, True),  # canonical form
    (["[::1]:8080"], None, "http://[::1]/", None, False),
    (["https://[::1]/*"], None, "https://[::1]/x", None, True),
    (["127.0.0.1"], None, "http://127.0.0.1:3000/", None, True),
    (["bücher.example"], None, "https://xn--bcher-kva.example/", None, True),  # IDNA
    # Origin stands in for an absent Referer; "null" is no referrer at all.
    (["example.com"], None, None, "https://example.com", True),
    (["example.com"], None, None, "https://evil.net", False),
    (["example.com"], None, "", "https://example.com", True),
    (["example.com"], None, "https://evil.net/", "https://example.com", False),  # Referer wins
    (["example.com"], None, None, "null", False),
    (["example.com"], True, None, "null", True),
    ([], None, None, "null", True),
    # Neither header: allow_no_referrer, defaulting to "no patterns".
    (["example.com"], None, None, None, False),
    (["example.com"], True, None, None, True),
    ([], None, None, None, True),
    ([], False, None, None, False),
    ([], False, "https://anything.example/", None, True),
    ([], None, "garbage", None, True),  # no patterns: any referrer
    # Unparsable referrers never pass a key with patterns.
    (["example.com"], True, "garbage", None, False),
    (["example.com"], None, "example.com", None, False),
    (["example.com"], None, "https://example.com/a b", None, False),
    (["example.com"], None, "https://exa mple.com/", None, False),
    (["example.com"], None, "https://example.com:99999/", None, False),
    (["example.com"], None, "https://example.com\\@evil.net/", None, False),
    (["example.com"], None, "https://[zz::1]/", None, False),
    (["example.com"], None, "about:blank", None, False),
    (["example.com"], None, "https://ex..ample.com/", None, False),
    (["example.com"], None, "https:///example.com/", None, False),
    (["example.com", "*.example.org", "https://app.example.net/*"], None,
     "https://www.example.org/x", None, True),
    (["not a pattern", "example.com"], None, "https://example.com/", None, True),
    (["not a pattern"], None, "https://not/", None, False),  # invalid patterns match nothing
]  # fmt: skip


@pytest.mark.parametrize(("patterns", "allow_none", "referer", "origin", "allowed"), REFERRER_CASES)
def test_referrer_rules(
    patterns: list[str],
    allow_none: bool | None,
    referer: str | None,
    origin: str | None,
    allowed: bool,
) -> None:
    rules = ReferrerRules.compile(patterns, allow_none)
    assert rules.allows(referer, origin) is allowed
    assert rules.allows(referer, origin) is allowed  # the second answer is from the cache


@pytest.mark.parametrize(
    ("pattern", "error", "path_pattern"),
    [
        ("example.com", False, False),
        ("example.com:8443", False, False),
        ("*.example.com", False, False),
        ("https://app.example.com", False, False),
        ("https://app.example.com/*", False, False),
        ("https://app.example.com/path/*", False, True),
        ("https://app.example.com/", False, True),  # the root page only
        ("[::1]:8080", False, False),
        ("", True, False),
        ("*", True, False),
        ("*.", True, False),
        ("ex*ample.com", True, False),
        ("example.*", True, False),
        ("example.com/path/*", True, False),  # a path needs a scheme
        ("ftp://example.com/", True, False),
        ("https://app.example.com/a*/b", True, False),
        ("https://app.example.com/?q=1", True, False),
        ("https://user@example.com/", True, False),
        ("example.com:99999", True, False),
        ("example.com:http", True, False),
        ("*.[::1]", True, False),
        ("exa mple.com", True, False),
    ],
)
def test_pattern_validation(pattern: str, error: bool, path_pattern: bool) -> None:
    message = validate_referrer_pattern(pattern)
    assert (message is not None) is error, message
    assert is_path_pattern(pattern) is path_pattern


@settings(max_examples=500)
@given(st.text(max_size=60), st.one_of(st.none(), st.text(max_size=30)))
def test_untrusted_headers_never_raise(referer: str, origin: str | None) -> None:
    rules = ReferrerRules.compile(["example.com", "*.example.org", "https://a.example/p/*"], None)
    assert isinstance(rules.allows(referer, origin), bool)
    assert validate_referrer_pattern(referer) is None or not is_path_pattern(referer)


def test_policy_re_exports_the_referrer_names() -> None:
    for name in ("ReferrerRules", "is_path_pattern", "validate_referrer_pattern"):
        assert getattr(policy, name) is getattr(referrers, name)
