"""The codings keyfront makes and the types it codes (proxy/codings.py, SPEC 17)."""

from __future__ import annotations

import gzip

import pytest

from proxy.codings import CODINGS, HIGH_LEVEL_UP_TO, Compressible, decode, encode, level

TEXT = b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="1" height="2"/></svg>\n' * 200


@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("size", [0, 1, 10_000, HIGH_LEVEL_UP_TO + 1])
def test_each_coding_round_trips(coding: str, size: int) -> None:
    body = (TEXT * (size // len(TEXT) + 1))[:size]
    coded = encode(body, coding)
    assert decode(coded, coding) == body
    if size >= 10_000:
        assert len(coded) < size // 10


def test_gzip_is_the_standard_format_without_a_name_or_time() -> None:
    coded = encode(TEXT, "gzip")
    assert gzip.decompress(coded) == TEXT
    assert coded[4:8] == b"\0\0\0\0"  # MTIME 0: the same bytes in every worker process


def test_levels_by_size() -> None:
    assert [level(c, HIGH_LEVEL_UP_TO) for c in CODINGS] == [11, 19, 9]
    assert [level(c, HIGH_LEVEL_UP_TO + 1) for c in CODINGS] == [5, 9, 6]


TYPES = ("image/svg+xml", "text/*", "application/json", "image/*")


@pytest.mark.parametrize(
    ("content_type", "coded"),
    [
        ("image/svg+xml", True),
        ("IMAGE/SVG+XML; charset=utf-8", True),
        ("text/html", True),
        ("text/css;charset=utf-8", True),
        ("application/json", True),
        ("application/javascript", False),  # not configured here
        ("image/png", False),  # already compressed, though image/* is configured
        ("image/webp", False),
        ("image/bmp", True),
        ("font/woff2", False),
        ("video/mp4", False),
        ("text", False),
        ("", False),
        (None, False),
    ],
)
def test_compressible_types(content_type: str | None, coded: bool) -> None:
    assert Compressible(TYPES).media(content_type) is coded
