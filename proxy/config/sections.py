"""Reading a config section while collecting every problem (issue 14).

A reader is `(raw YAML value, field path, config dir) -> typed value`; it returns its
value or raises ConfigError with every problem it found. A container (a section, a
list, a mapping) reads each of its items with `attempt`, which records an item's
problems and goes on, then raises them all together. `section(cls)` is the one reader
of a dataclass: it walks `dataclasses.fields(cls)` and reads each field with the reader
in its `Annotated[type, reader]` annotation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Any, get_type_hints

from ..errors import ConfigError

Reader = Callable[[Any, str, Path], Any]  # (raw YAML value, field path, config dir) -> value
Found = Iterator[tuple[str, str]]  # problems found: (field path, what is wrong)
FAILED: Any = object()  # an item that did not read; its problems are recorded
SET_BY_LOAD: Any = object()  # the reader of a field that is not in the file (Config.source)
# A secret field whose `${VAR}` is unset, loaded with need_secrets=False (load.py): an
# optional field reads it as None, keys.secrets leaves its version out.
WITHHELD: Any = object()
_KINDS = {type(None): "null", bool: "a boolean", int: "an integer", float: "a number"}
_KINDS |= {str: "a string", list: "a list", dict: "a mapping"}


@dataclass(frozen=True, slots=True)
class Unresolved:
    """A string whose `${VAR}` could not be resolved (load.py). Its problem is reported
    where a reader reaches it, so it takes its place in the file's order."""

    problems: tuple[tuple[str, str], ...]


def attempt(parse: Reader, raw: Any, at: str, base: Path, problems: list[Any]) -> Any:
    """`parse(raw)`, or FAILED with its problems added to `problems`."""
    if isinstance(raw, Unresolved):
        problems.extend(raw.problems)
        return FAILED
    try:
        return parse(raw, at, base)
    except ConfigError as exc:
        problems.extend(exc.problems)
        return FAILED


def each(
    parse: Reader, raw: list[Any], at: str, base: Path, problems: list[Any]
) -> Iterator[tuple[int, Any]]:
    """(index, value) of each item of `raw` that was read; the others' problems are
    added to `problems`."""
    for i, item in enumerate(raw):
        value = attempt(parse, item, f"{at}[{i}]", base, problems)
        if value is not FAILED:
            yield i, value


def raise_any(problems: list[tuple[str, str]]) -> None:
    if problems:
        raise ConfigError(*problems[0], *problems[1:])


@dataclass(frozen=True, slots=True)
class Check:
    """A check across fields of one section, run when all its `inputs` were read; `find`
    takes their values in that order and yields (path in the section, problem)."""

    inputs: tuple[str, ...]
    find: Callable[..., Found]


def section(cls: type[Any], *checks: Check) -> Reader:
    """The reader of dataclass `cls` from a mapping: each field read by the reader in
    its `Annotated` type, absent ones (and all of a section left empty, `admin:`) keep
    the dataclass default; a field without a default is required; an unknown name is
    an error (a typo). Problems come in the file's order, then missing fields, then
    the cross-field `checks`."""
    hints = get_type_hints(cls, include_extras=True)
    fields: dict[str, dataclasses.Field[Any]] = {}
    readers: dict[str, Reader] = {}
    for spec in dataclasses.fields(cls):
        reader = next(iter(getattr(hints[spec.name], "__metadata__", ())), None)
        if reader is None:
            raise TypeError(f"{cls.__name__}.{spec.name}: declare it Annotated[type, reader]")
        if reader is not SET_BY_LOAD:
            fields[spec.name], readers[spec.name] = spec, reader

    def parse(raw: Any, at: str, base: Path) -> Any:
        expect({} if raw is None else raw, dict, "a mapping", at)
        problems: list[tuple[str, str]] = []
        values: dict[str, Any] = {}
        for name, item in (raw or {}).items():
            if name in readers:
                values[name] = attempt(readers[name], item, join(at, name), base, problems)
            else:
                problems.append((join(at, name), _unknown(name, readers)))
        for name, spec in fields.items():
            if name not in values:
                values[name] = _default(spec)
                if values[name] is FAILED:
                    problems.append((join(at, name), "required field is missing"))
        for check in checks:
            inputs = [values[name] for name in check.inputs]
            if not any(value is FAILED for value in inputs):
                problems += [(join(at, path), problem) for path, problem in check.find(*inputs)]
        raise_any(problems)
        return cls(**values)

    return parse


def _unknown(name: object, known: Mapping[str, object]) -> str:
    hint = "".join(f" (did you mean {n}?)" for n in get_close_matches(str(name), known, 1))
    return f"unknown field{hint}; expected one of {', '.join(known)}"


def _default(spec: dataclasses.Field[Any]) -> Any:
    """The field's default, or FAILED for a required field."""
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return FAILED if spec.default is dataclasses.MISSING else spec.default


def join(at: str, name: object) -> str:
    return f"{at}.{name}" if at else str(name)


def expect(raw: Any, types: type | tuple[type, ...], what: str, at: str) -> None:
    if isinstance(raw, bool) or not isinstance(raw, types):
        raise ConfigError(at, f"expected {what}, got {_KINDS.get(type(raw), 'something else')}")


def convert(at: str, to_value: Callable[[Any], Any], raw: Any, problem: str = "") -> Any:
    """`to_value(raw)`, its ValueError turned into a ConfigError for field `at`."""
    try:
        return to_value(raw)
    except ValueError as exc:
        raise ConfigError(at, problem or str(exc)) from None
    except OverflowError:
        raise ConfigError(at, problem or f"{raw!r} is too large") from None
