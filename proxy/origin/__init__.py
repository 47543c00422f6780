"""Origins: where objects come from, chosen by the route's URL scheme (SPEC section 6).

    origin_from_url(route, timeouts)   file:///dir/   http(s)://host/base/   s3://bucket/prefix/
    origin_identity(route)             what names the objects: part of the cache key

An Origin answers one OriginRequest with an OriginResponse, or raises NotFound,
OriginError (-> 502) or OriginTimeout (-> 504). Errors while the body streams are
raised from the body iterator, after the headers went out: the pipeline then aborts
the connection (STYLE "streaming rule"). Every implementation passes the contract
suite in tests/test_origin.py.

    base.py      OriginRequest, OriginResponse and the Origin interface (a leaf)
    file.py, http.py, s3.py    the backends, each imported when a route names it
    metered.py   MeteredOrigin: any origin, timed and counted for /metrics

Conditionals: an OriginRequest carries the client's Range, If-Range, If-None-Match,
If-Modified-Since, If-Match and If-Unmodified-Since. The file origin answers them all
itself through conditional.plan; the http(s) and s3 origins forward Range with its
If-Range, If-None-Match and If-Modified-Since, and delivery.py judges their answer
with the same planner (a 206 of another version is never passed on).

What this package owns, and what it may import: reaching origins (files, HTTP, S3),
translating their failures into keyfront's errors in one place per origin, and origin
metrics (metered.py). It imports, of keyfront, only config, errors, conditional and
metrics. Backends import base.py, never this module (whose factory imports them):
imports flow one way (issue 14). It must never import the cache, delivery, pipeline,
exchange, the record store or policy: an origin knows nothing of who asks, or of
caching (a file origin's memory of small files is validated by stat on every request,
not a cache with a lifetime).
"""

from __future__ import annotations

from ..config import OriginTimeouts, Route
from .base import Origin, OriginRequest, OriginResponse, s3_endpoint_from_env

__all__ = [
    "Origin",
    "OriginRequest",
    "OriginResponse",
    "origin_from_url",
    "origin_identity",
    "s3_endpoint_from_env",
]


def origin_from_url(route: Route, timeouts: OriginTimeouts) -> Origin:
    scheme = route.origin.partition("://")[0].lower()
    if scheme == "file":
        from .file import FileOrigin

        return FileOrigin(route)
    if scheme in ("http", "https"):
        from .http import HttpOrigin

        return HttpOrigin(route, timeouts)
    if scheme == "s3":
        from .s3 import S3Origin  # imports botocore: paid only with an s3:// route

        return S3Origin(route, timeouts)
    raise ValueError(f"unknown origin scheme {scheme!r} (use file://, http://, https://, s3://)")


def origin_identity(route: Route) -> str:
    """What names the objects a route's origin holds, for the cache key (SPEC section 5:
    scheme, host or bucket, base path), so that a route pointed at another origin never
    answers with the old one's bytes (issue 14). It is the origin URL as config.load
    normalised it (absolute, ending in "/"), and for S3 the endpoint too: a bucket name
    is unique only within one endpoint. Credentials and region are left out: they
    change who may read, not what is read."""
    if route.origin.startswith(("http://", "https://")):
        scheme, rest = route.origin.split("://", 1)
        host, slash, path = rest.partition("/")
        # user:password@ is left out too: it would land in every cache file's header.
        return f"{scheme}://{host.rpartition('@')[2]}{slash}{path}"
    if not route.origin.startswith("s3://"):
        return route.origin
    endpoint = route.s3.endpoint_url if route.s3 is not None else None
    return f"{route.origin} at {endpoint or s3_endpoint_from_env() or 'aws'}"
