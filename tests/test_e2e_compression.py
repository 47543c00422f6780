"""Compression end to end (SPEC section 17, issue 17): keyfront as a real process in
front of a real HTTP origin and a real folder; what clients see (status, headers, the
decoded bytes), what the cache folder holds, and what usage and /metrics count."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from aiohttp import web

from proxy.codings import decode

from conftest import HttpOriginServer, KeyfrontProcess, start_keyfront


def svg(size: int, seed: int) -> bytes:
    """An SVG chart of about `size` bytes, as text as real ones are."""
    rng = random.Random(seed)
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="1200" height="600">\n']
    while sum(map(len, parts)) < size:
        x, h = rng.randrange(1200), rng.randrange(600)
        parts.append(f'<rect x="{x}" y="{600 - h}" width="2" height="{h}" class="bar"/>\n')
    parts.append("</svg>\n")
    return "".join(parts).encode()


REDBOT = shutil.which("redbot") or os.path.join(os.path.dirname(sys.executable), "redbot")
ICON = svg(10_000, 1)
SMALL = svg(300, 2)  # under compression.min_size
PNG = b"\x89PNG\r\n\x1a\n" + random.Random(3).randbytes(10_000)
GZIPPED = gzip.compress(svg(8_000, 4), mtime=0)


class CodingOrigin(HttpOriginServer):
    """conftest's origin, plus `pre/<name>`: an SVG it sends gzip-coded itself."""

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        if not path.startswith("pre/"):
            return await super()._serve(request)
        headers = {
            "Content-Type": "image/svg+xml",
            "Content-Encoding": "gzip",
            "ETag": '"pre-1"',
        }
        return web.Response(body=GZIPPED, headers=headers)


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[CodingOrigin]:
    root = tmp_path / "origin"
    root.mkdir()
    for name, body in (("icon.svg", ICON), ("small.svg", SMALL), ("pic.png", PNG)):
        (root / name).write_bytes(body)
    for i in range(4):
        (root / f"other{i}.svg").write_bytes(ICON)
    _age(root)
    server = CodingOrigin(str(root))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "folder"
    path.mkdir()
    (path / "icon.svg").write_bytes(ICON)
    _age(path)
    return path


def _age(folder: Path) -> None:
    """Files a minute old: aiohttp's file server rounds mtime up to the next second, so a
    file written now has a Last-Modified up to a second ahead of keyfront's Date, which
    REDbot reports (LM_FUTURE) on a run that crosses a second there."""
    old = time.time() - 60
    for file in folder.iterdir():
        os.utime(file, (old, old))


@pytest.fixture
def kf(tmp_path: Path, origin: CodingOrigin, folder: Path) -> Iterator[KeyfrontProcess]:
    config = f"""
store: sqlite://{tmp_path}/kf.db
keys: {{secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}, defaults: {{rate: null, burst: null}}}}
routes:
  - {{prefix: /http/, origin: "{origin.url}", auth: none}}
  - {{prefix: /raw/, origin: "{origin.url}", auth: none, compress: false}}
  - {{prefix: /keyed/, origin: "{origin.url}"}}
  - {{prefix: /files/, origin: "file://{folder}/", auth: none}}
cache: {{dir: {tmp_path}/cache, max_size: 64MiB}}
usage: {{flush_interval: 100ms}}
access_log: "off"
"""
    process = start_keyfront(config, str(tmp_path))
    yield process
    assert process.stop() == 0


