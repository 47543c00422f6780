"""`keyfront` for the benchmark's TLS rows, run with the usual command line:

    [BENCH_READ_SIZE=BYTES] python -m bench.tls_keyfront serve -c FILE

Two changes to the keyfront it starts, both for the comparison's sake:

- no session resumption: TLS 1.3 tickets are not issued (`num_tickets = 0`), as
  nginx's TLS listener in the bench has `ssl_session_tickets off` and
  `ssl_session_cache off`. wrk resumes a session whenever the server offers one
  (nginx logged `$ssl_session_reused` "r" for 2,180 of 2,185 `Connection: close`
  requests with tickets on), so with tickets the handshake row would measure
  resumptions; without them, every new connection is a full handshake on both.
  Keep-alive rows do one handshake per connection and are not affected.
- `BENCH_READ_SIZE`, if set, replaces `proxy.delivery.TLS_CHUNK`, the piece a large
  cached body is read and written in over TLS: the read-size variants of
  `bench.run --tls-read-sizes`.
"""

from __future__ import annotations

import os
import ssl
import sys

from proxy import delivery, tls
from proxy.cli import main

READ_SIZE = "BENCH_READ_SIZE"


def patched() -> bool:
    """Whether this keyfront has what is patched (either may be renamed)."""
    if not hasattr(tls.Certificates, "_context") or not hasattr(delivery, "TLS_CHUNK"):
        return False
    build = tls.Certificates._context

    def without_tickets(self: tls.Certificates) -> ssl.SSLContext:
        context = build(self)
        context.num_tickets = 0
        return context

    setattr(tls.Certificates, "_context", without_tickets)  # noqa: B010 (mypy: method assignment)
    if os.environ.get(READ_SIZE):
        delivery.TLS_CHUNK = int(os.environ[READ_SIZE])
    return True


if __name__ == "__main__":
    if not patched():
        sys.exit("bench.tls_keyfront: proxy.tls or proxy.delivery changed; update this file")
    sys.exit(main())
