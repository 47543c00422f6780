"""One cached object: its in-memory index record and its file format.

A cached object is ONE file, header then body, so that a single `os.replace` publishes
metadata and bytes together: no moment exists where a reader could pair one object's
metadata with another's body (a separate sidecar would need two renames). Layout:

    magic "KFCACHE1" | fill id u64 | stored_at f64 | meta length u32 | meta JSON | body

- `fill id`: random per fill. A hit checks it against the index before sending, so an
  object replaced by another worker process is never sent under stale headers.
- `stored_at`: a fixed 8-byte field, so a revalidation (origin 304) refreshes it with
  one `pwrite` instead of rewriting the object.
- `meta`: the cache key (route, origin and object path: `cache_key`, and for a
  compressed representation the coding after two newlines: encoded.py; read back by a
  purge by prefix), what a representation was made from (`source`), the status (200,
  or 404 for a cached absence, SPEC section 5 `negative_ttl`), the body size, the
  origin's headers as it sent them: Content-Type, Content-Encoding, ETag,
  Last-Modified (SPEC section 1: the validators are the origin's, never recomputed
  here), and the freshness lifetime the origin gave, when
  the route respects it (`ttl`; absent: the cache's `ttl`).

File names are the sha256 of the cache key, fanned out over 256 folders
(`objects/ab/ab12...`), like nginx's `levels=2`.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlencode

from ..conditional import Validators, parse_http_date
from ..routing import SEPARATOR

MAGIC = b"KFCACHE1"
PREFIX = struct.Struct("<8sQdI")  # magic, fill id, stored_at, meta length: 28 bytes
STORED_AT_OFFSET = 16
STORED_AT = struct.Struct("<d")
MAX_META = 16 * 1024  # a header longer than this is not ours
HEAD_READ = 4096  # one pread gets the whole header of nearly every object

# The origin headers an entry keeps and sends on (Content-Length comes from the size).
KEPT_HEADERS = ("Content-Type", "Content-Encoding", "ETag", "Last-Modified")


def cache_key(space: str, object_path: str, variant: str = "") -> str:
    """`routing.key_space(route)` (route prefix and origin identity) + the normalised
    object path (decoded, below the prefix), then the route's variant parameters
    (`variant_query`) when the request has any. Other query parameters, and so auth
    parameters, never enter it: every key shares one copy. One concatenation: this
    runs on every cached request."""
    return f"{space}{object_path}{SEPARATOR}{variant}" if variant else space + object_path


def public_path(key: str) -> str:
    """The public URL path a cached object answers (route prefix + object path, no
    variant): what purges name. A key written before the route and origin entered it
    (one string, `/prefix/path?variant`) is returned whole; it is never looked up any
    more, but a purge by prefix still finds and removes it."""
    parts = key.split(SEPARATOR, 3)
    return parts[0] + parts[2] if len(parts) >= 3 else key


def variant_query(names: tuple[str, ...], query: Mapping[str, str]) -> str:
    """The variant parameters a request carries, in the route's order, URL-encoded:
    `w=100&format=webp`. The first value of each; absent ones are left out."""
    return urlencode([(name, query[name]) for name in names if name in query])


def file_name(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(slots=True)
class CacheEntry:
    """What the index knows of one cached object, enough to answer a hit, a Range or a
    conditional request without touching the disk (beyond reading the body)."""

    key: str
    name: str  # file name: sha256 of the key
    status: int  # 200, or 404: the origin had no such object (negative caching)
    size: int  # body bytes
    headers: dict[str, str]  # KEPT_HEADERS as the origin sent them
    stored_at: float  # unix time of the fetch or of the last revalidation
    fill_id: int
    body_offset: int  # where the body starts in the file
    used: float = 0.0  # unix time of the last hit in this process (approximate LRU)
    ttl: float | None = None  # the origin's lifetime (freshness.py); None: cache.ttl
    body: bytes | None = None  # in-memory copy, for small hot objects
    # A compressed representation (encoded.py): what it was made from, the identity's
    # fill id or a folder file's ETag; None for the identity itself.
    source: str | None = None
    # The identity's, set on first use (delivery.py): None unknown, else whether its
    # responses vary with Accept-Encoding; and its representations found so far.
    varies: bool | None = None
    encoded: dict[str, CacheEntry] | None = None
    validators: Validators = field(init=False)

    def __post_init__(self) -> None:
        modified = self.headers.get("Last-Modified")
        self.validators = Validators(
            self.size,
            self.headers.get("ETag"),
            parse_http_date(modified) if modified else None,
        )

    @property
    def file_size(self) -> int:
        return self.body_offset + self.size


def encode_header(entry: CacheEntry) -> bytes:
    """The bytes before the body; sets `entry.body_offset` to their length."""
    meta: dict[str, object] = {"key": entry.key, "status": entry.status, "size": entry.size}
    meta["headers"] = entry.headers
    if entry.ttl is not None:
        meta["ttl"] = entry.ttl
    if entry.source is not None:
        meta["source"] = entry.source
    raw = json.dumps(meta, separators=(",", ":"), ensure_ascii=True).encode()
    entry.body_offset = PREFIX.size + len(raw)
    return PREFIX.pack(MAGIC, entry.fill_id, entry.stored_at, len(raw)) + raw


def decode_header(head: bytes, key: str, name: str) -> CacheEntry | None:
    """The entry a file's first bytes describe, or None if they are not a complete
    header for `key` (another format, a hash collision, a damaged file)."""
    if len(head) < PREFIX.size:
        return None
    magic, fill_id, stored_at, meta_length = PREFIX.unpack_from(head)
    end = PREFIX.size + meta_length
    if magic != MAGIC or meta_length > MAX_META or len(head) < end:
        return None
    try:
        meta = json.loads(head[PREFIX.size : end])
        headers = {k: str(v) for k, v in meta["headers"].items() if k in KEPT_HEADERS}
        ttl, source = meta.get("ttl"), meta.get("source")
        entry = CacheEntry(
            str(meta["key"]), name, int(meta["status"]), int(meta["size"]), headers,
            stored_at, fill_id, end, ttl=None if ttl is None else float(ttl),
            source=None if source is None else str(source),
        )  # fmt: skip
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return entry if entry.key == key and entry.status in (200, 404) else None


def header_key(head: bytes) -> str | None:
    """The cache key a file's first bytes name (purge by prefix scans files with it)."""
    if len(head) < PREFIX.size or head[:8] != MAGIC:
        return None
    meta_length = PREFIX.unpack_from(head)[3]
    try:
        return str(json.loads(head[PREFIX.size : PREFIX.size + meta_length])["key"])
    except (ValueError, KeyError, TypeError):
        return None


def same_fill(head: bytes, entry: CacheEntry) -> float | None:
    """The file's stored_at if `head` (its first PREFIX.size bytes or more) belongs to
    the fill `entry` was read from, else None: the object was replaced meanwhile."""
    if len(head) < PREFIX.size:
        return None
    magic, fill_id, stored_at, _ = PREFIX.unpack_from(head)
    return float(stored_at) if magic == MAGIC and fill_id == entry.fill_id else None


def read_whole(path: str, entry: CacheEntry) -> tuple[bytes, float] | None:
    """The object file at `path` read whole, and its stored_at, if it still is the
    fill `entry` was read from; None if it is gone, short, or was replaced meanwhile."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.pread(fd, entry.file_size, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    stored_at = same_fill(data, entry) if len(data) == entry.file_size else None
    return None if stored_at is None else (data, stored_at)


def kept_headers(origin_headers: dict[str, str]) -> dict[str, str]:
    return {name: origin_headers[name] for name in KEPT_HEADERS if name in origin_headers}
