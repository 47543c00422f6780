"""Key format: mint, verify, and hostile input (SPEC section 2)."""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import KeyInvalid
from proxy.keys import KEY_ID_LENGTH, KeySigner, is_key_id, key_id_of, new_key_id

SECRETS = {1: "first-secret-0123456789", 2: "second-secret-0123456789"}
SIGNER = KeySigner("pk", SECRETS)


def test_minted_key_has_the_spec_shape_and_verifies() -> None:
    key = SIGNER.mint()
    prefix, version, key_id, mac = key.split("_")
    assert (prefix, version) == ("pk", "2")  # the highest version signs
    assert len(key_id) == KEY_ID_LENGTH and is_key_id(key_id)
    expected = hmac.new(SECRETS[2].encode(), f"pk_2_{key_id}".encode(), hashlib.sha256)
    assert mac == expected.digest()[:16].hex()
    assert re.fullmatch(r"[0-9A-Za-z_]+", key) and key.count("_") == 3
    parsed = SIGNER.verify(key)
    assert (parsed.key_id, parsed.version) == (key_id, 2)


def test_every_configured_version_verifies_and_removing_one_revokes_its_keys() -> None:
    old = SIGNER.mint(version=1)
    assert SIGNER.verify(old).version == 1
    with pytest.raises(KeyInvalid):
        KeySigner("pk", {2: SECRETS[2]}).verify(old)


def test_key_ids_are_random() -> None:
    assert len({new_key_id() for _ in range(1000)}) == 1000


@pytest.mark.parametrize(
    "mutate",
    [
        lambda k: k[:-1] + ("0" if k[-1] != "0" else "1"),  # MAC off by one digit
        lambda k: k.replace("pk_", "sk_", 1),  # other prefix
        lambda k: k.replace("_2_", "_3_", 1),  # unknown version
        lambda k: k.replace("_2_", "_02_", 1),  # same version, other spelling
        lambda k: k.upper(),
        lambda k: k[:-32] + k[-32:].upper(),  # MAC must be lowercase hex
        lambda k: k + "0",
        lambda k: k[:-1],
        lambda k: " " + k,
        lambda k: k.replace("_", "-"),
        lambda k: "",
        lambda k: "pk_2_short_" + "0" * 32,
        lambda k: k * 50,
    ],
)
def test_tampered_keys_are_invalid(mutate: object) -> None:
    key = SIGNER.mint()
    with pytest.raises(KeyInvalid):
        SIGNER.verify(mutate(key))  # type: ignore[operator]


def test_a_key_id_signed_under_another_key_id_does_not_verify() -> None:
    a, b = SIGNER.mint(), SIGNER.mint()
    swapped = "_".join([*a.split("_")[:3], b.split("_")[3]])
    with pytest.raises(KeyInvalid):
        SIGNER.verify(swapped)


@settings(max_examples=500)
@given(st.text(max_size=300))
def test_arbitrary_text_is_rejected_with_key_invalid_only(text: str) -> None:
    with pytest.raises(KeyInvalid):
        SIGNER.verify(text)


@settings(max_examples=300)
@given(st.from_regex(r"[a-z]{1,8}_[1-9][0-9]{0,5}_[0-9A-Za-z]{16,64}_[0-9a-f]{32}", fullmatch=True))
def test_well_formed_keys_with_wrong_macs_are_invalid(text: str) -> None:
    with pytest.raises(KeyInvalid):
        SIGNER.verify(text)
    # The unverified id extraction used by log lines returns the id part, never the MAC
    # (the two may be equal strings: Hypothesis drew 32 zeros for both).
    key_id = key_id_of(text)
    assert key_id == text.split("_")[2]


@given(st.from_regex(r"[0-9A-Za-z]{16,64}", fullmatch=True), st.sampled_from([1, 2]))
def test_mint_and_verify_round_trip(key_id: str, version: int) -> None:
    parsed = SIGNER.verify(SIGNER.mint(key_id, version))
    assert (parsed.key_id, parsed.version) == (key_id, version)


def test_mint_refuses_bad_ids_and_unknown_versions() -> None:
    with pytest.raises(ValueError):
        SIGNER.mint("bad id")
    with pytest.raises(ValueError):
        SIGNER.mint(version=9)
