"""Standard Webhooks signing (https://www.standardwebhooks.com/), for the webhook sink
and customers' alerts: `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")),
the key being the base64 after `whsec_`. A leaf (the standard library only), so the
admin API and the command line can show a customer its alert secret without aiohttp.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def secret_key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def customer_secret(secret: str, customer_id: str) -> str:
    """The `whsec_` secret that signs `customer_id`'s alerts: HMAC-SHA256 of the
    customer id under `alerts.secret`. Each customer verifies its own alerts with it
    and, knowing only its own, can sign nothing another customer would accept (one
    shared secret would let any customer forge alerts to every other)."""
    label = b"keyfront alert secret\0" + customer_id.encode()
    derived = hmac.new(secret_key(secret), label, hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(derived).decode()
