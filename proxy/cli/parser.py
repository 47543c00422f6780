"""What the command line is made of besides its commands: the parser class, whose
usage errors `main` renders (as JSON with --json), the exit status table that `keyfront
--help` prints, and the version (issue 15)."""

from __future__ import annotations

import argparse
import importlib.metadata
from typing import NoReturn

# The exit statuses scripts can rely on (issue 15): errors.py gives each error class
# its own; `keyfront --help` prints this table, and README "Command line" repeats it.
EXIT_CODES = """exit status:
  0  done
  1  not found (no such customer, key or token), or not done (a file it cannot read,
     an import with bad rows)
  2  bad usage: a bad option or value, conflicting options, a bad config file
  3  conflict: the record already exists, the key is revoked, the customer disabled,
     a cap is reached
  4  the store is unreachable (try again)

With --json, an error is {"error": {"code": ..., "message": ...}} on stderr and
stdout stays empty. Commands that mint or verify a key (serve, config check, keys
create|roll|import|find|invalidate) need the signing secrets (keys.secrets); the
others run with only KEYFRONT_CONFIG set."""


class BadUsage(Exception):
    """argparse's usage error, raised so that `main` renders it (as JSON with --json)."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are raised, not printed; its subparsers
    are Parsers too (argparse makes them of their parent's class)."""

    def error(self, message: str) -> NoReturn:
        raise BadUsage(self, message)


def version() -> str:
    try:
        return importlib.metadata.version("keyfront")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "unknown"
