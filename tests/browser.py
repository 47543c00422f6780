"""Headless Chromium for the end-to-end tests: what a customer's page does with keyfront.

Debian's `chromium` (`make test` installs it: `make check-tools`), driven by Playwright's
sync API; `playwright install` is never run, its browser downloads are not reachable.
Three things make a browser on a test machine behave as one on the internet:

- names: every `*.test` host resolves to 127.0.0.1 (`--host-resolver-rules`), so pages
  and keyfront are reached as `https://site.test:PORT/` and `https://cdn.test:PORT/`,
  and the browser's referrer and same-site rules see distinct sites;
- trust: certificates from the session's private CA (tests/pki.py) are accepted by the
  CA's SPKI hash (`--ignore-certificate-errors-spki-list`), which Chromium matches
  against every certificate the server presents, so servers send the full chain (a
  leaf alone fails with ERR_CERT_AUTHORITY_INVALID). A chain holding that key passes
  whatever its other errors; any other chain gets Chromium's usual checks;
- pages: `PageOrigin` serves a folder from its own process (tests/page_origin.py),
  over HTTPS with a certificate from the same CA, or over HTTP.

The fixtures are in tests/conftest.py: `private_ca` for the session, `chromium` for a
module (Playwright's sync API holds the thread's event loop while it runs, so a module
using it holds no asyncio tests).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from conftest import free_port, wait_for_port
from pki import ServerCertificate

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Request

TEST_NAMES = "MAP *.test 127.0.0.1"  # Chromium's --host-resolver-rules syntax
PAGE_ORIGIN = Path(__file__).with_name("page_origin.py")


def chromium_path() -> str:
    """Debian's chromium launcher, or the test fails saying how to get it."""
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not on the PATH: run `make test`, which installs Debian's package")
    return path


@contextmanager
def launch_chromium(trusted_spki: Sequence[str]) -> Iterator[Browser]:
    """Headless Chromium mapping `*.test` to 127.0.0.1 and accepting certificate chains
    that hold a key of `trusted_spki` (base64 SHA-256 hashes, `pki.spki_sha256`)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is missing: run `make test` (installs the `test` extra)")
    args = [
        f"--host-resolver-rules={TEST_NAMES}",
        f"--ignore-certificate-errors-spki-list={','.join(trusted_spki)}",
    ]
    with sync_playwright() as playwright:
        # Playwright's default chromium_sandbox=False passes --no-sandbox, which the
        # suite needs as root (containers, CI): Chromium's sandbox refuses to start there.
        browser = playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=args
        )
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def fresh_page(browser: Browser) -> Iterator[Page]:
    """A page in a new browser context: no cache, cookies or open connections of
    another test."""
    context = browser.new_context()
    context.set_default_timeout(10_000)  # a test that waits fails in seconds, not 30 s
    try:
        yield context.new_page()
    finally:
        context.close()


def settled_requests(page: Page) -> list[Request]:
    """The page's requests, each added as it finishes or fails (`request.failure`,
    `request.response()`): a list that grows while the page loads."""
    settled: list[Request] = []

    def settle(request: Request) -> None:  # not list.append: Playwright sets an
        settled.append(request)  # attribute on each handler, which a builtin refuses

    page.on("requestfinished", settle)
    page.on("requestfailed", settle)
    return settled


class PageOrigin:
    """A customer's site: tests/page_origin.py serving `folder` on a free loopback port,
    over HTTPS when given a certificate (its names must cover the hosts used)."""

    def __init__(self, folder: Path, certificate: ServerCertificate | None = None) -> None:
        self.folder = folder
        self.port = free_port()
        self.scheme = "https" if certificate else "http"
        tls = [str(certificate.cert), str(certificate.key)] if certificate else []
        self.process = subprocess.Popen(
            [sys.executable, str(PAGE_ORIGIN), str(folder), str(self.port), *tls],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            raise

    def url(self, host: str, path: str = "/") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
