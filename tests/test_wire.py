"""proxy/wire.py's TickWrites on real sockets: one tick's writes go out together,
in order, and a cancelled handler takes only its own wait with it."""

from __future__ import annotations

import asyncio

from proxy.wire import TickWrites


async def test_a_tick_writes_in_order_and_survives_a_cancelled_waiter() -> None:
    received: list[bytes] = []
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.readexactly(6))
        if len(received) == 2:
            done.set()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    (_, one), (_, two) = [await asyncio.open_connection("127.0.0.1", port) for _ in "12"]
    ticks = TickWrites()

    async def respond(writer: asyncio.StreamWriter, first: bytes, second: bytes) -> bool:
        assert await ticks.write(writer.transport, first)
        return await ticks.write(writer.transport, second)

    cancelled = asyncio.create_task(respond(one, b"one", b"ONE"))
    kept = asyncio.create_task(respond(two, b"two", b"TWO"))
    for _ in range(3):  # queued their first writes; flushed; resumed, queued the second
        await asyncio.sleep(0)
    cancelled.cancel()  # while it waits for its second write's tick
    assert await kept is True
    await asyncio.wait_for(done.wait(), 5)
    assert sorted(received) == [b"oneONE", b"twoTWO"]  # the cancelled one's bytes too
    for writer in (one, two):
        writer.close()
    server.close()
    await server.wait_closed()