def get(
    kf: KeyfrontProcess, path: str, method: str = "GET", **headers: str
) -> tuple[int, dict[str, str], bytes]:
    """One request, headers as given (no Accept-Encoding unless given), body raw."""
    conn = http.client.HTTPConnection("127.0.0.1", kf.port, timeout=10)
    try:
        conn.request(method, path, headers={k.replace("_", "-"): v for k, v in headers.items()})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def coded(
    kf: KeyfrontProcess, path: str, accept: str, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    """The first answer that has a Content-Encoding: the first request for a coding
    gets the identity while the representation is made (compression.py)."""
    deadline = time.monotonic() + 10
    while True:
        status, got, body = get(kf, path, Accept_Encoding=accept, **headers)
        if "Content-Encoding" in got or time.monotonic() > deadline:
            return status, got, body
        time.sleep(0.05)


@pytest.mark.parametrize("coding", ["br", "zstd", "gzip"])
def test_each_coding_decodes_to_the_exact_bytes(kf: KeyfrontProcess, coding: str) -> None:
    status, first, body = get(kf, "/http/icon.svg", Accept_Encoding=coding)
    assert (status, body) == (200, ICON)  # the identity, while it is made
    assert "Content-Encoding" not in first
    assert first["Vary"] == "Accept-Encoding"

    status, headers, body = coded(kf, "/http/icon.svg", coding)

    assert status == 200
    assert headers["Content-Encoding"] == coding
    assert headers["Vary"] == "Accept-Encoding"
    assert headers["X-Cache"] == "HIT"
    assert int(headers["Content-Length"]) == len(body) < len(ICON) // 3
    assert decode(body, coding) == ICON
    assert headers["ETag"] == first["ETag"][:-1] + f'-{coding}"'
    assert headers["Content-Type"] == first["Content-Type"]
    assert headers["Last-Modified"] == first["Last-Modified"]


def test_curl_decodes_what_it_negotiates(kf: KeyfrontProcess, tmp_path: Path) -> None:
    coded(kf, "/http/icon.svg", "deflate, gzip, br, zstd")  # what curl --compressed sends
    out = tmp_path / "out.svg"
    headers = subprocess.run(
        ["curl", "-sS", "--compressed", "-D", "-", "-o", str(out), f"{kf.url}/http/icon.svg"],
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout.lower()  # fmt: skip
    assert "content-encoding: br" in headers
    assert out.read_bytes() == ICON


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        ("gzip, deflate, br, zstd", "br"),  # a browser's: the configured order
        ("br;q=0.5, gzip", "gzip"),
        ("br;q=0, gzip;q=0, zstd;q=0.1", "zstd"),
        ("*", "br"),
        ("identity;q=1, gzip;q=0.5", None),
        ("deflate", None),
        ("identity;q=0", None),  # nothing acceptable: the identity anyway (RFC 9110 12.5.3)
        ("*;q=0", None),
    ],
)
def test_q_values_choose_the_coding(kf: KeyfrontProcess, accept: str, chosen: str | None) -> None:
    for coding in ("br", "zstd", "gzip"):
        coded(kf, "/http/icon.svg", coding)  # every representation made

    status, headers, body = get(kf, "/http/icon.svg", Accept_Encoding=accept)

    assert status == 200
    assert headers.get("Content-Encoding") == chosen
    assert headers["Vary"] == "Accept-Encoding"
    assert (decode(body, chosen) if chosen else body) == ICON


def test_no_accept_encoding_gets_the_identity_with_vary(kf: KeyfrontProcess) -> None:
    coded(kf, "/http/icon.svg", "br")
    status, headers, body = get(kf, "/http/icon.svg")
    assert (status, body) == (200, ICON)
    assert "Content-Encoding" not in headers
    assert headers["Vary"] == "Accept-Encoding"


def test_png_small_and_precompressed_objects_are_sent_as_they_are(kf: KeyfrontProcess) -> None:
    for _ in range(5):  # time enough for a representation, were one made
        png = get(kf, "/http/pic.png", Accept_Encoding="br, gzip")
        small = get(kf, "/http/small.svg", Accept_Encoding="br, gzip")
        pre = get(kf, "/http/pre/a.svg", Accept_Encoding="br")
        raw = get(kf, "/raw/icon.svg", Accept_Encoding="br, gzip")
        time.sleep(0.1)
    assert png[2] == PNG and "Content-Encoding" not in png[1] and "Vary" not in png[1]
    # under min_size: never coded, but its type is compressible, so it says Vary
    assert small[2] == SMALL and "Content-Encoding" not in small[1]
    # coded by the origin: passed on as it came, never coded twice
    assert pre[2] == GZIPPED and pre[1]["Content-Encoding"] == "gzip" and "Vary" not in pre[1]
    assert pre[1]["ETag"] == '"pre-1"'
    # a route with compress: false
    assert raw[2] == ICON and "Content-Encoding" not in raw[1] and "Vary" not in raw[1]


def test_if_none_match_on_each_representation(kf: KeyfrontProcess) -> None:
    _, br, _ = coded(kf, "/http/icon.svg", "br")
    _, identity, _ = get(kf, "/http/icon.svg")

    status, headers, body = get(
        kf, "/http/icon.svg", Accept_Encoding="br", If_None_Match=br["ETag"]
    )
    assert (status, body) == (304, b"")
    assert headers["ETag"] == br["ETag"]
    assert headers["Vary"] == "Accept-Encoding"

    # the identity's ETag does not match the br representation: it is sent
    status, headers, body = get(
        kf, "/http/icon.svg", Accept_Encoding="br", If_None_Match=identity["ETag"]
    )
    assert status == 200 and headers["Content-Encoding"] == "br"
    assert decode(body, "br") == ICON

    status, headers, _ = get(kf, "/http/icon.svg", If_None_Match=identity["ETag"])
    assert status == 304 and headers["ETag"] == identity["ETag"]
    assert headers["Vary"] == "Accept-Encoding"


