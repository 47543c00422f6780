"""Managing customers, keys and customer tokens: what the command line (proxy/cli) and
the admin API (proxy/admin) both do, written once (SPEC sections 2, 4, 8, 9 and 13).

    settings.py    setting values: parsers, and the JSON settings tables with their schemas
    actions.py     find, create, change, revoke and roll records; plan caps; customer tokens
    imports.py     importing keys from an existing key system (CSV, JSON lines)
    invalidate.py  dropping the key API's cached answers on every instance
    purge.py       purging cached objects on every instance
    usage.py       usage reports (SPEC section 4)

It owns the rules of each action: what a value may be, the plan caps, what a customer
token may change. A refused action raises a ManageError (proxy/errors.py: Invalid,
Forbidden, Missing, Refused), which carries its HTTP status and SPEC code for the admin
API and its exit status for the command line; each front end only renders it.

Imports flow one way, from the front ends into this package. What it must not import
(directly; tests/test_layers.py checks): aiohttp, HTTP being the admin API's concern;
proxy.admin or proxy.cli, which import it; proxy.app; the request path
(proxy.pipeline, proxy.listener, proxy.delivery). It uses the store, the records,
keys, the cache (for purges) and errors.
"""
