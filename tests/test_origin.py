"""The Origin contract (proxy/origin/), one suite run against every implementation,
then what is particular to each: folder escapes for file://, failures for http://.

The HTTP origin is a real aiohttp server over the same folder (web.FileResponse
honours Range and conditionals); misbehaving origins are raw TCP servers that say
exactly what a test needs and then nothing more."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.config import OriginTimeouts, Route
from proxy.errors import NotFound, OriginError, OriginTimeout
from proxy.origin import Origin, OriginRequest, OriginResponse, origin_from_url
from proxy.origin.file import SETTLED, SMALL_BODY, FileOrigin, content_type

from conftest import S3Server, free_port

FAST = OriginTimeouts(connect=0.3, first_byte=0.3, idle=0.3)
SMALL = b"0123456789abcdefghijklmnopqrstuvwxyz" * 10  # 360 bytes
LARGE_SIZE = 3 * 1024 * 1024 + 12345  # several chunks and an odd tail
ODD_NAME = "odd dir/name with spaces, ?#%&+;=é.txt"  # must reach an http origin intact


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("files")
    (root / "small.txt").write_bytes(SMALL)
    (root / "logo.svg").write_bytes(b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    (root / "empty.bin").write_bytes(b"")
    (root / "large.bin").write_bytes(os.urandom(LARGE_SIZE))
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "sub" / "deeper" / "data.json").write_bytes(b'{"a": 1}')
    (root / "odd dir").mkdir()
    (root / ODD_NAME).write_bytes(b"odd")
    return root


@pytest.fixture
async def http_origin_app(files: Path) -> AsyncIterator[TestServer]:
    """A real HTTP origin over `files`, adding headers S3 sends that keyfront drops."""

    async def serve(request: web.Request) -> web.StreamResponse:
        full = files / request.match_info["path"]
        if not full.is_file():
            raise web.HTTPNotFound()
        response = web.FileResponse(full)
        response.headers["Set-Cookie"] = "session=origin-secret"
        response.headers["Server"] = "OriginServer/1.0"
        response.headers["x-amz-meta-foo"] = "bar"
        return response

    app = web.Application()
    app.router.add_get("/base/{path:.*}", serve)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture(scope="module")
def s3_files(files: Path, s3_server: S3Server) -> Route:
    """`files` uploaded below a prefix of the test bucket (moto, checking signatures)."""
    s3_server.upload(files, "contract/")
    return Route("/files/", f"s3://{s3_server.bucket}/contract/", s3=s3_server.settings())


@pytest.fixture(params=["file", "http", "s3"])
async def origin(
    request: pytest.FixtureRequest, files: Path, http_origin_app: TestServer
) -> AsyncIterator[Origin]:
    http_url = str(http_origin_app.make_url("/base/"))
    url = f"file://{files}/" if request.param == "file" else http_url
    route = Route("/files/", url)
    if request.param == "s3":
        route = request.getfixturevalue("s3_files")
    opened = origin_from_url(route, FAST)
    await opened.open()
    yield opened
    await opened.close()


async def read(response: OriginResponse) -> bytes:
    """The whole body, whichever way it came, and the response closed."""
    try:
        if response.stream is None:
            return response.data or b""
        assert response.data is None
        return b"".join([chunk async for chunk in response.stream])
    finally:
        await response.close()


async def get(
    origin: Origin,
    path: str,
    range: str | None = None,
    if_none_match: str | None = None,
    if_modified_since: str | None = None,
) -> tuple[OriginResponse, bytes]:
    """GET `path` with these request headers: the response and its whole body."""
    request = OriginRequest(path, "GET", range, if_none_match, if_modified_since)
    response = await origin.fetch(request)
    return response, await read(response)


# --- the contract, for every origin -----------------------------------------------------


async def test_get_returns_the_exact_bytes_and_validators(origin: Origin) -> None:
    response, body = await get(origin, "small.txt")
    assert response.status == 200
    assert body == SMALL
    assert response.headers["Content-Length"] == str(len(SMALL))
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.headers["ETag"].startswith('"')
    assert response.headers["Last-Modified"].endswith(" GMT")
    assert "Content-Range" not in response.headers


async def test_nested_paths_and_content_types(origin: Origin) -> None:
    response, body = await get(origin, "sub/deeper/data.json")
    assert (response.status, body) == (200, b'{"a": 1}')
    assert response.headers["Content-Type"].startswith("application/json")
    response, _ = await get(origin, "logo.svg")
    assert response.headers["Content-Type"] == "image/svg+xml"


async def test_any_character_in_a_name_reaches_the_object(origin: Origin) -> None:
    response, body = await get(origin, ODD_NAME)
    assert (response.status, body) == (200, b"odd")


async def test_empty_object(origin: Origin) -> None:
    response, body = await get(origin, "empty.bin")
    assert (response.status, body, response.headers["Content-Length"]) == (200, b"", "0")


async def test_head_has_the_headers_of_get_and_no_body(origin: Origin) -> None:
    full, _ = await get(origin, "small.txt")
    head = await origin.fetch(OriginRequest("small.txt", "HEAD"))
    await head.close()
    assert head.status == 200
    assert head.data is None and head.stream is None
    for name in ("Content-Length", "Content-Type", "ETag", "Last-Modified"):
        assert head.headers[name] == full.headers[name]


async def test_head_of_a_range(origin: Origin) -> None:
    head = await origin.fetch(OriginRequest("small.txt", "HEAD", range="bytes=0-9"))
    await head.close()
    assert head.status == 206
    assert head.data is None and head.stream is None
    assert head.headers["Content-Length"] == "10"
    assert head.headers["Content-Range"] == f"bytes 0-9/{len(SMALL)}"


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=10-19", 10, 19),
        ("bytes=-7", len(SMALL) - 7, len(SMALL) - 1),  # suffix
        ("bytes=350-", 350, len(SMALL) - 1),  # open
        ("bytes=300-100000", 300, len(SMALL) - 1),  # clipped
    ],
)
async def test_range_answers_206_with_those_bytes(
    origin: Origin, header: str, start: int, end: int
) -> None:
    response, body = await get(origin, "small.txt", range=header)
    assert response.status == 206
    assert body == SMALL[start : end + 1]
    assert response.headers["Content-Range"] == f"bytes {start}-{end}/{len(SMALL)}"
    assert response.headers["Content-Length"] == str(end - start + 1)


@pytest.mark.parametrize("header", ["bytes=360-", "bytes=1000-2000"])
async def test_unsatisfiable_range_answers_416(origin: Origin, header: str) -> None:
    response, body = await get(origin, "small.txt", range=header)
    assert response.status == 416
    assert response.headers["Content-Range"] == f"bytes */{len(SMALL)}"
    assert body == b""


@pytest.mark.parametrize("header", ["bytes=0-1,5-9", "bytes=9-2", "bytes=x-y", "pages=1-2"])
async def test_malformed_or_multiple_ranges_answer_200_in_full(origin: Origin, header: str) -> None:
    response, body = await get(origin, "small.txt", range=header)
    assert (response.status, body) == (200, SMALL)


async def test_if_none_match_with_the_etag_answers_304(origin: Origin) -> None:
    first, _ = await get(origin, "small.txt")
    etag = first.headers["ETag"]
    response, body = await get(origin, "small.txt", if_none_match=etag)
    assert (response.status, body) == (304, b"")
    assert response.headers["ETag"] == etag
    assert "Content-Length" not in response.headers
    response, _ = await get(origin, "small.txt", if_none_match=f'"other", W/{etag}')
    assert response.status == 304


async def test_if_none_match_takes_precedence_over_range(origin: Origin) -> None:
    first, _ = await get(origin, "small.txt")
    response, _ = await get(
        origin, "small.txt", if_none_match=first.headers["ETag"], range="bytes=0-1"
    )
    assert response.status == 304


async def test_if_modified_since(origin: Origin) -> None:
    first, _ = await get(origin, "small.txt")
    last_modified = first.headers["Last-Modified"]
    response, _ = await get(origin, "small.txt", if_modified_since=last_modified)
    assert response.status == 304
    response, body = await get(
        origin, "small.txt", if_modified_since="Thu, 01 Jan 1970 00:00:00 GMT"
    )
    assert (response.status, body) == (200, SMALL)


async def test_other_etag_answers_200(origin: Origin) -> None:
    response, body = await get(origin, "small.txt", if_none_match='"something-else"')
    assert (response.status, body) == (200, SMALL)


@pytest.mark.parametrize("path", ["missing.txt", "sub/missing.json", "nowhere/at/all"])
async def test_missing_object_is_not_found(origin: Origin, path: str) -> None:
    with pytest.raises(NotFound):
        await origin.fetch(OriginRequest(path))


async def test_large_object_streams_byte_exact_in_bounded_chunks(
    origin: Origin, files: Path
) -> None:
    response = await origin.fetch(OriginRequest("large.bin"))
    assert response.status == 200 and response.stream is not None
    assert response.headers["Content-Length"] == str(LARGE_SIZE)
    chunks = [chunk async for chunk in response.stream]
    await response.close()
    assert b"".join(chunks) == (files / "large.bin").read_bytes()
    assert max(len(chunk) for chunk in chunks) <= 256 * 1024


async def test_large_range_streams_too(origin: Origin, files: Path) -> None:
    response, body = await get(origin, "large.bin", range="bytes=1000-2000999")
    assert response.status == 206
    assert body == (files / "large.bin").read_bytes()[1000:2001000]


async def test_abandoned_stream_can_be_closed(origin: Origin) -> None:
    response = await origin.fetch(OriginRequest("large.bin"))
    assert response.stream is not None
    first = await anext(response.stream)
    assert first
    await response.close()
    await response.close()  # twice is harmless


# --- file:// only ---------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A served folder with neighbours outside it that must stay unreachable."""
    (tmp_path / "secret.txt").write_bytes(b"secret")
    (tmp_path / "secret-dir").mkdir()
    (tmp_path / "secret-dir" / "inner.txt").write_bytes(b"secret too")
    root = tmp_path / "served"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "file.txt").write_bytes(b"inside")
    (root / "link-out").symlink_to(tmp_path / "secret.txt")
    (root / "link-out-dir").symlink_to(tmp_path / "secret-dir")
    (root / "link-in").symlink_to(root / "sub" / "file.txt")
    (root / "link-in-dir").symlink_to("sub")
    os.mkfifo(root / "pipe")
    return root


