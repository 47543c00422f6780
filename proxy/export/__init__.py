"""Usage export to billing systems (SPEC section 16).

    events.py    a key's usage in a period as a CloudEvents 1.0 object; the ledger entry
    outbox.py    the Exporter: the lease, the pass that fills the outbox, delivery
    signing.py   Standard Webhooks signatures and each customer's alert secret (a leaf)
    sinks/       one module per billing system behind `Sink` (base.py): webhook.py

The outbox itself lives in the store (store/sqlite_outbox.py, store/redis_outbox.py);
what `keyfront export status` and GET /admin/v1/export show, in manage/export.py.
Nothing is imported here: the command line reads events.py without aiohttp.
"""
