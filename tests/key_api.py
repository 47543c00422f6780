"""A stand-in for an operator's key API (SPEC section 13), run as its own process by
tests/test_e2e_lookup.py: `python tests/key_api.py PORT TOKEN`.

    POST /lookup      {"key": K} with `Authorization: Bearer TOKEN`: what the test set
                      for K (default 404), counting the call per key
    PUT  /_keys/K     {"mode": ..., "record": {...}, "sleep": s}: how to answer for K
                      modes: record (200 + record), 404, 500, sleep (then the record),
                      garbage (200 + not JSON), bad (200 + a record with a bad field),
                      huge (200 + a body over 64 KiB)
    GET  /_counts/K   {"lookups": n}
    GET  /_total      {"lookups": n, "unauthorised": n, "most_in_flight": n, ...}
    POST /_total      most_in_flight starts again from the lookups in flight now

The key travels in the control URLs' path (URL-quoted): this server is the tests' own.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from aiohttp import web

ANSWERS: dict[str, dict[str, Any]] = {}
COUNTS: dict[str, int] = {}
TOTAL = {"lookups": 0, "unauthorised": 0, "in_flight": 0, "most_in_flight": 0}


async def lookup(request: web.Request) -> web.Response:
    if request.headers.get("Authorization") != f"Bearer {request.app['token']}":
        TOTAL["unauthorised"] += 1
        return web.Response(status=401)
    key = str((await request.json())["key"])
    TOTAL["lookups"] += 1
    COUNTS[key] = COUNTS.get(key, 0) + 1
    TOTAL["in_flight"] += 1
    TOTAL["most_in_flight"] = max(TOTAL["most_in_flight"], TOTAL["in_flight"])
    try:
        return await answer(ANSWERS.get(key, {"mode": "404"}))
    finally:
        TOTAL["in_flight"] -= 1


async def answer(spec: dict[str, Any]) -> web.Response:
    mode = spec["mode"]
    if mode == "sleep":
        await asyncio.sleep(float(spec.get("sleep", 5)))
    if mode in ("record", "sleep"):
        return web.json_response(spec["record"])
    if mode == "garbage":
        return web.Response(body=b'{"key_id": "k1", "customer_id": ', content_type="text/plain")
    if mode == "bad":
        return web.json_response({**spec["record"], "referer": ["example.com"]})
    if mode == "huge":
        return web.json_response({**spec["record"], "name": "x" * 70_000})
    return web.Response(status=int(mode))


async def set_answer(request: web.Request) -> web.Response:
    ANSWERS[request.match_info["key"]] = await request.json()
    return web.json_response({})


async def counts(request: web.Request) -> web.Response:
    return web.json_response({"lookups": COUNTS.get(request.match_info["key"], 0)})


async def total(request: web.Request) -> web.Response:
    return web.json_response(TOTAL)


async def restart_peak(request: web.Request) -> web.Response:
    TOTAL["most_in_flight"] = TOTAL["in_flight"]
    return web.json_response(TOTAL)


def main() -> None:
    port, token = int(sys.argv[1]), sys.argv[2]
    app = web.Application()
    app["token"] = token
    app.router.add_post("/lookup", lookup)
    app.router.add_put("/_keys/{key}", set_answer)
    app.router.add_get("/_counts/{key}", counts)
    app.router.add_get("/_total", total)
    app.router.add_post("/_total", restart_peak)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
