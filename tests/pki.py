"""A private certificate authority made with `openssl` for the tests: it issues
server certificates for test names (`cdn.test`, `site.test`) as full-chain files, the
way an operator's ACME client writes them, and gives the base64 SHA-256 of a
certificate's SubjectPublicKeyInfo, which Chromium's `--ignore-certificate-errors-spki-list`
takes (tests/browser.py)."""

from __future__ import annotations

import base64
import hashlib
import itertools
import subprocess
from dataclasses import dataclass
from pathlib import Path


def openssl(*args: str, cwd: Path, stdin: bytes = b"") -> bytes:
    """Run `openssl` in `cwd`; its standard output."""
    done = subprocess.run(
        ["openssl", *args], cwd=cwd, input=stdin, check=True, capture_output=True, timeout=30
    )
    return done.stdout


@dataclass(frozen=True)
class ServerCertificate:
    """A key and its certificate file: the leaf, then the CA (a full chain)."""

    cert: Path
    key: Path


class PrivateCA:
    """A CA in `folder` (an EC P-256 key, valid 2 days) issuing server certificates."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._serials = itertools.count(1001)
        openssl(
            *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2"),
            *("-subj", "/CN=keyfront test CA"),
            *("-addext", "basicConstraints=critical,CA:TRUE"),
            *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
            cwd=folder,
        )

    @property
    def cert(self) -> Path:
        return self.folder / "ca.pem"

    def issue(self, *names: str) -> ServerCertificate:
        """A certificate for DNS `names` (and 127.0.0.1), the first as its subject."""
        out = f"{names[0]}-{next(self._serials)}"
        openssl(
            *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *("-keyout", f"{out}.key", "-out", f"{out}.csr", "-subj", f"/CN={names[0]}"),
            cwd=self.folder,
        )
        alt_names = ",".join([*(f"DNS:{name}" for name in names), "IP:127.0.0.1"])
        (self.folder / f"{out}.ext").write_text(
            f"subjectAltName={alt_names}\nbasicConstraints=CA:FALSE\n"
            "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid\n"
        )
        openssl(
            *("x509", "-req", "-in", f"{out}.csr", "-CA", "ca.pem", "-CAkey", "ca.key"),
            *("-set_serial", out.rsplit("-", 1)[1], "-days", "2", "-out", f"{out}.leaf.pem"),
            *("-extfile", f"{out}.ext"),
            cwd=self.folder,
        )
        chain = self.folder / f"{out}.pem"
        chain.write_bytes((self.folder / f"{out}.leaf.pem").read_bytes() + self.cert.read_bytes())
        return ServerCertificate(chain, self.folder / f"{out}.key")


def spki_sha256(cert: Path) -> str:
    """The base64 SHA-256 of the first certificate's SubjectPublicKeyInfo (DER), as in
    HPKP pins and Chromium's `--ignore-certificate-errors-spki-list`."""
    public_key = openssl("x509", "-in", str(cert), "-noout", "-pubkey", cwd=cert.parent)
    der = openssl("pkey", "-pubin", "-outform", "DER", cwd=cert.parent, stdin=public_key)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()
