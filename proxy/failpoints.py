"""Failpoints: named places where a test makes a real keyfront process fail.

As etcd's gofail and TiKV's fail-rs do, a failpoint lets an end-to-end test drive a
real process down a path nothing else reaches on demand: here, an unexpected exception
in a request handler (issue 14: it must answer 500 `internal_error` with the request
id, be logged with its traceback and counted, and the process go on serving).

They are armed only by the environment, read once at import:

    KEYFRONT_FAILPOINTS=request.after_key,admin.list_customers

    request.after_key     public listener: a keyed request, once its key passed
                          checks 1-8 (SPEC section 1); `auth: none` routes never reach it
    admin.list_customers  admin listener: GET /admin/v1/customers; other routes do not

An armed failpoint raises `FailpointHit`, deliberately not a KeyfrontError, so that it
is handled as any bug is. Unarmed, a failpoint costs the request path nothing: the
public one is bound when the pipeline is built (no instruction is added to a request
unless it is armed), the admin one is a set look-up on a path that already awaits the
store. An unknown name in the variable stops start-up, so a typo cannot pass for a
failpoint that never fires.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import ParamSpec, TypeVar

ENV = "KEYFRONT_FAILPOINTS"
AFTER_KEY = "request.after_key"
ADMIN_LIST_CUSTOMERS = "admin.list_customers"
KNOWN = frozenset({AFTER_KEY, ADMIN_LIST_CUSTOMERS})

P = ParamSpec("P")
R = TypeVar("R")


class FailpointHit(Exception):
    """Raised by an armed failpoint: an unexpected exception, as a bug would raise."""


def _armed_by(text: str) -> frozenset[str]:
    names = frozenset(name.strip() for name in text.split(",") if name.strip())
    unknown = names - KNOWN
    if unknown:
        raise ValueError(f"{ENV}: unknown failpoint(s) {', '.join(sorted(unknown))}")
    return names


ARMED = _armed_by(os.environ.get(ENV, ""))


def armed(name: str) -> bool:
    return name in ARMED


def check(name: str) -> None:
    """Raise FailpointHit if `name` is armed: for paths that are not hot."""
    if name in ARMED:
        raise FailpointHit(name)


def after(name: str, step: Callable[P, R]) -> Callable[P, R]:
    """`step`, then FailpointHit: what a hot path binds in place of `step` at start-up,
    only when `name` is armed."""

    def failing(*args: P.args, **kwargs: P.kwargs) -> R:
        step(*args, **kwargs)
        raise FailpointHit(name)

    return failing
