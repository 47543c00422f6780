"""The public listener's front protocol (proxy/front.py, issue 20), keyfront as a real
process, clients as raw sockets: pipelining, heads split anywhere, what it hands over
to aiohttp's connection (bodies, POST, HTTP/1.0, malformed and oversize heads), its
deadlines and cap, and a differential run of 1,000 generated requests against the
same keyfront with the fast path off."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import random
import select
import socket
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.keys import KeySigner, new_key_id
from proxy.records import Customer, KeyRecord
from proxy.store import store_from_url

from conftest import SECRET, HttpOriginServer, KeyfrontProcess, start_keyfront

SIGNER = KeySigner("pk", {1: SECRET})
SMALL = random.Random(20).randbytes(10_000)
LARGE = random.Random(21).randbytes(24 * 1024 * 1024)  # far past any socket buffer
HEADERS, SEND = 1.0, 1.0  # seconds: short, so the tests stay fast
SLACK = 1.5


@dataclass
class Pair:
    on: KeyfrontProcess  # listener.fast_path: true
    off: KeyfrontProcess  # the same config, fast path off
    key: str


def _config(tmp: Path, origin: HttpOriginServer, fast: bool, max_connections: int) -> str:
    return f"""
store: sqlite://{tmp}/kf.db
keys: {{secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}, defaults: {{rate: 1000000/s, burst: 1000000}}}}
routes:
  - {{prefix: /http/, origin: "{origin.url}"}}
  - {{prefix: /open/, origin: "{origin.url}", auth: none}}
  - {{prefix: /files/, origin: "file://{origin.root}/", auth: none}}
