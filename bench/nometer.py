"""`keyfront` with usage metering switched off, for the benchmark's "metering on / off"
row only. keyfront has no setting for it (SPEC section 4 counts every request), so this
launcher replaces `UsageMeter.record` with a no-op and runs the usual command line:

    python -m bench.nometer serve -c FILE

If keyfront ever gets such a setting, `bench.run --metering-off YAML` uses it instead.
"""

from __future__ import annotations

import sys

from proxy import usage
from proxy.cli import main


def not_counted(*_args: object) -> None:
    """Count nothing: the request path without metering's per-request work."""


def patched() -> bool:
    """Whether this keyfront has the method to switch off (it may be renamed)."""
    if not hasattr(usage, "UsageMeter") or not hasattr(usage.UsageMeter, "record"):
        return False
    setattr(usage.UsageMeter, "record", not_counted)  # noqa: B010 (mypy: no method assignment)
    return True


if __name__ == "__main__":
    if not patched():
        sys.exit("bench.nometer: proxy.usage.UsageMeter.record is gone; update bench/nometer.py")
    sys.exit(main())
