"""The `lago` sink (SPEC section 16): Lago usage events, one per metric of each usage
event, as Lago's API reference defines "Batch usage events":

    POST {url}/api/v1/events/batch
    Authorization: Bearer {api_key}
    Content-Type: application/json

    {"events": [{"transaction_id": "{event id}:{metric}",
                 "external_subscription_id": "{the customer's billing_id}",
                 "code": "{requests_code | bytes_code}",
                 "timestamp": {the period's start, unix seconds},
                 "properties": {"value": {the count}, "key_id": "...",
                                "customer_id": "..."}}, ...]}

At most 100 events a request (Lago's bound), so 50 usage events. Lago deduplicates
on `transaction_id` (with `timestamp`), so a retried batch is counted once; a
billable metric sums the `value` property. A usage event whose customer has no
billing_id, or a count of 0, is not sent. Tested against a receiver that checks this
request (the real service is not reachable from the test suite).
"""

from __future__ import annotations

import json
from typing import Any

from ...config import LagoSink
from .base import Sink
from .stripe import METRICS, unix


class Lago(Sink):
    batch_size = 50  # two Lago events each: Lago takes 100 a request

    def __init__(self, config: LagoSink) -> None:
        super().__init__(config.name, config.timeout)
        self._url = config.url.rstrip("/") + "/api/v1/events/batch"
        self._headers = {
            "Authorization": f"Bearer {config.api_key}",
            "Content-Type": "application/json",
        }
        self._codes = {"requests": config.requests_code, "bytes": config.bytes_code}

    async def deliver(self, events: list[dict[str, Any]]) -> None:
        found = [item for event in events for item in self._lago_events(event)]
        if found:
            body = json.dumps({"events": found}, separators=(",", ":")).encode()
            await self.post(self._url, body, self._headers)

    def _lago_events(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        data = event["data"]
        if not data.get("billing_id"):
            return []
        return [
            {
                "transaction_id": f"{event['id']}:{metric}",
                "external_subscription_id": data["billing_id"],
                "code": self._codes[metric],
                "timestamp": unix(data["period_start"]),
                "properties": {
                    "value": data[metric],
                    "key_id": data["key_id"],
                    "customer_id": data["customer_id"],
                },
            }
            for metric in METRICS
            if data[metric] > 0
        ]
