"""The floor under keyfront: aiohttp's low-level `web.Server` (what keyfront's public
listener runs on) answering every request with the 10 KB object from memory, with no
check, no header beyond aiohttp's own, no file read. Whatever keyfront does costs on
top of this, so its distance to nginx says how much of the gap any keyfront change can
close (docs/dependencies.md, "The aiohttp floor"). Run as its own process:

    python -m bench.floor --port P --body FILE [--loop asyncio|uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from aiohttp import web


def make_handler(body: bytes) -> web.Server:
    async def handle(request: web.BaseRequest) -> web.Response:
        return web.Response(body=body, content_type="application/octet-stream")

    return web.Server(handle, access_log=None)


async def serve(port: int, body: bytes) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(make_handler(body), "127.0.0.1", port, backlog=2048)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", type=Path, required=True)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    body = args.body.read_bytes()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args.port, body))
    else:
        asyncio.run(serve(args.port, body))


if __name__ == "__main__":
    main()
