"""The customer page's sessions (SPEC section 15): who is signed in, proved by a cookie.

The cookie holds no token. It is a sealed, expiring reference to the credential the
page was signed in with: `<payload>.<mac>`, both base64url; the payload is a small JSON
object {c: customer id, or null for the operator; t: the customer token's id; i: issued
at; s: last seen; n: a random nonce; h: signed in over HTTPS}, the MAC HMAC-SHA256
under a key derived from `admin.token`.

Why not a table of sessions: keyfront runs several workers (and instances) behind one
admin address, and a page's next request may reach any of them. A sealed value is
checked by whichever gets it, with no store write per sign-in and no table that a flood
of sign-ins could grow. What a table would add, ending one copied cookie before its
time, is covered by the short idle limit; and every session of a credential ends at
once when the credential does: a customer token revoked or its customer disabled
(checked on every request), or `admin.token` changed (the key is derived from it).

Limits: IDLE (30 minutes without a request) and ABSOLUTE (12 hours after sign-in). A
request renews the cookie's last-seen time at most once a minute. Sign-out sends an
expired cookie.

CSRF (every change is a POST): the cookie is SameSite=Strict, so no other site's page
sends it; a POST must also carry the session's CSRF token (a form field or the
X-CSRF-Token header: an HMAC of the session's nonce, so it needs no storage either),
and its Origin, when the browser sends one, must be the page's own (`same_origin`).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

COOKIE = "keyfront_portal"
PATH = "/portal/"
IDLE = 30 * 60
ABSOLUTE = 12 * 3600
RENEW_AFTER = 60  # seconds: how stale last-seen may get before a request renews it
MAX_COOKIE = 512  # a sealed session is ~200 characters; longer is not one of ours


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in page: the operator (customer_id None) or a customer's token."""

    customer_id: str | None
    token_id: str | None
    issued: int
    seen: int
    nonce: str
    https: bool = False  # signed in over HTTPS: the cookie is renewed with Secure


class Sealer:
    """Seals and opens sessions under a key derived from the admin token."""

    def __init__(self, admin_token: str) -> None:
        self._key = hmac.new(admin_token.encode(), b"keyfront portal session v1", "sha256").digest()

    def new(self, customer_id: str | None, token_id: str | None, now: float) -> Session:
        at = int(now)
        return Session(customer_id, token_id, at, at, secrets.token_urlsafe(16))

    def seal(self, session: Session) -> str:
        payload = {"c": session.customer_id, "t": session.token_id, "i": session.issued,
                   "s": session.seen, "n": session.nonce, "h": session.https}  # fmt: skip
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{body}.{_b64(self._mac(body.encode()))}"

    def open(self, cookie: str | None, now: float) -> Session | None:
        """The session `cookie` seals, if it is ours and has not expired; else None."""
        if not cookie or len(cookie) > MAX_COOKIE or not cookie.isascii():
            return None
        body, _, mac = cookie.partition(".")
        if not hmac.compare_digest(mac, _b64(self._mac(body.encode()))):
            return None
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            data: dict[str, Any] = json.loads(raw)
            session = Session(data["c"], data["t"], int(data["i"]), int(data["s"]),
                              str(data["n"]), data["h"] is True)  # fmt: skip
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None  # sealed by us, so only a format of a future version
        if now - session.seen > IDLE or now - session.issued > ABSOLUTE or session.seen > now + 60:
            return None
        return session

    def renewed(self, session: Session, now: float) -> Session | None:
        """The session with last-seen now, when it is time to renew the cookie."""
        if now - session.seen < RENEW_AFTER:
            return None
        return dataclasses.replace(session, seen=int(now))

    def csrf_token(self, session: Session) -> str:
        return _b64(self._mac(b"csrf " + session.nonce.encode()))

    def csrf_ok(self, session: Session, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given, self.csrf_token(session))

    def _mac(self, data: bytes) -> bytes:
        return hmac.new(self._key, data, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def same_origin(origin: str | None, host: str | None) -> bool:
    """A POST's Origin names this page's own host (and port): a browser sends Origin on
    every POST, so a missing one is a client that is not a browser, which still needs
    the CSRF token. Behind a reverse proxy, the proxy must pass Host through."""
    if origin is None:
        return True
    scheme, _, rest = origin.partition("://")
    return scheme in ("http", "https") and host is not None and rest == host


class SignInLimit:
    """Failed sign-ins per client address: a bucket of BURST failures refilled one every
    REFILL seconds; an address with an empty bucket is refused before its token is
    looked up. A customer token has 256 random bits, so the bound is not against
    guessing; it keeps one client from turning sign-in into store lookups without end,
    while a customer who signs in often is never held up. The table holds at most
    MAX_CLIENTS addresses and is cleared when full (as the parse caches are): a flood
    of addresses resets it, which costs nothing but the lookups it bounds."""

    BURST, REFILL, MAX_CLIENTS = 10, 6.0, 4096

    def __init__(self) -> None:
        self._clients: dict[str, tuple[float, float]] = {}  # address -> (tokens, at)

    def _tokens(self, client: str, now: float) -> float:
        tokens, at = self._clients.get(client, (float(self.BURST), now))
        return min(float(self.BURST), tokens + (now - at) / self.REFILL)

    def allow(self, client: str, now: float) -> bool:
        """Whether `client` may try to sign in now."""
        return self._tokens(client, now) >= 1

    def failed(self, client: str, now: float) -> None:
        tokens = self._tokens(client, now)
        if len(self._clients) >= self.MAX_CLIENTS and client not in self._clients:
            self._clients.clear()
        self._clients[client] = (tokens - 1, now)
