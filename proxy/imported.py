"""Imported keys (SPEC section 13): keys from an operator's existing key system, known to
keyfront only by a keyed hash, and told apart from garbage without a store call.

    presented key ──keyfront's format?──yes──> section 2 (KeySigner.verify)
                        │ no: an external key
                        ├─ longer than MAX_EXTERNAL_KEY, or not keys.external.pattern: key_invalid
                        ├─ fingerprint not in the in-memory ImportedSet: key_unknown, no I/O
                        └─ else its key_id goes through the record cache like any key id

The derivation: hash = HMAC-SHA256(hash secret, key); key_id = the first 32 hex digits
of SHA-256("keyfront key id" || hash), so the key_id (which logs, usage and analytics
show) is one-way from the hash; the fingerprint in the set is the key_id's first 64
bits. The store holds the records under their key_ids and the list of imported key
ids; never the key, nor the hash.

Every process holds the fingerprints of all imported keys in a sorted `array('Q')`:
8 bytes a key, searched with `bisect` in ~1 µs (README "Bringing your existing keys"
has the measurements). A false positive (2^-64 per key held) costs one store read that
finds nothing: key_unknown all the same.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from itertools import pairwise

from .config import MAX_EXTERNAL_KEY, ExternalKeysConfig
from .errors import KeyInvalid, KeyUnknown, StoreError, Unavailable
from .keys import VERIFIED_KEYS, KeySigner
from .store import Change, Store

log = logging.getLogger(__name__)

_KEY_ID_CONTEXT = b"keyfront key id\x00"
RELOAD_RETRY = 1.0  # seconds between attempts to load the set while the store fails


def imported_key_id(secret: bytes, key: str) -> str:
    """The key_id of an imported key: 32 lowercase hex digits (an `is_key_id`)."""
    keyed = hmac.digest(secret, key.encode(), "sha256")
    return hashlib.sha256(_KEY_ID_CONTEXT + keyed).hexdigest()[:32]


def fingerprint(key_id: str) -> int:
    """The 64 bits of an imported key id that the in-memory set holds."""
    return int(key_id[:16], 16)


class ImportedSet:
    """A sorted array of 64-bit fingerprints: 8 bytes a key, no per-key object."""

    __slots__ = ("_items",)

    def __init__(self, fingerprints: Iterable[int] = ()) -> None:
        self._items = array("Q", sorted(set(fingerprints)))

    @classmethod
    def of_ascending(cls, items: array[int]) -> ImportedSet:
        """A set over `items`, already in ascending order (the stores list them so):
        no sort, which for a million keys would hold the event loop ~0.4 s."""
        made = cls()
        made._items = items
        return made

    def __contains__(self, item: int) -> bool:
        items = self._items
        i = bisect_left(items, item)
        return i < len(items) and items[i] == item

    def add(self, item: int) -> None:
        """Insert one (a memmove of the tail: fine for the few of a small import)."""
        i = bisect_left(self._items, item)
        if i == len(self._items) or self._items[i] != item:
            self._items.insert(i, item)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._items.itemsize * len(self._items)


class ExternalKeys:
    """Check 2 and the no-I/O part of check 3 for keys not in keyfront's format.

    `key_id()` never awaits. The set and the hash secret are loaded from the store by
    `load()` and kept current by `apply()` (the change feed); until the first load
    succeeds (the store was down at start-up) an external key is 503 `unavailable`,
    not a wrong `key_unknown`."""

    def __init__(self, config: ExternalKeysConfig) -> None:
        self._pattern = config.pattern
        self._configured_secret = config.hash_secret
        self._secret: bytes | None = None
        self._set = ImportedSet()
        self.loaded = False
        # Keys found good -> their key ids, so a key seen again is one dict look-up (the
        # 10 KB hit budget, SPEC section 12): imported keys whose fingerprint is in the
        # set, and (KeyIds) keyfront keys whose MAC checked out. Garbage never enters.
        # Cleared, never replaced, when the set is rebuilt (KeyIds holds its `get`).
        self.known: dict[str, str] = {}
        self._reloading: asyncio.Task[None] | None = None
        self._again = False
        self._added_meanwhile: list[int] | None = None  # a list while a load scans

    def key_id(self, key: str) -> str:
        """The imported key's id, or KeyInvalid / KeyUnknown / Unavailable."""
        known = self.known.get(key)
        if known is not None:
            return known
        if len(key) > MAX_EXTERNAL_KEY or self._pattern.fullmatch(key) is None:
            raise KeyInvalid()
        if not self._set:
            raise KeyUnknown() if self.loaded else Unavailable()
        assert self._secret is not None  # a set is only loaded with its secret
        key_id = imported_key_id(self._secret, key)
        if fingerprint(key_id) not in self._set:
            raise KeyUnknown()
        self.remember(key, key_id)
        return key_id

    def remember(self, key: str, key_id: str) -> None:
        """Only for a key found good (bounded: a full table starts over)."""
        if len(self.known) >= VERIFIED_KEYS:
            self.known.clear()
        self.known[key] = key_id

    def __len__(self) -> int:
        return len(self._set)

    # --- loading and keeping current -------------------------------------------------

    async def load(self, store: Store) -> None:
        """Read the secret and every imported key id; swap the new set in at once.
        Raises StoreError."""
        added: list[int] = []
        self._added_meanwhile = added
        try:
            secret = await hash_secret(store, self._configured_secret, create=False)
            fresh = await _scan(store) if secret is not None else ImportedSet()
        finally:
            self._added_meanwhile = None
        for item in added:  # announced while the scan ran: it may have missed them
            fresh.add(item)
        self._secret, self._set, self.loaded = secret, fresh, True
        self.known.clear()

    def apply(self, change: Change, store: Store) -> None:
        """Follow the change feed: an imported key id joins the set at once; a bulk
        import (no id), a lost subscription (`all`) or the first import (no secret
        yet) rebuilds the set from the store, in the background."""
        if change.kind == "imported" and change.id and self._secret is not None:
            item = fingerprint(change.id)
            self._set.add(item)
            if self._added_meanwhile is not None:
                self._added_meanwhile.append(item)
        elif change.kind in ("imported", "all"):
            self.reload(store)

    def reload(self, store: Store) -> None:
        """Rebuild the set in a task; requests arriving meanwhile run it once more."""
        if self._reloading is not None and not self._reloading.done():
            self._again = True
            return
        self._reloading = asyncio.create_task(self._reload_until_done(store))

    async def _reload_until_done(self, store: Store) -> None:
        self._again = True
        while self._again:
            self._again = False
            try:
                await self.load(store)
            except StoreError as exc:
                log.warning("imported keys: cannot load the set (%s); retrying", exc)
                self._again = True
                await asyncio.sleep(RELOAD_RETRY)

    async def close(self) -> None:
        if self._reloading is not None:
            self._reloading.cancel()
            await asyncio.gather(self._reloading, return_exceptions=True)


