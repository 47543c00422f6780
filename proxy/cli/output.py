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

from ..manage import Invalid, ManageError
from ..manage.actions import record_json
from ..records import Customer, KeyRecord
from ..units import format_size


class Failure(Exception):
    """The command cannot be done: the message goes to stderr, the process exits with
    `exit_code` (1, or 2 for bad usage)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def bad_option(option: str, problem: str) -> Failure:
    """A bad command-line value found after parsing (exit 2, worded like argparse's)."""
    return Failure(f"keyfront: error: argument {option}: {problem}", 2)


def failure_of(error: ManageError) -> Failure:
    """A refused action as the command line says it; a bad value names its option
    (option dests are field names: `rate` is --rate)."""
    if isinstance(error, Invalid):
        return bad_option(f"--{error.field.replace('_', '-')}", error.problem)
    return Failure(error.message, error.exit_code)


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
