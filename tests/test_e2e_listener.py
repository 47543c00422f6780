"""The public listener against hostile clients (issue 12 items 4 and 5), keyfront as a
real process, clients as raw sockets: silent and trickling connections (slowloris),
idle keep-alive, the per-worker connection cap, and clients that stop reading their
response (with a real HTTP origin that counts the responses it is still sending).

The deadlines are server-side timers, so these bounds are wall-clock ones, with a slack
generous enough for a loaded machine yet far below the old behaviour (aiohttp's 3,630 s
keep-alive, no header deadline, no send deadline).
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import resource
import select
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from proxy.admin.listener import ADMIN_MAX_CONNECTIONS

from conftest import HttpOriginServer, KeyfrontProcess, start_keyfront

MiB = 1024 * 1024
PATTERN = bytes(range(256)) * 256  # 64 KiB; the big objects repeat it
SMALL = b"s" * 10_000
TINY = b"t" * 100
ADMIN_CAP = ADMIN_MAX_CONNECTIONS  # admin connections per worker
HEADERS, KEEPALIVE, SEND = 1.0, 3.0, 1.0  # seconds: short, so the tests stay fast
SLACK = 1.5  # seconds a loaded machine may add to a timer
ADMIN_TOKEN = "operator-token-for-the-listener-tests"


class CountingOrigin(HttpOriginServer):
    """The folder origin of conftest, plus `big/<n>`: n MiB (PATTERN repeated) written
    as fast as the reader takes them. `sending` counts those responses in flight, `cut`
    those whose reader went away before the end."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.sending = 0
        self.cut = 0

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        if not path.startswith("big/"):
            return await super()._serve(request)
        self.gets[path] = self.gets.get(path, 0) + 1
        size = int(path.removeprefix("big/")) * MiB
        response = web.StreamResponse(headers={"ETag": f'"big-{size}"'})
        response.content_type = "application/octet-stream"
        response.content_length = size
        self.sending += 1
        try:
            await response.prepare(request)
            for _ in range(size // len(PATTERN)):
                await response.write(PATTERN)
            await response.write_eof()
        except ConnectionError:
            self.cut += 1  # the reader went away
        finally:
            self.sending -= 1
        return response


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CountingOrigin]:
    root = tmp_path_factory.mktemp("listener-origin")
    (root / "small.bin").write_bytes(SMALL)
    (root / "tiny.bin").write_bytes(TINY)
    server = CountingOrigin(str(root))
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def count_afresh(origin: CountingOrigin) -> None:
    origin.gets.clear()
    origin.cut = 0


def start(
    tmp_path: Path,
    origin: CountingOrigin,
    max_connections: int = 100,
    *,
    loop: str = "uvloop",
    headers: float = HEADERS,
    send: float = SEND,
    min_send_rate: str = "512KiB",
) -> KeyfrontProcess:
    """keyfront with short client deadlines; objects over 4 MiB pass through uncached."""
    return start_keyfront(
        f"""
store: sqlite://{tmp_path}/kf.db
keys: {{secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}}}
routes:
  - {{prefix: /open/, origin: "{origin.url}", auth: none}}
cache: {{dir: {tmp_path}/cache, max_object_size: 4MiB}}
client_timeouts:
  {{headers: {headers}s, keepalive: {KEEPALIVE}s, send: {send}s, min_send_rate: {min_send_rate}}}
max_connections: {max_connections}
admin: {{token: "{ADMIN_TOKEN}"}}
event_loop: {loop}
access_log: "off"
""",
        str(tmp_path),
    )


@pytest.fixture
def keyfront(tmp_path: Path, origin: CountingOrigin) -> Iterator[KeyfrontProcess]:
    kf = start(tmp_path, origin)
    yield kf
    assert kf.stop() == 0


