"""The benchmark's HTTP origin, run as its own process: `python -m bench.origin`.

    GET|HEAD /objects/<name>        a file of the objects folder (the 10 KB and 1 MB objects)
    GET|HEAD /objects/cold-<id>.bin 10 KB generated after COLD_DELAY: a fresh object whose
                                    fetch is slow enough for 1,000 requests to pile up on it
    GET|HEAD /objects/stream-2g.bin 2 GiB generated as it is sent: no disk, no memory
    GET /stats/<name>               how many requests for <name> reached the origin (JSON)

Counting fetches here, at the origin, is what the coalescing check trusts: it does not
depend on what either proxy reports about itself.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
from pathlib import Path

from aiohttp import web

COLD_DELAY = 0.2  # seconds before a cold object's headers go out
COLD_SIZE = 10 * 1024
STREAM_NAME = "stream-2g.bin"
STREAM_SIZE = 2 * 1024**3
CHUNK = 1024 * 1024

FOLDER = web.AppKey("folder", Path)
FETCHES = web.AppKey("fetches", collections.Counter[str])


async def objects(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    request.app[FETCHES][name] += 1
    if name == STREAM_NAME:
        return await _stream(request, STREAM_SIZE)
    if name.startswith("cold-"):
        await asyncio.sleep(COLD_DELAY)
        return web.Response(body=b"c" * COLD_SIZE, content_type="application/octet-stream")
    path = request.app[FOLDER] / name
    if "/" in name or not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path)


async def _stream(request: web.Request, size: int) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = size
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    chunk = bytes(CHUNK)
    for _ in range(size // CHUNK):
        await response.write(chunk)
    await response.write_eof()
    return response


async def stats(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    return web.json_response({"name": name, "fetches": request.app[FETCHES][name]})


def make_app(folder: Path) -> web.Application:
    app = web.Application()
    app[FOLDER] = folder
    app[FETCHES] = collections.Counter()
    app.router.add_get("/objects/{name}", objects)  # GET also answers HEAD
    app.router.add_get("/stats/{name}", stats)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args()
    web.run_app(make_app(args.dir), host="127.0.0.1", port=args.port, access_log=None)


if __name__ == "__main__":
    main()
