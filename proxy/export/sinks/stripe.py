"""The `stripe` sink (SPEC section 16): Stripe billing meter events, one per metric of
each usage event, as Stripe's API reference defines "Create a billing meter event":

    POST {url}/v1/billing/meter_events                  (url: https://api.stripe.com)
    Authorization: Bearer {api_key}
    Idempotency-Key: {event id}:{metric}
    Content-Type: application/x-www-form-urlencoded

    event_name={requests_event | bytes_event}
    &identifier={event id}:{metric}        unique per event; Stripe enforces it for 24 h
    &payload[stripe_customer_id]={the customer's billing_id}
    &payload[value]={the count}
    &timestamp={the period's start, unix seconds}   (within the past 35 days)

A usage event whose customer has no billing_id, or a metric whose count is 0, is
not sent: Stripe could not attribute it, and 0 adds nothing. A retried batch repeats
its requests with the same identifier and Idempotency-Key, so Stripe counts each
once. Tested against a receiver that checks this request (the real service is not
reachable from the test suite).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from ...config import StripeSink
from .base import Sink, SinkError

METRICS = ("requests", "bytes")


class Stripe(Sink):
    batch_size = 25  # usage events a delivery: up to 50 requests, one at a time

    def __init__(self, config: StripeSink) -> None:
        super().__init__(config.name, config.timeout)
        self._url = config.url.rstrip("/") + "/v1/billing/meter_events"
        self._key = config.api_key
        self._names = {"requests": config.requests_event, "bytes": config.bytes_event}

    async def deliver(self, events: list[dict[str, Any]]) -> None:
        taken: set[str] = set()
        for event in events:
            data = event["data"]
            try:
                for metric in METRICS:
                    if data.get("billing_id") and data[metric] > 0:
                        await self._meter_event(event, metric)
            except SinkError as exc:  # the events before it are Stripe's: they leave
                raise SinkError(str(exc), frozenset(taken)) from exc
            taken.add(event["id"])

    async def _meter_event(self, event: dict[str, Any], metric: str) -> None:
        data = event["data"]
        identifier = f"{event['id']}:{metric}"
        body = urlencode({
            "event_name": self._names[metric],
            "identifier": identifier,
            "payload[stripe_customer_id]": data["billing_id"],
            "payload[value]": str(data[metric]),
            "timestamp": str(unix(data["period_start"])),
        })  # fmt: skip
        headers = {
            "Authorization": f"Bearer {self._key}",
            "Idempotency-Key": identifier,
            "Content-Type": "application/x-www-form-urlencoded",
        }
        await self.post(self._url, body.encode(), headers)


def unix(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())
