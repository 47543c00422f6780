"""What a request knows of one key id (SPEC section 2): the record, its customer, and
the policy and limits compiled from them once, not per request.

A leaf below its users (issue 14: imports flow one way): the exchange names the type,
the record cache (store records) and the key API's cache (keylookup/, SPEC section 13)
build it with compile_key. It imports the records and the two compilers (policy.py,
ratelimit.py), never the record cache or the store.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import KeyDefaults
from .policy import KeyPolicy
from .ratelimit import KeyLimits
from .records import Customer, KeyRecord


@dataclass(slots=True)
class CachedKey:
    """What a request needs of one key id, ready to use: the record (None when the
    store has no such key), its customer, and its compiled policy and limits. Built
    by compile_key; held by the record cache and the key API's cache."""

    record: KeyRecord | None
    customer: Customer | None
    policy: KeyPolicy | None
    limits: KeyLimits | None
    fresh_until: float  # monotonic


def compile_key(
    found: tuple[KeyRecord, Customer | None] | None, fresh_until: float, defaults: KeyDefaults
) -> CachedKey:
    """The CachedKey of a record and its customer (None: no such key), its policy and
    limits compiled once: for the store's records in record_cache.py, the key API's
    answers in keylookup/cache.py (SPEC section 13), so both kinds of key are checked alike."""
    if found is None:
        return CachedKey(None, None, None, None, fresh_until)
    record, customer = found
    limits = KeyLimits.of(record, customer, defaults)
    return CachedKey(record, customer, KeyPolicy.of(record), limits, fresh_until)