def connect(kf: KeyfrontProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", kf.port), timeout=10)


def closed_after(sock: socket.socket, limit: float) -> float | None:
    """Seconds until the peer closes `sock` (EOF or reset), reading and dropping what
    arrives; None if it is still open after `limit` seconds."""
    started = time.monotonic()
    while (left := started + limit - time.monotonic()) > 0:
        if select.select([sock], [], [], left)[0]:
            try:
                if not sock.recv(65536):
                    return time.monotonic() - started
            except ConnectionError:
                return time.monotonic() - started
    return None


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length, read from a raw socket without over-reading
    (a pipelined response may follow)."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        assert byte, "closed mid-head"
        head += byte
    status_line, *lines = head.decode().split("\r\n")[:-2]
    fields = {name.lower(): value.strip() for name, _, value in (h.partition(":") for h in lines)}
    body = b""
    while len(body) < int(fields["content-length"]):
        chunk = sock.recv(int(fields["content-length"]) - len(body))
        assert chunk, "closed mid-body"
        body += chunk
    return int(status_line.split()[1]), fields, body


def get(kf: KeyfrontProcess, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", kf.port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def eventually(condition: Callable[[], bool], limit: float) -> bool:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# --- item 4: slowloris --------------------------------------------------------------


def test_a_silent_connection_is_closed_at_the_header_deadline(keyfront: KeyfrontProcess) -> None:
    with connect(keyfront) as sock:
        closed = closed_after(sock, HEADERS + SLACK)
    assert closed is not None, f"a silent connection is still open after {HEADERS + SLACK}s"
    assert closed > HEADERS * 0.8


def test_a_trickled_header_is_closed_at_the_deadline_though_bytes_keep_coming(
    keyfront: KeyfrontProcess,
) -> None:
    # One byte every 0.3 s of an endless header: every byte is progress of a sort, yet
    # the deadline counts from the connection's opening and no byte moves it.
    request = b"GET /open/small.bin HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 1000
    sent, started = 0, time.monotonic()
    with connect(keyfront) as sock:
        closed = None
        while closed is None and time.monotonic() - started < HEADERS + SLACK:
            try:
                sock.sendall(request[sent : sent + 1])
                sent += 1
            except ConnectionError:
                closed = time.monotonic() - started
                break
            if closed_after(sock, 0.3) is not None:
                closed = time.monotonic() - started
    assert closed is not None, f"a trickling client is still connected after {sent} bytes"
    assert sent >= 3 and HEADERS * 0.8 < closed < HEADERS + SLACK


def test_an_idle_keep_alive_connection_is_closed_after_keepalive(
    keyfront: KeyfrontProcess,
) -> None:
    with connect(keyfront) as sock:
        time.sleep(HEADERS * 0.6)  # the header deadline counts from the connection's opening
        sock.sendall(b"GET /open/small.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        status, fields, body = read_response(sock)
        assert (status, body) == (200, SMALL)
        assert fields.get("connection", "keep-alive").lower() == "keep-alive"
        closed = closed_after(sock, KEEPALIVE + SLACK)
    assert closed is not None, f"an idle keep-alive connection is open after {KEEPALIVE + SLACK}s"
    assert closed > KEEPALIVE * 0.8  # keep-alive's own deadline, not the header one


def test_a_head_trickled_after_a_response_gets_the_header_deadline(
    keyfront: KeyfrontProcess,
) -> None:
    # Keep-alive lets a connection idle for KEEPALIVE; a head that starts trickling
    # within it still has HEADERS from its first byte, not what is left of KEEPALIVE.
    with connect(keyfront) as sock:
        sock.sendall(b"GET /open/small.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[::2] == (200, SMALL)
        answered = time.monotonic()
        time.sleep(0.2)
        closed = None
        for byte in b"GET /open/small.bin HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 100:
            try:
                sock.sendall(bytes([byte]))
            except ConnectionError:
                break
            if closed_after(sock, 0.3) is not None or time.monotonic() - answered > KEEPALIVE:
                break
        closed = time.monotonic() - answered
    assert 0.2 + HEADERS * 0.8 < closed < (0.2 + HEADERS + KEEPALIVE) / 2


def test_a_request_head_is_held_up_to_64_kib(keyfront: KeyfrontProcess) -> None:
    # aiohttp alone holds up to 128 header lines of 8 KiB each: ~1 MiB a connection.
    fields = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 8000) for i in range(12))
    with connect(keyfront) as sock:  # 96 KB of header lines, the end never sent
        sock.sendall(b"GET /open/small.bin HTTP/1.1\r\nHost: x\r\n" + fields)
        closed = closed_after(sock, HEADERS * 0.5)
    assert closed is not None, "a 96 KB request head is still being read"
    with connect(keyfront) as sock:  # 40 KB, in bounds: served
        sock.sendall(b"GET /open/small.bin HTTP/1.1\r\nHost: x\r\n" + fields[:40_000] + b"\r\n\r\n")
        assert read_response(sock)[::2] == (200, SMALL)


def test_past_the_connection_cap_new_connections_are_refused_until_slots_free(
    tmp_path: Path, origin: CountingOrigin
) -> None:
    cap = 20
    kf = start(tmp_path, origin, max_connections=cap)
    silent = [connect(kf) for _ in range(cap)]
    try:
        time.sleep(0.1)  # all accepted
        with connect(kf) as over:
            opened = time.monotonic()
            closed = closed_after(over, HEADERS * 0.5)
            assert closed is not None, f"connection {cap + 1} is held past a cap of {cap}"
        assert time.monotonic() - opened < HEADERS * 0.5  # refused, not timed out
        for sock in silent:  # the silent ones time out at the header deadline...
            assert closed_after(sock, HEADERS + SLACK) is not None
        status, _, body = get(kf, "/open/small.bin")  # ...and a real client is served
        assert (status, body) == (200, SMALL)
        assert metric(kf, "keyfront_client_connections_refused_total") == 1
    finally:
        for sock in silent:
            sock.close()
        assert kf.stop() == 0


def test_a_pipelining_keep_alive_client_is_not_affected(keyfront: KeyfrontProcess) -> None:
    # Requests 0.6 s apart over more than the header deadline in all: the header
    # deadline restarts after each response, and keep-alive is not cut short.
    request = b"GET /open/small.bin HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(keyfront) as sock:
        sock.sendall(request * 3)
        assert [read_response(sock)[2] for _ in range(3)] == [SMALL] * 3
        for _ in range(3):
            time.sleep(HEADERS * 0.6)
            sock.sendall(request)
            assert read_response(sock)[:1] == (200,)


def test_a_slow_but_steady_reader_gets_the_whole_object(
    keyfront: KeyfrontProcess, origin: CountingOrigin
) -> None:
    # The send deadline is about a client that takes nothing, not a slow one: 3 MiB
    # read at 2 MiB/s takes longer than `send` and arrives whole.
    assert get(keyfront, "/open/big/3")[2] == PATTERN * 48  # now cached
    with connect(keyfront) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.sendall(b"GET /open/big/3 HTTP/1.1\r\nHost: x\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        body = bytearray()
        started = time.monotonic()
        while len(body) < 3 * MiB:
            chunk = sock.recv(64 * 1024)
            assert chunk, f"cut after {len(body)} bytes"
            body += chunk
            time.sleep(max(0.0, started + len(body) / (2 * MiB) - time.monotonic()))  # 2 MiB/s
    assert time.monotonic() - started > SEND
    assert bytes(body) == PATTERN * 48


def test_the_open_files_limit_is_raised_to_the_hard_limit(
    tmp_path: Path, origin: CountingOrigin
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))  # keyfront inherits it
    try:
        kf = start(tmp_path, origin)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        with open(f"/proc/{kf.process.pid}/limits") as limits:
            line = next(line for line in limits if line.startswith("Max open files"))
        assert line.split()[3:5] == [str(hard)] * 2
    finally:
        assert kf.stop() == 0


# --- item 5: a client that stops reading ----------------------------------------------


def stalled_client(kf: KeyfrontProcess, path: str) -> socket.socket:
    """A client that asks for `path` through a tiny receive window and never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", kf.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


def reset_within(sock: socket.socket, limit: float) -> bool:
    """Whether keyfront resets `sock` within `limit` seconds; the test never reads it,
    so a reset shows as the socket's pending error."""
    return eventually(
        lambda: sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNRESET, limit
    )


def metric(kf: KeyfrontProcess, series: str) -> float:
    """One series' value on keyfront's /metrics page (0 if absent)."""
    with urllib.request.urlopen(f"{kf.admin_url}/metrics", timeout=10) as page:
        for line in page.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
    return 0.0


def response_bytes(kf: KeyfrontProcess) -> float:
    """The body bytes counted as sent on the /open/ route."""
    return metric(kf, 'keyfront_response_bytes_total{route="/open/"}')


def test_a_client_that_stops_reading_a_pass_through_is_cut_and_frees_the_origin(
    keyfront: KeyfrontProcess, origin: CountingOrigin
) -> None:
    # 32 MiB is over max_object_size: streamed from the origin as the client takes it.
    with stalled_client(keyfront, "/open/big/32") as sock:
        assert eventually(lambda: origin.sending == 1, 5)
        assert reset_within(sock, SEND + 2 * SLACK), "a client that reads nothing is kept"
        assert eventually(lambda: origin.sending == 0, SLACK), "its origin connection is kept"
    assert origin.cut == origin.gets["big/32"]  # the fill's look and the stream: both closed
    assert metric(keyfront, "keyfront_client_send_timeouts_total") == 1
    # Counted: what reached the client (its 4 KiB window, give or take), not what
    # keyfront had queued for it.
    assert eventually(lambda: response_bytes(keyfront) > 0, 5)
    assert response_bytes(keyfront) < 256 * 1024
    status, _, body = get(keyfront, "/open/big/32")
    assert (status, len(body), body == PATTERN * 512) == (200, 32 * MiB, True)


def test_a_client_that_stops_reading_a_miss_is_cut_and_the_fill_completes(
    keyfront: KeyfrontProcess, origin: CountingOrigin
) -> None:
    # 3 MiB is cached: the client is served from the fill as it grows, then stalls.
    with stalled_client(keyfront, "/open/big/3") as sock:
        assert reset_within(sock, SEND + 2 * SLACK), "a client that reads nothing is kept"
    status, fields, body = get(keyfront, "/open/big/3")
    assert (status, fields["X-Cache"], body == PATTERN * 48) == (200, "HIT", True)
    assert origin.gets == {"big/3": 1}


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_client_that_stops_reading_a_large_hit_is_cut(
    tmp_path: Path, origin: CountingOrigin, loop: str
) -> None:
    # A cached 3 MiB object goes out by sendfile, the rest as the socket drains.
    kf = start(tmp_path, origin, loop=loop)
    try:
        assert get(kf, "/open/big/3")[2] == PATTERN * 48
        with stalled_client(kf, "/open/big/3") as sock:
            assert reset_within(sock, SEND + 2 * SLACK), "a client that reads nothing is kept"
            assert eventually(lambda: response_bytes(kf) > 3 * MiB, 5)
            counted = response_bytes(kf) - 3 * MiB
        assert 0 <= counted < 256 * 1024  # what reached the client, not what was queued
        status, fields, body = get(kf, "/open/big/3")
        assert (status, fields["X-Cache"], body == PATTERN * 48) == (200, "HIT", True)
    finally:
        assert kf.stop() == 0


# --- review finding 4: a pipelined head is counted from the read that began it ---------


def test_a_head_begun_in_the_read_that_completes_a_request_counts_toward_the_cap(
    keyfront: KeyfrontProcess,
) -> None:
    # One write: a whole request, then 56 KiB of the next head; then 12 KiB more of it.
    # The head is 68 KiB by then, over the 64 KiB cap, though no read after the first
    # request carried more than 12 KiB of it.
    pad = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 7000) for i in range(8))[: 56 * 1024]
    more = b"".join(b"X-More-%d: %s\r\n" % (i, b"b" * 6000) for i in range(2))
    with connect(keyfront) as sock:
        sock.sendall(b"GET /open/small.bin HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /open/small.bin HTTP/1.1\r\nHost: x\r\n" + pad)  # fmt: skip
        assert read_response(sock)[::2] == (200, SMALL)
        time.sleep(0.1)
        sock.sendall(more)
        closed = closed_after(sock, HEADERS * 0.5)  # the header deadline would take longer
    assert closed is not None, "a 68 KiB head is still being read"
    assert metric(keyfront, "keyfront_client_heads_too_large_total") == 1


