"""Imported keys (SPEC section 13): the in-memory set, the key id derivation, check 2 for
external keys, and reading import files. The end-to-end tests are in
test_e2e_imported.py."""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import pytest

from proxy.config import ExternalKeysConfig
from proxy.errors import Invalid, KeyInvalid, KeyUnknown, Unavailable
from proxy.imported import (
    ExternalKeys,
    ImportedSet,
    KeyIds,
    fingerprint,
    imported_key_id,
)
from proxy.keys import KeySigner, is_key_id
from proxy.manage.imports import rows_of

SECRET = b"imported-key-secret-0123456789"
SIGNER = KeySigner("pk", {1: "test-signing-secret-0123456789"})


def test_the_set_holds_exactly_its_members() -> None:
    rng = random.Random(3)
    members = [rng.getrandbits(64) for _ in range(10_000)]
    imported = ImportedSet(members + members[:100])  # duplicates count once
    assert len(imported) == 10_000
    assert all(m in imported for m in members)
    others = (rng.getrandbits(64) for _ in range(10_000))
    known = set(members)  # once: built per item, it took 4 s
    assert not any(o in imported for o in others if o not in known)
    assert 0 not in ImportedSet() and (2**64 - 1) not in imported


def test_adding_keeps_the_set_sorted() -> None:
    imported = ImportedSet([5, 1, 9])
    for item in (7, 0, 2**64 - 1, 5):
        imported.add(item)
    assert len(imported) == 6
    assert all(i in imported for i in (0, 1, 5, 7, 9, 2**64 - 1)) and 6 not in imported


def test_the_set_costs_8_bytes_a_key_and_builds_fast() -> None:
    rng = random.Random(4)
    items = [rng.getrandbits(64) for _ in range(200_000)]
    started = time.process_time()
    imported = ImportedSet(items)
    built = time.process_time() - started
    assert imported.nbytes == 8 * 200_000  # SPEC: at most 16 bytes a key
    assert built < 2.0  # measured ~0.1 s; 1 M keys: see the report
    started = time.process_time()
    for item in items[:20_000]:
        assert item in imported
    assert (time.process_time() - started) / 20_000 < 20e-6  # measured ~1 µs


def test_an_imported_key_id_is_a_key_id_and_hides_the_hash() -> None:
    key_id = imported_key_id(SECRET, "publickey123")
    assert is_key_id(key_id) and re.fullmatch("[0-9a-f]{32}", key_id)
    assert key_id == imported_key_id(SECRET, "publickey123")
    assert key_id != imported_key_id(b"another-secret-0123456789", "publickey123")
    import hmac

    keyed = hmac.digest(SECRET, b"publickey123", "sha256").hex()
    assert key_id[:16] not in keyed  # the key id does not show the keyed hash


def _external(members: list[str], pattern: str = "[A-Za-z0-9._~-]{8,128}") -> ExternalKeys:
    external = ExternalKeys(ExternalKeysConfig(re.compile(pattern)))
    # As load() leaves it, without a store:
    external._secret = SECRET
    external._set = ImportedSet(fingerprint(imported_key_id(SECRET, m)) for m in members)
    external.loaded = True
    return external


def test_external_keys_check_the_pattern_then_the_set() -> None:
    external = _external(["publickey123", "9b2f8c1e-4a5d-4c7b-9e1f-2a3b4c5d6e7f"])
    assert external.key_id("publickey123") == imported_key_id(SECRET, "publickey123")
    assert is_key_id(external.key_id("9b2f8c1e-4a5d-4c7b-9e1f-2a3b4c5d6e7f"))
    for text in (
        "short",
        "has space in it",
        "x" * 129,
        "ünïcode-key",
        "a/b/c/d/e/f",
        "x" * 10**6,
    ):
        with pytest.raises(KeyInvalid):
            external.key_id(text)
    for unknown in ("publickey124", "made-up-opaque-key"):
        with pytest.raises(KeyUnknown):
            external.key_id(unknown)


def test_before_the_set_loads_external_keys_are_unavailable_not_unknown() -> None:
    external = ExternalKeys(ExternalKeysConfig())
    with pytest.raises(Unavailable):
        external.key_id("publickey123")
    with pytest.raises(KeyInvalid):
        external.key_id("bad")
    external.loaded = True  # loaded, and nothing was ever imported
    with pytest.raises(KeyUnknown):
        external.key_id("publickey123")


def test_keyfront_keys_go_the_section_2_way_and_others_are_external() -> None:
    key_ids = KeyIds(SIGNER, _external(["publickey123", "pk_live_0123456789abcdef"]))
    ours = SIGNER.mint()
    assert key_ids(ours) == ours.split("_")[2]
    with pytest.raises(KeyInvalid):  # keyfront's format, a wrong MAC: never external
        key_ids(ours[:-1] + ("0" if ours[-1] != "0" else "1"))
    # An operator's own "pk_live_..." key is not in keyfront's format.
    assert is_key_id(key_ids("pk_live_0123456789abcdef"))
    assert key_ids.remembered("publickey123") is None
    key_id = key_ids("publickey123")
    assert key_ids.remembered("publickey123") == key_id  # the request path's one look-up
    assert key_ids.remembered(ours) == ours.split("_")[2]
    with pytest.raises(KeyUnknown):
        key_ids("publickey999")


