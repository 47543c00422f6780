"""Shared fixtures: real servers on free loopback ports, started once per session."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from unittest import mock

import pytest
from aiohttp import web

from proxy.config import S3Settings

if TYPE_CHECKING:  # imported where used: browser.py imports this module
    from playwright.sync_api import Browser

    from pki import PrivateCA


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]
    workdir: str
    options: tuple[str, ...] = ("--appendonly", "no")  # no persistence, unless asked

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cli(self, *args: str) -> str:
        return subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, check=True
        ).stdout

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def start(self) -> None:
        """(Re)start on the same port, e.g. after a test stopped it."""
        self.process = _spawn_redis(self.port, self.workdir, self.options)
        wait_for_port(self.port)

    @classmethod
    def launch(cls, *options: str) -> RedisServer:
        """A new redis-server on a free port, in a fresh directory."""
        port, workdir = free_port(), tempfile.mkdtemp(prefix="kf-redis-")
        server = cls(port, _spawn_redis(port, workdir, options or cls.options), workdir)
        if options:
            server.options = options
        wait_for_port(port)
        return server


def _spawn_redis(port: int, workdir: str, options: tuple[str, ...]) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not on the PATH: run `make test`, which installs it")
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir]
    return subprocess.Popen(
        [binary, *args, *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session. Tests isolate themselves by FLUSHALL."""
    server = RedisServer.launch()
    yield server
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return empty_store_url("redis", redis_server, "")


def empty_store_url(
    kind: str, redis_server: RedisServer | None, folder: str, db: int | None = None
) -> str:
    """A store with nothing in it: "sqlite", a new file in `folder`; "redis", the
    session's redis-server (restarted if a test stopped it), all of it flushed, or
    only database `db` when one is given."""
    if kind == "sqlite":
        return f"sqlite://{folder}/keyfront.db"
    assert redis_server is not None
    if redis_server.process.poll() is not None:
        redis_server.start()
    if db is None:
        redis_server.cli("FLUSHALL")
        return redis_server.url
    redis_server.cli("-n", str(db), "FLUSHDB")
    return f"{redis_server.url.removesuffix('/0')}/{db}"


