"""Which route a path names, and each route's cache key space (proxy/routing.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.cache.entry import cache_key, public_path
from proxy.config import Route, S3Settings
from proxy.routing import Routes, key_space

ROUTES = Routes((p, p) for p in ("/pub/", "/pub/secret/", "/files/", "/"))


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/pub/secret/plan.txt", "/pub/secret/"),  # the longest prefix wins
        ("/pub/secretive.txt", "/pub/"),  # whole segments only
        ("/pub/a.txt", "/pub/"),
        ("/pubx/a.txt", "/"),  # /pub/ ends in "/": /pubx/ is not under it
        ("/PUB/secret/plan.txt", "/"),  # paths compare case-sensitively
        ("/files/x", "/files/"),
    ],
)
def test_the_longest_prefix_on_segment_boundaries(path: str, route: str) -> None:
    assert ROUTES.match(path) == route


def test_no_route_matches_nothing() -> None:
    assert Routes([("/a/", 1)]).match("/b/x") is None


@pytest.mark.parametrize("prefix", ["/pub", "pub/", ""])
def test_a_prefix_must_start_and_end_with_a_slash(prefix: str) -> None:
    with pytest.raises(ValueError, match="starts and ends"):
        Routes([(prefix, 1)])


def test_the_key_space_names_the_route_and_its_origin() -> None:
    a = Route("/obj/", "http://a.example/base/")
    spaces = {
        key_space(a),
        key_space(Route("/obj/", "http://b.example/base/")),  # another host
        key_space(Route("/obj/", "http://a.example/other/")),  # another base path
        key_space(Route("/obj/", "https://a.example/base/")),  # another scheme
        key_space(Route("/other/", "http://a.example/base/")),  # another route
        key_space(Route("/obj/", "s3://bucket/base/")),
        key_space(Route("/obj/", "s3://bucket/base/", s3=S3Settings("http://127.0.0.1:1"))),
        key_space(Route("/obj/", "s3://bucket/base/", s3=S3Settings("http://127.0.0.1:2"))),
        key_space(Route("/obj/", "file:///srv/base/")),
    }
    assert len(spaces) == 9
    assert key_space(a) == key_space(Route("/obj/", "http://a.example/base/", auth="none"))
    # Credentials change who may read, not what is read; nor do they belong in a file.
    with_password = key_space(Route("/obj/", "http://user:pw@a.example/base/"))
    assert with_password == key_space(a) and "pw" not in with_password


_SEGMENT = st.text(st.characters(exclude_characters="/\n\r\x00", codec="utf-8"), min_size=1)
_PREFIX = st.lists(st.sampled_from(["pub", "secret", "a", "b"]), max_size=3).map(
    lambda parts: "/" + "".join(f"{p}/" for p in parts)
)


@given(
    st.lists(
        st.tuples(_PREFIX, st.sampled_from(["http://a/", "http://b/"]), _SEGMENT, _SEGMENT),
        min_size=2,
        max_size=2,
    ),
    st.sampled_from(["", "w=100"]),
)
def test_keys_are_unambiguous_and_give_back_their_public_path(
    pair: list[tuple[str, str, str, str]], variant: str
) -> None:
    """Nested prefixes cannot share a key: `/pub/` + `secret/x` is not `/pub/secret/`
    + `x`, nor is one origin's object another's."""
    keys = []
    for prefix, origin, one, two in pair:
        object_path = f"{one}/{two}"
        key = cache_key(key_space(Route(prefix, origin)), object_path, variant)
        assert public_path(key) == prefix + object_path
        keys.append((key, (prefix, origin, object_path)))
    (key_a, what_a), (key_b, what_b) = keys
    assert (key_a == key_b) == (what_a == what_b)


def test_a_key_of_the_old_format_is_its_own_public_path() -> None:
    assert public_path("/obj/same.txt") == "/obj/same.txt"