def file_origin(root: Path) -> FileOrigin:
    return FileOrigin(Route("/files/", f"file://{root}/"))


@pytest.mark.parametrize(
    "path",
    [
        "../secret.txt",
        "sub/../../secret.txt",
        "../secret-dir/inner.txt",
        "link-out",  # a symlink out of the folder
        "link-out-dir/inner.txt",  # through a symlinked directory
        "sub",  # a directory
        "",  # the folder itself
        "pipe",  # not a regular file (and opening it must not hang)
        "sub/file.txt/x",
        "nul\0byte",
        "x" * 5000,  # name too long
    ],
)
async def test_file_origin_never_serves_outside_the_folder(folder: Path, path: str) -> None:
    with pytest.raises(NotFound):
        await file_origin(folder).fetch(OriginRequest(path))


@pytest.mark.parametrize("path", ["link-in", "link-in-dir/file.txt", "sub//file.txt"])
async def test_file_origin_follows_symlinks_inside_the_folder(folder: Path, path: str) -> None:
    response, body = await get(file_origin(folder), path)
    assert (response.status, body) == (200, b"inside")


async def test_file_origin_served_through_a_symlinked_root(folder: Path, tmp_path: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(folder)
    _, body = await get(file_origin(alias), "sub/file.txt")
    assert body == b"inside"
    with pytest.raises(NotFound):
        await file_origin(alias).fetch(OriginRequest("link-out"))


async def test_file_origin_etag_is_nginx_style(folder: Path) -> None:
    st = os.stat(folder / "sub" / "file.txt")
    response, _ = await get(file_origin(folder), "sub/file.txt")
    assert response.headers["ETag"] == f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


async def test_file_origin_never_sends_a_last_modified_in_the_future(folder: Path) -> None:
    future = time.time() + 86_400
    os.utime(folder / "sub" / "file.txt", (future, future))
    response, _ = await get(file_origin(folder), "sub/file.txt")
    modified = parsedate_to_datetime(response.headers["Last-Modified"]).timestamp()
    assert time.time() - 5 < modified <= time.time()


async def test_file_origin_small_bodies_in_memory_large_ones_streamed(files: Path) -> None:
    origin = file_origin(files)
    small = await origin.fetch(OriginRequest("small.txt"))
    assert small.data == SMALL and small.stream is None and small.release is None
    edge = await origin.fetch(OriginRequest("large.bin", range=f"bytes=0-{SMALL_BODY - 1}"))
    assert edge.data is not None and len(edge.data) == SMALL_BODY
    large = await origin.fetch(OriginRequest("large.bin", range=f"bytes=0-{SMALL_BODY}"))
    assert large.data is None and large.stream is not None
    await large.close()


async def test_file_origin_leaks_no_descriptors(files: Path) -> None:
    origin = file_origin(files)
    before = len(os.listdir("/proc/self/fd"))
    for request in [
        OriginRequest("small.txt"),
        OriginRequest("small.txt", "HEAD"),
        OriginRequest("large.bin", "HEAD"),
        OriginRequest("small.txt", range="bytes=999-"),
        OriginRequest("large.bin", if_none_match="*"),
    ]:
        await read(await origin.fetch(request))
    abandoned = await origin.fetch(OriginRequest("large.bin"))
    assert abandoned.stream is not None
    await anext(abandoned.stream)
    await abandoned.close()
    for path in ("sub", "missing", "../x"):
        with pytest.raises(NotFound):
            await origin.fetch(OriginRequest(path))
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.svg", "image/svg+xml"),
        ("a.webp", "image/webp"),
        ("a.avif", "image/avif"),
        ("a.json", "application/json"),
        ("a.PNG", "image/png"),
        ("dir.v2/a.js", "text/javascript"),
        ("a.tar.gz", "application/gzip"),
        ("noext", "application/octet-stream"),
        (".hidden", "application/octet-stream"),
        ("a.unknownext", "application/octet-stream"),
    ],
)
def test_content_type(name: str, expected: str) -> None:
    assert content_type(name) == expected


