"""TLS on the public listener (SPEC section 14), keyfront as a real process: a private
CA and two leaf certificates made with `openssl`, clients in Python's `ssl` and curl.
Exact bytes over HTTPS (a cached 1 MB object and a large file:// one, which keyfront
sends with sendfile over plain TCP), SNI, the minimum version, a reload seen by new
handshakes while an open connection keeps its own, the 308 redirect listener, HSTS,
and a mismatched pair refused by `keyfront config check`."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import KEYFRONT, HttpOriginServer, KeyfrontProcess, free_port, start_keyfront

BIG = bytes(range(256)) * 4096  # 1 MiB
LARGE = os.urandom(3 * 1024 * 1024 + 17)  # a file:// object well past any socket buffer
HSTS = "max-age=31536000"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_leaf(folder: Path, name: str, serial: int, out: str) -> None:
    """`out`.pem and `out`.key: a certificate for `name` and 127.0.0.1 signed by the CA."""
    _openssl(
        *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
        *("-keyout", f"{out}.key", "-out", f"{out}.csr", "-subj", f"/CN={name}"),
        cwd=folder,
    )
    (folder / f"{out}.ext").write_text(
        f"subjectAltName=DNS:{name},IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    _openssl(
        *("x509", "-req", "-in", f"{out}.csr", "-CA", "ca.pem", "-CAkey", "ca.key"),
        *("-set_serial", str(serial), "-days", "2", "-out", f"{out}.pem"),
        *("-extfile", f"{out}.ext"),
        cwd=folder,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pki")
    _openssl(
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test CA"),
        *("-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
        cwd=folder,
    )
    make_leaf(folder, "a.test", 1001, "a")
    make_leaf(folder, "b.test", 2001, "b")
    make_leaf(folder, "a.test", 1002, "a2")  # the renewal
    return folder


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpOriginServer]:
    root = tmp_path_factory.mktemp("tls-origin")
    (root / "big.bin").write_bytes(BIG)
    server = HttpOriginServer(str(root))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def served(
    pki: Path, origin: HttpOriginServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[KeyfrontProcess, Path, int]]:
    """keyfront with a's and b's certificates (copies, which the reload test replaces)."""
    run = tmp_path_factory.mktemp("tls-run")
    files = run / "files"
    files.mkdir()
    (files / "large.bin").write_bytes(LARGE)
    for name in ("a", "b"):
        shutil.copy(pki / f"{name}.pem", run / f"{name}.pem")
        shutil.copy(pki / f"{name}.key", run / f"{name}.key")
    redirect_port = free_port()
    body = f"""
keys: {{secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}}}
store: sqlite:///{run}/keyfront.db
routes:
  - {{prefix: /o/, origin: "{origin.url}", auth: none}}
  - {{prefix: /f/, origin: "file://{files}/", auth: none}}
tls:
  certificates:
    - {{cert: {run}/a.pem, key: {run}/a.key}}
    - {{cert: {run}/b.pem, key: {run}/b.key}}
  reload_interval: 1s
