"""Large cached bodies over TLS (SPEC section 14), keyfront as a real process: with no
sendfile under TLS, proxy/delivery.py `_send_rest` reads the body in pieces and writes
them through the TLS transport. A client that half-closes its connection mid-body
(a TCP FIN, which browsers send when they cancel a download) makes that transport
drop every later write without a word while `is_closing()` still says False; keyfront
must stop there, not read the rest of the file, not log a warning per piece and not
count the dropped bytes as sent."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import HttpOriginServer, KeyfrontProcess, start_keyfront

HUGE = os.urandom(24 * 1024 * 1024)  # far past what socket buffers hold in flight
READ_BEFORE_LEAVING = 1024 * 1024


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KeyfrontProcess, Path]]:
    """keyfront over TLS (a self-signed pair for 127.0.0.1) in front of an origin
    holding HUGE; its log goes to keyfront.log."""
    run = tmp_path_factory.mktemp("tls-delivery")
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt"),
            *("ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "key.pem"),
            *("-out", "cert.pem", "-days", "2", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        cwd=run,
        check=True,
        capture_output=True,
        timeout=30,
    )
    objects = run / "objects"
    objects.mkdir()
    (objects / "huge.bin").write_bytes(HUGE)
    origin = HttpOriginServer(str(objects))
    origin.start()
    body = f"""
keys: {{secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}}}
store: sqlite:///{run}/keyfront.db
routes:
  - {{prefix: /o/, origin: "{origin.url}", auth: none}}
tls:
  certificates:
    - {{cert: {run}/cert.pem, key: {run}/key.pem}}
"""
    with (run / "keyfront.log").open("wb") as log:
        keyfront = start_keyfront(body, str(run), stderr=log)
    yield keyfront, run
    keyfront.stop()
    origin.stop()


def request(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    tls = context.wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="127.0.0.1"
    )
    tls.sendall(b"GET /o/huge.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return tls


def whole_body(port: int, context: ssl.SSLContext) -> bytes:
    with request(port, context) as tls:
        received = bytearray()
        while b"\r\n\r\n" not in received:
            received += tls.recv(65536)
        head, _, body = bytes(received).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        rest = bytearray(body)
        while len(rest) < len(HUGE):
            rest += tls.recv(1024 * 1024)
        return bytes(rest)


def leave_mid_body(port: int, context: ssl.SSLContext) -> None:
    """Read part of the body, half-close (FIN, no close_notify) and go on reading
    what comes, as ciphertext, until keyfront closes."""
    tls = request(port, context)
    got = 0
    while got < READ_BEFORE_LEAVING:
        got += len(tls.recv(65536))
    tls.shutdown(socket.SHUT_WR)  # from here on `tls` reads the raw socket
    deadline = time.monotonic() + 10
    while tls.recv(65536) and time.monotonic() < deadline:
        pass
    tls.close()


def bytes_sent(keyfront: KeyfrontProcess) -> float:
    with urllib.request.urlopen(f"{keyfront.admin_url}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith('keyfront_response_bytes_total{route="/o/"}'):
                return float(line.rpartition(" ")[2])
    return 0.0


def counted_after(keyfront: KeyfrontProcess, before: float) -> float:
    """The body bytes keyfront counted for the next request to end after `before`."""
    deadline = time.monotonic() + 5
    while (now := bytes_sent(keyfront)) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    return now - before


def test_a_client_that_leaves_mid_body_is_let_go(served: tuple[KeyfrontProcess, Path]) -> None:
    keyfront, run = served
    context = ssl.create_default_context(cafile=str(run / "cert.pem"))
    assert whole_body(keyfront.port, context) == HUGE  # a MISS, which fills the cache
    total = counted_after(keyfront, 0.0)  # the MISS, once it is counted
    counted = []
    for _ in range(5):  # HITs: `_send_rest` over TLS
        leave_mid_body(keyfront.port, context)
        counted.append(counted_after(keyfront, total))
        total += counted[-1]
    # Each client took a part (plus what socket buffers held); the dropped rest of the
    # body is not counted as sent, and keyfront did not log a line per dropped piece.
    assert 0 < max(counted) < len(HUGE), counted
    assert "SSL connection is closed" not in (run / "keyfront.log").read_text()
