"""A Redis Cluster reached over TLS: `store: rediss+cluster://` (issue 16: a managed
Redis Cluster with in-transit encryption could not be reached). Three real
redis-server masters with `tls-cluster yes` and a certificate from a private CA made
with openssl; keyfront trusts the CA through SSL_CERT_FILE, as a deployment would add
its CA to the trust store. Records (redis-py), the change feed (pub/sub) and the hot
path's token buckets (keyfront's own RESP client) all go over TLS."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import free_port, start_keyfront, wait_for_port


class TlsCluster:
    def __init__(self, ports: list[int], certs: Path) -> None:
        self.ports = ports
        self.certs = certs

    def cli(self, port: int, *args: str) -> str:
        command = ["redis-cli", "--tls", "--cacert", str(self.certs / "ca.crt"), "-p", str(port)]
        return subprocess.run(
            [*command, *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, check=True, timeout=30)


def _make_certs(folder: Path) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
             "-out", "ca.crt", "-days", "2", "-subj", "/CN=test CA", cwd=folder)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "redis.key", "-out",
             "redis.csr", "-subj", "/CN=127.0.0.1", cwd=folder)  # fmt: skip
    (folder / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "redis.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "redis.crt", "-days", "2", "-extfile", "ext",
             cwd=folder)  # fmt: skip


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[TlsCluster]:
    workdir = Path(tempfile.mkdtemp(prefix="kf-tls-cluster-"))
    _make_certs(workdir)
    ports = [free_port() for _ in range(3)]
    bus_ports = [free_port() for _ in ports]
    processes = []
    for port, bus in zip(ports, bus_ports, strict=True):
        args = ["--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"]
        args += ["--tls-cert-file", "redis.crt", "--tls-key-file", "redis.key"]
        args += ["--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no"]
        args += ["--tls-cluster", "yes", "--tls-replication", "yes"]
        args += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
        args += ["--cluster-port", str(bus), "--save", "", "--appendonly", "no"]
        processes.append(
            subprocess.Popen(
                ["redis-server", *args, "--dir", str(workdir)],
                cwd=workdir,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    cluster = TlsCluster(ports, workdir)
    try:
        for port in ports:
            wait_for_port(port)
        for i, port in enumerate(ports):
            last = min(i * 5462 + 5461, 16383)
            cluster.cli(port, "CLUSTER", "ADDSLOTSRANGE", str(i * 5462), str(last))
        for i, port in enumerate(ports):
            for other, bus in zip(ports[i + 1 :], bus_ports[i + 1 :], strict=True):
                cluster.cli(port, "CLUSTER", "MEET", "127.0.0.1", str(other), str(bus))
        deadline = time.monotonic() + 15
        while not all("cluster_state:ok" in cluster.cli(p, "CLUSTER", "INFO") for p in ports):
            assert time.monotonic() < deadline, "the TLS cluster did not form"
            time.sleep(0.05)
        yield cluster
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        error.close()
        return int(error.code)


def test_keyfront_runs_on_a_redis_cluster_over_tls(
    tls_cluster: TlsCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_cluster.certs / "ca.crt"))
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.txt").write_bytes(b"over tls")
    body = f"""
store: rediss+cluster://127.0.0.1:{tls_cluster.ports[0]}
keys: {{secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}, defaults: {{rate: 100/s, burst: 100}}}}
routes: [{{prefix: /f/, origin: "file://{tmp_path}/files/"}}]
access_log: "off"
"""
    kf = start_keyfront(body, str(tmp_path))
    try:
        kf.given("customers", "create", "acme")
        created = json.loads(kf.given("keys", "create", "--customer", "acme", "--json"))
        key, key_id = created["key"], created["key_id"]
        assert _status(f"{kf.url}/f/a.txt?key={key}") == 200
        # The bucket lives in the cluster, written by the hot path's RESP client over TLS.
        bucket = f"kf:b:{{{key_id}}}"
        found = [tls_cluster.cli(p, "EXISTS", bucket).strip() for p in tls_cluster.ports]
        assert "1" in found, found
        # A revocation reaches the running instance through pub/sub over TLS.
        kf.cli("keys", "revoke", key_id)
        deadline = time.monotonic() + 5
        while _status(f"{kf.url}/f/a.txt?key={key}") != 403:
            assert time.monotonic() < deadline, "the revocation did not arrive"
            time.sleep(0.1)
        ready = _status(f"{kf.admin_url}/readyz")
        assert ready == 200
    finally:
        assert kf.stop() == 0
