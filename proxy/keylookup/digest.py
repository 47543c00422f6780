"""What names an external key on the change feed: keyed digests, never the key.

`keyfront keys invalidate --key KEY` and POST /admin/v1/keys/invalidate `{"keys":
[...]}` announce a `lookup_key` change whose id lists the key's digests, one per
configured signing-secret version (`1.<32 hex>,2.<32 hex>`); each instance indexes its
cached answers under the digests its own config gives. During a secret rotation the
instances' configs differ for a while: any version both sides hold still matches.
The digest is HMAC-SHA256 under the secret, so the store's change log and Redis
pub/sub never carry a key or a hash anyone could compute without the secret.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

_DOMAIN = b"keyfront external key\0"  # keeps these digests apart from the key MACs


def key_digests(secrets: Mapping[int, str], key: str) -> tuple[str, ...]:
    """The digests of `key`, one per secret version, as `version.hex`."""
    message = _DOMAIN + key.encode()
    return tuple(
        f"{version}.{hmac.digest(secret.encode(), message, 'sha256')[:16].hex()}"
        for version, secret in sorted(secrets.items())
    )
