"""A customer's page in headless Chromium (issue 16): an `<img>` on an HTTPS page loads
from keyfront over HTTPS (its certificate for cdn.test from the session's private CA,
trusted by SPKI hash), and the same page and keyfront over plain HTTP give the same
answers. The key's referrer rule allows only site.test: the page there shows the image,
the same page on other.test gets 403 `referrer_not_allowed` and the image's onerror.

Chromium sends `Referer` under its default policy, strict-origin-when-cross-origin:
a page's origin only, never its path, to another site. That is why a referrer rule
matches the host (SPEC section 2), and what these tests see keyfront receive."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser

from proxy.admin import PREFIX

from browser import PageOrigin, chromium_path, fresh_page, settled_requests
from conftest import KeyfrontProcess, start_keyfront
from pki import PrivateCA

ADMIN_TOKEN = "operator-token-0123456789"
SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="120" height="60">'
    b'<rect width="120" height="60" fill="#1a7f37"/></svg>'
)
# A 10 KB chart: above compression.min_size, so keyfront sends it compressed
CHART = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="1200" height="600">\n'
    + b"".join(
        b'<rect x="%d" y="%d" width="2" height="%d" fill="#0a5"/>\n' % (x * 3, 600 - h, h)
        for x, h in ((i, (i * 37) % 600) for i in range(200))
    )
    + b"</svg>\n"
)
PAGE = """<!doctype html>
<title>waiting</title>
<p>A customer's page; its logo comes from keyfront:</p>
<img id="logo" src="{src}" alt="logo" {policy}onload="document.title='loaded'"
     onerror="document.title='error'">
"""


@dataclass
class Deployment:
    """keyfront and the customer's site, both over `scheme`."""

    scheme: str
    keyfront: KeyfrontProcess
    pages: PageOrigin
    image: str  # the <img> URL, with a key whose only referrer rule is site.test
    access_log: Path

    def image_for(self, referrer: str, name: str = "logo.svg") -> str:
        """The URL of keyfront's `name` with a new key allowing only `referrer`."""
        body = {"customer_id": "acme", "referrers": [referrer]}
        key = admin(self.keyfront, "/keys", body)["key"]
        return f"{self.scheme}://cdn.test:{self.keyfront.port}/request/{name}?key={key}"

    def page(self, name: str, image: str, policy: str = "") -> str:
        """The path of a new page /shop/`name` showing `image`, with the <img>'s
        `referrerpolicy` when given."""
        attribute = f'referrerpolicy="{policy}" ' if policy else ""
        (self.pages.folder / "shop" / name).write_text(PAGE.format(src=image, policy=attribute))
        return f"/shop/{name}"


