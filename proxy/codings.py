"""The content codings keyfront makes (SPEC section 17), and which bodies get them.
A leaf: it imports nothing of keyfront.

    encode(data, coding)     -> the coded bytes: gzip (zlib), br (brotli), zstd
    Compressible(types)      -> .media(Content-Type): may a body of this type be coded?

Levels are chosen by size, measured on SVGs (the repository's samples, 176-308 B, and
generated paths and charts of 10 KB to 2.3 MB; ratio coded/identity and CPU per object,
one core of the development host):

    10 KB chart    gzip 9: 0.186 118 µs   br 11: 0.124  9.5 ms   zstd 19: 0.142  2.5 ms
    55 KB chart    gzip 9: 0.168 2.1 ms   br 11: 0.107   67 ms   zstd 19: 0.124   21 ms
    230 KB chart   gzip 6: 0.169 4.0 ms   br 5:  0.149  3.1 ms   zstd 9:  0.153  3.6 ms
                                          (br 11: 0.105  317 ms  zstd 19: 0.119  200 ms)
    2.3 MB paths   gzip 6: 0.385 147 ms   br 5:  0.368   74 ms   zstd 9:  0.365   60 ms
                                          (br 11: 0.335  4.2 s   zstd 19: 0.359  1.4 s)

A representation is made once per object and coding, off the request path, and then
served for as long as the object is cached: for a small body the highest levels are
affordable (a 10 KB SVG: br 11 takes 9.5 ms once and sends a third less than br 5), for
a large one they are not (br 11 on 2.3 MB: 4 s of a core for 9% fewer bytes). So:
bodies up to HIGH_LEVEL_UP_TO get br 11, zstd 19, gzip 9; larger ones br 5, zstd 9,
gzip 6, where the curve flattens (br 5 to 8 gain under 3% for 1.5-2.4x the CPU).
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Iterable

import brotli  # type: ignore[import-untyped]

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

CODINGS = ("br", "zstd", "gzip")  # what keyfront can make; config picks and orders
HIGH_LEVEL_UP_TO = 64 * 1024
LEVELS = {"br": (11, 5), "zstd": (19, 9), "gzip": (9, 6)}  # (small bodies, large bodies)

# Never coded, whatever `compression.types` says (SPEC section 17): they are compressed
# already, and a second pass costs CPU for nothing (a PNG gains under 1%).
ALREADY_COMPRESSED = frozenset(
    {
        "image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/jxl",
        "image/heic", "font/woff", "font/woff2", "application/zip", "application/gzip",
        "application/x-gzip", "application/zstd", "application/x-brotli", "application/pdf",
        "application/x-7z-compressed", "application/x-xz", "application/x-bzip2",
    }
)  # fmt: skip
ALREADY_COMPRESSED_FAMILIES = ("video/", "audio/")
MEMO_SIZE = 256  # distinct Content-Type values remembered; then forgotten at once


def level(coding: str, size: int) -> int:
    small, large = LEVELS[coding]
    return small if size <= HIGH_LEVEL_UP_TO else large


def encode(data: bytes, coding: str) -> bytes:
    """`data` in `coding` ("br", "zstd" or "gzip") at the level for its size. CPU-bound:
    run it in a worker thread (the three libraries release the GIL while they work)."""
    chosen = level(coding, len(data))
    if coding == "br":
        coded: bytes = brotli.compress(data, quality=chosen)
        return coded
    if coding == "zstd":
        return zstd.compress(data, level=chosen)
    # gzip: zlib with the gzip wrapper (wbits 31), no file name, mtime 0
    packer = zlib.compressobj(chosen, zlib.DEFLATED, 31)
    return packer.compress(data) + packer.flush()


def decode(data: bytes, coding: str) -> bytes:
    """The inverse of `encode` (tests and the benchmark check representations with it)."""
    if coding == "br":
        plain: bytes = brotli.decompress(data)
        return plain
    if coding == "zstd":
        return zstd.decompress(data)
    return zlib.decompress(data, 31)


class Compressible:
    """Whether bodies of a Content-Type may be coded: their media type (lowercase, no
    parameters) is one of `types` (`type/subtype`, or `type/*`), and not an
    ALREADY_COMPRESSED one. Memoised by the header value, bounded."""

    __slots__ = ("_exact", "_families", "_memo")

    def __init__(self, types: Iterable[str]) -> None:
        types = tuple(types)
        self._exact = frozenset(t for t in types if not t.endswith("/*"))
        self._families = tuple(t[:-1] for t in types if t.endswith("/*"))  # "text/"
        self._memo: dict[str, bool] = {}

    def media(self, content_type: str | None) -> bool:
        if content_type is None:
            return False
        known = self._memo.get(content_type)
        if known is None:
            known = self._judge(content_type)
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            self._memo[content_type] = known
        return known

    def _judge(self, content_type: str) -> bool:
        media = content_type.partition(";")[0].strip(" \t").lower()
        if media in ALREADY_COMPRESSED or media.startswith(ALREADY_COMPRESSED_FAMILIES):
            return False
        return media in self._exact or (media.startswith(self._families) and "/" in media)
