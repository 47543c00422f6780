"""The commands that need no store: `serve`, `config check` and `sign`."""

from __future__ import annotations

import argparse
import os
import time
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from ..config import Config, describe, load
from ..errors import Refusal, UsageError
from ..manage.settings import parse_link_secret, parse_positive
from ..units import parse_duration
from .options import Option, parse_key
from .output import Output, emit

DEFAULT_TTL = "1h"  # `sign`: how long a signed link is valid
# RFC 3986 pchar's sub-delims, ":" and "@", left as they are in a path; the rest of
# what is not unreserved is percent-encoded (a space, "%", "?", "#", non-ASCII).
PATH_SAFE = "/!$&'()*+,;=:@~"
SERVE_OPTIONS: list[Option] = [
    ("--workers", {"type": parse_positive, "metavar": "N",
                   "help": "worker processes sharing the public port (default: the config's)"}),
]  # fmt: skip
SIGN_OPTIONS: list[Option] = [
    ("url", {"metavar": "URL", "help": "a full URL, or a path with its query; its path "
                                       "may be written plain (a b.svg) or encoded (a%%20b.svg)"}),
    ("--key", {"required": True, "type": parse_key, "help": "the full key the link is for"}),
    ("--link-secret", {"required": True, "type": parse_link_secret, "metavar": "SECRET",
                       "help": "the key's link secret (keys create prints it)"}),
    ("--ttl", {"default": DEFAULT_TTL, "type": parse_duration,
               "help": "how long the link works (default 1h)"}),
]  # fmt: skip


def load_config(args: argparse.Namespace, need_secrets: bool = True) -> Config:
    """The config in -c FILE, else in $KEYFRONT_CONFIG; ConfigError names a bad field.
    Without `need_secrets`, unset secrets are left out (config.load)."""
    return load(args.config, need_secrets=need_secrets)


def serve(args: argparse.Namespace) -> int:
    config = load_config(args)
    from ..app import serve_forever

    return serve_forever(config, args.workers)


def config_check(args: argparse.Namespace) -> int:
    config = load_config(args)
    summary = describe(config)
    data = {"ok": True, "file": config.source, "summary": summary}
    emit(Output(data, f"ok: {summary}"), args.json)
    return 0


def sign(args: argparse.Namespace) -> int:
    """Add key, expires and sig to a URL (SPEC section 2, signed links), keeping its
    other query parameters. The key's parameter is named as configured, if a config is
    given."""
    from ..policy import normalise_path, sign_link

    has_config = args.config or os.environ.get("KEYFRONT_CONFIG")
    param = load_config(args, need_secrets=False).keys.query_param if has_config else "key"
    parts = urlsplit(args.url)
    try:
        path = normalise_path(parts.path)  # what the proxy will check the signature over
    except Refusal as exc:
        raise UsageError("URL", f"{parts.path!r}: {exc}") from None
    expires = int(time.time() + args.ttl)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if k not in (param, "expires", "sig")]  # fmt: skip
    sig = sign_link(path, expires, args.link_secret)
    query += [(param, args.key), ("expires", str(expires)), ("sig", sig)]
    # Printed percent-encoded (issue 15), so that curl takes it as is: the proxy decodes
    # it back to `path`, the text the signature covers.
    encoded = quote(path, safe=PATH_SAFE)
    url = urlunsplit(parts._replace(path=encoded, query=urlencode(query)))
    emit(Output({"url": url, "expires": expires}, url), args.json)
    return 0
