"""Purges this process announced, so that it skips their echo on the change feed.

A purge is applied locally first, then announced (manage/purge.py), and the feed hands
the announcement back to its announcer too. Applying it a second time is not harmless:
a request between the two refills the object, and the echo would drop that fresh copy
(from the folder the host's workers share, too), costing an origin fetch and turning
the purge's own reply count into a race. The announcer therefore skips one echo per
announcement. Other processes, other workers of this host included, apply it as usual.
"""

from __future__ import annotations

import time

ECHO_WAIT = 10.0  # seconds an echo is waited for: the feed delivers within 1 s (SPEC 5)
MAX_WAITING = 1024  # announcements whose echo is awaited; past it, the oldest is forgotten


class PurgeEchoes:
    """Announcements (kind, target) awaiting their echo, each with its deadline."""

    def __init__(self) -> None:
        self._waiting: dict[tuple[str, str], list[float]] = {}

    def expect(self, kind: str, target: str) -> None:
        """This process applied the purge and is about to announce it."""
        if len(self._waiting) >= MAX_WAITING:
            del self._waiting[next(iter(self._waiting))]
        self._waiting.setdefault((kind, target), []).append(time.monotonic() + ECHO_WAIT)

    def cancel(self, kind: str, target: str) -> None:
        """The announcement failed: no echo will come, and a genuine purge of the same
        target from elsewhere must not be taken for one."""
        deadlines = self._waiting.get((kind, target))
        if deadlines:
            deadlines.pop()
            if not deadlines:
                del self._waiting[(kind, target)]

    def is_echo(self, kind: str, target: str) -> bool:
        """Whether a purge from the feed is the echo of one of ours (consumed if so).
        One that arrives after ECHO_WAIT is applied: a late echo is harmless, a purge
        wrongly skipped is not."""
        deadlines = self._waiting.get((kind, target))
        if not deadlines:
            return False
        deadline = deadlines.pop(0)
        if not deadlines:
            del self._waiting[(kind, target)]
        return time.monotonic() <= deadline
