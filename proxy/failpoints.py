"""Failpoints: named places where a test makes a real keyfront process fail.

As etcd's gofail and TiKV's fail-rs do, a failpoint lets an end-to-end test drive a
real process down a path nothing else reaches on demand: here, an unexpected exception
in a request handler (issue 14: it must answer 500 `internal_error` with the request
id, be logged with its traceback and counted, and the process go on serving).

They are armed only by the environment, read once at import:

    KEYFRONT_FAILPOINTS=request.after_key,admin.list_customers,usage.flush=40

    request.after_key     public listener: a keyed request, once its key passed
                          checks 1-8 (SPEC section 1); `auth: none` routes never reach it
    admin.list_customers  admin listener: GET /admin/v1/customers; other routes do not
    usage.flush           a usage flush with counts to send fails as a store outage
                          would (proxy/usage.py): the counts stay in the process and the
                          flush is retried, so they reach the store late (issue 19: "a
                          late flush produces a delta event with a new id")

`NAME=N` fires the first N times the place is reached in each process, then never
again (a bounded outage); `NAME` alone fires every time.

An armed failpoint raises `FailpointHit`, deliberately not a KeyfrontError, so that it
is handled as any bug is; `usage.flush` raises the store's error instead, since what it
stands for is the store refusing. Unarmed, a failpoint costs the request path nothing: the
public one is bound when the pipeline is built (no instruction is added to a request
unless it is armed), the admin one is a set look-up on a path that already awaits the
store, and `usage.flush` is one look-up a flush (at most one a `usage.flush_interval`).
An unknown name, or a count that is not a whole number, stops start-up, so that a typo
cannot pass for a failpoint that never fires.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import ParamSpec, TypeVar

ENV = "KEYFRONT_FAILPOINTS"
AFTER_KEY = "request.after_key"
ADMIN_LIST_CUSTOMERS = "admin.list_customers"
USAGE_FLUSH = "usage.flush"
KNOWN = frozenset({AFTER_KEY, ADMIN_LIST_CUSTOMERS, USAGE_FLUSH})

P = ParamSpec("P")
R = TypeVar("R")


class FailpointHit(Exception):
    """Raised by an armed failpoint: an unexpected exception, as a bug would raise."""


def _armed_by(text: str) -> dict[str, int | None]:
    """Each armed name with how many more times it fires (None: every time)."""
    armed: dict[str, int | None] = {}
    for term in filter(None, (term.strip() for term in text.split(","))):
        name, _, count = term.partition("=")
        name = name.strip()
        if count and not count.strip().isdigit():
            raise ValueError(f"{ENV}: {term!r}: the count after '=' must be a whole number")
        armed[name] = int(count) if count else None
    unknown = armed.keys() - KNOWN
    if unknown:
        raise ValueError(f"{ENV}: unknown failpoint(s) {', '.join(sorted(unknown))}")
    return armed


ARMED = _armed_by(os.environ.get(ENV, ""))


def armed(name: str) -> bool:
    return name in ARMED


def fires(name: str) -> bool:
    """Whether `name` fires now, spending one of its count if it has one."""
    if name not in ARMED:
        return False
    left = ARMED[name]
    if left is None:
        return True
    if left == 0:
        return False
    ARMED[name] = left - 1
    return True


def check(name: str) -> None:
    """Raise FailpointHit if `name` fires: for paths that are not hot."""
    if fires(name):
        raise FailpointHit(name)


def after(name: str, step: Callable[P, R]) -> Callable[P, R]:
    """`step`, then FailpointHit while `name` fires: what a hot path binds in place of
    `step` at start-up, only when `name` is armed."""

    def failing(*args: P.args, **kwargs: P.kwargs) -> R:
        result = step(*args, **kwargs)
        check(name)
        return result

    return failing