# --- a 3-master Redis Cluster (SPEC section 7: redis+cluster://) ------------------------


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[list[int]]:
    """Three redis-server masters joined into one cluster; yields their ports."""
    workdir = tempfile.mkdtemp(prefix="kf-cluster-")
    ports = [free_port() for _ in range(3)]
    # The bus port defaults to port + 10000, which a free port above 55535 overflows.
    bus_ports = [free_port() for _ in ports]
    processes = [
        _spawn_cluster_node(p, bus, workdir) for p, bus in zip(ports, bus_ports, strict=True)
    ]
    try:
        for port in ports:
            wait_for_port(port)
        for i, port in enumerate(ports):  # 16384 slots split three ways
            redis_cli(
                port, "CLUSTER", "ADDSLOTSRANGE", str(i * 5462), str(min(i * 5462 + 5461, 16383))
            )
        # Every pair meets directly: learning of a third node through gossip alone
        # takes seconds.
        for i, port in enumerate(ports):
            for other, bus in zip(ports[i + 1 :], bus_ports[i + 1 :], strict=True):
                redis_cli(port, "CLUSTER", "MEET", "127.0.0.1", str(other), str(bus))
        _wait_for_cluster(ports)
        yield ports
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def _spawn_cluster_node(port: int, bus_port: int, workdir: str) -> subprocess.Popen[bytes]:
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
    args += ["--cluster-port", str(bus_port)]
    return subprocess.Popen(
        ["redis-server", *args, "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def redis_cli(port: int, *args: str) -> str:
    command = ["redis-cli", "-p", str(port), *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def _wait_for_cluster(ports: list[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all("cluster_state:ok" in redis_cli(p, "CLUSTER", "INFO") for p in ports):
            return
        time.sleep(0.05)
    raise TimeoutError("the redis cluster did not form")


@pytest.fixture
def env_without_keyfront() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("KEYFRONT_")}


# --- keyfront as a real process ------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYFRONT = os.path.join(os.path.dirname(sys.executable), "keyfront")  # the venv's console script
SECRET = "test-signing-secret-0123456789"


@dataclass
class KeyfrontProcess:
    """A running `keyfront serve` and the config it runs on."""

    config_path: str
    port: int
    admin_port: int
    process: subprocess.Popen[bytes]
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the real `keyfront` command line against this instance's config."""
        return subprocess.run(
            [KEYFRONT, *args, "-c", self.config_path],
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=30,
        )

    def given(self, *args: str, check: bool = True) -> str:
        """Set-up, not under test: `keyfront ARGS -c CONFIG` run in this process, with
        the environment `cli` gives its process; the standard output. It saves the
        interpreter's start-up and imports, 0.6-0.9 s a call on a 2-core machine;
        tests of the command line itself run the console script (`cli`). In a thread
        of its own, since the command runs its own event loop and an async test's may
        be running; the environment is the process's, so it is swapped meanwhile."""
        from proxy.cli import main

        out, err, status = io.StringIO(), io.StringIO(), []

        def run() -> None:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                status.append(main([*args, "-c", self.config_path]))

        umask = os.umask(0o022)  # the command sets its own; the tests' stays as it was
        try:
            with mock.patch.dict(os.environ, self.env, clear=True):
                thread = threading.Thread(target=run)
                thread.start()
                thread.join(30)
        finally:
            os.umask(umask)
        assert status == [0] or not check, (args, status, out.getvalue(), err.getvalue())
        return out.getvalue()

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout)
        return self.process.returncode


def write_config(directory: str, text: str) -> str:
    path = os.path.join(directory, f"keyfront-{free_port()}.yaml")
    with open(path, "w") as f:
        f.write(text)
    return path


def start_keyfront(
    config_body: str,
    directory: str,
    *args: str,
    port: int | None = None,
    env: dict[str, str] | None = None,
    stderr: IO[bytes] | None = None,
) -> KeyfrontProcess:
    """Start `keyfront serve` on free ports with `config_body` (YAML without listen
    lines), and wait until /healthz answers. `env` adds to the process's environment
    (not to the CLI's, `KeyfrontProcess.cli`); `stderr` receives its log."""
    port = port or free_port()
    admin_port = free_port()
    text = f"listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:{admin_port}\n{config_body}"
    if not re.search(r"^cache:", config_body, re.MULTILINE):
        # Never the default /var/cache/keyfront: instances started on one directory
        # share a cache, as worker processes of one host do, and nothing else.
        text += f"\ncache: {{dir: {directory}/cache}}\n"
    config_path = write_config(directory, text)
    base = {k: v for k, v in os.environ.items() if not k.startswith("KEYFRONT_")}
    base["KEYFRONT_KEY_SECRET"] = SECRET
    process = subprocess.Popen(
        [KEYFRONT, "serve", "-c", config_path, *args], env={**base, **(env or {})}, stderr=stderr
    )
    instance = KeyfrontProcess(config_path, port, admin_port, process, base)
    try:
        wait_for_port(admin_port, timeout=15)
        wait_for_port(port, timeout=5)
    except TimeoutError:
        instance.stop()
        raise
    return instance


# --- a real HTTP origin, in a thread of the test process ------------------------------


class HttpOriginServer:
    """An aiohttp server over a folder, counting GETs per path, and adding headers an
    origin like S3 sends that keyfront must not pass on."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.port = free_port()
        self.gets: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        if request.method == "GET":
            self.gets[path] = self.gets.get(path, 0) + 1
        if path.startswith("slow/"):
            return await self._trickle(request, path)
        full = os.path.join(self.root, path)
        if not os.path.isfile(full):
            raise web.HTTPNotFound()
        response = web.FileResponse(full)
        response.headers["Set-Cookie"] = "origin=secret"
        response.headers["x-amz-meta-owner"] = "someone"
        response.headers["Server"] = "OriginServer/1.0"
        return response

    async def _trickle(self, request: web.Request, path: str) -> web.StreamResponse:
        """`slow/<n>`: n bytes in 4 chunks, 0.25 s apart (in-flight during shutdown)."""
        size = int(path.removeprefix("slow/"))
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = size
        await response.prepare(request)
        for i in range(4):
            await asyncio.sleep(0.25)
            await response.write(b"x" * (size // 4 + (size % 4 if i == 3 else 0)))
        await response.write_eof()
        return response

    def stop(self) -> None:
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


# --- a real S3-protocol server: moto in server mode, checking SigV4 signatures ------------

MOTO_SERVER = os.path.join(os.path.dirname(sys.executable), "moto_server")  # the `test` extra


@dataclass
class S3Server:
    """A `moto_server` process on a free loopback port with one bucket. Every request
    must carry a valid SigV4 signature of `access_key_id` (an IAM user allowed s3:*):
    moto only checks signatures once its first few unauthenticated calls, which set
    that user up, are used up (docs/dependencies.md "S3")."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    role_arn: str  # a role the user may assume, allowed s3:*
    process: subprocess.Popen[bytes]
    bucket: str = "keyfront-test"

    def client(self) -> Any:
        """A boto3 S3 client with the server's credentials (for uploads)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )

    def temporary_credentials(self) -> dict[str, str]:
        """AccessKeyId, SecretAccessKey and SessionToken of the assumed role."""
        import boto3

        sts = boto3.client(
            "sts",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )
        answer = sts.assume_role(RoleArn=self.role_arn, RoleSessionName="keyfront-test")
        return dict(answer["Credentials"])

    def put(self, key: str, body: bytes, content_type: str = "", **metadata: str) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        self.client().put_object(Bucket=self.bucket, Key=key, Body=body, Metadata=metadata, **extra)

    def upload(self, folder: Path, prefix: str) -> None:
        """Every file below `folder` to `prefix` + its relative path, with the
        Content-Type the file origin would give it."""
        from proxy.origin.file import content_type

        client = self.client()
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            key = prefix + path.relative_to(folder).as_posix()
            client.put_object(
                Bucket=self.bucket, Key=key, Body=path.read_bytes(), ContentType=content_type(key)
            )

    def settings(self, access_key_id: str = "", secret_access_key: str = "") -> S3Settings:
        """S3 settings for a route on this server, with its credentials unless given."""
        return S3Settings(
            endpoint_url=self.endpoint_url,
            region="us-east-1",
            access_key_id=access_key_id or self.access_key_id,
            secret_access_key=secret_access_key or self.secret_access_key,
        )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto S3 server for the session; tests keep to their own key prefixes."""
    if not os.path.exists(MOTO_SERVER):
        pytest.fail("moto_server is missing: run `make test` (installs the `test` extra)")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    process = subprocess.Popen(
        [MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield _set_up_s3(f"http://127.0.0.1:{port}", process)
    finally:
        process.terminate()
        process.wait(10)


def _set_up_s3(endpoint_url: str, process: subprocess.Popen[bytes]) -> S3Server:
    """An IAM user with an access key, a role it may assume (for temporary credentials),
    and the bucket; then signature checks switched on."""
    import json
    import urllib.request

    import boto3

    anyone = {"region_name": "us-east-1", "aws_access_key_id": "x", "aws_secret_access_key": "x"}
    iam = boto3.client("iam", endpoint_url=endpoint_url, **anyone)

    def allow(*actions: str) -> str:
        statement = {"Effect": "Allow", "Action": list(actions), "Resource": "*"}
        return json.dumps({"Version": "2012-10-17", "Statement": [statement]})

    iam.create_user(UserName="keyfront")
    iam.put_user_policy(
        UserName="keyfront", PolicyName="s3", PolicyDocument=allow("s3:*", "sts:AssumeRole")
    )
    key = iam.create_access_key(UserName="keyfront")["AccessKey"]
    trust = allow("sts:AssumeRole").replace('"Resource": "*"', '"Principal": {"AWS": "*"}')
    role = iam.create_role(RoleName="reader", AssumeRolePolicyDocument=trust)["Role"]
    iam.put_role_policy(RoleName="reader", PolicyName="s3", PolicyDocument=allow("s3:*"))
    server = S3Server(
        endpoint_url, key["AccessKeyId"], key["SecretAccessKey"], role["Arn"], process
    )
    server.client().create_bucket(Bucket=server.bucket)
    # From here on every request is authenticated and its signature checked.
    switch = urllib.request.Request(
        f"{endpoint_url}/moto-api/reset-auth",
        data=b"0",
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(switch, timeout=10) as response:
        response.read()
    return server


# --- headless Chromium trusting a private CA (tests/browser.py, tests/pki.py) -------------


@pytest.fixture(scope="session")
def private_ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCA:
    """The session's certificate authority: `private_ca.issue("cdn.test")`."""
    from pki import PrivateCA

    return PrivateCA(tmp_path_factory.mktemp("private-ca"))


@pytest.fixture(scope="module")
def chromium(private_ca: PrivateCA) -> Iterator[Browser]:
    """A headless Chromium (a Playwright `Browser`) trusting `private_ca`'s certificates
    and resolving `*.test` to 127.0.0.1. One per module, not per session: while
    Playwright's sync API is started, its event loop is the thread's running loop, and
    every asyncio test after it fails with "Cannot run the event loop while another
    loop is running". So a module using it holds no asyncio tests; a launch is ~0.6 s."""
    from browser import launch_chromium
    from pki import spki_sha256

    with launch_chromium([spki_sha256(private_ca.cert)]) as browser:
        yield browser