def test_a_hostile_key_costs_microseconds() -> None:
    """Check 2 on client text (STYLE 17): the length is capped before the regex."""
    external = _external(["publickey123"])
    hostile = ["a" * 100_000 + "!", "-" * 128 + " ", "." * 10**6]
    started = time.process_time()
    for text in hostile * 100:
        with pytest.raises(KeyInvalid):
            external.key_id(text)
    assert time.process_time() - started < 0.5


# --- reading import files ------------------------------------------------------------------


def test_csv_rows_convert_lists_booleans_and_counts_and_name_their_lines() -> None:
    text = (
        "key,customer_id,referrers,allow_no_referrer,burst,rate,status\n"
        "publickey123,acme,app.example.com *.example.org,false,5,1/s,active\n"
        "\n"
        '"multi\nline",acme,,,,,\n'
        "only,two\n"
        "k2-key-0001,acme,,yes,lots,,disabled\n"
    )
    rows = list(rows_of(text.splitlines(keepends=True), "csv"))
    assert [line for line, _ in rows] == [2, 4, 6, 7]
    first = rows[0][1]
    assert first == {
        "key": "publickey123",
        "customer_id": "acme",
        "referrers": ["app.example.com", "*.example.org"],
        "allow_no_referrer": False,
        "burst": 5,
        "rate": "1/s",
        "status": "active",
    }
    assert rows[1][1] == {"key": "multi\nline", "customer_id": "acme"}  # empty cells: unset
    assert isinstance(rows[2][1], Invalid) and "columns" in rows[2][1].problem
    assert rows[3][1] == {"key": "k2-key-0001", "customer_id": "acme", "allow_no_referrer": True,
                          "burst": "lots", "status": "disabled"}  # fmt: skip


def test_json_lines_rows() -> None:
    text = '{"key": "publickey123", "customer_id": "acme", "ips": ["10.0.0.0/8"]}\n\n[1]\n{bad\n'
    rows = list(rows_of(text.splitlines(keepends=True), "jsonl"))
    assert rows[0] == (1, {"key": "publickey123", "customer_id": "acme", "ips": ["10.0.0.0/8"]})
    assert rows[1][0] == 3 and isinstance(rows[1][1], Invalid)
    assert rows[2][0] == 4 and isinstance(rows[2][1], Invalid)


def test_a_bad_csv_header_is_one_error_on_line_1() -> None:
    for header, problem in (
        ("key,customer_id,refferers", "unknown column 'refferers'"),
        ("customer_id,name", "needs one key column"),
        ("key,key,customer_id", "a column is named twice"),
    ):
        rows = list(rows_of([header + "\n", "a,b,c\n"], "csv"))
        assert len(rows) == 1 and rows[0][0] == 1
        assert isinstance(rows[0][1], Invalid) and problem in rows[0][1].problem
    bom = list(rows_of(["\ufeffkey,customer_id\n", "publickey123,acme\n"], "csv"))
    assert bom == [(2, {"key": "publickey123", "customer_id": "acme"})]


async def test_the_set_loads_from_a_store_in_order(tmp_path: Path) -> None:
    from proxy.records import KeyRecord
    from proxy.store import store_from_url

    store = store_from_url(f"sqlite://{tmp_path}/keyfront.db")
    await store.open()
    try:
        secret = (await store.imported_secret(create=True) or "").encode()
        keys = [f"opaque-key-{i:05d}" for i in range(25_000)]  # several scan batches
        await store.import_keys([KeyRecord(imported_key_id(secret, k), "acme") for k in keys])
        external = ExternalKeys(ExternalKeysConfig())
        await external.load(store)
    finally:
        await store.close()
    assert len(external) == 25_000
    assert all(is_key_id(external.key_id(k)) for k in keys[::1000])
    with pytest.raises(KeyUnknown):
        external.key_id("opaque-key-99999")


async def test_the_change_feed_keeps_the_set_current(tmp_path: Path) -> None:
    """`imported:<id>` inserts one key; `imported` (a bulk import) and `all` (a lost
    subscription) rebuild the set from the store in the background."""
    import asyncio

    from proxy.records import KeyRecord
    from proxy.store import Change, store_from_url

    store = store_from_url(f"sqlite://{tmp_path}/keyfront.db")
    await store.open()
    external = ExternalKeys(ExternalKeysConfig())
    try:
        await external.load(store)  # nothing imported yet: no secret, an empty set
        secret = (await store.imported_secret(create=True) or "").encode()

        async def imported(key: str) -> str:
            key_id = imported_key_id(secret, key)
            await store.import_keys([KeyRecord(key_id, "acme")])
            return key_id

        first = await imported("first-key-0001")
        external.apply(Change("imported", first), store)  # no secret yet: a rebuild
        await asyncio.sleep(0.2)
        assert external.key_id("first-key-0001") == first
        second = await imported("second-key-0001")
        external.apply(Change("imported", second), store)  # in place, at once
        assert external.key_id("second-key-0001") == second
        for n, change in enumerate((Change("all"), Change("imported")), 3):
            key = f"bulk-key-{n:04d}"
            await imported(key)
            with pytest.raises(KeyUnknown):  # not announced yet
                external.key_id(key)
            external.apply(change, store)
            await asyncio.sleep(0.2)
            assert is_key_id(external.key_id(key))
            assert external.key_id("first-key-0001") == first
    finally:
        await external.close()
        await store.close()
