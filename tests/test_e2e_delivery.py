"""Delivery end to end (issue 14): keyfront as a real process in front of a real HTTP
origin and a real folder, asserting what a resuming client and an editor of the folder
see (status, X-Cache, body bytes)."""

from __future__ import annotations

import http.client
import os
import random
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import pytest
from aiohttp import web

from conftest import HttpOriginServer, KeyfrontProcess, start_keyfront

OLD = random.Random(141).randbytes(100_000)  # over max_object_size: passed through
NEW = random.Random(142).randbytes(100_000)  # the same size: only the validators differ


class RangeBlindOrigin(HttpOriginServer):
    """The origin of conftest, plus `blind/<file>`: honours Range but ignores If-Range
    (as some origins do), so a range of whatever version it holds comes back."""

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        if not path.startswith("blind/"):
            return await super()._serve(request)
        full = os.path.join(self.root, path.removeprefix("blind/"))
        body = Path(full).read_bytes()
        st = os.stat(full)
        headers = {
            "ETag": f'"{st.st_mtime_ns:x}"',
            "Last-Modified": formatdate(st.st_mtime, usegmt=True),
            "Content-Type": "application/octet-stream",
        }
        wanted = request.http_range
        if request.headers.get("Range") and wanted.start is not None:
            part = body[wanted]
            end = wanted.start + len(part) - 1
            headers["Content-Range"] = f"bytes {wanted.start}-{end}/{len(body)}"
            return web.Response(status=206, body=part, headers=headers)
        return web.Response(body=body, headers=headers)


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[RangeBlindOrigin]:
    root = tmp_path / "origin"
    root.mkdir()
    (root / "big.bin").write_bytes(OLD)
    server = RangeBlindOrigin(str(root))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def keyfront(tmp_path: Path, origin: RangeBlindOrigin) -> Iterator[KeyfrontProcess]:
    folder = tmp_path / "folder"
    folder.mkdir()
    config = f"""
store: sqlite://{tmp_path}/kf.db
keys: {{secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}}}
routes:
  - {{prefix: /http/, origin: "{origin.url}", auth: none}}
  - {{prefix: /files/, origin: "file://{folder}/", auth: none}}
cache: {{dir: {tmp_path}/cache, max_size: 64MiB, max_object_size: 32KiB}}
access_log: "off"
"""
    kf = start_keyfront(config, str(tmp_path))
    yield kf
    assert kf.stop() == 0


def get(kf: KeyfrontProcess, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", kf.port, timeout=10)
    try:
        conn.request("GET", path, headers={k.replace("_", "-"): v for k, v in headers.items()})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def replace_file(path: Path, body: bytes) -> None:
    """A new version, its mtime a second on (so every validator of it changes)."""
    path.write_bytes(body)
    later = time.time() + 1
    os.utime(path, (later, later))


# --- If-Range on pass-through (issue 14 item 1) ----------------------------------------


@pytest.mark.parametrize("route", ["/http/big.bin", "/http/blind/big.bin"])
@pytest.mark.parametrize("validator", ["ETag", "Last-Modified"])
def test_a_resumed_download_of_a_changed_object_gets_the_whole_new_version(
    keyfront: KeyfrontProcess, origin: RangeBlindOrigin, route: str, validator: str
) -> None:
    status, headers, body = get(keyfront, route)
    assert (status, headers["X-Cache"], body) == (200, "BYPASS", OLD)
    replace_file(Path(origin.root, "big.bin"), NEW)
    status, headers, body = get(keyfront, route, Range="bytes=50000-", If_Range=headers[validator])
    assert status == 200 and "Content-Range" not in headers
    assert body == NEW  # never a 206 of the new version spliced onto the old one


@pytest.mark.parametrize("route", ["/http/big.bin", "/http/blind/big.bin"])
def test_a_resumed_download_of_an_unchanged_object_gets_the_rest(
    keyfront: KeyfrontProcess, route: str
) -> None:
    status, headers, body = get(keyfront, route)
    status, headers, body = get(keyfront, route, Range="bytes=50000-", If_Range=headers["ETag"])
    assert (status, headers["Content-Range"], body) == (
        206,
        "bytes 50000-99999/100000",
        OLD[50000:],
    )


# --- file:// routes straight from the folder (issue 14 item 3) --------------------------


def settle(path: Path) -> None:
    """Modified an hour ago, and unchanged for over a second: a file keyfront's file
    origin may hold in memory (origin/file.py HeldFiles), so the tests see that tier
    validated too, not only reads from disk."""
    past = time.time() - 3600
    os.utime(path, (past, past))
    time.sleep(1.05)


@pytest.mark.parametrize("size", [10_000, 300_000])  # held in memory / streamed
def test_a_file_edited_in_place_is_served_new_at_once(
    keyfront: KeyfrontProcess, tmp_path: Path, size: int
) -> None:
    path = tmp_path / "folder" / "page.bin"
    old, new = random.Random(1).randbytes(size), random.Random(2).randbytes(size)
    path.write_bytes(old)
    settle(path)
    for _ in range(3):
        status, headers, body = get(keyfront, "/files/page.bin")
        assert (status, headers["X-Cache"], body) == (200, "BYPASS", old)
    with open(path, "r+b") as f:  # in place: same inode, same size
        f.write(new)
    status, headers, body = get(keyfront, "/files/page.bin")
    assert (status, headers["X-Cache"], body) == (200, "BYPASS", new)


def test_a_file_replaced_by_rename_is_served_new_at_once(
    keyfront: KeyfrontProcess, tmp_path: Path
) -> None:
    path = tmp_path / "folder" / "page.txt"
    path.write_bytes(b"version 1")
    settle(path)
    assert get(keyfront, "/files/page.txt")[2] == b"version 1"
    assert get(keyfront, "/files/page.txt")[2] == b"version 1"
    temp = tmp_path / "folder" / ".page.txt.tmp"
    temp.write_bytes(b"version 2")
    # even with the very same mtime and size as the old file
    os.utime(temp, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))
    os.replace(temp, path)
    assert get(keyfront, "/files/page.txt")[2] == b"version 2"
    path.unlink()
    assert get(keyfront, "/files/page.txt")[0] == 404


def test_a_file_route_answers_conditionals_and_ranges_of_the_current_file(
    keyfront: KeyfrontProcess, tmp_path: Path
) -> None:
    path = tmp_path / "folder" / "doc.txt"
    path.write_bytes(b"0123456789")
    settle(path)
    etag = get(keyfront, "/files/doc.txt")[1]["ETag"]
    assert get(keyfront, "/files/doc.txt", If_None_Match=etag)[0] == 304
    assert get(keyfront, "/files/doc.txt", Range="bytes=2-4", If_Range=etag)[::2] == (206, b"234")
    path.write_bytes(b"abcdefghij")
    assert get(keyfront, "/files/doc.txt", If_None_Match=etag)[::2] == (200, b"abcdefghij")
    assert get(keyfront, "/files/doc.txt", Range="bytes=2-4", If_Range=etag)[::2] == (
        200,
        b"abcdefghij",
    )
    assert get(keyfront, "/files/doc.txt", If_Match=etag)[0] == 412