redirect_http_listen: 127.0.0.1:{redirect_port}
hsts: {HSTS}
"""
    keyfront = start_keyfront(body, str(run))
    yield keyfront, run, redirect_port
    keyfront.stop()


def client_context(pki: Path, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if maximum is not None:
        context.maximum_version = maximum
    return context


def https(port: int, pki: Path, name: str = "a.test") -> http.client.HTTPSConnection:
    connection = http.client.HTTPSConnection(
        "127.0.0.1", port, context=client_context(pki), timeout=10
    )
    connection.sock = client_context(pki).wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname=name
    )
    return connection


def get(connection: http.client.HTTPConnection, path: str) -> tuple[int, bytes, dict[str, str]]:
    connection.request("GET", path)
    response = connection.getresponse()
    return response.status, response.read(), dict(response.getheaders())


def serial_of(connection: http.client.HTTPSConnection) -> str:
    assert isinstance(connection.sock, ssl.SSLSocket)
    peer = connection.sock.getpeercert()
    return str(peer["serialNumber"])


def test_exact_bytes_over_https_cached_and_from_a_file(
    served: tuple[KeyfrontProcess, Path, int], pki: Path
) -> None:
    keyfront, _, _ = served
    connection = https(keyfront.port, pki)
    for _ in range(2):  # a MISS, then a HIT (sendfile's path over plain TCP)
        status, body, headers = get(connection, "/o/big.bin")
        assert (status, len(body)) == (200, len(BIG))
        assert body == BIG
        assert headers["Strict-Transport-Security"] == HSTS
    assert headers["X-Cache"] == "HIT"
    for _ in range(2):
        status, body, headers = get(connection, "/f/large.bin")
        assert status == 200
        assert body == LARGE
    status, body, headers = get(connection, "/o/absent.bin")
    assert status == 404
    assert headers["Strict-Transport-Security"] == HSTS
    connection.close()


def test_curl_gets_the_exact_bytes(
    served: tuple[KeyfrontProcess, Path, int], pki: Path, tmp_path: Path
) -> None:
    keyfront, _, _ = served
    out = tmp_path / "large.bin"
    subprocess.run(
        [
            *("curl", "-sS", "--fail", "--cacert", str(pki / "ca.pem")),
            *("--resolve", f"a.test:{keyfront.port}:127.0.0.1", "-o", str(out)),
            f"https://a.test:{keyfront.port}/f/large.bin",
        ],
        check=True,
        timeout=20,
    )
    assert out.read_bytes() == LARGE


def test_sni_picks_the_certificate_by_name(
    served: tuple[KeyfrontProcess, Path, int], pki: Path
) -> None:
    keyfront, _, _ = served
    for name in ("a.test", "b.test"):
        with client_context(pki).wrap_socket(
            socket.create_connection(("127.0.0.1", keyfront.port), timeout=10),
            server_hostname=name,
        ) as tls:
            subject = dict(item[0] for item in tls.getpeercert()["subject"])
            assert subject["commonName"] == name
            assert tls.selected_alpn_protocol() in (None, "http/1.1")


def test_tls_1_2_is_refused_below_min_version(
    pki: Path, origin: HttpOriginServer, tmp_path: Path
) -> None:
    body = f"""
keys: {{secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}}}
store: sqlite:///{tmp_path}/keyfront.db
routes:
  - {{prefix: /o/, origin: "{origin.url}", auth: none}}
tls:
  certificates: [{{cert: {pki}/a.pem, key: {pki}/a.key}}]
  min_version: "1.3"
"""
    keyfront = start_keyfront(body, str(tmp_path))
    try:
        old = client_context(pki, maximum=ssl.TLSVersion.TLSv1_2)
        with pytest.raises(ssl.SSLError):
            old.wrap_socket(
                socket.create_connection(("127.0.0.1", keyfront.port), timeout=10),
                server_hostname="a.test",
            )
        with client_context(pki).wrap_socket(
            socket.create_connection(("127.0.0.1", keyfront.port), timeout=10),
            server_hostname="a.test",
        ) as tls:
            assert tls.version() == "TLSv1.3"
    finally:
        keyfront.stop()


def test_redirect_listener_answers_308_with_path_and_query(
    served: tuple[KeyfrontProcess, Path, int],
) -> None:
    keyfront, _, redirect_port = served
    connection = http.client.HTTPConnection("127.0.0.1", redirect_port, timeout=10)
    connection.request("GET", "/o/big.bin?x=1&y=%20", headers={"Host": "A.test:80"})
    response = connection.getresponse()
    response.read()
    assert response.status == 308
    location = f"https://a.test:{keyfront.port}/o/big.bin?x=1&y=%20"
    assert response.getheader("Location") == location
    connection.request("GET", "/x", headers={"Host": "bad host/evil"})
    response = connection.getresponse()
    response.read()
    assert response.status == 400
    connection.close()


def test_hsts_is_on_the_page_for_a_malformed_request(
    served: tuple[KeyfrontProcess, Path, int], pki: Path
) -> None:
    """What aiohttp refuses before the pipeline runs is answered on HTTPS too."""
    keyfront, _, _ = served
    with client_context(pki).wrap_socket(
        socket.create_connection(("127.0.0.1", keyfront.port), timeout=10),
        server_hostname="a.test",
    ) as tls:
        tls.sendall(b"GET /o/big.bin HTTP/1.1\r\nHost: a.test\r\nBad Header\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = tls.recv(4096)
            if not chunk:
                break
            answer += chunk
    head = answer.partition(b"\r\n\r\n")[0].decode()
    assert head.split(" ")[1] == "400"
    assert f"Strict-Transport-Security: {HSTS}" in head.split("\r\n")


def config_check(config: Path) -> subprocess.CompletedProcess[str]:
    """`keyfront config check` on `config`, as an operator runs it."""
    return subprocess.run(
        [KEYFRONT, "config", "check", "-c", str(config)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_mismatched_pair_fails_config_check(pki: Path, tmp_path: Path) -> None:
    config = tmp_path / "keyfront.yaml"
    config.write_text(f"""