def admin(keyfront: KeyfrontProcess, path: str, body: dict[str, object]) -> dict[str, Any]:
    """POST to keyfront's admin API as the operator (no process start, unlike the CLI)."""
    call = urllib.request.Request(
        f"{keyfront.admin_url}{PREFIX}{path}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(call, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


@pytest.fixture(scope="module", params=["https", "http"])
def deployment(
    request: pytest.FixtureRequest, private_ca: PrivateCA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    scheme = request.param
    run = tmp_path_factory.mktemp(f"browser-{scheme}")
    (run / "files").mkdir()
    (run / "files" / "logo.svg").write_bytes(SVG)
    (run / "files" / "chart.svg").write_bytes(CHART)
    (run / "pages" / "shop").mkdir(parents=True)
    tls = ""
    if scheme == "https":
        cdn = private_ca.issue("cdn.test")
        tls = f"tls: {{certificates: [{{cert: {cdn.cert}, key: {cdn.key}}}]}}"
    body = f"""
keys: {{secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}}}
store: sqlite:///{run}/keyfront.db
routes:
  - {{prefix: /request/, origin: "file://{run}/files/"}}
access_log: {run}/access.log
admin: {{token: {ADMIN_TOKEN}}}
{tls}
"""
    keyfront = start_keyfront(body, str(run))
    site = private_ca.issue("site.test", "other.test") if scheme == "https" else None
    pages = PageOrigin(run / "pages", site)
    deployment = Deployment(scheme, keyfront, pages, "", run / "access.log")
    admin(keyfront, "/customers", {"customer_id": "acme"})
    deployment.image = deployment.image_for("site.test")
    deployment.page("index.html", deployment.image)
    yield deployment
    pages.stop()
    keyfront.stop()


@dataclass
class Visit:
    """What the browser saw of the image on one page load."""

    title: str  # "loaded" or "error": which of the <img>'s handlers ran
    natural_width: int
    status: int  # of keyfront's answer as the browser saw it; 0 when it saw none
    failure: str  # the browser's network error, "" when the image arrived
    referer: str  # the Referer the browser sent with the image request


def visit(browser: Browser, page_url: str, image: str, screenshot: Path | None = None) -> Visit:
    with fresh_page(browser) as page:
        settled = settled_requests(page)
        page.goto(page_url)  # returns on `load`: the image has loaded or failed
        request = next(r for r in settled if r.url == image)
        response = request.response()
        width = page.eval_on_selector("#logo", "img => img.naturalWidth")
        if screenshot is not None:
            page.screenshot(path=screenshot)
        return Visit(
            page.title(),
            width,
            response.status if response else 0,
            request.failure or "",
            request.header_value("referer") or "",
        )


def access_line(deployment: Deployment, referrer_host: str, status: int) -> dict[str, object]:
    """keyfront's access log line for an image answered `status` on a page of
    `referrer_host`; the log is written every second."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if deployment.access_log.exists():
            for text in deployment.access_log.read_text().splitlines():
                line = json.loads(text)
                if (line["referrer_host"], line["status"]) == (referrer_host, status):
                    return dict(line)
        time.sleep(0.1)
    raise AssertionError(f"no access log line answered {status} from {referrer_host}")


def denied(keyfront: KeyfrontProcess, code: str) -> float:
    with urllib.request.urlopen(f"{keyfront.admin_url}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(f'keyfront_denied_total{{code="{code}"}} '):
                return float(line.split()[-1])
    return 0.0


def test_the_image_shows_on_the_site_its_key_allows(
    chromium: Browser, deployment: Deployment, tmp_path: Path
) -> None:
    page_url = deployment.pages.url("site.test", "/shop/index.html")
    screenshot = tmp_path / f"site-{deployment.scheme}.png"
    seen = visit(chromium, page_url, deployment.image, screenshot)
    assert (seen.title, seen.natural_width, seen.status, seen.failure) == ("loaded", 120, 200, "")
    # Cross-site, the default policy sends the page's origin only: not /shop/index.html.
    assert seen.referer == deployment.pages.url("site.test", "/")
    line = access_line(deployment, f"site.test:{deployment.pages.port}", 200)
    assert (line["path"], line["bytes"]) == ("/request/logo.svg", len(SVG))
    assert screenshot.stat().st_size > 0


def test_the_image_is_refused_on_another_site(chromium: Browser, deployment: Deployment) -> None:
    before = denied(deployment.keyfront, "referrer_not_allowed")
    page_url = deployment.pages.url("other.test", "/shop/index.html")
    seen = visit(chromium, page_url, deployment.image)
    # Chromium never shows the page keyfront's 403: a JSON body answering an <img> is
    # blocked by Opaque Response Blocking, so the page sees a network error. The
    # status is in keyfront's counters and access log.
    assert (seen.title, seen.natural_width, seen.status) == ("error", 0, 0)
    assert seen.failure == "net::ERR_BLOCKED_BY_ORB"
    assert seen.referer == deployment.pages.url("other.test", "/")
    assert denied(deployment.keyfront, "referrer_not_allowed") == before + 1
    line = access_line(deployment, f"other.test:{deployment.pages.port}", 403)
    assert line["path"] == "/request/logo.svg"


def test_a_path_rule_sees_only_the_origin_a_browser_sends(
    chromium: Browser, deployment: Deployment
) -> None:
    """SPEC section 2: to another site Chromium sends the page's origin, never its
    path, so a rule naming a path refuses the very page it names; only a page that asks
    for its full address to be sent (`referrerpolicy="unsafe-url"`) passes it."""
    # A URL pattern is an origin (RFC 6454): without a port, the scheme's default.
    image = deployment.image_for(deployment.pages.url("site.test", "/shop/*"))
    default = deployment.page("path-rule.html", image)
    seen = visit(chromium, deployment.pages.url("site.test", default), image)
    assert (seen.title, seen.referer) == ("error", deployment.pages.url("site.test", "/"))
    full = deployment.page("full-referrer.html", image, policy="unsafe-url")
    seen = visit(chromium, deployment.pages.url("site.test", full), image)
    assert (seen.title, seen.status) == ("loaded", 200)
    assert seen.referer == deployment.pages.url("site.test", full)


def test_a_compressed_svg_shows_as_the_image_it_is(
    chromium: Browser, deployment: Deployment, tmp_path: Path
) -> None:
    """Issue 17: Chromium asks for br, zstd and gzip; keyfront answers the chart with
    one of them (the first request for a coding gets the identity while the
    representation is made) and the browser draws it at its size."""
    image = deployment.image_for("site.test", "chart.svg")
    page_url = deployment.pages.url("site.test", deployment.page("chart.html", image))
    deadline = time.monotonic() + 10
    while True:
        with fresh_page(chromium) as page:
            settled = settled_requests(page)
            page.goto(page_url)
            request = next(r for r in settled if r.url == image)
            response = request.response()
            assert response is not None and response.status == 200
            headers = response.all_headers()
            width = page.eval_on_selector("#logo", "img => img.naturalWidth")
            assert (page.title(), width) == ("loaded", 1200)
            assert "accept-encoding" in headers.get("vary", "").lower()
            if "content-encoding" in headers:
                page.screenshot(path=tmp_path / f"chart-{deployment.scheme}.png")
                sent = request.header_value("accept-encoding") or ""
                break
        assert time.monotonic() < deadline, "keyfront never sent the chart compressed"
        time.sleep(0.2)
    assert headers["content-encoding"] in ("br", "zstd", "gzip")
    assert headers["content-encoding"] in sent
    # What keyfront sent, as its access log counts it: the compressed size, not 10 KB.
    coded_bytes = int(headers["content-length"])
    assert coded_bytes < len(CHART) // 3
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [json.loads(t) for t in deployment.access_log.read_text().splitlines()]
        if any(x["path"] == "/request/chart.svg" and x["bytes"] == coded_bytes for x in lines):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("no access log line counts the compressed bytes")


def test_a_missing_chromium_fails_saying_that_make_test_installs_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine where nobody installed it
    with pytest.raises(pytest.fail.Exception, match="run `make test`, which installs"):
        chromium_path()
