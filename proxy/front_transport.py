"""The transport a fast-path request sees (`request.transport`, and through it
aiohttp's StreamWriter): the connection's own, except that every write first flushes
the answers the front protocol holds back to write them together (front.py). A
handler that writes itself — a head and `os.sendfile`, a stream — can then never
overtake the answer to an earlier request of the same read."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any


class Ordered(asyncio.Transport):
    """`raw`, with `flush` called before anything is written to it or measured of it."""

    __slots__ = ("_flush", "_raw")

    def __init__(self, raw: asyncio.Transport, flush: Callable[[], None]) -> None:
        super().__init__()
        self._raw = raw
        self._flush = flush

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._flush()
        self._raw.write(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self._flush()
        self._raw.writelines(list_of_data)

    def get_write_buffer_size(self) -> int:
        self._flush()  # a caller about to write past the transport (sendfile) asks this
        return self._raw.get_write_buffer_size()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._raw.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._raw.is_closing()

    def close(self) -> None:
        self._flush()
        self._raw.close()

    def abort(self) -> None:
        self._raw.abort()

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    def is_reading(self) -> bool:
        return self._raw.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._raw.get_write_buffer_limits()

    def can_write_eof(self) -> bool:
        return self._raw.can_write_eof()

    def write_eof(self) -> None:
        self._flush()
        self._raw.write_eof()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._raw.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._raw.get_protocol()