def test_500_pipelined_requests_in_one_write_are_all_answered(
    keyfront: KeyfrontProcess,
) -> None:
    # ~110 KB in one write: reads end anywhere, mid-head included; none is a long head.
    request = b"GET /open/tiny.bin HTTP/1.1\r\nHost: x\r\nUser-Agent: " + b"u" * 150 + b"\r\n\r\n"
    with connect(keyfront) as sock:
        sock.sendall(request * 500)
        answers = sock.makefile("rb")
        for _ in range(500):
            status = answers.readline()
            assert status.startswith(b"HTTP/1.1 200"), status
            length = 0
            while (line := answers.readline()) != b"\r\n":
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            assert answers.read(length) == TINY
    assert metric(keyfront, "keyfront_client_heads_too_large_total") == 0


# --- review finding 3: a minimum average send rate -------------------------------------


def test_a_reader_below_the_minimum_send_rate_is_cut_and_frees_the_origin(
    tmp_path: Path, origin: CountingOrigin
) -> None:
    # 64 KiB every 0.1 s (~600 KiB/s): it drains the buffer to its low-water mark well
    # within every `send` (3 s), so a progress deadline never fires (the old code served
    # it 4 MB in 6.5 s and went on), but it is below this keyfront's min_send_rate
    # (2 MiB/s). On a pass-through the origin stream is held as long as the client is.
    kf = start(tmp_path, origin, send=3.0, min_send_rate="2MiB")
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.connect(("127.0.0.1", kf.port))
        with sock:
            sock.sendall(b"GET /open/big/32 HTTP/1.1\r\nHost: x\r\n\r\n")
            started, got, cut = time.monotonic(), 0, False
            while not cut and time.monotonic() - started < 3.0 + 2 * SLACK:
                burst = 0
                while burst < 64 * 1024:  # a 16 KiB window: several reads
                    try:
                        chunk = sock.recv(64 * 1024 - burst)
                    except ConnectionError:
                        chunk = b""
                    if not chunk:
                        cut = True
                        break
                    burst += len(chunk)
                got += burst
                time.sleep(0.1)
            assert cut, f"a client reading ~600 KiB/s is still served after {got} bytes"
            assert eventually(lambda: origin.sending == 0, SLACK), "its origin connection is kept"
        assert got > 256 * 1024  # it was served for a while: cut for its rate, not for stalling
        assert metric(kf, "keyfront_client_send_timeouts_total") == 1
    finally:
        assert kf.stop() == 0


