"""What a command prints: its result as text or JSON, warnings, and failures.

One representation per field: JSON gives timestamps as unix seconds and rates as
"10/s"; text gives timestamps as ISO-8601 UTC and byte quotas as sizes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..errors import CommandFailed, ConfigError, Invalid, KeyfrontError, StoreError, UsageError
from ..manage.actions import record_json
from ..records import Customer, KeyRecord
from ..units import format_size


def failure_text(error: KeyfrontError) -> str:
    """What the command line says of an error, on stderr (it exits with the error's
    `exit_code`, errors.py). A bad value names its option, as argparse does (option
    dests are field names: `rate` is --rate)."""
    if isinstance(error, Invalid):
        return f"{_USAGE_PREFIX}argument {_option(error.field)}: {error.problem}"
    if isinstance(error, ConfigError):  # every problem of the file, one a line (issue 14)
        return "\n".join(f"config error: {line}" for line in str(error).splitlines())
    if isinstance(error, StoreError):
        return f"store error: {error}"
    return str(error)


BAD_USAGE = "bad_usage"  # --json's code for exit status 2 (argparse's errors included)
BAD_CONFIG = "bad_config"
_USAGE_PREFIX = "keyfront: error: "


def error_json(code: str, message: str, **more: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **more}}


def failure_json(error: KeyfrontError) -> dict[str, Any]:
    """What --json says of an error, on stderr (issue 15). `code` is the admin API's
    for the same error (not_found, conflict, unavailable, ...), but bad_usage for a
    bad option or value, bad_config for the config file (with every problem in
    `problems`) and failed for a command that could not be done."""
    if isinstance(error, ConfigError):
        problems = [{"field": path, "problem": problem} for path, problem in error.problems]
        return error_json(BAD_CONFIG, str(error), problems=problems)
    if isinstance(error, Invalid):
        message = f"argument {_option(error.field)}: {error.problem}"
        return error_json(BAD_USAGE, message, field=error.field)
    if isinstance(error, UsageError):
        return error_json(BAD_USAGE, error.message.removeprefix(_USAGE_PREFIX))
    if isinstance(error, CommandFailed):
        return error_json("failed", error.message)
    return error_json(error.code, str(error) if isinstance(error, StoreError) else error.message)


def _option(field: str) -> str:
    return f"--{field.replace('_', '-')}"


@dataclass(frozen=True, slots=True)
class Output:
    """A command's result: `data` is what --json prints, `text` what people read."""

    data: Any
    text: str
    exit_code: int = 0  # 1: done in part (an import with bad rows)


def emit(output: Output, as_json: bool) -> None:
    print(json.dumps(output.data, indent=2) if as_json else output.text)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def record_output(record: Customer | KeyRecord, reveal_secret: bool = False) -> Output:
    data = record_json(record, reveal_secret)
    return Output(data, fields_text(data))


def value_text(name: str, value: Any) -> str:
    """One field's value for people, chosen by the field's name."""
    if value is None or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if name.endswith("_at"):
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if name.endswith("quota_bytes"):
        return format_size(value)
    if isinstance(value, list):
        return ", ".join(value)
    return str(value)


def fields_text(data: Mapping[str, Any]) -> str:
    width = max(map(len, data)) + 1
    return "\n".join(
        f"{name + ':':<{width}} {value_text(name, value)}" for name, value in data.items()
    )


def table(rows: Sequence[Mapping[str, Any]], names: str) -> str:
    """Left-aligned columns (`names`, space-separated) under a header line."""
    columns = names.split()
    lines = [list(columns), *([value_text(c, row[c]) for c in columns] for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    padded = (
        " ".join(cell.ljust(w + 1) for cell, w in zip(line, widths, strict=True)) for line in lines
    )
    return "\n".join(line.rstrip() for line in padded)