# --- http:// only ---------------------------------------------------------------------


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def raw_origin(reply: bytes = b"", hang_up: bool = False) -> AsyncIterator[str]:
    """A TCP server that reads a request, sends `reply` and then nothing more, holding
    the connection open unless `hang_up`. Yields its base URL."""
    held: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        if hang_up:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def http_origin(url: str) -> AsyncIterator[Origin]:
    origin = origin_from_url(Route("/files/", url), FAST)
    await origin.open()
    try:
        yield origin
    finally:
        await origin.close()


@contextlib.asynccontextmanager
async def app_origin(handler: Handler) -> AsyncIterator[tuple[Origin, list[web.Request]]]:
    """An origin backed by an aiohttp app answering every path with `handler`; also
    yields the requests it received."""
    seen: list[web.Request] = []

    async def recording(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", recording)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with http_origin(str(server.make_url("/"))) as origin:
            yield origin, seen
    finally:
        await server.close()


def answer(status: int, body: bytes = b"", **headers: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, headers=headers)

    return handler


@pytest.mark.parametrize("status", [500, 503, 403, 400, 302])
async def test_http_origin_failure_statuses_are_origin_errors(status: int) -> None:
    handler = answer(status, Location="http://elsewhere.invalid/")
    async with app_origin(handler) as (origin, _):
        with pytest.raises(OriginError, match=str(status)):
            await origin.fetch(OriginRequest("a.txt"))


@pytest.mark.parametrize("status", [404, 410])
async def test_http_origin_404_and_410_are_not_found(status: int) -> None:
    async with app_origin(answer(status)) as (origin, _):
        with pytest.raises(NotFound):
            await origin.fetch(OriginRequest("a.txt"))


async def test_http_origin_drops_headers_not_passed_on() -> None:
    handler = answer(
        200,
        b"hello",
        **{"Content-Type": "text/plain", "ETag": '"e1"', "Last-Modified": "x"},
        **{"Set-Cookie": "a=b", "Server": "S3", "x-amz-meta-foo": "bar", "x-amz-id-2": "id"},
        **{"Cache-Control": "public", "Access-Control-Allow-Origin": "*"},
    )
    async with app_origin(handler) as (origin, _):
        response, body = await get(origin, "a.txt")
    assert body == b"hello"
    assert set(response.headers) == {"Content-Type", "Content-Length", "ETag", "Last-Modified"}


async def test_http_origin_drops_them_from_the_file_server_too(
    http_origin_app: TestServer,
) -> None:
    async with http_origin(str(http_origin_app.make_url("/base/"))) as origin:
        response, _ = await get(origin, "small.txt")
    lowered = {name.lower() for name in response.headers}
    assert not lowered & {"set-cookie", "server", "x-amz-meta-foo", "date", "accept-ranges"}


async def test_http_origin_keeps_a_stored_content_encoding() -> None:
    handler = answer(200, b"\x1f\x8b...", **{"Content-Encoding": "gzip"})
    async with app_origin(handler) as (origin, _):
        response, body = await get(origin, "a.svgz")
    assert (response.headers["Content-Encoding"], body) == ("gzip", b"\x1f\x8b...")


async def test_http_origin_sends_identity_and_forwards_conditionals() -> None:
    async with app_origin(answer(200, b"x")) as (origin, seen):
        await get(origin, "a/b c?.txt", range="bytes=0-0", if_none_match='"e"')
        await get(origin, "a.txt", range="bytes=0-1,3-4", if_modified_since="Thu, 01 Jan 1970")
    first, second = seen
    assert first.raw_path == "/a/b%20c%3F.txt"
    assert first.headers["Accept-Encoding"] == "identity"
    assert first.headers["Range"] == "bytes=0-0"
    assert first.headers["If-None-Match"] == '"e"'
    assert "Range" not in second.headers  # several ranges: the whole object instead
    assert second.headers["If-Modified-Since"] == "Thu, 01 Jan 1970"
    assert "Cookie" not in second.headers


async def test_http_origin_does_not_keep_cookies() -> None:
    async with app_origin(answer(200, b"x", **{"Set-Cookie": "a=b; Path=/"})) as (origin, seen):
        await get(origin, "one")
        await get(origin, "two")
    assert "Cookie" not in seen[1].headers


async def test_http_origin_that_never_answers_times_out_at_first_byte() -> None:
    async with raw_origin() as url, http_origin(url) as origin:
        started = time.monotonic()
        with pytest.raises(OriginTimeout):
            await origin.fetch(OriginRequest("a.txt"))
    assert time.monotonic() - started < FAST.first_byte + 0.5


async def test_http_origin_on_a_closed_port_is_an_origin_error() -> None:
    async with http_origin(f"http://127.0.0.1:{free_port()}/") as origin:
        with pytest.raises(OriginError):
            await origin.fetch(OriginRequest("a.txt"))
        with pytest.raises(OriginError):
            await origin.ping()


async def test_http_origin_that_answers_garbage_is_an_origin_error() -> None:
    garbage = b"NOT HTTP AT ALL\r\n\r\n"
    async with raw_origin(garbage, hang_up=True) as url, http_origin(url) as origin:
        with pytest.raises(OriginError):
            await origin.fetch(OriginRequest("a.txt"))


HEAD_OF_1_MB = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Length: 1048576\r\n\r\n" + b"x" * 100_000
)