# --- review finding 5: the admin listener's connections ---------------------------------


def connect_admin(kf: KeyfrontProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", kf.admin_port), timeout=10)


def test_a_silent_admin_connection_is_closed_at_the_header_deadline(
    keyfront: KeyfrontProcess,
) -> None:
    with connect_admin(keyfront) as sock:
        closed = closed_after(sock, HEADERS + SLACK)
    assert closed is not None, f"a silent admin connection is open after {HEADERS + SLACK}s"


def test_a_trickled_admin_body_is_answered_408_within_the_header_deadline(
    keyfront: KeyfrontProcess,
) -> None:
    # The head is whole (so no header deadline applies); the body's 65,000 bytes come a
    # byte every 0.3 s: the handler gives up reading them after `headers`.
    head = (
        "POST /admin/v1/keys HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: 65000\r\n\r\n"
    )
    with connect_admin(keyfront) as sock:
        sock.sendall(head.encode())
        started, answer = time.monotonic(), b""
        while time.monotonic() - started < HEADERS + 2 * SLACK and b"\r\n\r\n" not in answer:
            try:
                sock.sendall(b" ")
                if select.select([sock], [], [], 0.3)[0]:
                    answer += sock.recv(65536)
            except ConnectionError:
                break
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"code":"request_timeout"' in answer
    assert elapsed < HEADERS + 2 * SLACK


def test_admin_connections_past_the_admin_cap_are_closed(
    tmp_path: Path, origin: CountingOrigin
) -> None:
    # A header deadline long enough that none of the held connections times out
    # while the test opens them all: connection ADMIN_CAP + 1 is closed at once.
    kf = start(tmp_path, origin, headers=10.0)
    held: list[socket.socket] = []
    try:
        held += (connect_admin(kf) for _ in range(ADMIN_CAP))
        time.sleep(0.2)  # all accepted
        with connect_admin(kf) as over:
            closed = closed_after(over, 2.0)
        assert closed is not None, f"admin connection {ADMIN_CAP + 1} is held past the cap"
        for sock in held:
            sock.close()
        # Slots free again as the held ones close.
        assert eventually(lambda: _healthy(kf), 5), "the admin listener stays full"
    finally:
        for sock in held:
            sock.close()
        stopped = kf.stop()
    assert stopped == 0


def _healthy(kf: KeyfrontProcess) -> bool:
    try:
        with urllib.request.urlopen(f"{kf.admin_url}/healthz", timeout=2) as page:
            return page.status == 200
    except OSError:
        return False


def test_a_reader_taking_bursts_between_resumes_is_not_cut(
    tmp_path: Path, origin: CountingOrigin
) -> None:
    """Review finding 4: progress was `resume_writing`, which needs the kernel to free
    about half its send queue first, so a client taking 256 KiB every 0.4 s (~640
    KiB/s) was reset after `send` as if it took nothing. Progress is now what it took."""
    kf = start(tmp_path, origin, min_send_rate="1KiB")  # the rate is not what is tested
    try:
        with connect(kf) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.sendall(b"GET /open/big/32 HTTP/1.1\r\nHost: x\r\n\r\n")  # passes through
            started, got = time.monotonic(), 0
            while time.monotonic() - started < 4 * SEND:
                time.sleep(0.4 * SEND)
                burst = 0
                sock.settimeout(0.05)
                with contextlib.suppress(TimeoutError):
                    while burst < 256 * 1024:
                        chunk = sock.recv(256 * 1024 - burst)  # a reset raises here
                        assert chunk, f"cut after {got + burst} bytes"
                        burst += len(chunk)
                got += burst
            assert got > 2 * MiB
    finally:
        assert kf.stop() == 0
