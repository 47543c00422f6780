"""Managing customers, keys and customer tokens: what the command line (proxy/cli) and
the admin API (proxy/admin) both do, written once (SPEC sections 2, 8 and 9).

    values.py   setting values: parsers, and the JSON settings tables with their schemas
    actions.py  find, create, change, revoke and roll records; plan caps; customer tokens
    usage.py    usage reports (SPEC section 4)

A refused action raises a ManageError; each front end renders it its own way:

    ManageError
    ├── Invalid   400 bad_request  exit 2   a bad value; names the field
    ├── Forbidden 403 forbidden    exit 1   a customer token lifting the operator's suspension
    ├── Missing   404 not_found    exit 1   no such customer, key or token
    └── Refused   409 conflict     exit 1   the id exists; a revoked key; a disabled customer
"""

from __future__ import annotations


class ManageError(Exception):
    """A management action that cannot be done: `status` and `code` for the admin
    API, `exit_code` for the command line."""

    status, code, exit_code = 400, "bad_request", 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Invalid(ManageError):
    """A bad value for `field` (a record field, or a request's parameter)."""

    status, code, exit_code = 400, "bad_request", 2

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class Forbidden(ManageError):
    status, code = 403, "forbidden"


class Missing(ManageError):
    status, code = 404, "not_found"


class Refused(ManageError):
    status, code = 409, "conflict"
