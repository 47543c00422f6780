"""Dropping cached key answers on every instance (SPEC section 13): `keyfront keys
invalidate` and POST /admin/v1/keys/invalidate both come here.

The operator's key system calls it after it revokes or changes a key, so that the
change takes effect at once rather than after `fresh` (or `stale`). Nothing is
dropped here directly: each target becomes a change on the store's change feed, which
every keyfront process follows (app.follow_changes), the caller's own included, within
a second. Keys are named by keyed digests (keylookup/digest.py), never in clear; key
ids and customer ids are announced as `key` and `customer` changes, which also drop
the record cache's copies (imported keys, keyfront's own keys).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import Invalid
from ..keylookup.digest import key_digests
from ..keys import key_id_of
from ..store import Change, Store

MAX_TARGETS = 1000  # keys, key ids and customer ids in one call, together
MAX_KEY_LENGTH = 1024


def invalidation_changes(
    secrets: Mapping[int, str],
    keys: Sequence[str] = (),
    key_ids: Sequence[str] = (),
    customer_ids: Sequence[str] = (),
) -> list[Change]:
    """The changes that drop these targets; Invalid past MAX_TARGETS. A keyfront key
    given as a key is dropped by its key id (it is cached under that)."""
    if not keys and not key_ids and not customer_ids:
        raise Invalid("body", "name at least one key, key id or customer id")
    if len(keys) + len(key_ids) + len(customer_ids) > MAX_TARGETS:
        raise Invalid("body", f"at most {MAX_TARGETS} keys, key ids and customer ids in all")
    changes: list[Change] = []
    for key in keys:
        own_id = key_id_of(key)
        if own_id is not None:
            changes.append(Change("key", own_id))
        else:
            changes.append(Change("lookup_key", ",".join(key_digests(secrets, key))))
    changes += [Change("key", key_id) for key_id in key_ids]
    changes += [Change("customer", customer_id) for customer_id in customer_ids]
    return changes


async def invalidate(store: Store, changes: Sequence[Change]) -> int:
    """Announce the changes to every instance; their number."""
    for change in changes:
        await store.announce(change)
    return len(changes)


def parse_external_key(text: str) -> str:
    """A key as given to invalidate: any text of 1 to MAX_KEY_LENGTH characters
    (whatever the pattern says: a key the pattern now refuses may still be cached).
    The error never repeats the key."""
    if not text or len(text) > MAX_KEY_LENGTH:
        raise ValueError(f"a key has 1 to {MAX_KEY_LENGTH} characters")
    return text
