"""X-Request-Id values (SPEC section 1), for both listeners: a leaf module, so that the
admin API does not import the request pipeline to name its request ids."""

from __future__ import annotations

import itertools
import os
import re

_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestIds:
    """X-Request-Id values: the client's when sane, else a per-process prefix and a
    counter (unique, and cheaper than a random id per request)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count(1)

    def __call__(self, incoming: str | None) -> str:
        if incoming and len(incoming) <= 128 and _SANE_REQUEST_ID.fullmatch(incoming):
            return incoming
        return f"{self._prefix}-{next(self._counter):x}"
