"""Every way keyfront refuses or fails, modelled once.

                                 status code                exit
    KeyfrontError                500 internal_error         1  an unexpected failure: a bug
    ├── Refusal                  500 internal_error         1  a public request refused (SPEC 1)
    │   ├── BadRequest           400 bad_request            1  malformed HTTP (aiohttp's)
    │   ├── BadPath              400 bad_path               1
    │   ├── KeyMissing           401 key_missing            1
    │   ├── KeyInvalid           401 key_invalid            1
    │   ├── KeyUnknown           401 key_unknown            1
    │   ├── KeyRevoked           403 key_revoked            1
    │   ├── KeyDisabled          403 key_disabled           1  the key or its customer
    │   ├── KeyExpired           403 key_expired            1
    │   ├── LinkInvalid          403 link_invalid           1
    │   ├── LinkExpired          403 link_expired           1
    │   ├── LinkRequired         403 link_required          1
    │   ├── ReferrerNotAllowed   403 referrer_not_allowed   1
    │   ├── IpNotAllowed         403 ip_not_allowed         1
    │   ├── PathNotAllowed       403 path_not_allowed       1
    │   ├── NotFound             404 not_found              1
    │   ├── MethodNotAllowed     405 method_not_allowed     1  with Allow
    │   ├── RateLimited          429 rate_limited           1
    │   │   ├── KeyRateLimited   429 rate_limited           1  the key's bucket
    │   │   ├── ClientRateLimited 429 rate_limited          1  the key's bucket per client IP
    │   │   ├── CustomerRateLimited 429 rate_limited        1  the customer's plan bucket
    │   │   └── LookupRateLimited 429 rate_limited          1  unknown keys sent to a key API
    │   ├── QuotaExceeded        429 quota_exceeded         1
    │   │   ├── KeyQuotaExceeded 429 quota_exceeded         1  the key's monthly quota
    │   │   └── CustomerQuotaExceeded 429 quota_exceeded    1  the customer's pooled quota
    │   ├── OriginError          502 origin_error           1
    │   ├── Unavailable          503 unavailable            1
    │   └── OriginTimeout        504 origin_timeout         1
    ├── ManageError              400 bad_request            1  an action of the CLI or admin API
    │   ├── Invalid              400 bad_request            2  a bad value; names the field
    │   ├── Unauthorized         401 unauthorized           1  no or unknown admin token
    │   ├── Forbidden            403 forbidden              1  not this caller's to do
    │   ├── Missing              404 not_found              1  no such customer, key, token
    │   ├── WrongMethod          405 method_not_allowed     1  with Allow
    │   ├── BodyTimeout          408 request_timeout        1
    │   ├── Refused              409 conflict               3  the id exists; a revoked key
    │   ├── BodyTooLarge         413 payload_too_large      1
    │   ├── NotSupported         501 not_implemented        1  e.g. a purge with no cache
    │   └── HttpError            any                        1  aiohttp's own HTTP errors
    ├── CommandFailed            -                          1  the CLI cannot do it
    │   └── UsageError           -                          2  a bad command-line value
    ├── StoreError               503 unavailable            4  translated at the adapter edge
    │   └── Conflict             503 unavailable            3  a create whose id exists
    └── ConfigError              -                          2  every problem of a config, named

Each error carries what every front end shows of it: `status` and `code` (SPEC section
1's statuses and codes, on the public and the admin listener alike; "-": never an HTTP
answer), `message` (the text a client or a CLI user reads) and `exit_code` (the
command line's, SPEC section 8 and issue 15: 0 done; 1 not found, or not done for
another reason; 2 bad usage or a bad config; 3 a conflict with the store's state: the
record exists, the key is revoked, the customer disabled, a cap reached; 4 the store
did not answer), as class attributes; tests/test_errors.py holds the classes to this
table. `error_body` is the one renderer of the SPEC JSON body, for both listeners;
`main` in proxy/cli prints the error and exits with its `exit_code`.

A Refusal's and a StoreError's message are fixed: what went wrong in detail (an
origin's status and error code, a folder's path, a Redis error reply) is the `detail`
given at the raise, `str(error)`: it goes to the log, never to a client (issue 12: "S3
answered HTTP 403 AccessDenied" reached public clients). A ManageError's message is
given at the raise and shown to its caller (the operator or one customer's token).
An unexpected exception is not a KeyfrontError: each listener catches it once, logs
its traceback and answers as the 500 Refusal (SPEC section 1).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


def _body_head(code: str, message: str, field: str | None) -> str:
    """SPEC's JSON error body up to its request id: built once per class (per instance
    when the message is given at the raise). The json.dumps of a whole body was ~4 µs
    of each public refusal."""
    error = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return f'{{"error":{json.dumps(error, separators=(",", ":"))[:-1]},"request_id":'


class KeyfrontError(Exception):
    """Base of every keyfront error. Subclasses set `status`, `code`, `message` and
    `exit_code` as class attributes; ManageErrors give their message at the raise."""

    status: int = 500
    code: str = "internal_error"
    message: str = "internal error"
    exit_code: int = 1
    field: str | None = None  # the bad field or parameter, on a 400 of the admin API
    headers: Mapping[str, str] = _NO_HEADERS  # added to the error response
    body_head: str = _body_head(code, message, None)

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.body_head = _body_head(cls.code, cls.message, cls.field)


def error_body(error: KeyfrontError, request_id: str) -> bytes:
    """The SPEC JSON error body (section 1), the one renderer for both listeners:
    {"error": {"code", "message", ["field",] "request_id"}}. Never a key, nor a
    refusal's detail. `request_id` needs no escaping: RequestIds lets only
    [A-Za-z0-9._:-] through. A flood of garbage keys is answered with this, so it is a
    string join: 0.12 µs, against 0.21 µs for the lru_cache look-up it replaced."""
    return f'{error.body_head}"{request_id}"}}}}'.encode()


class Refusal(KeyfrontError):
    """A public request refused: a fixed message per class; `detail` goes to the log."""

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


# Which limit refused a 429 (issue 15): the SPEC code stays the parent's, the message
# names the limit, from this fixed set (never client input).


class KeyRateLimited(RateLimited):
    message = "rate limit exceeded: this key's rate (its token bucket)"


class ClientRateLimited(RateLimited):
    message = "rate limit exceeded: this key's rate per client IP address"


class CustomerRateLimited(RateLimited):
    message = "rate limit exceeded: the customer's plan rate, shared by all its keys"


class LookupRateLimited(RateLimited):
    """keys.external.lookup's unknown_key_rate (SPEC section 13): keys this instance
    has no answer for, looked up in the operator's key API, per client IP."""

    message = "rate limit exceeded: keys not seen before, from this client IP"


