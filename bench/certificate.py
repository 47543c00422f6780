"""The TLS rows' certificate (SPEC section 12: "against nginx with the same
certificate"): a private CA and a leaf for 127.0.0.1 and localhost, made with the
`openssl` command at set-up; nginx and keyfront load the same pair.

ECDSA P-256, the key type of Mozilla's "intermediate" profile (the cipher profile
keyfront's proxy/tls.py follows): a handshake's signature then costs tens of µs,
where RSA 2048 would cost about a millisecond and the handshake rows would measure
little but the RSA private-key operation.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .system import BenchError

DAYS = "2"  # the bench's folder is temporary; the pair is never used after the run
NAMES = "subjectAltName=IP:127.0.0.1,DNS:localhost"
EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


@dataclass(frozen=True)
class Certificate:
    cert: Path  # the leaf, PEM (the CA is not part of the chain a server sends)
    key: Path
    ca: Path  # what a client trusts


def make_certificate(folder: Path) -> Certificate:
    folder.mkdir(parents=True)
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    cert, key, csr = folder / "leaf.pem", folder / "leaf.key", folder / "leaf.csr"
    extensions = folder / "leaf.ext"
    extensions.write_text(NAMES + "\n")
    _openssl("req", "-x509", *EC_KEY, "-keyout", ca_key, "-out", ca, "-days", DAYS,
             "-subj", "/CN=keyfront bench CA")  # fmt: skip
    _openssl("req", *EC_KEY, "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-days", DAYS, "-extfile", extensions, "-out", cert)  # fmt: skip
    return Certificate(cert, key, ca)


def _openssl(*args: str | Path) -> None:
    done = subprocess.run(["openssl", *map(str, args)], check=False, capture_output=True)
    if done.returncode != 0:
        raise BenchError(f"openssl {args[0]} failed: {done.stderr.decode().strip()}")


def session_resumed(base: str, ca: Path) -> bool:
    """Whether the HTTPS server at `base` resumes a session: one request on a first
    connection (which receives any TLS 1.3 ticket before the response), then a second
    connection offering that session. The TLS rows need False on both servers."""
    host, _, port = base.removeprefix("https://").partition(":")
    context = ssl.create_default_context(cafile=ca)
    session = None
    for _ in range(2):
        with (
            socket.create_connection((host, int(port)), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=host, session=session) as sock,
        ):
            sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            while sock.recv(65536):
                pass
            if sock.session_reused:
                return True
            session = sock.session
    return False