keys: {{secrets: {{1: "{"s" * 32}"}}}}
store: sqlite:///{tmp_path}/keyfront.db
routes:
  - {{prefix: /f/, origin: "file://{tmp_path}/", auth: none}}
tls:
  certificates: [{{cert: {pki}/a.pem, key: {pki}/b.key}}]
""")
    checked = config_check(config)
    assert checked.returncode != 0
    assert "tls.certificates[0].key" in checked.stdout + checked.stderr


def make_expired(folder: Path, name: str, pki: Path) -> None:
    """`expired.pem` and `expired.key`: a certificate for `name`, signed by the CA, valid
    for one day in 2020 (`openssl ca` takes explicit dates; `x509 -days` cannot go back)."""
    ca = folder / "expired-ca"
    (ca / "newcerts").mkdir(parents=True)
    (ca / "index.txt").write_text("")
    (ca / "serial").write_text("01\n")
    (folder / "expired-ca.cnf").write_text(
        f"[ca]\ndefault_ca = d\n[d]\ndir = {ca}\ndatabase = $dir/index.txt\n"
        "new_certs_dir = $dir/newcerts\nserial = $dir/serial\ndefault_md = sha256\n"
        "policy = p\ncopy_extensions = copy\n[p]\ncommonName = supplied\n"
    )
    _openssl(
        *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
        *("-keyout", "expired.key", "-out", "expired.csr", "-subj", f"/CN={name}"),
        *("-addext", f"subjectAltName=DNS:{name}"),
        cwd=folder,
    )
    _openssl(
        *("ca", "-batch", "-config", "expired-ca.cnf"),
        *("-cert", str(pki / "ca.pem"), "-keyfile", str(pki / "ca.key")),
        *("-in", "expired.csr", "-out", "expired.pem"),
        *("-startdate", "20200101000000Z", "-enddate", "20200102000000Z"),
        cwd=folder,
    )


def test_an_expired_certificate_fails_config_check(pki: Path, tmp_path: Path) -> None:
    make_expired(tmp_path, "old.test", pki)
    config = tmp_path / "keyfront.yaml"
    config.write_text(f"""
keys: {{secrets: {{1: "{"s" * 32}"}}}}
store: sqlite:///{tmp_path}/keyfront.db
routes:
  - {{prefix: /f/, origin: "file://{tmp_path}/", auth: none}}
tls:
  certificates:
    - {{cert: {pki}/a.pem, key: {pki}/a.key}}
    - {{cert: {tmp_path}/expired.pem, key: {tmp_path}/expired.key}}
