"""Who may call the admin API (SPEC section 9).

`Authorization: Bearer <token>`, where the token is either the operator's `admin.token`
(compared in constant time) or a customer token minted by the operator, looked up by
its SHA-256. With no `admin.token` configured the admin API is off: every call,
customer tokens included, is 401, and says so (ADMIN_API_OFF, issue 15: `customers
token` then minted a token whose 401 asked for "a valid token", and the operator looked
for the fault in the token). Customer tokens work only beside an admin token: the
operator turns the whole API on or off with that one setting. A customer token may
call only the routes marked "customer", about its own customer, and only while that
customer is active.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from ..errors import Forbidden, Unauthorized
from ..manage.actions import token_holder
from .http import OPERATOR, Access, Caller, context

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="keyfront admin"'}  # RFC 6750 section 3
ADMIN_API_OFF = "the admin API is off: set admin.token in the config"


async def authenticate(request: web.Request, access: Access) -> Caller:
    """The caller, or Unauthorized (no or unknown token) / Forbidden (not allowed)."""
    admin = context(request)
    expected, given = admin.config.admin.token, _bearer(request)
    if expected is None:
        raise Unauthorized(ADMIN_API_OFF, CHALLENGE)
    if given is None:
        raise Unauthorized("a valid admin or customer token is required", CHALLENGE)
    if hmac.compare_digest(given.encode(), expected.encode()):
        return OPERATOR
    token = await token_holder(admin.store, given)
    if token is None:
        raise Unauthorized("the token is not valid", CHALLENGE)
    if access != "customer":
        raise Forbidden("only the operator's admin token may do this")
    customer = await admin.store.get_customer(token.customer_id)
    if customer is None or customer.status != "active":
        raise Forbidden(f"customer {token.customer_id} is disabled")
    return Caller(token.customer_id)


def _bearer(request: web.Request) -> str | None:
    """The token; None for one that no token can be: tokens are short ASCII, and a
    non-UTF-8 byte made the constant-time compare raise, a 500 (issue 12 item 9)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    token = value.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 256 or not token.isascii():
        return None
    return token
