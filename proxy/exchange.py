"""What the pipeline's steps share about one request: the route it targets and the
Exchange that carries its state down the pipeline to delivery, the log and the counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from .cached_key import CachedKey
from .config import Route
from .origin import Origin
from .routing import key_space
from .xcache import XCache

SERVER = "keyfront"  # not aiohttp's default, which names its and Python's versions


@dataclass(frozen=True, slots=True)
class Target:
    """A configured route and its origin; `key_space` starts its cache keys."""

    route: Route
    origin: Origin
    key_space: str = field(init=False)
    local: bool = field(init=False)  # the origin's `local`, read once per request

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_space", key_space(self.route))
        object.__setattr__(self, "local", self.origin.local)


@dataclass(slots=True)
class Exchange:
    """One request's state on its way down the pipeline: what later steps, the
    response headers (and the access log and usage counters) need of earlier ones."""

    request: web.BaseRequest
    request_id: str
    started: float = 0.0  # monotonic
    route: str = ""  # the matched route's prefix
    path: str = ""  # the raw path, without the query (which may hold the key)
    decoded_path: str = ""  # the normalised path (check 11): what path scopes judge
    entry: CachedKey | None = None
    # The page the request came from, as the referrer check reads it: Referer, else
    # Origin unless "null"; None without either. Set with `entry`'s checks (4-8), for
    # analytics (SPEC section 15) to count without reading the headers again.
    page: str | None = None
    client_ip: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # RateLimit-*, CORS
    sent: int = 0  # body bytes handed to the transport
    cache: XCache = XCache.BYPASS  # how delivery answered (SPEC section 5)