async def test_http_origin_stalling_mid_body_times_out_in_the_stream() -> None:
    async with raw_origin(HEAD_OF_1_MB) as url, http_origin(url) as origin:
        response = await origin.fetch(OriginRequest("big.bin"))
        assert response.status == 200 and response.stream is not None
        received = 0
        started = time.monotonic()
        with pytest.raises(OriginTimeout):
            async for chunk in response.stream:
                received += len(chunk)
        await response.close()
    assert received == 100_000
    assert time.monotonic() - started < FAST.idle + 0.5


async def test_http_origin_cut_mid_body_is_an_origin_error_in_the_stream() -> None:
    async with raw_origin(HEAD_OF_1_MB, hang_up=True) as url, http_origin(url) as origin:
        response = await origin.fetch(OriginRequest("big.bin"))
        assert response.stream is not None
        with pytest.raises(OriginError):
            async for _ in response.stream:
                pass
        await response.close()


async def test_http_origin_short_small_body_is_an_origin_error() -> None:
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this"
    async with raw_origin(reply, hang_up=True) as url, http_origin(url) as origin:
        with pytest.raises(OriginError):
            await origin.fetch(OriginRequest("small.bin"))


async def test_http_origin_ping() -> None:
    async with app_origin(answer(403)) as (origin, seen):
        await origin.ping()  # any HTTP answer means reachable
    assert seen[0].method == "HEAD"
    async with raw_origin() as url, http_origin(url) as origin:
        with pytest.raises(OriginError):
            await origin.ping()  # a timeout is unreachable too, as OriginError


