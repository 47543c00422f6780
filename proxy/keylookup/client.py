"""The HTTP client of the operator's key API (SPEC section 13).

    POST {url}   {"key": "<key>"}   Authorization: Bearer {token}
    200 -> the key record (answer.py)     404 -> unknown     anything else -> an error

Every way the call can go wrong becomes a `LookupFailed` here, at the adapter edge
(STYLE 6): a refused connection, a timeout, another status, a body over MAX_ANSWER, a
malformed answer. The answer is hostile input (issue 12): its size is capped before it
is read and no compressed body is accepted (a small gzip bomb could otherwise
decompress to gigabytes); redirects are not followed, so the bearer token goes nowhere
but `url`. A failure's detail names the status or the field, never the key.
"""

from __future__ import annotations

import json
from typing import Literal

import aiohttp

from ..config import LookupConfig
from ..records import Customer, KeyRecord
from .answer import MAX_ANSWER, MalformedAnswer, read_answer

Found = tuple[KeyRecord, Customer]
FailureKind = Literal["error", "timeout", "malformed"]


class LookupFailed(Exception):
    """The key API gave no usable answer. `kind` is a metrics label."""

    def __init__(self, kind: FailureKind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class KeyApi:
    """One aiohttp session to the key API, its connections bounded by `concurrency`."""

    def __init__(self, config: LookupConfig) -> None:
        self._url = config.url
        self._timeout = config.timeout
        self._concurrency = config.concurrency
        self._headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        if config.token:
            self._headers["Authorization"] = f"Bearer {config.token}"
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._concurrency, ttl_dns_cache=60)
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False, trust_env=False
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def fetch(self, key: str) -> Found | None:
        """The key's record and customer; None when the API says 404 (unknown)."""
        assert self._session is not None, "KeyApi.open() first"
        body = json.dumps({"key": key})
        try:
            async with self._session.post(
                self._url, data=body, headers=self._headers, allow_redirects=False
            ) as response:
                if response.status == 404:
                    return None
                if response.status != 200:
                    raise LookupFailed("error", f"the key API answered HTTP {response.status}")
                return read_answer(await _capped_body(response))
        except TimeoutError:
            raise LookupFailed("timeout", f"no answer within {self._timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise LookupFailed("error", f"{type(exc).__name__}: {exc}") from None
        except MalformedAnswer as exc:
            raise LookupFailed("malformed", f"malformed answer: {exc}") from None


async def _capped_body(response: aiohttp.ClientResponse) -> bytes:
    """The body, refused past MAX_ANSWER bytes (read no further) or when compressed."""
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise MalformedAnswer(f"Content-Encoding {encoding[:32]!r}: send identity")
    if (response.content_length or 0) > MAX_ANSWER:
        raise MalformedAnswer(f"larger than {MAX_ANSWER} bytes")
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_ANSWER:
        chunk = await response.content.read(MAX_ANSWER + 1 - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    raise MalformedAnswer(f"larger than {MAX_ANSWER} bytes")