""")
    checked = config_check(config)
    assert checked.returncode == 2
    said = checked.stdout + checked.stderr
    assert "tls.certificates[1]" in said and "expired" in said, said


def test_a_renewal_reaches_new_handshakes_and_open_connections_keep_theirs(
    served: tuple[KeyfrontProcess, Path, int], pki: Path
) -> None:
    keyfront, run, _ = served
    before = https(keyfront.port, pki)
    assert get(before, "/o/big.bin")[0] == 200
    assert serial_of(before) == "03E9"  # 1001
    # Replaced as a renewal tool does: new files, then renamed over the old ones.
    for suffix in ("pem", "key"):
        shutil.copy(pki / f"a2.{suffix}", run / f"a.{suffix}.new")
    os.replace(run / "a.key.new", run / "a.key")
    os.replace(run / "a.pem.new", run / "a.pem")
    deadline = time.monotonic() + 1.0 + 1.0 + 1.0  # reload_interval + 1 s + slack
    while True:
        fresh = https(keyfront.port, pki)
        serial = serial_of(fresh)
        fresh.close()
        if serial == "03EA" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert serial == "03EA"  # 1002
    status, body, _ = get(before, "/o/big.bin")  # the connection opened before still works
    assert (status, body) == (200, BIG)
    before.close()


def test_a_renewal_that_fails_to_load_keeps_the_certificate_before(
    served: tuple[KeyfrontProcess, Path, int], pki: Path
) -> None:
    """After the renewal above (serial 1002): a key that does not match is written
    over a.key; new handshakes keep getting 1002, and requests are answered."""
    keyfront, run, _ = served
    shutil.copy(pki / "b.key", run / "a.key.new")
    os.replace(run / "a.key.new", run / "a.key")
    time.sleep(2.5)  # reload_interval (1 s) twice, and slack
    connection = https(keyfront.port, pki)
    assert serial_of(connection) == "03EA"
    assert get(connection, "/o/big.bin")[:2] == (200, BIG)
    connection.close()
    shutil.copy(pki / "a2.key", run / "a.key.new")  # as it was, for the tests after
    os.replace(run / "a.key.new", run / "a.key")


def test_every_worker_serves_https(pki: Path, origin: HttpOriginServer, tmp_path: Path) -> None:
    body = f"""
keys: {{secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}}}
store: sqlite:///{tmp_path}/keyfront.db
routes:
  - {{prefix: /o/, origin: "{origin.url}", auth: none}}
tls:
  certificates: [{{cert: {pki}/a.pem, key: {pki}/a.key}}]
"""
    keyfront = start_keyfront(body, str(tmp_path), "--workers", "2")
    try:
        for _ in range(8):  # new connections: SO_REUSEPORT spreads them over both
            connection = https(keyfront.port, pki)
            assert get(connection, "/o/big.bin")[:2] == (200, BIG)
            connection.close()
    finally:
        keyfront.stop()


def test_the_expiry_of_each_certificate_is_a_metric(
    served: tuple[KeyfrontProcess, Path, int],
) -> None:
    keyfront, _, _ = served
    with urllib.request.urlopen(f"{keyfront.admin_url}/metrics", timeout=10) as response:
        page = response.read().decode()
    series = {
        line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line.startswith("keyfront_tls_certificate_expiry_timestamp_seconds{")
    }
    assert set(series) == {'name="a.test"', 'name="b.test"'}
    for not_after in series.values():  # made with -days 2
        assert time.time() + 86400 < not_after < time.time() + 3 * 86400


def test_the_private_stdlib_decoder_config_read_py_uses_still_exists(pki: Path) -> None:
    """`ssl._ssl._test_decode_cert` is private (proxy/config/read.py says why it is
    used): this fails first, and by name, if a Python release removes it."""
    decoded = ssl._ssl._test_decode_cert(str(pki / "b.pem"))  # type: ignore[attr-defined]
    assert ("DNS", "b.test") in decoded["subjectAltName"]
    assert ssl.cert_time_to_seconds(decoded["notAfter"]) > time.time()


def test_config_check_describes_the_certificates(served: tuple[KeyfrontProcess, Path, int]) -> None:
    keyfront, _, _ = served
    described = keyfront.cli("config", "check").stdout
    assert "tls: TLS 1.2+, files re-read every 1s" in described
    assert "b.test" in described and "-> https:// (308)" in described
