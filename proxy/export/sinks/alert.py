"""The alerts' sink (SPEC section 16): each `keyfront.alert` event POSTed to its
customer's `alert_webhook`, signed per Standard Webhooks as the webhook sink signs,
with the customer's own secret derived from `alerts.secret` (webhook.customer_secret:
GET /customers/{id} and GET /me show it), webhook-id = the alert's id, stable across
retries:

    POST {alert_webhook}
    content-type: application/json
    webhook-id / webhook-timestamp / webhook-signature: v1,<base64 HMAC-SHA256>

    {"specversion": "1.0", "id": "...", "type": "keyfront.alert", "subject": "<customer>",
     "data": {"threshold": "80%", "metric": "requests", "key_id": "...",
              "customer_id": "...", "used": 8, "limit": 10, "month": "2026-12"}}

The URL was checked when it was set (manage/settings.py: https to a public host, or
http to loopback); here its name is resolved again and an address that is not global
(or not loopback, for http) is refused, so a name that now points inside the network
gets nothing (DNS is asked again when connecting, so a name that changes its answer in
between is not caught: a pinned address would need its own TLS handling). Redirects
are not followed. Such an alert is dropped with a log line; an endpoint that fails
keeps its alert in the outbox for a retry, without holding back the others.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import time
from typing import Any
from urllib.parse import urlsplit

from ..signing import customer_secret, secret_key, signature
from .base import Sink, SinkError

log = logging.getLogger("keyfront.alerts")


class AlertSink(Sink):
    batch_size = 20

    def __init__(self, secret: str, timeout: float = 10.0) -> None:
        super().__init__("alerts", timeout)
        self._secret = secret

    async def deliver(self, events: list[dict[str, Any]]) -> None:
        """Each alert to its own customer's endpoint: one endpoint that fails does not
        hold back the others' (they are `taken`; the failed ones are retried)."""
        taken: set[str] = set()
        failed: list[str] = []
        for wrapper in events:
            event = wrapper["event"]
            try:
                await self._send(wrapper["url"], event)
                taken.add(event["id"])
            except SinkError as exc:
                failed.append(str(exc))
        if failed:
            raise SinkError(f"{len(failed)} of {len(events)} alerts: {failed[0]}", frozenset(taken))

    async def _send(self, url: str, event: dict[str, Any]) -> None:
        if not await allowed(url):
            log.warning("alert %s not sent: %s resolves to a private address", event["id"], url)
            return  # never deliverable: it leaves the outbox
        body = json.dumps(event, separators=(",", ":")).encode()
        now = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": event["id"],
            "webhook-timestamp": str(now),
            "webhook-signature": signature(self._key_of(event["subject"]), event["id"], now, body),
        }
        await self.post(url, body, headers)

    def _key_of(self, customer_id: str) -> bytes:
        return secret_key(customer_secret(self._secret, customer_id))


async def allowed(url: str) -> bool:
    """Whether every address the URL's host resolves to may be reached: global, or
    loopback for plain http."""
    parts = urlsplit(url)
    try:
        found = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
            type=socket.SOCK_STREAM,
        )  # fmt: skip
    except OSError as exc:
        raise SinkError(f"{parts.hostname}: {exc}") from exc
    addresses = [ipaddress.ip_address(info[4][0]) for info in found]
    if parts.scheme == "http":
        return bool(addresses) and all(a.is_loopback for a in addresses)
    return bool(addresses) and all(a.is_global for a in addresses)