def test_a_range_is_of_the_identity(kf: KeyfrontProcess) -> None:
    _, identity, _ = get(kf, "/http/icon.svg")
    coded(kf, "/http/icon.svg", "br")

    status, headers, body = get(kf, "/http/icon.svg", Accept_Encoding="br", Range="bytes=100-199")

    assert status == 206
    assert body == ICON[100:200]
    assert "Content-Encoding" not in headers
    assert headers["ETag"] == identity["ETag"]
    assert headers["Content-Range"] == f"bytes 100-199/{len(ICON)}"
    assert headers["Vary"] == "Accept-Encoding"


def test_head_is_consistent_with_get(kf: KeyfrontProcess) -> None:
    coded(kf, "/http/icon.svg", "zstd")
    _, got, body = get(kf, "/http/icon.svg", Accept_Encoding="zstd")
    status, head, nothing = get(kf, "/http/icon.svg", "HEAD", Accept_Encoding="zstd")
    assert (status, nothing) == (200, b"")
    differ = ("Date", "X-Request-Id")
    assert {k: v for k, v in head.items() if k not in differ} == {
        k: v for k, v in got.items() if k not in differ
    }
    assert int(head["Content-Length"]) == len(body)


def _objects(tmp_path: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(tmp_path / "cache" / "objects"))


def test_purge_removes_every_representation(kf: KeyfrontProcess, tmp_path: Path) -> None:
    for coding in ("br", "zstd", "gzip"):
        coded(kf, "/http/icon.svg", coding)
    assert _objects(tmp_path) == 4  # the identity and three representations

    kf.cli("cache", "purge", "/http/icon.svg")

    assert _objects(tmp_path) == 0
    # The server hears of the CLI's purge through the store within a second (SPEC 5)
    deadline = time.monotonic() + 3
    while True:
        status, headers, body = get(kf, "/http/icon.svg", Accept_Encoding="br")
        if headers["X-Cache"] != "HIT" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert (status, headers["X-Cache"], body) == (200, "MISS", ICON)
    assert "Content-Encoding" not in headers


def test_a_purge_by_prefix_removes_them_too(kf: KeyfrontProcess, tmp_path: Path) -> None:
    for i in range(2):
        coded(kf, f"/http/other{i}.svg", "gzip")
    assert _objects(tmp_path) == 4

    kf.cli("cache", "purge", "--prefix", "/http/")

    assert _objects(tmp_path) == 0


