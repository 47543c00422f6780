"""A customer's web site for the browser tests, as its own process: the files of one
folder over HTTP, or over HTTPS when given a certificate and key (tests/browser.py).

    python tests/page_origin.py FOLDER PORT [CERT KEY]

Listens on 127.0.0.1 only; Chromium reaches it by whatever names the test maps there."""

from __future__ import annotations

import functools
import http.server
import ssl
import sys


class PageHandler(http.server.SimpleHTTPRequestHandler):
    timeout = 10  # a connection Chromium opened ahead and never used ends

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test asserts what the browser saw, not this log."""


def main(folder: str, port: str, cert: str = "", key: str = "") -> None:
    handler = functools.partial(PageHandler, directory=folder)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), handler)
    if cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        # The handshake runs in the connection's thread on its first read, not in
        # accept(): a preconnected socket that never speaks would stall every other.
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    server.serve_forever()


if __name__ == "__main__":
    main(*sys.argv[1:])
