"""What the benchmark serves and who serves it: the objects, the origin, nginx (the
reference of SPEC section 12), redis-server and the keyfront instances, all on
127.0.0.1, all pinned to the server core."""

from __future__ import annotations

import base64
import grp
import hashlib
import json
import os
import pwd
import secrets
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from proxy.tls import INTERMEDIATE_CIPHERS

from .certificate import Certificate
from .system import BenchError, Cores, Processes, free_port, wait_for_http, with_children

OBJECTS = {"10k": ("obj-10k.bin", 10 * 1024), "1m": ("obj-1m.bin", 1024 * 1024)}
SPARSE_2G = "sparse-2g.bin"  # a sparse file: 2 GiB of size, no disk
REFERER = "https://www.example.com/page"  # allowed by both servers' referrer checks
ALLOWED_REFERRERS = "*.example.com"
CUSTOMER = "bench"


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    base: str  # http://127.0.0.1:port, or https:// for the TLS rows
    store_pids: list[int] = field(default_factory=list)  # its redis-server, reported apart
    ca: Path | None = None  # over TLS: the CA a client trusts

    def pids(self) -> list[int]:
        return with_children(self.proc.pid)


@dataclass(frozen=True)
class Target:
    """One way of asking one server for an object: `path` holds `{name}`."""

    label: str
    server: Server
    path: str

    def url(self, name: str) -> str:
        return self.server.base + self.path.format(name=name)


def make_objects(folder: Path) -> None:
    folder.mkdir(parents=True)
    for name, size in OBJECTS.values():
        (folder / name).write_bytes(os.urandom(size))
    with (folder / SPARSE_2G).open("wb") as sparse:
        sparse.truncate(2 * 1024**3)


def start_origin(procs: Processes, cores: Cores, folder: Path) -> str:
    port = free_port()
    argv = [sys.executable, "-m", "bench.origin", "--port", str(port), "--dir", str(folder)]
    procs.start("origin", cores.wrap(cores.server, argv))
    base = f"http://127.0.0.1:{port}"
    wait_for_http(base + "/stats/ready")
    return base


def start_redis(procs: Processes, cores: Cores, folder: Path) -> tuple[int, int]:
    """(port, pid) of a redis-server without persistence."""
    folder.mkdir()
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(folder)]
    proc = procs.start("redis", cores.wrap(cores.server, argv))
    ping = ["redis-cli", "-p", str(port), "PING"]
    for _ in range(100):
        if (
            subprocess.run(ping, check=False, capture_output=True, text=True).stdout.strip()
            == "PONG"
        ):
            return port, proc.pid
        procs.check_alive()
        subprocess.run(["sleep", "0.05"], check=True)
    raise BenchError("redis-server did not answer PING")


# --- nginx: proxy_cache on disk + secure_link + valid_referers + limit_req ------------

NGINX_CONF = """\
{user}
worker_processes 1;
worker_rlimit_nofile 8192;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/temp/body;
    proxy_temp_path {dir}/temp/proxy;
    fastcgi_temp_path {dir}/temp/fastcgi;
    uwsgi_temp_path {dir}/temp/uwsgi;
    scgi_temp_path {dir}/temp/scgi;
    proxy_cache_path {dir}/cache levels=1:2 keys_zone=objects:10m max_size=4g
                     inactive=1h use_temp_path=off;
    # Per key, set far above any rate reached here: the check runs, it never refuses.
    limit_req_zone $arg_kid zone=perkey:10m rate=1000000r/s;
    upstream origin {{ server {origin}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port} backlog=2048;{tls}
        location /request/ {{
            # The key: kid plus an MD5 MAC of it with a secret, checked without I/O.
            secure_link $arg_key;
            secure_link_md5 "$arg_kid {secret}";
            if ($secure_link = "") {{ return 403; }}
            valid_referers {referrers};
            if ($invalid_referer) {{ return 403; }}
            limit_req zone=perkey burst=1000000 nodelay;
            proxy_pass http://origin/objects/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache objects;
            proxy_cache_key $uri;
            proxy_cache_valid 200 1h;
            proxy_cache_lock on;
            add_header X-Cache $upstream_cache_status always;
        }}
    }}
}}
"""


