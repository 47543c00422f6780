"""The s3:// origin against a real S3-protocol server: moto in server mode, which checks
the SigV4 signature of every request (conftest `s3_server`). The origin contract itself
(Range, 304, 416, HEAD, streaming, 404) runs against S3 too, in tests/test_origin.py;
this file holds what is particular to S3: signing, credentials, key encoding, S3 error
codes, addressing, and keyfront serving an s3:// route end to end."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from proxy.config import OriginTimeouts, Route, S3Settings
from proxy.errors import ConfigError, NotFound, OriginError, OriginTimeout
from proxy.keys import KeySigner, new_key_id
from proxy.origin import Origin, OriginRequest, OriginResponse, origin_from_url
from proxy.origin.s3 import S3Origin, bucket_url
from proxy.records import Customer, KeyRecord
from proxy.store import store_from_url

from conftest import SECRET, KeyfrontProcess, S3Server, free_port, start_keyfront

FAST = OriginTimeouts(connect=0.5, first_byte=1.0, idle=1.0)
PREFIX = "s3test/"
SMALL = b"small object\n" * 10
BIG = random.Random(3).randbytes(3 * 1024 * 1024 + 4321)  # several chunks, odd tail
ODD_NAMES = [
    "with space.txt",
    "ünïcødé/ファイル.txt",
    "a+b.txt",
    "100%.txt",
    "q?x#y&z=1;,@$!'().txt",
    "tilde~under_dash-.txt",
    "dir/sub dir/x.txt",
]


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AWS_* variable or ~/.aws file of the host leaks in, and botocore's chain
    never asks an instance metadata service (there is none, and no network)."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))


@pytest.fixture(scope="module")
def s3(s3_server: S3Server) -> S3Server:
    """The server with this module's objects below PREFIX."""
    s3_server.put(PREFIX + "small.txt", SMALL, "text/plain", owner="someone")
    s3_server.put(PREFIX + "big.bin", BIG, "application/octet-stream")
    for name in ODD_NAMES:
        s3_server.put(PREFIX + name, name.encode())
    s3_server.put("odd prefix+ü/inside.txt", b"inside")
    return s3_server


@contextlib.asynccontextmanager
async def opened(origin: str, settings: S3Settings | None) -> AsyncIterator[Origin]:
    instance = origin_from_url(Route("/files/", origin, s3=settings), FAST)
    await instance.open()
    try:
        yield instance
    finally:
        await instance.close()


def s3_origin(server: S3Server, **settings: str) -> contextlib.AbstractAsyncContextManager[Origin]:
    """The test bucket below PREFIX, with the server's credentials unless overridden."""
    return opened(f"s3://{server.bucket}/{PREFIX}", server.settings(**settings))


async def get(origin: Origin, path: str, **fields: str) -> tuple[OriginResponse, bytes]:
    response = await origin.fetch(OriginRequest(path, **fields))  # type: ignore[arg-type]
    try:
        if response.stream is None:
            return response, response.data or b""
        return response, b"".join([chunk async for chunk in response.stream])
    finally:
        await response.close()


# --- objects, ranges, validators ------------------------------------------------------


async def test_small_object_in_memory_large_one_streamed_byte_exact(s3: S3Server) -> None:
    async with s3_origin(s3) as origin:
        small = await origin.fetch(OriginRequest("small.txt"))
        assert (small.status, small.data, small.stream) == (200, SMALL, None)
        big = await origin.fetch(OriginRequest("big.bin"))
        assert big.status == 200 and big.stream is not None and big.data is None
        chunks = [chunk async for chunk in big.stream]
        await big.close()
    assert b"".join(chunks) == BIG
    assert max(map(len, chunks)) <= 64 * 1024  # bounded memory per request
    assert big.headers["Content-Length"] == str(len(BIG))
    assert big.headers["Content-Type"] == "application/octet-stream"


