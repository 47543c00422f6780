"""The `webhook` sink (SPEC section 16): a JSON array of CloudEvents, signed per the
Standard Webhooks spec (standardwebhooks.com).

    POST {url}
    content-type: application/cloudevents-batch+json
    webhook-id: <hash of the batch's event ids>     stable across retries of a batch
    webhook-timestamp: <unix seconds>                when this attempt was signed
    webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>

    [{"specversion": "1.0", "id": "...", "source": "keyfront", "type": "keyfront.usage",
      "subject": "<customer id>", "time": "...", "data": {...}}, ...]

`key` is the base64 after `whsec_` in the configured secret, decoded. At most 500
events a request. Any answer but 2xx, or none within `timeout`, is retried later
with the same events; receivers deduplicate on each event's `id`.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from ...config import WebhookSink
from ..signing import secret_key, signature
from .base import Sink

CONTENT_TYPE = "application/cloudevents-batch+json"


class Webhook(Sink):
    def __init__(self, config: WebhookSink) -> None:
        super().__init__(config.name, config.timeout)
        self.batch_size = config.batch_size
        self._url = config.url
        self._key = secret_key(config.secret)

    async def deliver(self, events: list[dict[str, Any]]) -> None:
        body = json.dumps(events, separators=(",", ":")).encode()
        ids = "\0".join(event["id"] for event in events)
        message_id = "msg_" + hashlib.sha256(ids.encode()).hexdigest()[:32]
        now = int(time.time())
        headers = {
            "content-type": CONTENT_TYPE,
            "webhook-id": message_id,
            "webhook-timestamp": str(now),
            "webhook-signature": signature(self._key, message_id, now, body),
        }
        await self.post(self._url, body, headers)
