"""API key format (SPEC section 2): `{prefix}_{version}_{key_id}_{mac}`. Pure, no I/O.

`mac` is the lowercase hex of the first 16 bytes of
HMAC-SHA256(secret[version], "{prefix}_{version}_{key_id}"). Verification bounds the
length before anything else, so a flood of garbage costs a length check and at most
one regex match and one HMAC each, and never reaches the store (SPEC check 2).
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import KeyInvalid

KEY_ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KEY_ID_LENGTH = 22  # 22 base62 characters carry 130 random bits (SPEC: at least 96)
_MAX_KEY_LENGTH = 8 + 1 + 6 + 1 + 64 + 1 + 32
_KEY = re.compile(r"([a-z]{1,8})_([1-9][0-9]{0,5})_([0-9A-Za-z]{16,64})_([0-9a-f]{32})")
_KEY_ID = re.compile(r"[0-9A-Za-z]{16,64}")
VERIFIED_KEYS = 65_536  # remembered verified keys per process (~10 MB at the bound)


@dataclass(frozen=True, slots=True)
class ParsedKey:
    key_id: str
    version: int


def is_key_id(text: str) -> bool:
    """True if `text` has the shape of a key id (for CLI and admin arguments)."""
    return len(text) <= 64 and _KEY_ID.fullmatch(text) is not None


def new_key_id() -> str:
    return "".join(secrets.choice(KEY_ID_ALPHABET) for _ in range(KEY_ID_LENGTH))


class KeySigner:
    """Mints and verifies keys with the configured secrets (version -> secret)."""

    def __init__(self, prefix: str, secrets_by_version: Mapping[int, str]) -> None:
        if not secrets_by_version:
            raise ValueError("at least one signing secret is required")
        self.prefix = prefix
        self.signing_version = max(secrets_by_version)
        # Looked up by the version's digits as written in the key, so "01" is unknown
        # rather than an alias of version 1.
        self._secrets = {str(v): s.encode() for v, s in secrets_by_version.items()}
        self._verified: dict[str, ParsedKey] = {}

    def mint(self, key_id: str | None = None, version: int | None = None) -> str:
        """A new key string for `key_id` (random when None), signed with `version`
        (the highest configured when None)."""
        key_id = key_id or new_key_id()
        version_text = str(version if version is not None else self.signing_version)
        if not is_key_id(key_id) or version_text not in self._secrets:
            raise ValueError("cannot mint: bad key id or unknown secret version")
        body = f"{self.prefix}_{version_text}_{key_id}"
        return f"{body}_{self._mac(version_text, body)}"

    def verify(self, key: str) -> ParsedKey:
        """The key's id and version, or KeyInvalid. Constant-time MAC compare.

        Keys that verified are remembered (bounded), so a key seen again costs one
        dict look-up instead of a regex and an HMAC (~2.5 µs, a tenth of the per-request
        budget on a cache hit). Only keys whose MAC checked out enter, so a flood of
        garbage cannot fill it, and equality with a remembered string proves the MAC."""
        parsed = self._verified.get(key)
        if parsed is not None:
            return parsed
        parsed = self._verify(key)
        if len(self._verified) >= VERIFIED_KEYS:
            self._verified.clear()
        self._verified[key] = parsed
        return parsed

    def owns(self, key: str) -> bool:
        """True if `key` has keyfront's format with this prefix, whatever its MAC: it
        is verified the section 2 way. Any other key is an external key (SPEC section
        13), so an operator's own `pk_live_...` keys are not mistaken for ours."""
        if len(key) > _MAX_KEY_LENGTH:
            return False
        match = _KEY.fullmatch(key)
        return match is not None and match.group(1) == self.prefix

    def _verify(self, key: str) -> ParsedKey:
        if len(key) > _MAX_KEY_LENGTH:
            raise KeyInvalid()
        match = _KEY.fullmatch(key)
        if match is None:
            raise KeyInvalid()
        prefix, version, key_id, mac = match.groups()
        if prefix != self.prefix or version not in self._secrets:
            raise KeyInvalid()
        expected = self._mac(version, key[: len(key) - 33])
        if not hmac.compare_digest(expected, mac):
            raise KeyInvalid()
        return ParsedKey(key_id, int(version))

    def _mac(self, version: str, body: str) -> str:
        return hmac.digest(self._secrets[version], body.encode(), "sha256")[:16].hex()


def key_id_of(key: str) -> str | None:
    """The key id of a key-shaped string, unverified (for log lines); never the MAC."""
    match = _KEY.fullmatch(key) if len(key) <= _MAX_KEY_LENGTH else None
    return match.group(3) if match else None