async def test_head_has_the_validators_of_get_and_no_body(s3: S3Server) -> None:
    async with s3_origin(s3) as origin:
        full, _ = await get(origin, "big.bin")
        head = await origin.fetch(OriginRequest("big.bin", "HEAD"))
        await head.close()
    assert (head.status, head.data, head.stream) == (200, None, None)
    for name in ("Content-Length", "Content-Type", "ETag", "Last-Modified"):
        assert head.headers[name] == full.headers[name]


async def test_ranges_on_a_large_object(s3: S3Server) -> None:
    size = len(BIG)
    async with s3_origin(s3) as origin:
        middle, body = await get(origin, "big.bin", range="bytes=1000-2000999")
        assert (middle.status, body) == (206, BIG[1000:2001000])
        assert middle.headers["Content-Range"] == f"bytes 1000-2000999/{size}"
        suffix, body = await get(origin, "big.bin", range="bytes=-10")
        assert (suffix.status, body) == (206, BIG[-10:])
        assert suffix.headers["Content-Range"] == f"bytes {size - 10}-{size - 1}/{size}"
        past, body = await get(origin, "big.bin", range=f"bytes={size}-")
    # moto, like some S3 look-alikes, sends no Content-Range with its 416: it is
    # taken from the ActualObjectSize of the error document.
    assert (past.status, body) == (416, b"")
    assert past.headers == {"Content-Range": f"bytes */{size}"}


async def test_etag_of_a_first_get_answers_304(s3: S3Server) -> None:
    async with s3_origin(s3) as origin:
        first, _ = await get(origin, "big.bin")
        etag = first.headers["ETag"]
        for tags in (etag, f"W/{etag}", f'"other", {etag}', "*"):
            again, body = await get(origin, "big.bin", if_none_match=tags)
            assert (again.status, body) == (304, b""), tags
            assert again.headers["ETag"] == etag
            assert set(again.headers) <= {"ETag", "Last-Modified"}  # moto sends no Last-Modified
        other, body = await get(origin, "big.bin", if_none_match='"other", W/"x"')
    assert (other.status, len(body)) == (200, len(BIG))


async def test_amz_and_other_headers_are_not_passed_on(s3: S3Server) -> None:
    async with s3_origin(s3) as origin:
        response, _ = await get(origin, "small.txt")  # stored with x-amz-meta-owner
    assert set(response.headers) == {"Content-Type", "Content-Length", "ETag", "Last-Modified"}


@pytest.mark.parametrize("name", ODD_NAMES)
async def test_key_names_that_need_percent_encoding(s3: S3Server, name: str) -> None:
    async with s3_origin(s3) as origin:
        response, body = await get(origin, name)
    assert (response.status, body) == (200, name.encode())


async def test_route_prefix_that_needs_percent_encoding(s3: S3Server) -> None:
    async with opened(f"s3://{s3.bucket}/odd prefix+ü/", s3.settings()) as origin:
        _, body = await get(origin, "inside.txt")
    assert body == b"inside"


async def test_route_on_the_whole_bucket(s3: S3Server) -> None:
    async with opened(f"s3://{s3.bucket}/", s3.settings()) as origin:
        _, body = await get(origin, PREFIX + "small.txt")
    assert body == SMALL


# --- failures -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_missing_key_is_not_found(s3: S3Server, method: str) -> None:
    async with s3_origin(s3) as origin:
        with pytest.raises(NotFound):
            await origin.fetch(OriginRequest("missing.txt", method))  # type: ignore[arg-type]


async def test_missing_bucket_is_an_origin_error_not_a_404(s3: S3Server) -> None:
    async with opened("s3://no-such-bucket/", s3.settings()) as origin:
        with pytest.raises(OriginError, match="404 NoSuchBucket"):
            await origin.fetch(OriginRequest("small.txt"))
        with pytest.raises(OriginError, match="no such bucket"):
            await origin.ping()


