"""The set of imported keys (SPEC section 13): memory, build time and look-up cost.

    python -m bench.imported_set [--keys 1000000] [--store sqlite:///tmp/x.db | redis://...]

Without --store: the in-memory set alone (built from key id strings, as a load does).
With --store: the ids are written to the store's imported index first (directly, not
as records), then `ExternalKeys.load` is timed as an instance's start-up would run it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import secrets
import sqlite3
import time
import timeit
import tracemalloc
from array import array

from proxy.config import ExternalKeysConfig
from proxy.errors import KeyUnknown
from proxy.imported import ExternalKeys, ImportedSet, fingerprint, imported_key_id
from proxy.store import store_from_url

SECRET = b"bench-imported-secret-0123456789"


def in_memory(count: int) -> None:
    key_ids = [imported_key_id(SECRET, f"key-{i:09d}") for i in range(count)]
    gc.collect()
    started = time.process_time()
    imported = ImportedSet(map(fingerprint, key_ids))  # unsorted input: sort and dedupe
    built = time.process_time() - started
    ordered = sorted(key_ids)
    started = time.process_time()
    ImportedSet.of_ascending(array("Q", map(fingerprint, ordered)))  # as a load builds it
    loaded = time.process_time() - started
    tracemalloc.start()
    ImportedSet(map(fingerprint, key_ids))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"from ids in store order (a load): {loaded:.2f}s CPU")
    print(f"{count:,} keys: built in {built:.2f}s CPU; {imported.nbytes / count:.1f} bytes a key "
          f"({imported.nbytes / 2**20:.1f} MiB); peak while building {peak / 2**20:.1f} MiB "
          f"(from the ids)")  # fmt: skip
    member, stranger = fingerprint(key_ids[count // 2]), 12345
    for name, item in (("hit", member), ("miss", stranger)):
        seconds = min(timeit.repeat(lambda i=item: i in imported, number=100_000, repeat=5))
        print(f"membership {name}: {seconds / 100_000 * 1e9:.0f} ns")
    external = ExternalKeys(ExternalKeysConfig())
    external._secret, external._set, external.loaded = SECRET, imported, True
    known = "key-000000007"
    external.key_id(known)

    def unknown() -> None:
        with contextlib.suppress(KeyUnknown):
            external.key_id("made-up-opaque-key-123")

    for name, call in (("remembered key", lambda: external.key_id(known)),
                       ("unknown key (pattern, HMAC, SHA-256, bisect)", unknown)):  # fmt: skip
        seconds = min(timeit.repeat(call, number=100_000, repeat=5))
        print(f"ExternalKeys.key_id, {name}: {seconds / 100_000 * 1e6:.2f} µs")


async def from_store(url: str, count: int) -> None:
    store = store_from_url(url)
    await store.open()
    await store.imported_secret(create=True)
    ids = [secrets.token_hex(16) for _ in range(count)]
    started = time.monotonic()
    if url.startswith("sqlite://"):
        with sqlite3.connect(url.removeprefix("sqlite://")) as conn:
            conn.executemany("INSERT OR IGNORE INTO imported VALUES (?)", ((i,) for i in ids))
    else:
        client = store._client  # type: ignore[attr-defined]
        for start in range(0, count, 10_000):
            await client.zadd("kf:imported", dict.fromkeys(ids[start : start + 10_000], 0))
    print(f"{count:,} ids written in {time.monotonic() - started:.1f}s")
    external = ExternalKeys(ExternalKeysConfig())
    wall, cpu = time.monotonic(), time.process_time()
    await external.load(store)
    print(f"load from {url.partition(':')[0]}: {time.monotonic() - wall:.2f}s wall, "
          f"{time.process_time() - cpu:.2f}s CPU, {len(external):,} keys")  # fmt: skip
    await store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--store")
    args = parser.parse_args()
    if args.store:
        asyncio.run(from_store(args.store, args.keys))
    else:
        in_memory(args.keys)


if __name__ == "__main__":
    main()
