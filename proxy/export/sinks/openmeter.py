"""The `openmeter` sink (SPEC section 16): the usage events as they are, since
OpenMeter ingests CloudEvents ("Ingest events" in its API reference):

    POST {url}/api/v1/events
    Authorization: Bearer {token}                       (when a token is configured)
    Content-Type: application/cloudevents-batch+json

    [{"specversion": "1.0", "id": "...", "source": "keyfront", "type": "keyfront.usage",
      "subject": "<customer id>", "time": "<period start>", "data": {...}}, ...]

OpenMeter deduplicates on the CloudEvents `id` and `source`, so a retried batch is
counted once; a meter on `type: keyfront.usage` aggregates `$.requests` or `$.bytes`
by `subject`. Tested against a receiver that checks this request (the real service
is not reachable from the test suite).
"""

from __future__ import annotations

import json
from typing import Any

from ...config import OpenMeterSink
from .base import Sink

CONTENT_TYPE = "application/cloudevents-batch+json"


class OpenMeter(Sink):
    batch_size = 500

    def __init__(self, config: OpenMeterSink) -> None:
        super().__init__(config.name, config.timeout)
        self._url = config.url.rstrip("/") + "/api/v1/events"
        self._headers = {"Content-Type": CONTENT_TYPE}
        if config.token:
            self._headers["Authorization"] = f"Bearer {config.token}"

    async def deliver(self, events: list[dict[str, Any]]) -> None:
        body = json.dumps(events, separators=(",", ":")).encode()
        await self.post(self._url, body, self._headers)