# The TLS rows (SPEC section 12): the same listener and location over HTTPS, with the
# certificate and cipher profile keyfront has (proxy/tls.py: TLS 1.2 and 1.3, Mozilla
# "intermediate", server preference). No session resumption on either server (keyfront:
# bench/tls_keyfront.py): wrk resumes whenever it is offered one, so with tickets on the
# handshake row would measure resumptions; off, every new connection is a full handshake.
NGINX_TLS = """
        listen 127.0.0.1:{port} ssl backlog=2048;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {ciphers};
        ssl_prefer_server_ciphers on;
        ssl_session_cache off;
        ssl_session_tickets off;"""


def nginx_key(key_id: str, secret: str) -> str:
    """What nginx's secure_link_md5 expects in ?key=: base64url MD5, no padding."""
    digest = hashlib.md5(f"{key_id} {secret}".encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def start_nginx(
    procs: Processes, cores: Cores, folder: Path, origin: str, certificate: Certificate | None
) -> tuple[Target, Target | None]:
    """nginx, and with `certificate` its HTTPS listener too (one worker serves both):
    (the plain target, the TLS target or None)."""
    for sub in ("cache", "temp"):
        (folder / sub).mkdir(parents=True)
    secret, key_id = secrets.token_hex(16), secrets.token_urlsafe(16)
    port, tls_port = free_port(), free_port()
    tls = ""
    if certificate is not None:
        tls = NGINX_TLS.format(
            port=tls_port, cert=certificate.cert, key=certificate.key, ciphers=INTERMEDIATE_CIPHERS
        )
    conf = NGINX_CONF.format(
        tls=tls,
        user=_nginx_user(folder),
        dir=folder,
        port=port,
        origin=origin.removeprefix("http://"),
        secret=secret,
        referrers=ALLOWED_REFERRERS,
    )
    (folder / "nginx.conf").write_text(conf)
    argv = ["nginx", "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e"]
    argv += [str(folder / "error.log"), "-g", "daemon off;"]
    server = Server("nginx", procs.start("nginx", cores.wrap(cores.server, argv)), "")
    server.base = f"http://127.0.0.1:{port}"
    wait_for_http(server.base + "/")
    path = f"/request/{{name}}?kid={key_id}&key={nginx_key(key_id, secret)}"
    if certificate is None:
        return Target("nginx", server, path), None
    secure = Server("nginx", server.proc, f"https://127.0.0.1:{tls_port}", ca=certificate.ca)
    return Target("nginx", server, path), Target("nginx", secure, path)


def _nginx_user(folder: Path) -> str:
    """As root, nginx's worker runs as `nobody`: give it the folder it writes."""
    if os.geteuid() != 0:
        return ""
    nobody = pwd.getpwnam("nobody")
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    return f"user {nobody.pw_name} {grp.getgrgid(nobody.pw_gid).gr_name};"


# --- keyfront ------------------------------------------------------------------------


@dataclass
class Keyfront:
    server: Server
    key: str
    config: Path


def keyfront_config(
    folder: Path, store: str, origin: str, objects: Path, extra: dict[str, Any]
) -> dict[str, Any]:
    """A keyed and an `auth: none` route over the HTTP origin (the cached path once the
    disk cache exists) and over the objects folder (what serves hits until then)."""
    http = origin + "/objects/"
    files = f"file://{objects}/"
    config: dict[str, Any] = {
        "listen": f"127.0.0.1:{free_port()}",
        "admin_listen": f"127.0.0.1:{free_port()}",
        "store": store,
        "keys": {
            "secrets": {1: secrets.token_urlsafe(24)},
            # The limiter runs on every request but never refuses.
            "defaults": {"rate": "10000000/s", "burst": 10000000},
        },
        "routes": [
            {"prefix": "/request/", "origin": http},
            {"prefix": "/open/", "origin": http, "auth": "none"},
            {"prefix": "/files/", "origin": files},
            {"prefix": "/files-open/", "origin": files, "auth": "none"},
        ],
        "cache": {"dir": str(folder / "cache")},
        "access_log": "off",
    }
    return _merged(config, extra)


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for name, value in extra.items():
        old = out.get(name)
        both_maps = isinstance(old, dict) and isinstance(value, dict)
        out[name] = _merged(old, value) if both_maps else value  # type: ignore[arg-type]
    return out


def keyfront_cli(config: Path, *args: str, python: str = sys.executable) -> str:
    argv = [*_interpreter(python), "-m", "proxy", "-c", str(config), *args]
    done = subprocess.run(argv, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"keyfront {' '.join(args[:2])} failed: {done.stderr.strip()}")
    return done.stdout


def config_accepted(folder: Path, extra: dict[str, Any]) -> bool:
    """Whether this keyfront's config model knows `extra` (e.g. a metering switch)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "probe.yaml"
    config = keyfront_config(
        folder, f"sqlite://{folder}/probe.db", "http://127.0.0.1:1", folder, extra
    )
    path.write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "proxy", "-c", str(path), "config", "check"]
    return subprocess.run(argv, check=False, capture_output=True).returncode == 0


def start_keyfront(
    procs: Processes,
    cores: Cores,
    name: str,
    folder: Path,
    config: dict[str, Any],
    *,
    module: str = "proxy",
    python: str = sys.executable,
    env: dict[str, str] | None = None,
    ca: Path | None = None,
    wrapper: list[str] | None = None,
    ready_within: float = 15.0,
) -> Keyfront:
    """Write the config, create the customer and its key through the CLI, start
    `keyfront serve` (through `python -m module`, with `env` added to the environment)
    pinned to the server core. `python` may be another checkout's virtualenv
    (`--baseline`). With `tls:` in the config it listens for HTTPS; `ca` is what
    verifies it. `wrapper` runs the server under another program (callgrind)."""
    folder.mkdir(parents=True)
    path = folder / "keyfront.yaml"
    path.write_text(yaml.safe_dump(config))
    keyfront_cli(path, "customers", "create", CUSTOMER, "--name", "benchmark", python=python)
    created = keyfront_cli(
        path, "keys", "create", "--customer", CUSTOMER, "--referrer", ALLOWED_REFERRERS, "--json",
        python=python,
    )  # fmt: skip
    key = json.loads(created)["key"]
    argv = [*(wrapper or ()), *_interpreter(python), "-m", module, "serve", "-c", str(path)]
    proc = procs.start(name, cores.wrap(cores.server, argv), {**os.environ, **env} if env else None)
    scheme = "https" if "tls" in config else "http"
    server = Server(name, proc, f"{scheme}://{config['listen']}", ca=ca)
    wait_for_http(f"http://{config['admin_listen']}/healthz", ready_within)
    return Keyfront(server, key, path)


def _interpreter(python: str) -> list[str]:
    """Another checkout's python runs with -P: `-m` would otherwise put the working
    folder (this checkout) first on its path and import this checkout's proxy."""
    return [python] if python == sys.executable else [python, "-P"]


def start_floor(procs: Processes, cores: Cores, objects: Path, loop: str) -> Target:
    """bench/floor.py: aiohttp's low-level server, the 10 KB body from memory."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.floor", "--port", str(port), "--loop", loop]
    argv += ["--body", str(objects / OBJECTS["10k"][0])]
    name = f"aiohttp floor ({loop})"
    proc = procs.start(f"floor-{loop}", cores.wrap(cores.server, argv))
    server = Server(name, proc, f"http://127.0.0.1:{port}")
    wait_for_http(server.base + "/")
    return Target(name, server, "/{name}")


def get(url: str, timeout: float = 30.0, ca: Path | None = None) -> tuple[int, dict[str, str], int]:
    """Status, headers and body length of one GET with the benchmark's Referer; over
    HTTPS, the server's chain verified against `ca`."""
    request = urllib.request.Request(url, headers={"Referer": REFERER})
    context = ssl.create_default_context(cafile=ca) if ca is not None else None
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, dict(response.headers), len(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), len(exc.read())
