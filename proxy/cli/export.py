"""`keyfront export status` (SPEC section 16): per sink, the last period delivered,
the events waiting and the last error, read from the store."""

from __future__ import annotations

import argparse

from ..config import Config
from ..manage.export import STATUS_COLUMNS, export_status
from ..store import Store
from .output import Output, table


async def export_status_command(args: argparse.Namespace, config: Config, store: Store) -> Output:
    rows = await export_status(store, config.export, config.alerts)
    if not rows:
        return Output(rows, "no export: the config has no `export:` sinks nor `alerts.secret`")
    return Output(rows, table(rows, STATUS_COLUMNS))