async def _scan(store: Store) -> ImportedSet:
    """The set of every imported key id, built batch by batch as the store lists them
    in ascending order (the event loop runs between batches). Should a store ever
    list them out of order, the set is sorted once at the end, so it stays correct."""
    items: array[int] = array("Q")
    ordered = True
    async for key_ids in store.scan_imported():
        batch = array("Q", map(fingerprint, key_ids))
        ordered = ordered and all(a < b for a, b in pairwise(batch))
        ordered = ordered and not (items and batch and batch[0] <= items[-1])
        items.extend(batch)
    return ImportedSet.of_ascending(items) if ordered else ImportedSet(items)


async def hash_secret(store: Store, configured: str | None, create: bool) -> bytes | None:
    """The secret imported keys are hashed with: `keys.external.hash_secret` when set,
    else the one kept in the store (made by the first import when `create`)."""
    if configured:
        return configured.encode()
    stored = await store.imported_secret(create)
    return stored.encode() if stored is not None else None


class KeyIds:
    """SPEC checks 2 and (for imported keys) 3 without I/O: the key id a presented key
    names, or KeyInvalid / KeyUnknown / Unavailable.

    The request path calls `remembered(key)` first: a key seen good before, of either
    kind, costs one C-level dict look-up (~40 ns; `KeySigner.verify`'s own memo was a
    Python call around one). Only on a miss does it call this object."""

    def __init__(self, signer: KeySigner, external: ExternalKeys) -> None:
        self._signer = signer
        self.external = external
        self.remembered = external.known.get

    def __call__(self, key: str) -> str:
        if self._signer.owns(key):
            key_id = self._signer.verify(key).key_id
            self.external.remember(key, key_id)
            return key_id
        return self.external.key_id(key)

    def is_external(self, key: str) -> bool:
        return not self._signer.owns(key)