def _scrape(kf: KeyfrontProcess) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(f"{kf.admin_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith("keyfront_compression_bytes_total{"):
            labels, value = line.split("} ")
            pairs = dict(p.split("=") for p in labels.split("{")[1].split(","))
            counts[(pairs["encoding"].strip('"'), pairs["stage"].strip('"'))] = float(value)
    return counts


def test_usage_bills_the_compressed_bytes(kf: KeyfrontProcess) -> None:
    kf.given("customers", "create", "c1")
    key = json.loads(kf.given("keys", "create", "--customer", "c1", "--json"))["key"]
    path = f"/keyed/other3.svg?key={key}"
    coded(kf, path, "br")  # the identity, then the representation
    before = _usage(kf, key)
    metrics_before = _scrape(kf)

    sent = [len(get(kf, path, Accept_Encoding="br")[2]) for _ in range(3)]

    after = _usage(kf, key, changed_from=before)
    assert after["requests"] - before["requests"] == 3
    assert after["bytes"] - before["bytes"] == sum(sent) < len(ICON)
    metrics = _scrape(kf)
    assert metrics[("br", "sent")] - metrics_before[("br", "sent")] == sum(sent)
    assert metrics[("br", "original")] - metrics_before[("br", "original")] == 3 * len(ICON)
    assert ("zstd", "sent") in metrics  # every configured coding's series, from the start


def _usage(
    kf: KeyfrontProcess, key: str, changed_from: dict[str, int] | None = None
) -> dict[str, int]:
    key_id = key.split("_")[2]
    deadline = time.monotonic() + 10
    while True:
        out = kf.cli("usage", "--key", key_id, "--by", "hour", "--json").stdout
        rows = json.loads(out)
        totals = {k: sum(r.get(k, 0) for r in rows) for k in ("requests", "bytes")}
        if changed_from is None or totals != changed_from or time.monotonic() > deadline:
            time.sleep(0.3)  # flushed every 100 ms: let a last flush land
            out = kf.cli("usage", "--key", key_id, "--by", "hour", "--json").stdout
            rows = json.loads(out)
            return {k: sum(r.get(k, 0) for r in rows) for k in ("requests", "bytes")}
        time.sleep(0.1)


def test_a_folder_file_is_coded_and_an_edit_gets_new_representations(
    kf: KeyfrontProcess, folder: Path
) -> None:
    status, headers, body = coded(kf, "/files/icon.svg", "br")
    assert (status, headers["X-Cache"], headers["Content-Encoding"]) == (200, "HIT", "br")
    assert decode(body, "br") == ICON
    assert headers["Vary"] == "Accept-Encoding"
    old_etag = headers["ETag"]

    edited = svg(12_000, 9)
    (folder / "icon.svg").write_bytes(edited)

    status, headers, body = get(kf, "/files/icon.svg", Accept_Encoding="br")
    assert status == 200
    # never the old representation: the file itself (BYPASS) until the new one is made
    assert (decode(body, "br") if "Content-Encoding" in headers else body) == edited
    status, headers, body = coded(kf, "/files/icon.svg", "br")
    assert decode(body, "br") == edited
    assert headers["ETag"] != old_etag

    status, headers, body = get(kf, "/files/icon.svg", Accept_Encoding="br", Range="bytes=0-9")
    assert (status, body, headers["Vary"]) == (206, edited[:10], "Accept-Encoding")
    assert "Content-Encoding" not in headers


@pytest.mark.parametrize("path", ["/http/icon.svg", "/files/icon.svg"])
def test_redbot_finds_nothing_bad_and_gzip_negotiation_working(
    kf: KeyfrontProcess, path: str
) -> None:
    coded(kf, path, "gzip")
    har = subprocess.run(
        [REDBOT, "-o", "har", kf.url + path], capture_output=True, text=True, check=True,
        timeout=60,
    ).stdout  # fmt: skip
    notes = {
        (message["level"], message["note_id"])
        for entry in json.loads(har)["log"]["entries"]
        for message in entry.get("_red_messages", [])
    }
    assert [note for note in notes if note[0] == "BAD"] == []
    assert ("GOOD", "CONNEG_GZIP_GOOD") in notes  # it compared the gzip answer with the identity
    assert ("GOOD", "INM_304") in notes


def test_a_changed_object_is_never_answered_with_its_old_representation(
    tmp_path: Path, origin: CodingOrigin
) -> None:
    # The identity is refilled once its ttl is past and the origin has a new version:
    # its representations were made from the old bytes, and are not sent again.
    config = f"""
store: sqlite://{tmp_path}/kf2.db
keys: {{secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}}}
routes: [{{prefix: /http/, origin: "{origin.url}", auth: none}}]
cache: {{dir: {tmp_path}/cache2, ttl: 1s, stale_while_revalidate: 0s}}
access_log: "off"
"""
    kf = start_keyfront(config, str(tmp_path))
    try:
        _, old, body = coded(kf, "/http/other0.svg", "br")
        assert decode(body, "br") == ICON
        changed = svg(11_000, 5)
        Path(origin.root, "other0.svg").write_bytes(changed)
        time.sleep(1.2)

        status, headers, body = get(kf, "/http/other0.svg", Accept_Encoding="br")
        assert (status, headers["X-Cache"], body) == (200, "MISS", changed)
        _, new, body = coded(kf, "/http/other0.svg", "br")
        assert decode(body, "br") == changed
        assert new["ETag"] != old["ETag"]
    finally:
        assert kf.stop() == 0


def test_worker_processes_make_one_representation_and_agree(
    tmp_path: Path, origin: CodingOrigin
) -> None:
    config = f"""
store: sqlite://{tmp_path}/kf3.db
keys: {{secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}}}
routes: [{{prefix: /http/, origin: "{origin.url}", auth: none}}]
cache: {{dir: {tmp_path}/cache3}}
access_log: "off"
"""
    kf = start_keyfront(config, str(tmp_path), "--workers", "2")
    try:
        get(kf, "/http/icon.svg")  # stored
        with ThreadPoolExecutor(16) as pool:  # first requests on both workers at once
            first = list(
                pool.map(lambda _: get(kf, "/http/icon.svg", Accept_Encoding="br"), range(32))
            )
        assert all(status == 200 for status, _, _ in first)
        coded(kf, "/http/icon.svg", "br")
        time.sleep(0.3)
        answers = [get(kf, "/http/icon.svg", Accept_Encoding="br") for _ in range(20)]
    finally:
        assert kf.stop() == 0
    # each answer is whole: the identity, or the one representation, whichever worker
    etags = set()
    for _, headers, body in answers + first:
        assert (decode(body, "br") if "Content-Encoding" in headers else body) == ICON
        if "Content-Encoding" in headers:
            etags.add(headers["ETag"])
    assert len(etags) == 1
    assert sum(len(files) for _, _, files in os.walk(tmp_path / "cache3" / "objects")) == 2