cache: {{dir: {tmp}/cache-{fast}}}
client_timeouts: {{headers: {HEADERS}s, keepalive: 3s, send: {SEND}s, min_send_rate: 1KiB}}
max_connections: {max_connections}
listener: {{fast_path: {str(fast).lower()}}}
access_log: "off"
"""


def _mint(store_url: str) -> str:
    key_id = new_key_id()

    async def create() -> None:
        store = store_from_url(store_url)
        await store.open()
        try:
            await store.create_customer(Customer("acme"))
            await store.create_key(
                KeyRecord(key_id, "acme", created_at=int(time.time()), referrers=("*.example.com",))
            )
        finally:
            await store.close()

    asyncio.run(create())
    return SIGNER.mint(key_id)


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpOriginServer]:
    root = tmp_path_factory.mktemp("front-origin")
    (root / "small.bin").write_bytes(SMALL)
    (root / "large.bin").write_bytes(LARGE)
    (root / "note.txt").write_bytes(b"hello front\n")
    server = HttpOriginServer(str(root))
    server.start()
    yield server
    server.stop()


@contextlib.contextmanager
def started_pair(tmp: Path, origin: HttpOriginServer) -> Iterator[Pair]:
    """Two keyfronts on one store, each with an empty cache of its own."""
    on = start_keyfront(_config(tmp, origin, True, 50), str(tmp))
    off = start_keyfront(_config(tmp, origin, False, 50), str(tmp))
    yield Pair(on, off, _mint(f"sqlite://{tmp}/kf.db"))
    assert on.stop() == 0
    assert off.stop() == 0


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, origin: HttpOriginServer) -> Iterator[Pair]:
    with started_pair(tmp_path_factory.mktemp("front"), origin) as started:
        yield started


def connect(kf: KeyfrontProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", kf.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Reader:
    """Responses read off a socket, one at a time, without over-reading."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionError:
            return False
        self.buffer += chunk
        return bool(chunk)

    def response(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes] | None:
        """(status, headers by lower-case name, body); None if the peer closed first."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                return None
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        fields = {n.strip().lower(): v.strip() for n, _, v in (h.partition(":") for h in lines)}
        status = int(status_line.split()[1])
        length = 0 if head_only or status in (204, 304) else int(fields.get("content-length", 0))
        while len(self.buffer) < length:
            if not self._fill():
                raise AssertionError("closed mid-body")
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, fields, body


def closed_within(sock: socket.socket, limit: float) -> bool:
    started = time.monotonic()
    while (left := started + limit - time.monotonic()) > 0:
        if select.select([sock], [], [], left)[0]:
            try:
                if not sock.recv(65536):
                    return True
            except ConnectionError:
                return True
    return False


def metric(kf: KeyfrontProcess, series: str) -> float:
    with urllib.request.urlopen(f"{kf.admin_url}/metrics", timeout=10) as page:
        for line in page.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
    return 0.0


def keyed(pair: Pair, path: str = "small.bin") -> str:
    return f"/http/{path}?key={pair.key}"


def get(target: str, extra: str = "", method: str = "GET") -> bytes:
    return f"{method} {target} HTTP/1.1\r\nHost: x\r\nReferer: https://a.example.com/\r\n{extra}\r\n".encode()


# --- pipelining and framing -------------------------------------------------------------


def test_a_hundred_pipelined_requests_in_one_write_are_answered_in_order(pair: Pair) -> None:
    paths = [keyed(pair), "/open/note.txt", keyed(pair, "nope.bin"), "/open/small.bin"]
    requests = [(paths[i % 4], f"req-{i:04d}") for i in range(100)]
    with connect(pair.on) as sock:
        sock.sendall(b"".join(get(p, f"X-Request-Id: {rid}\r\n") for p, rid in requests))
        reader = Reader(sock)
        for index, (_, rid) in enumerate(requests):
            answer = reader.response()
            assert answer is not None, f"closed before response {index}"
            status, headers, body = answer
            assert headers["x-request-id"] == rid
            expected = {0: (200, SMALL), 1: (200, b"hello front\n"), 3: (200, SMALL)}
            if index % 4 == 2:
                assert status == 404
            else:
                assert (status, body) == expected[index % 4]


def test_a_request_split_at_every_byte_is_answered(pair: Pair) -> None:
    request = get(keyed(pair))
    with connect(pair.on) as sock:
        reader = Reader(sock)
        for cut in range(1, len(request)):
            sock.sendall(request[:cut])
            time.sleep(0.001)
            sock.sendall(request[cut:])
            answer = reader.response()
            assert answer is not None and answer[0] == 200 and answer[2] == SMALL, cut


def test_head_answers_headers_only_and_the_next_request_follows(pair: Pair) -> None:
    with connect(pair.on) as sock:
        sock.sendall(get(keyed(pair), method="HEAD") + get("/open/note.txt"))
        reader = Reader(sock)
        head = reader.response(head_only=True)
        assert head is not None and head[0] == 200 and head[1]["content-length"] == "10000"
        assert head[1]["server"] == "keyfront"
        answer = reader.response()
        assert answer is not None and answer[0] == 200 and answer[2] == b"hello front\n"


def test_bodies_and_post_are_handed_over_and_the_next_request_answered(pair: Pair) -> None:
    with connect(pair.on) as sock:
        body_get = get("/open/note.txt", "Content-Length: 5\r\n") + b"abcde"
        post = get("/open/note.txt", "Content-Length: 3\r\n", method="POST") + b"xyz"
        sock.sendall(get("/open/note.txt") + body_get + post + get("/open/small.bin"))
        reader = Reader(sock)
        statuses = []
        for _ in range(4):
            answer = reader.response()
            assert answer is not None
            statuses.append(answer[0])
            last = answer
        assert statuses == [200, 200, 405, 200]
        assert last[2] == SMALL


def test_http_1_0_is_handed_over_and_answered(pair: Pair) -> None:
    with connect(pair.on) as sock:
        sock.sendall(b"GET /open/note.txt HTTP/1.0\r\nHost: x\r\n\r\n")
        answer = Reader(sock).response()
        assert answer is not None and answer[0] == 200 and answer[2] == b"hello front\n"
        assert closed_within(sock, 2)


@pytest.mark.parametrize(
    "head",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /open/note.txt HTTP/1.1\r\nHost: x\r\n folded: yes\r\n\r\n",
        b"GET /open/note.txt HTTP/1.1\nHost: x\n\n",
        b"GET /open/note.txt HTTP/1.1\r\nBad Header: x\r\n\r\n",
        b"GET /open/note.txt HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
)
def test_a_malformed_head_gets_keyfronts_error_page(pair: Pair, head: bytes) -> None:
    results = []
    for kf in (pair.on, pair.off):
        with connect(kf) as sock:
            sock.sendall(head)
            answer = Reader(sock).response()
            assert answer is not None
            results.append((answer[0], answer[1].get("server"), answer[1].get("content-type")))
    assert results[0] == results[1]
    assert results[0][0] == 400 and results[0][1] == "keyfront"


def test_an_oversize_head_is_handed_over_and_a_huge_one_closed(pair: Pair) -> None:
    pad = "".join(f"X-Pad-{i}: {'a' * 1000}\r\n" for i in range(12))  # 12 KiB: over 8 KiB
    with connect(pair.on) as sock:
        sock.sendall(get("/open/note.txt", pad))
        answer = Reader(sock).response()
        assert answer is not None and answer[0] == 200
    # A head still incomplete past 64 KiB is aiohttp's connection's to close (listener.py).
    before = metric(pair.on, "keyfront_client_heads_too_large_total")
    huge = "".join(f"X-Pad-{i}: {'a' * 8000}\r\n" for i in range(10))  # 80 KiB
    with connect(pair.on) as sock:
        with contextlib.suppress(ConnectionError):
            sock.sendall(f"GET /open/note.txt HTTP/1.1\r\n{huge}".encode())
        assert closed_within(sock, 5)
    assert metric(pair.on, "keyfront_client_heads_too_large_total") == before + 1


# --- deadlines and the cap --------------------------------------------------------------


def test_a_silent_and_a_trickling_connection_close_at_the_header_deadline(pair: Pair) -> None:
    with connect(pair.on) as silent, connect(pair.on) as trickle:
        started = time.monotonic()
        trickle.sendall(b"GET /open/note.txt HTTP/1.1\r\n")
        closed = False
        while time.monotonic() - started < HEADERS + SLACK and not closed:
            try:
                trickle.sendall(b"X")
            except ConnectionError:
                closed = True
            closed = closed or bool(select.select([trickle], [], [], 0.2)[0])
        assert closed, "a trickled head outlived the header deadline"
        assert closed_within(silent, SLACK)
        assert time.monotonic() - started > HEADERS * 0.8


def test_a_client_that_stops_reading_is_cut(pair: Pair) -> None:
    before = metric(pair.on, "keyfront_client_send_timeouts_total")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", pair.on.port))
    with sock:
        sock.sendall(get("/files/large.bin"))
        deadline = time.monotonic() + SEND + 2 * SLACK
        while sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != errno.ECONNRESET:
            assert time.monotonic() < deadline, "a client that reads nothing is kept"
            time.sleep(0.05)
    assert metric(pair.on, "keyfront_client_send_timeouts_total") == before + 1


def test_the_connection_cap_refuses_past_it(tmp_path: Path, origin: HttpOriginServer) -> None:
    kf = start_keyfront(_config(tmp_path, origin, True, 3), str(tmp_path))
    try:
        held = [connect(kf) for _ in range(3)]
        for sock in held:
            sock.sendall(get("/open/note.txt"))
            assert Reader(sock).response() is not None
        with connect(kf) as extra:
            assert closed_within(extra, 2)
        assert metric(kf, "keyfront_client_connections_refused_total") == 1
        assert metric(kf, "keyfront_client_connections") == 3
        for sock in held:
            sock.close()
    finally:
        assert kf.stop() == 0


# --- the same answers with the fast path on and off -------------------------------------


def _generated(pair: Pair, count: int) -> list[tuple[bytes, bool]]:
    """`count` requests (and whether each is a HEAD) from a fixed seed."""
    rng = random.Random(2020)
    keys = [pair.key, pair.key, "", "pk1_garbage", pair.key[:-2] + "zz"]
    paths = ["/http/small.bin", "/http/note.txt", "/http/nope.bin", "/open/small.bin",
             "/open/../x", "/nowhere/x", "/open/%2e%2e/x", "/http/", "/files/note.txt"]  # fmt: skip
    methods = ["GET"] * 6 + ["HEAD", "HEAD", "OPTIONS", "POST", "DELETE"]
    extras = ["", "Range: bytes=0-99\r\n", "Range: bytes=-10\r\n", "Range: bytes=5-\r\n",
              "Range: bytes=99999999-\r\n", "Range: bytes=abc\r\n", 'If-None-Match: "nope"\r\n',
              "If-None-Match: *\r\n", "Origin: https://a.example.com\r\n", "X-Odd: \x7f\r\n",
              "Referer: https://evil.test/\r\n", "X-API-Key: {key}\r\n",
              "Authorization: Bearer {key}\r\n", "Connection: close\r\n", "Accept: */*\r\n",
              "If-Modified-Since: Thu, 01 Jan 2099 00:00:00 GMT\r\n"]  # fmt: skip
    out = []
    for _ in range(count):
        method, path, key = rng.choice(methods), rng.choice(paths), rng.choice(keys)
        target = f"{path}?key={key}" if key and rng.random() < 0.7 else path
        extra = "".join(rng.choice(extras) for _ in range(rng.randrange(3))).format(key=key)
        version = "HTTP/1.0" if rng.random() < 0.05 else "HTTP/1.1"
        head = f"{method} {target} {version}\r\nHost: x\r\nReferer: https://a.example.com/\r\n"
        out.append(((head + extra + "\r\n").encode("latin-1"), method == "HEAD"))
    return out


def _answers(kf: KeyfrontProcess, requests: list[tuple[bytes, bool]]) -> list[object]:
    answers: list[object] = []
    sock: socket.socket | None = None
    reader: Reader | None = None
    for request, head_only in requests:
        if sock is None:
            sock = connect(kf)
            reader = Reader(sock)
        assert reader is not None
        sock.sendall(request)
        answer = reader.response(head_only)
        if answer is None:
            answers.append(None)
        else:
            status, headers, body = answer
            # A generated request id is in an error body too (and in its length).
            request_id = headers.get("x-request-id", "").encode()
            if request_id and request_id in body:
                body = body.replace(request_id, b"<id>")
                headers.pop("content-length", None)
            kept = sorted((n, v) for n, v in headers.items() if n not in ("date", "x-request-id"))
            answers.append((status, kept, body))
        if answer is None or answer[1].get("connection") == "close" or b"HTTP/1.0" in request:
            sock.close()
            sock = reader = None
    if sock is not None:
        sock.close()
    return answers


def test_a_thousand_generated_requests_get_the_same_answers_with_the_fast_path_off(
    tmp_path: Path, origin: HttpOriginServer
) -> None:
    with started_pair(tmp_path, origin) as fresh:  # both caches empty: the same X-Cache
        requests = _generated(fresh, 1000)
        on, off = _answers(fresh.on, requests), _answers(fresh.off, requests)
    for index, (request, _) in enumerate(requests):
        assert on[index] == off[index], request
