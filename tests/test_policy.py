"""Per-key policy: paths, IPs, path scopes, signed links, CORS (SPEC 1, 2); referrer
patterns are in test_referrers.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import (
    BadPath,
    IpNotAllowed,
    LinkExpired,
    LinkInvalid,
    LinkRequired,
    PathNotAllowed,
    ReferrerNotAllowed,
    Refusal,
)
from proxy.policy import (
    IpRules,
    KeyPolicy,
    PathRules,
    check_link,
    client_ip,
    cors_headers,
    normalise_path,
    preflight_headers,
    sign_link,
)
from proxy.records import KeyRecord

# ---- normalise_path ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("/request/12345.svg", "/request/12345.svg"),
        ("/request/a%20b/12345.svg", "/request/a b/12345.svg"),
        ("/request/caf%C3%A9.png", "/request/café.png"),
        ("/request/caf%c3%a9.png", "/request/café.png"),
        ("/request/a..b.svg", "/request/a..b.svg"),  # dots inside a name are not traversal
        ("/request/...", "/request/..."),
        ("/request/.hidden", "/request/.hidden"),
        ("/request/%2e%2e%2e", "/request/..."),
        ("/request/dir/", "/request/dir/"),  # a trailing slash is not an empty segment
        ("/", "/"),
        ("/request/100%25.svg", "/request/100%.svg"),  # a literal percent sign
        ("/request/a+b.svg", "/request/a+b.svg"),  # "+" is a plus in a path, not a space
        ("/request/é.svg", "/request/é.svg"),
    ],
)
def test_valid_paths_decode(raw: str, decoded: str) -> None:
    assert normalise_path(raw) == decoded


def test_a_plain_path_is_returned_as_is() -> None:
    raw = "/request/12345.svg"
    assert normalise_path(raw) is raw


@pytest.mark.parametrize(
    "raw",
    [
        "/request/../secret",
        "/request/..",
        "/request/./a.svg",
        "/request/.",
        "/../etc/passwd",
        "/request/%2e%2e/secret",
        "/request/%2E%2E/secret",
        "/request/%2E./secret",
        "/request/.%2e/secret",
        "/request/%2e/a.svg",
        "/request/a%00.svg",
        "/request/a\x00.svg",
        "/request/a%5c..%5csecret",
        "/request/a%5Cb",
        "/request/..\\secret",
        "/request/a\\b",
        "/request/..%2fsecret",
        "/request/a%2Fb.svg",
        "/request/%252e%252e/secret",
        "/request/%252fsecret",
        "/request/a%2541.svg",
        "//request/a.svg",
        "/request//a.svg",
        "/request/a%0d%0aSet-Cookie:x",
        "/request/a\nb",
        "/request/a%09b",
        "/request/a%7fb",
        "/request/a\x7fb",
        "/request/%ff.svg",
        "/request/%C3.svg",
        "/request/%ed%a0%80.svg",  # an encoded surrogate is not UTF-8
        "/request/a\udcff.svg",  # a raw undecodable byte, as surrogateescape leaves it
        "/request/%zz.svg",
        "/request/a%2",
        "request/a.svg",
        "",
        "%2frequest/a.svg",
        # "?" and "#" never enter an object path: a%3Fw=100 read as a variant's entry
        # (issue 12 item 2); a bare "#" is a fragment, which aiohttp's own path drops.
        "/v/a%3Fw=100",
        "/v/a%3fw=100",
        "/v/a%23w",
        "/v/a#w",
        "/v/a%C3%A9#w",
    ],
)
def test_hostile_paths_are_refused(raw: str) -> None:
    with pytest.raises(BadPath):
        normalise_path(raw)


_PATH_PIECES = st.sampled_from(
    ["/", ".", "..", "%", "%2e", "%2E", "%2f", "%5c", "%00", "%25", "%ff", "%c3%a9", "a", "2e",
     "\\", "\x00", "\n", "\x7f", " ", "é", "\udcff", "%e2%80%ae", "%0"]
)  # fmt: skip


@settings(max_examples=2000)
@given(st.one_of(st.lists(_PATH_PIECES, max_size=12).map("".join), st.text(max_size=40)))
def test_normalised_paths_never_traverse(raw: str) -> None:
    try:
        path = normalise_path(raw)
    except BadPath:
        return
    segments = path.split("/")
    assert path.startswith("/")
    assert "." not in segments and ".." not in segments
    assert "\x00" not in path and "\\" not in path
    assert all(c >= " " and c != "\x7f" for c in path)
    path.encode("utf-8")  # no lone surrogates
    if "%" not in path:  # decoded once; a decoded path is its own normal form
        assert normalise_path(path) == path


# ---- IP rules and the client address -------------------------------------------------


@pytest.mark.parametrize(
    ("cidrs", "ip", "allowed"),
    [
        ([], "203.0.113.9", True),
        (["203.0.113.0/24"], "203.0.113.9", True),
        (["203.0.113.0/24"], "203.0.114.9", False),
        (["203.0.113.7"], "203.0.113.7", True),  # a bare address is a /32
        (["203.0.113.7"], "203.0.113.8", False),
        (["203.0.113.7/24"], "203.0.113.200", True),  # host bits are ignored
        (["203.0.113.0/24"], "::ffff:203.0.113.9", True),  # IPv4-mapped IPv6
        (["::ffff:0:0/96"], "::ffff:203.0.113.9", True),
        (["2001:db8::/32"], "2001:db8:1::5", True),
        (["2001:db8::/32"], "2001:db9::5", False),
        (["2001:db8::1"], "2001:0db8:0000::1", True),  # a bare address is a /128
        (["2001:db8::/32"], "203.0.113.9", False),
        (["0.0.0.0/0"], "2001:db8::1", False),  # families do not mix
        (["fe80::/10"], "fe80::1%eth0", True),
        (["203.0.113.0/24"], "", False),  # no address: refused when rules exist
        (["203.0.113.0/24"], "not-an-ip", False),
        (["garbage"], "203.0.113.9", False),  # invalid rules match nothing
        (["garbage", "10.0.0.0/8"], "10.1.2.3", True),
    ],
)
def test_ip_rules(cidrs: list[str], ip: str, allowed: bool) -> None:
    assert IpRules.compile(cidrs).allows(ip) is allowed


TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


@pytest.mark.parametrize(
    ("peer", "xff", "trusted", "expected"),
    [
        ("203.0.113.9", "1.1.1.1", (), "203.0.113.9"),  # nothing trusted: the peer
        ("203.0.113.9", "1.1.1.1", TRUSTED, "203.0.113.9"),  # untrusted peer's claim ignored
        ("10.0.0.1", None, TRUSTED, "10.0.0.1"),
        ("10.0.0.1", "198.51.100.7", TRUSTED, "198.51.100.7"),
        ("10.0.0.1", "6.6.6.6, 198.51.100.7", TRUSTED, "198.51.100.7"),  # spoofed left part
        ("10.0.0.1", "6.6.6.6, 198.51.100.7, 10.0.0.2", TRUSTED, "198.51.100.7"),
        ("10.0.0.1", "10.0.0.3, 10.0.0.2", TRUSTED, "10.0.0.3"),  # all trusted: leftmost
        ("10.0.0.1", "198.51.100.7, junk, 10.0.0.2", TRUSTED, "10.0.0.2"),  # walk stops
        ("10.0.0.1", "junk", TRUSTED, "10.0.0.1"),
        ("10.0.0.1", "", TRUSTED, "10.0.0.1"),
        ("::ffff:10.0.0.1", "198.51.100.7", TRUSTED, "198.51.100.7"),  # mapped peer
        ("fd00::1", "2001:db8::7", TRUSTED, "2001:db8::7"),
        ("fd00::1", "2001:db8::7, fd00::2", TRUSTED, "2001:db8::7"),
        ("unix-socket", "198.51.100.7", TRUSTED, "unix-socket"),
        (None, "198.51.100.7", TRUSTED, ""),
        (None, None, (), ""),
    ],
)
def test_client_ip(
    peer: str | None,
    xff: str | None,
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
    expected: str,
) -> None:
    assert client_ip(peer, xff, trusted) == expected


def test_path_rules() -> None:
    rules = PathRules(["/request/icons/", "/request/logos/"])
    assert rules.allows("/request/icons/a.svg") and rules.allows("/request/logos/")
    assert not rules.allows("/request/other/a.svg") and not rules.allows("/request/icons")
    assert PathRules([]).allows("/anything")


def test_path_scopes_are_decoded_as_request_paths_are() -> None:
    """A scope means one thing however it was written (issue 12 item 3); one that no
    request path can start with matches nothing, rather than being dropped."""
    rules = PathRules(["/files/%7Eann/", "/files/caf%C3%A9/"])
    assert rules.allows("/files/~ann/a.png") and rules.allows("/files/café/a.png")
    assert not rules.allows("/files/%7Eann/a.png")
    broken = PathRules(["/files/a%2Fb/"])
    assert not broken.allows("/files/a/b/x") and not broken.allows("/files/a%2Fb/x")


# ---- Signed links --------------------------------------------------------------------

SECRET = "link-secret-0123456789"
PATH = "/request/12345.svg"
NOW = 1_800_000_000.0
EXPIRES = 1_800_000_600


def _reference_sig(path: str, expires: int, secret: str) -> str:
    mac = hmac.new(secret.encode(), f"{path}\n{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def test_sign_link_matches_the_spec_recipe() -> None:
    sig = sign_link(PATH, EXPIRES, SECRET)
    assert sig == _reference_sig(PATH, EXPIRES, SECRET)
    assert len(sig) == 43 and "=" not in sig


GOOD = sign_link(PATH, EXPIRES, SECRET)
STALE = sign_link(PATH, int(NOW) - 1, SECRET)


@pytest.mark.parametrize(
    ("path", "expires", "sig", "secret", "required", "outcome"),
    [
        (PATH, str(EXPIRES), GOOD, SECRET, True, None),
        (PATH, str(EXPIRES), GOOD, SECRET, False, None),
        (PATH, str(EXPIRES), GOOD + "=", SECRET, True, None),  # padded
        (PATH, str(int(NOW)), sign_link(PATH, int(NOW), SECRET), SECRET, True, None),
        (PATH, None, None, SECRET, False, None),  # no link, not required
        (PATH, None, None, None, False, None),
        (PATH, None, None, SECRET, True, LinkRequired),
        (PATH, str(int(NOW) - 1), STALE, SECRET, True, LinkExpired),
        (PATH, str(int(NOW) - 1), STALE, SECRET, False, LinkExpired),  # present: verified
        (PATH, str(int(NOW) - 1), GOOD, SECRET, True, LinkInvalid),  # forged: no expiry probe
        (PATH, str(EXPIRES + 1), GOOD, SECRET, True, LinkInvalid),
        ("/request/other.svg", str(EXPIRES), GOOD, SECRET, True, LinkInvalid),
        (PATH, str(EXPIRES), sign_link(PATH, EXPIRES, "other"), SECRET, True, LinkInvalid),
        (PATH, str(EXPIRES), GOOD, None, False, LinkInvalid),  # the key has no link secret
        (PATH, str(EXPIRES), GOOD, "", False, LinkInvalid),
        (PATH, str(EXPIRES), None, SECRET, True, LinkInvalid),
        (PATH, None, GOOD, SECRET, True, LinkInvalid),
        (PATH, "0" + str(EXPIRES), GOOD, SECRET, True, LinkInvalid),  # other digits signed
        (PATH, "18e8", GOOD, SECRET, True, LinkInvalid),
        (PATH, "-1", GOOD, SECRET, True, LinkInvalid),
        (PATH, "1" * 13, GOOD, SECRET, True, LinkInvalid),
        (PATH, "١٨٠٠٠٠٠٦٠٠", GOOD, SECRET, True, LinkInvalid),  # non-ASCII digits
        (PATH, str(EXPIRES), GOOD + "A" * 30, SECRET, True, LinkInvalid),  # too long
        (PATH, str(EXPIRES), "é" * 43, SECRET, True, LinkInvalid),
        (PATH, str(EXPIRES), base64.b64encode(b"x" * 32).decode(), SECRET, True, LinkInvalid),
        (PATH, str(EXPIRES), "", SECRET, True, LinkInvalid),
    ],
)
def test_check_link(
    *,  # pytest passes parameters by name
    path: str,
    expires: str | None,
    sig: str | None,
    secret: str | None,
    required: bool,
    outcome: type[Refusal] | None,
) -> None:
    if outcome is None:
        check_link(path, expires, sig, secret, required, NOW)
    else:
        with pytest.raises(outcome):
            check_link(path, expires, sig, secret, required, NOW)


# ---- KeyPolicy -----------------------------------------------------------------------


def _record(**fields: object) -> KeyRecord:
    return KeyRecord("k" * 22, "acme", **fields)  # type: ignore[arg-type]


def test_a_key_without_rules_compiles_to_nothing() -> None:
    policy = KeyPolicy.of(_record())
    assert policy == KeyPolicy(None, None, None)
    policy.check("/x", None, None, "not even an address")


def test_checks_run_in_spec_order() -> None:
    policy = KeyPolicy.of(
        _record(referrers=("example.com",), ips=("10.0.0.0/8",), paths=("/request/icons/",))
    )
    ok = ("/request/icons/a.svg", "https://example.com/", None, "10.1.2.3")
    policy.check(*ok)
    with pytest.raises(ReferrerNotAllowed):  # everything wrong: the referrer decides
        policy.check("/request/other", "https://evil.net/", None, "192.0.2.1")
    with pytest.raises(IpNotAllowed):
        policy.check("/request/other", ok[1], None, "192.0.2.1")
    with pytest.raises(PathNotAllowed):
        policy.check("/request/other", ok[1], None, ok[3])


def test_allow_no_referrer_false_without_patterns_still_checks() -> None:
    policy = KeyPolicy.of(_record(allow_no_referrer=False))
    assert policy.referrers is not None
    with pytest.raises(ReferrerNotAllowed):
        policy.check("/x", None, None, "")


# ---- CORS ----------------------------------------------------------------------------


def test_cors_headers_echo_the_origin_and_expose_ours() -> None:
    headers = cors_headers("https://app.example.com")
    assert headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert headers["Vary"] == "Origin"
    exposed = {h.strip() for h in headers["Access-Control-Expose-Headers"].split(",")}
    assert {"ETag", "Content-Range", "RateLimit-Remaining", "Retry-After", "X-Cache"} <= exposed
    assert "Access-Control-Allow-Credentials" not in headers
    assert cors_headers("https://app.example.com") is headers  # cached
    assert "Access-Control-Allow-Origin" not in cors_headers("null")


def test_preflight_headers() -> None:
    headers = preflight_headers("https://app.example.com", "x-api-key, range")
    assert headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert headers["Access-Control-Allow-Methods"] == "GET, HEAD, OPTIONS"
    allowed = {h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "x-api-key", "range", "if-none-match", "x-request-id"} <= allowed
    assert headers["Access-Control-Max-Age"] == "600"
    assert headers["Vary"] == "Origin"


@settings(max_examples=500)
@given(st.text(max_size=60))
def test_untrusted_addresses_never_raise(address: str) -> None:
    assert isinstance(IpRules.compile(["10.0.0.0/8"]).allows(address), bool)
    assert isinstance(client_ip("10.0.0.1", address, TRUSTED), str)


@settings(max_examples=500)
@given(st.one_of(st.none(), st.text(max_size=20)), st.one_of(st.none(), st.text(max_size=70)))
def test_link_checks_refuse_only_with_link_errors(expires: str | None, sig: str | None) -> None:
    try:
        check_link(PATH, expires, sig, SECRET, True, NOW)
    except (LinkInvalid, LinkRequired, LinkExpired):
        return
    raise AssertionError("a random link verified")
