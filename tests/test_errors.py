"""The error model (proxy/errors.py, issue 14): the tree its docstring draws is the
classes' own, and the one renderer writes SPEC section 1's JSON body."""

from __future__ import annotations

import inspect
import json
import re

import pytest

from proxy import errors
from proxy.errors import (
    ConfigError,
    Conflict,
    HttpError,
    Invalid,
    KeyfrontError,
    KeyInvalid,
    Missing,
    OriginError,
    RateLimited,
    Refused,
    StoreError,
    UsageError,
    error_body,
)

ROW = re.compile(r"^    ([│├└─ ]*)(\w+) +(?:(\d{3}) (\w+)|any|-) +(\d)(?:  |$)")


def tree() -> dict[str, tuple[str | None, int | None, str | None, int]]:
    """Each class the docstring draws: (its parent in the drawing, status, code, exit)."""
    drawn: dict[str, tuple[str | None, int | None, str | None, int]] = {}
    parents: list[str] = []
    for line in (errors.__doc__ or "").splitlines():
        match = ROW.match(line)
        if match is None:
            continue
        branch, name, status, code, exit_code = match.groups()
        depth = len(branch) // 4
        parents[depth:] = [name]
        parent = parents[depth - 1] if depth else None
        drawn[name] = (parent, int(status) if status else None, code, int(exit_code))
    return drawn


def classes() -> dict[str, type[KeyfrontError]]:
    return {
        name: value
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, KeyfrontError)
    }


def test_the_docstring_draws_every_error_class_and_nothing_else() -> None:
    assert sorted(tree()) == sorted(classes())


@pytest.mark.parametrize("name", sorted(classes()))
def test_the_docstring_row_is_the_class(name: str) -> None:
    cls = classes()[name]
    parent, status, code, exit_code = tree()[name]
    assert parent == (None if cls is KeyfrontError else cls.__base__.__name__)
    assert cls.exit_code == exit_code
    if status is not None:
        assert (cls.status, cls.code) == (status, code)


def test_exit_codes_are_the_documented_ones() -> None:
    """README, SPEC section 8 and issue 15: 0 done, 1 not found, 2 bad usage or a bad
    config, 3 a conflict, 4 the store unreachable."""
    assert Missing("no such key").exit_code == 1
    assert Refused("customer acme already exists").exit_code == 3
    assert Conflict("exists").exit_code == 3
    assert StoreError("down").exit_code == 4
    assert Invalid("rate", "bad").exit_code == 2
    assert UsageError("PATH", "give one").exit_code == 2
    assert ConfigError("routes[0].origin", "required").exit_code == 2


def test_a_refusal_body_is_the_spec_shape_without_its_detail() -> None:
    body = error_body(OriginError("S3 answered HTTP 403 AccessDenied"), "req-1")
    assert body == (
        b'{"error":{"code":"origin_error","message":"the origin failed","request_id":"req-1"}}'
    )
    assert json.loads(error_body(KeyInvalid(), "x")) == {
        "error": {
            "code": "key_invalid",
            "message": "the API key is malformed or its signature is wrong",
            "request_id": "x",
        }
    }
    assert b"Retry" not in error_body(RateLimited(headers={"Retry-After": "1"}), "x")


def test_a_management_error_body_shows_its_message_and_field_escaped() -> None:
    body = json.loads(error_body(Invalid("name", 'bad "quote" \u00e9'), "r"))
    assert body == {
        "error": {
            "code": "bad_request",
            "message": 'name: bad "quote" \u00e9',
            "field": "name",
            "request_id": "r",
        }
    }
    assert json.loads(error_body(Missing("no such key: k1"), "r"))["error"]["code"] == "not_found"
    mapped = HttpError(413, "request_entity_too_large", "too big")
    assert (mapped.status, json.loads(error_body(mapped, "r"))["error"]["code"]) == (
        413,
        "request_entity_too_large",
    )


def test_a_store_error_shows_a_fixed_message_and_logs_its_detail() -> None:
    error = StoreError("redis at 10.0.0.5:6379: connection refused")
    assert json.loads(error_body(error, "r"))["error"]["message"] == "the store failed"
    assert "10.0.0.5" in str(error)