@pytest.mark.parametrize(
    ("settings", "code"),
    [
        ({"secret_access_key": "wrong-secret-0123456789"}, "403 SignatureDoesNotMatch"),
        ({"access_key_id": "AKIAUNKNOWN000000000"}, "403 InvalidAccessKeyId"),
    ],
)
async def test_wrong_credentials_are_refused(
    s3: S3Server, settings: dict[str, str], code: str
) -> None:
    """The server checks signatures: a wrong secret is an OriginError (502), not data."""
    async with s3_origin(s3, **settings) as origin:
        with pytest.raises(OriginError, match=code):
            await origin.fetch(OriginRequest("small.txt"))
        with pytest.raises(OriginError, match=r"HTTP 403 \(credentials refused"):
            await origin.ping()


async def test_ping(s3: S3Server) -> None:
    async with s3_origin(s3) as origin:
        await origin.ping()


async def test_server_down_is_an_origin_error_quickly(s3: S3Server) -> None:
    settings = S3Settings(f"http://127.0.0.1:{free_port()}", None, "AKIAX", "secret")
    started = time.monotonic()
    async with opened("s3://bucket/", settings) as origin:
        with pytest.raises(OriginError):
            await origin.fetch(OriginRequest("small.txt"))
        with pytest.raises(OriginError):
            await origin.ping()
    assert time.monotonic() - started < 1.0


async def test_server_that_never_answers_times_out() -> None:
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # reads the request, never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    endpoint = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    started = time.monotonic()
    try:
        async with opened("s3://bucket/", S3Settings(endpoint, None, "AKIAX", "secret")) as origin:
            with pytest.raises(OriginTimeout):
                await origin.fetch(OriginRequest("small.txt"))
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    assert time.monotonic() - started < FAST.first_byte + 0.5


# --- credentials, region, endpoint ----------------------------------------------------


def endpoint_only(server: S3Server) -> S3Settings:
    return S3Settings(endpoint_url=server.endpoint_url)


