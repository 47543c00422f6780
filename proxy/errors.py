"""Every way keyfront refuses or fails, modelled once.

    KeyfrontError
    ├── Refusal                     a request answered with an error response (SPEC section 1)
    │   ├── 500 Refusal             internal_error    (an unexpected failure: a bug)
    │   ├── 400 BadRequest          bad_request       (malformed HTTP, refused by aiohttp)
    │   ├── 400 BadPath             bad_path
    │   ├── 401 KeyMissing          key_missing
    │   ├── 401 KeyInvalid          key_invalid
    │   ├── 401 KeyUnknown          key_unknown
    │   ├── 403 KeyRevoked          key_revoked
    │   ├── 403 KeyDisabled         key_disabled      (the key or its customer)
    │   ├── 403 KeyExpired          key_expired
    │   ├── 403 LinkInvalid         link_invalid
    │   ├── 403 LinkExpired         link_expired
    │   ├── 403 LinkRequired        link_required
    │   ├── 403 ReferrerNotAllowed  referrer_not_allowed
    │   ├── 403 IpNotAllowed        ip_not_allowed
    │   ├── 403 PathNotAllowed      path_not_allowed
    │   ├── 404 NotFound            not_found
    │   ├── 405 MethodNotAllowed    method_not_allowed (with Allow)
    │   ├── 429 RateLimited         rate_limited
    │   ├── 429 QuotaExceeded       quota_exceeded
    │   ├── 502 OriginError         origin_error
    │   ├── 504 OriginTimeout       origin_timeout
    │   └── 503 Unavailable         unavailable
    ├── StoreError                  the store could not answer (translated at the adapter edge)
    │   └── Conflict                a create whose id already exists
    └── ConfigError                 a bad config: every problem, each with its field path

A Refusal carries its HTTP status, SPEC error code and a fixed public message;
`pipeline.refusal_response` is the one place that renders it. What went wrong in
detail (an origin's status and error code, a folder's path) is the `detail` given at
the raise: it goes to the log, never to the client (issue 12: "S3 answered HTTP 403
AccessDenied" reached public clients).
"""

from __future__ import annotations


class KeyfrontError(Exception):
    """Base of every keyfront error."""


class Refusal(KeyfrontError):
    status = 500
    code = "internal_error"
    message = "internal error"

    def __init__(self, detail: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail or self.message)  # str(refusal): the detail, for logs
        self.detail = detail
        self.headers = headers or {}


class BadRequest(Refusal):
    status, code, message = 400, "bad_request", "the request is not valid HTTP"


class BadPath(Refusal):
    status, code, message = 400, "bad_path", "the object path is not allowed"


class KeyMissing(Refusal):
    status, code, message = 401, "key_missing", "an API key is required"


class KeyInvalid(Refusal):
    status, code, message = 401, "key_invalid", "the API key is malformed or its signature is wrong"


class KeyUnknown(Refusal):
    status, code, message = 401, "key_unknown", "the API key does not exist"


class KeyRevoked(Refusal):
    status, code, message = 403, "key_revoked", "the API key has been revoked"


class KeyDisabled(Refusal):
    status, code, message = 403, "key_disabled", "the API key or its customer is disabled"


class KeyExpired(Refusal):
    status, code, message = 403, "key_expired", "the API key has expired"


class LinkInvalid(Refusal):
    status, code, message = 403, "link_invalid", "the signed link's signature is not valid"


class LinkExpired(Refusal):
    status, code, message = 403, "link_expired", "the signed link has expired"


class LinkRequired(Refusal):
    status, code, message = 403, "link_required", "this key only serves signed links"


class ReferrerNotAllowed(Refusal):
    status, code, message = 403, "referrer_not_allowed", "the referrer is not allowed for this key"


class IpNotAllowed(Refusal):
    status, code, message = 403, "ip_not_allowed", "the client IP is not allowed for this key"


class PathNotAllowed(Refusal):
    status, code, message = 403, "path_not_allowed", "this key may not read this path"


class NotFound(Refusal):
    status, code, message = 404, "not_found", "no such object"


class MethodNotAllowed(Refusal):
    status, code, message = 405, "method_not_allowed", "only GET, HEAD and OPTIONS are allowed"


class RateLimited(Refusal):
    status, code, message = 429, "rate_limited", "rate limit exceeded"


class QuotaExceeded(Refusal):
    status, code, message = 429, "quota_exceeded", "monthly quota exhausted"


class OriginError(Refusal):
    status, code, message = 502, "origin_error", "the origin failed"


class Unavailable(Refusal):
    status, code, message = 503, "unavailable", "temporarily unavailable"


class OriginTimeout(Refusal):
    status, code, message = 504, "origin_timeout", "the origin did not answer in time"


class StoreError(KeyfrontError):
    """The store could not answer; adapters raise it `from` the driver's exception."""


class Conflict(StoreError):
    """A create whose id already exists."""


class ConfigError(KeyfrontError):
    """A bad config file: every problem found in it (SPEC section 7), each a field path
    and what is wrong, e.g. `("routes[0].origin", "folder /x does not exist")`. str()
    lists them one a line; `path` and `problem` are the first's."""

    def __init__(self, path: str, problem: str, *more: tuple[str, str]) -> None:
        self.problems = ((path, problem), *more)
        super().__init__("\n".join(f"{p}: {m}" if p else m for p, m in self.problems))
        self.path = path
        self.problem = problem
