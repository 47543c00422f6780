"""The sink interface (SPEC section 16): deliver a batch of usage events, or raise
SinkError. A sink is one small module per billing system; the outbox (outbox.py)
owns ordering, retries and removal, so a sink only makes its request(s) and says
whether the system took them."""

from __future__ import annotations

import abc
from typing import Any

import aiohttp


class SinkError(Exception):
    """The batch was not taken (a non-2xx answer, a timeout, a refused connection):
    it stays in the outbox and is sent again after a backoff. `taken`: the ids of
    events that were taken before the failure (a sink that sends them one by one),
    which leave the outbox."""

    def __init__(self, message: str, taken: frozenset[str] = frozenset()) -> None:
        super().__init__(message)
        self.taken = taken


class Sink(abc.ABC):
    """Delivers usage events, each a CloudEvents 1.0 dict (events.py)."""

    name: str
    batch_size: int = 100  # events per `deliver` call at most

    def __init__(self, name: str, timeout: float) -> None:
        self.name = name
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @abc.abstractmethod
    async def deliver(self, events: list[dict[str, Any]]) -> None:
        """Deliver every event of `events` or raise SinkError. Delivering an event
        twice must be harmless: each request carries the event's id (or ids derived
        from it) for the system to deduplicate on."""

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        """POST and raise SinkError unless the answer is 2xx (its body is read only
        to end the exchange, 4 KiB of it kept for the error)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            # no redirects: a 3xx is a refusal, and an alert's URL (a customer's) must not
            # lead keyfront anywhere else (SSRF)
            post = self._session.post(url, data=body, headers=headers, allow_redirects=False)
            async with post as response:
                text = (await response.content.read(4096)).decode("utf-8", "replace")
                if not 200 <= response.status < 300:
                    raise SinkError(f"{url} answered {response.status}: {text[:200]}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SinkError(f"{url}: {type(exc).__name__} {exc}".strip()) from exc