async def test_credentials_and_region_from_the_environment(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_access_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    async with opened(f"s3://{s3.bucket}/{PREFIX}", endpoint_only(s3)) as origin:
        assert isinstance(origin, S3Origin) and origin.region == "eu-west-3"
        _, body = await get(origin, "small.txt")
    assert body == SMALL


async def test_temporary_credentials_send_their_session_token(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An assumed role's credentials only work with X-Amz-Security-Token; the server
    checks that the token is the one issued with them."""
    temporary = s3.temporary_credentials()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", temporary["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", temporary["SecretAccessKey"])
    monkeypatch.setenv("AWS_SESSION_TOKEN", temporary["SessionToken"])
    async with opened(f"s3://{s3.bucket}/{PREFIX}", endpoint_only(s3)) as origin:
        _, body = await get(origin, "small.txt")
    assert body == SMALL
    monkeypatch.setenv("AWS_SESSION_TOKEN", "not-the-token")
    async with opened(f"s3://{s3.bucket}/{PREFIX}", endpoint_only(s3)) as origin:
        with pytest.raises(OriginError, match="InvalidToken"):
            await origin.fetch(OriginRequest("small.txt"))


async def test_endpoint_from_the_environment(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3.endpoint_url)
    settings = S3Settings(None, None, s3.access_key_id, s3.secret_access_key)
    async with opened(f"s3://{s3.bucket}/{PREFIX}", settings) as origin:
        _, body = await get(origin, "small.txt")
    assert body == SMALL


async def test_without_any_credentials_requests_go_unsigned(
    s3: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    """For public buckets; this one is not public, so S3 refuses."""
    with caplog.at_level(logging.WARNING, logger="proxy.origin.s3"):
        async with opened(f"s3://{s3.bucket}/{PREFIX}", endpoint_only(s3)) as origin:
            with pytest.raises(OriginError, match="HTTP 403"):
                await origin.fetch(OriginRequest("small.txt"))
    assert "requests go unsigned" in caplog.text


def test_half_the_credentials_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="go together"):
        S3Origin(Route("/f/", "s3://b/", s3=S3Settings(access_key_id="AKIAX")), FAST)


@pytest.mark.parametrize(
    ("bucket", "region", "endpoint", "expected"),
    [
        ("assets", "us-east-1", None, "https://assets.s3.us-east-1.amazonaws.com/"),
        ("assets", "eu-west-3", None, "https://assets.s3.eu-west-3.amazonaws.com/"),
        ("my.assets", "eu-west-3", None, "https://s3.eu-west-3.amazonaws.com/my.assets/"),
        ("assets", "us-east-1", "http://127.0.0.1:8333", "http://127.0.0.1:8333/assets/"),
        ("assets", "auto", "https://acc.r2.example/", "https://acc.r2.example/assets/"),
    ],
)
def test_bucket_url_addressing(
    bucket: str, region: str, endpoint: str | None, expected: str
) -> None:
    """Virtual-hosted on AWS, path-style below an explicit endpoint or for dotted names."""
    assert bucket_url(bucket, region, endpoint) == expected


def test_keyfront_without_an_s3_route_does_not_import_botocore(tmp_path: Path) -> None:
    code = (
        "import sys; import proxy.app, proxy.cli; from proxy.config import Route, OriginTimeouts;"
        "from proxy.origin import origin_from_url;"
        f"origin_from_url(Route('/f/', 'file://{tmp_path}/'), OriginTimeouts());"
        "sys.exit(any(m.startswith('botocore') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- end to end: keyfront as a real process in front of the S3 server -----------------


@pytest.fixture
def keyfront_on_s3(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[KeyfrontProcess, str]]:
    """keyfront with an s3:// route whose credentials come from the AWS environment, as
    in SPEC section 7's example; yields it and a valid key."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_access_key)
    store = f"sqlite://{tmp_path}/keyfront.db"
    body = f"""
store: {store}
keys:
  secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}
routes:
  - prefix: /request/
    origin: s3://{s3.bucket}/{PREFIX}
    s3: {{endpoint_url: "{s3.endpoint_url}", region: us-east-1}}
"""
    instance = start_keyfront(body, str(tmp_path))
    try:
        yield instance, asyncio.run(_provision_key(store))
    finally:
        assert instance.stop() == 0


async def _provision_key(store_url: str) -> str:
    store = store_from_url(store_url)
    await store.open()
    try:
        key_id = new_key_id()
        await store.create_customer(Customer("acme"))
        await store.create_key(KeyRecord(key_id, "acme", created_at=int(time.time())))
    finally:
        await store.close()
    return KeySigner("pk", {1: SECRET}).mint(key_id)


def test_keyfront_serves_an_s3_route_byte_exact(
    s3: S3Server, keyfront_on_s3: tuple[KeyfrontProcess, str]
) -> None:
    keyfront, key = keyfront_on_s3
    stored = s3.client().head_object(Bucket=s3.bucket, Key=PREFIX + "big.bin")
    connection = http.client.HTTPConnection("127.0.0.1", keyfront.port, timeout=10)
    connection.request("GET", f"/request/big.bin?key={key}")
    response = connection.getresponse()
    body = response.read()
    assert (response.status, body) == (200, BIG)
    assert response.headers["ETag"] == stored["ETag"]
    assert not [name for name in response.headers if name.lower().startswith("x-amz")]
    connection.request("GET", f"/request/big.bin?key={key}", headers={"Range": "bytes=-5"})
    ranged = connection.getresponse()
    assert (ranged.status, ranged.read()) == (206, BIG[-5:])
    connection.request(
        "GET", f"/request/big.bin?key={key}", headers={"If-None-Match": stored["ETag"]}
    )
    assert connection.getresponse().status == 304
    connection.close()
    ready = http.client.HTTPConnection("127.0.0.1", keyfront.admin_port, timeout=10)
    ready.request("GET", "/readyz?origins=1")  # the origin's ping: HEAD of the bucket, signed
    assert ready.getresponse().status == 200
    ready.close()