class KeyQuotaExceeded(QuotaExceeded):
    message = "monthly quota exhausted: this key's quota"


class CustomerQuotaExceeded(QuotaExceeded):
    message = "monthly quota exhausted: the customer's quota, shared by all its keys"


class OriginError(Refusal):
    status, code, message = 502, "origin_error", "the origin failed"


class Unavailable(Refusal):
    status, code, message = 503, "unavailable", "temporarily unavailable"


class OriginTimeout(Refusal):
    status, code, message = 504, "origin_timeout", "the origin did not answer in time"


class ManageError(KeyfrontError):
    """A management action that cannot be done (SPEC sections 8 and 9), shared by the
    command line and the admin API (proxy/manage); `message` is shown to the caller."""

    status, code = 400, "bad_request"

    def __init__(self, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})
        self.body_head = _body_head(self.code, message, self.field)


class Invalid(ManageError):
    """A bad value for `field` (a record field, or a request's parameter)."""

    status, code, exit_code = 400, "bad_request", 2
    field: str

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class Unauthorized(ManageError):
    status, code = 401, "unauthorized"


class Forbidden(ManageError):
    status, code = 403, "forbidden"


class Missing(ManageError):
    status, code = 404, "not_found"


class WrongMethod(ManageError):
    status, code = 405, "method_not_allowed"


class BodyTimeout(ManageError):
    status, code = 408, "request_timeout"


class Refused(ManageError):
    status, code, exit_code = 409, "conflict", 3


class BodyTooLarge(ManageError):
    status, code = 413, "payload_too_large"


class NotSupported(ManageError):
    status, code = 501, "not_implemented"


class HttpError(ManageError):
    """An HTTP error aiohttp raised itself, with its status and a code from its reason."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status, self.code = status, code
        super().__init__(message)


class CommandFailed(KeyfrontError):
    """A command that cannot be done, e.g. a file it cannot read (the CLI's)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(CommandFailed):
    """A bad command-line value found after parsing, worded like argparse's."""

    status, code, exit_code = 400, "bad_request", 2

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"keyfront: error: argument {option}: {problem}")


class StoreError(KeyfrontError):
    """The store could not answer; adapters raise it `from` the driver's exception."""

    status, code, message = 503, "unavailable", "the store failed"
    exit_code = 4  # scripts retry this one, not a 1 (issue 15)


class Conflict(StoreError):
    """A create whose id already exists."""

    exit_code = 3


class ConfigError(KeyfrontError):
    """A bad config file: every problem found in it (SPEC section 7), each a field path
    and what is wrong, e.g. `("routes[0].origin", "folder /x does not exist")`. str()
    lists them one a line; `path` and `problem` are the first's."""

    exit_code = 2

    def __init__(self, path: str, problem: str, *more: tuple[str, str]) -> None:
        self.problems = ((path, problem), *more)
        super().__init__("\n".join(f"{p}: {m}" if p else m for p, m in self.problems))
        self.path = path
        self.problem = problem
