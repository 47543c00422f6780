"""What the usage export has done (SPEC section 16): `keyfront export status` and
GET /admin/v1/export show the same, from the store, whichever instance exports."""

from __future__ import annotations

from typing import Any

from ..config import AlertsConfig, ExportConfig
from ..export.events import iso
from ..store import Store

STATUS_COLUMNS = "sink type last_period_delivered waiting last_error_at last_error"


async def export_status(
    store: Store, config: ExportConfig | None, alerts: AlertsConfig | None = None
) -> list[dict[str, Any]]:
    """Per sink: the last period exported and delivered, the events waiting and the
    last error, with when: periods in ISO 8601 UTC, moments (`*_at`) in unix seconds as
    every timestamp of the CLI and admin API. The alerts' outbox (sink `alerts`, type
    `alerts`) last, when alerts are sent. An empty list without either."""
    marks = await store.export_marks()
    passed = iso(int(marks["passed"])) if "passed" in marks else None
    sinks: list[tuple[str, str]] = [(s.name, s.type) for s in config.sinks] if config else []
    if alerts is not None and alerts.secret:
        sinks.append(("alerts", "alerts"))
    found = []
    for name, kind in sinks:
        waiting, status = await store.export_status(name)
        found.append({
            "sink": name,
            "type": kind,
            "last_period_exported": passed if kind != "alerts" else None,
            "last_period_delivered": status.get("last_period"),
            "last_delivery_at": _seconds(status.get("delivered_at")),
            "waiting": waiting,
            "last_error": status.get("last_error"),
            "last_error_at": _seconds(status.get("last_error_at")),
        })  # fmt: skip
    return found


def _seconds(text: str | None) -> int | None:
    return int(text) if text else None