async def test_http_origin_reuses_connections() -> None:
    peers: set[object] = set()

    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        return web.Response(body=b"x" * 100)

    async with app_origin(handler) as (origin, _):
        for _ in range(5):
            await get(origin, "a")
    assert len(peers) == 1


# --- the file origin's memory tier (issue 14 item 3) ------------------------------------


def _settled(path: Path, body: bytes) -> None:
    """A file unchanged for the second the file origin waits before holding it."""
    path.write_bytes(body)
    past = time.time() - 3600
    os.utime(path, (past, past))
    time.sleep(SETTLED + 0.05)


async def test_a_held_file_is_read_again_after_any_change(tmp_path: Path) -> None:
    origin = file_origin(tmp_path)
    path = tmp_path / "held.txt"
    _settled(path, b"one")
    for _ in range(2):  # the second answer comes from memory
        assert (await origin.fetch(OriginRequest("held.txt"))).data == b"one"
    stat_before = path.stat()
    path.write_bytes(b"two")  # same size; then the mtime put back as it was
    os.utime(path, ns=(stat_before.st_atime_ns, stat_before.st_mtime_ns))
    assert (await origin.fetch(OriginRequest("held.txt"))).data == b"two"  # ctime moved
    path.chmod(0)
    if os.geteuid() != 0:  # root reads anything
        with pytest.raises(NotFound):
            await origin.fetch(OriginRequest("held.txt"))
    path.chmod(0o644)
    path.unlink()
    (tmp_path / "held.txt").symlink_to("/etc/hostname")  # out of the folder now
    with pytest.raises(NotFound):
        await origin.fetch(OriginRequest("held.txt"))


async def test_held_files_answer_ranges_and_conditionals(tmp_path: Path) -> None:
    origin = file_origin(tmp_path)
    _settled(tmp_path / "r.txt", b"0123456789")
    first = await origin.fetch(OriginRequest("r.txt"))
    etag = first.headers["ETag"]
    held = await origin.fetch(OriginRequest("r.txt", range="bytes=2-4", if_range=etag))
    assert (held.status, held.data, held.headers["Content-Range"]) == (206, b"234", "bytes 2-4/10")
    assert (await origin.fetch(OriginRequest("r.txt", if_none_match=etag))).status == 304
    assert (await origin.fetch(OriginRequest("r.txt", if_match='"other"'))).status == 412
