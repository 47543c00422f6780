"""The customer page (SPEC section 15, issue 18) in headless Chromium, against keyfront
as a real process (SQLite store): sign in with a customer token, see the keys, create,
roll and revoke, edit a referrer rule and see its what-if before saving, the charts
drawn, the CSV downloaded; and what must never happen: another customer's keys shown,
a request to another host, a horizontal scroll at 360 px, the token in a URL or in
browser storage, a change without the CSRF token, a hostile key name or object path
run as HTML.

Traffic for the acme key: 5 requests from good.example (allowed), 3 from evil.example
(refused: referrer_not_allowed), one for an object whose name is HTML."""

from __future__ import annotations

import base64
import csv
import http.client
import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Request
from test_admin import ADMIN_TOKEN, Reply, call

from proxy.admin import PREFIX

from conftest import KeyfrontProcess, RedisServer, empty_store_url, start_keyfront

HOSTILE = "<img src=x onerror=\"document.title='pwned'\">"
HOSTILE_FILE = "<img src=x onerror=alert(1)>.txt"
ALERT_SECRET = "whsec_" + base64.b64encode(b"portal-alert-secret-0123456789").decode()


@dataclass
class Site:
    kf: KeyfrontProcess
    tokens: dict[str, str]
    keys: dict[str, dict[str, Any]]  # name -> minted answer
    screenshots: Path

    @property
    def portal(self) -> str:
        return f"{self.kf.admin_url}/portal/"

    def admin(self, method: str, path: str, body: Any = None, token: str = ADMIN_TOKEN) -> Reply:
        return call(self.kf.admin_url, method, PREFIX + path, body, token)

    def get(self, path: str, key: str, referrer: str | None = None) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.kf.port, timeout=10)
        try:
            headers = {"Referer": referrer} if referrer else {}
            conn.request("GET", f"/files/{quote(path)}?key={key}", headers=headers)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("portal")
    files = workdir / "files"
    files.mkdir()
    (files / "a.txt").write_bytes(b"a" * 100)
    (files / HOSTILE_FILE).write_bytes(b"h" * 7)
    config = f"""
store: sqlite://{workdir}/keyfront.db
keys: {{secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}}}
admin: {{token: {ADMIN_TOKEN}}}
alerts: {{secret: {ALERT_SECRET}}}
usage: {{flush_interval: 100ms}}
routes:
  - {{prefix: /files/, origin: "file://{files}/"}}
"""
    kf = start_keyfront(config, str(workdir))
    tokens = {}
    for customer in ("acme", "globex"):
        call(kf.admin_url, "POST", f"{PREFIX}/customers", {"customer_id": customer,
             "quota_requests": 1000})  # fmt: skip
        tokens[customer] = call(kf.admin_url, "POST", f"{PREFIX}/customers/{customer}/tokens",
                                {}).json()["token"]  # fmt: skip
    site = Site(kf, tokens, {}, workdir / "screenshots")
    site.screenshots.mkdir()
    for name, customer, body in (
        ("web", "acme", {"referrers": ["good.example"]}),
        (HOSTILE, "acme", {}),
        ("globex-secret", "globex", {}),
    ):
        minted = site.admin("POST", "/keys", {"name": name, **body}, tokens[customer]).json()
        site.keys[name] = minted
    web = site.keys["web"]["key"]
    for referrer, times, status in (("https://good.example/", 5, 200),
                                    ("https://evil.example/", 3, 403)):  # fmt: skip
        for _ in range(times):
            assert site.get("a.txt", web, referrer) == status
    assert site.get(HOSTILE_FILE, site.keys[HOSTILE]["key"]) == 200
    _wait_for(site, site.keys["web"]["key_id"], requests=5)
    _wait_for(site, site.keys[HOSTILE]["key_id"], requests=1)
    yield site
    assert kf.stop() == 0


def _wait_for(site: Site, key_id: str, requests: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        data = site.admin("GET", f"/analytics?key={key_id}&by=hour").json()
        if data["counts"]["requests"] == requests and data["objects"]:
            return
        time.sleep(0.1)
    pytest.fail(f"analytics not flushed: {data}")


@dataclass
class Tab:
    """A page in its own browser context, recording every request it makes."""

    page: Page
    context: BrowserContext
    requests: list[Request] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


@contextmanager
def tab(browser: Browser, site: Site, width: int = 1100) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": width, "height": 900}, accept_downloads=True)
    context.set_default_timeout(10_000)
    try:
        page = context.new_page()
        seen = Tab(page, context)

        def request(r: Request) -> None:  # not list.append: Playwright sets an attribute
            seen.requests.append(r)  # on each handler, which a builtin refuses

        page.on("request", request)

        def dialog(d: Any) -> None:
            seen.dialogs.append(d.message)
            d.accept()

        page.on("dialog", dialog)
        yield seen
        # No request of the page went anywhere but keyfront's admin listener.
        assert [r.url for r in seen.requests if not r.url.startswith(site.kf.admin_url)] == []
    finally:
        context.close()


def sign_in(t: Tab, site: Site, token: str) -> None:
    t.page.goto(site.portal)
    t.page.fill("#token", token)
    t.page.click("button[type=submit]")
    t.page.wait_for_selector("header .who")


def session_cookie(t: Tab) -> dict[str, Any]:
    (cookie,) = [c for c in t.context.cookies() if c["name"] == "keyfront_portal"]
    return dict(cookie)


def csrf(t: Tab) -> str:
    return str(t.page.get_attribute("meta[name=csrf-token]", "content"))


def no_horizontal_scroll(page: Page) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


# --- signing in -------------------------------------------------------------------------


def test_a_customer_signs_in_and_sees_its_own_keys_only(chromium: Browser, site: Site) -> None:
    with tab(chromium, site) as t:
        sign_in(t, site, site.tokens["acme"])
        text = t.page.inner_text("main")
        assert "web" in text and site.keys["web"]["key_id"] in text
        assert "globex" not in text and site.keys["globex-secret"]["key_id"] not in text
        cookie = session_cookie(t)
        flags = (cookie["httpOnly"], cookie["sameSite"], cookie["path"])
        assert flags == (True, "Strict", "/portal/")
        assert cookie["secure"] is False  # plain HTTP on loopback: Secure would drop it
        token = site.tokens["acme"]
        assert [r.url for r in t.requests if token in r.url] == []
        sent = [r.url for r in t.requests if token in (r.post_data or "")]
        assert sent == [f"{site.portal}sign-in"]  # the form's one POST, never again
        storage = t.page.evaluate("JSON.stringify([{...localStorage}, {...sessionStorage}])")
        assert token not in storage and token not in cookie["value"]
        assert "Last used" in text and "Plan" in text
        assert "1,000" in t.page.inner_text("#plan")  # the pooled quota of 1,000 requests


def test_another_customers_key_is_refused_in_urls_and_forms(chromium: Browser, site: Site) -> None:
    other = site.keys["globex-secret"]["key_id"]
    with tab(chromium, site) as t:
        sign_in(t, site, site.tokens["acme"])
        for url in (f"keys/{other}", f"keys/{other}/usage.csv", "?customer=globex"):
            response = t.page.goto(site.portal + url)
            assert response is not None and response.status == 404
            assert "globex-secret" not in t.page.content()
        t.page.goto(site.portal)
        token = csrf(t)
        for action in ("revoke", "roll", "allow"):
            answer = t.page.request.post(f"{site.portal}keys/{other}/{action}",
                                         form={"csrf": token, "host": "x.example"},
                                         headers={"Origin": site.kf.admin_url})  # fmt: skip
            assert answer.status == 404, action
        answer = t.page.request.post(f"{site.portal}keys", form={"csrf": token, "name": "x",
                                     "customer_id": "globex"},
                                     headers={"Origin": site.kf.admin_url})  # fmt: skip
        assert answer.status == 404
    assert site.admin("GET", f"/keys/{other}").json()["status"] == "active"
    assert [k["name"] for k in site.admin("GET", "/keys?customer=globex").json()] == [
        "globex-secret"
    ]


def test_a_wrong_token_is_refused_and_the_operator_picks_a_customer(
    chromium: Browser, site: Site
) -> None:
    with tab(chromium, site) as t:
        t.page.goto(site.portal)
        t.page.fill("#token", "kfc_" + "x" * 43)
        t.page.click("button[type=submit]")
        assert "not valid" in t.page.inner_text("main")
        assert [c for c in t.context.cookies() if c["name"] == "keyfront_portal"] == []
        sign_in(t, site, ADMIN_TOKEN)
        assert t.page.inner_text("header .who") == "operator"
        t.page.select_option("#customer", "globex")
        t.page.click(".picker button")
        assert "globex-secret" in t.page.inner_text("#keys")
        assert "web" not in t.page.inner_text("#keys")


def test_sign_out_and_a_revoked_token_end_the_session(chromium: Browser, site: Site) -> None:
    minted = site.admin("POST", "/customers/acme/tokens", {"name": "short-lived"}).json()
    with tab(chromium, site) as t:
        sign_in(t, site, minted["token"])
        site.admin("DELETE", f"/customers/acme/tokens/{minted['token_id']}")
        t.page.reload()
        assert t.page.is_visible("#token")  # back at the sign-in form
        sign_in(t, site, site.tokens["acme"])
        t.page.click("header button")
        assert t.page.is_visible("#token") and "Signed out" in t.page.inner_text("main")
        assert [c for c in t.context.cookies() if c["name"] == "keyfront_portal"] == []


# --- changes -----------------------------------------------------------------------------


def test_a_change_without_the_csrf_token_or_from_another_origin_is_refused(
    chromium: Browser, site: Site
) -> None:
    key_id = site.keys["web"]["key_id"]
    with tab(chromium, site) as t:
        sign_in(t, site, site.tokens["acme"])
        url, own = f"{site.portal}keys/{key_id}/revoke", {"Origin": site.kf.admin_url}
        for form, headers in (({}, own), ({"csrf": "forged"}, own),
                              ({"csrf": csrf(t)}, {"Origin": "https://evil.example"})):  # fmt: skip
            answer = t.page.request.post(url, form=form, headers=headers)
            assert answer.status == 403, (form, headers)
    assert site.admin("GET", f"/keys/{key_id}").json()["status"] == "active"


def test_the_operator_sets_billing_id_and_alert_webhook_and_the_customer_reads_them(
    chromium: Browser, site: Site
) -> None:
    # Issue 19: the customer record's billing id and alert webhook on the page, changed
    # only by the operator through PATCH /customers/{id}'s action (its SSRF rules and
    # messages), read by the customer with its own alert secret.
    hook = "https://hooks.globex.example/keyfront"
    with tab(chromium, site) as t:
        sign_in(t, site, ADMIN_TOKEN)
        t.page.goto(f"{site.portal}?customer=globex")
        t.page.fill("#billing_id", "cus_Globex42")
        t.page.fill("#alert_webhook", hook)
        t.page.click("#billing button")
        assert "Billing id and alert webhook saved" in t.page.inner_text("main")
        assert t.page.inner_text("#billing-id") == "cus_Globex42"
        assert t.page.inner_text("#alert-webhook") == hook
        record = site.admin("GET", "/customers/globex").json()
        assert (record["billing_id"], record["alert_webhook"]) == ("cus_Globex42", hook)
        t.page.screenshot(path=site.screenshots / "billing-operator.png", full_page=True)

        refused = site.admin("PATCH", "/customers/globex", {"alert_webhook": "http://10.0.0.1/"})
        assert refused.status == 400
        t.page.fill("#alert_webhook", "http://10.0.0.1/")
        t.page.click("#billing button")
        assert refused.json()["error"]["message"] in t.page.inner_text("main .error")
        assert "plain http only to" in t.page.inner_text("main .error")
        assert site.admin("GET", "/customers/globex").json()["alert_webhook"] == hook

    token = site.tokens["globex"]
    mine = site.admin("GET", "/me", token=token).json()
    assert mine["alert_secret"].startswith("whsec_") and mine["alert_secret"] != ALERT_SECRET
    with tab(chromium, site) as t:
        sign_in(t, site, token)
        assert t.page.inner_text("#billing-id") == "cus_Globex42"
        assert t.page.inner_text("#alert-webhook") == hook
        assert t.page.inner_text("#alert-secret") == mine["alert_secret"]
        assert t.page.locator("#billing input, #billing button").count() == 0  # read-only
        t.page.screenshot(path=site.screenshots / "billing-customer.png", full_page=True)
        # As in the API, a customer's token may not change its own record, even with
        # the page's own session, Origin and CSRF token.
        answer = t.page.request.post(
            f"{site.portal}customer",
            form={"csrf": csrf(t), "customer_id": "globex", "billing_id": "cus_mine"},
            headers={"Origin": site.kf.admin_url},
        )
        assert answer.status == 403 and "only the operator" in answer.text()
        api = site.admin("PATCH", "/customers/globex", {"billing_id": "cus_mine"}, token)
        assert api.status == 403
    assert site.admin("GET", "/customers/globex").json()["billing_id"] == "cus_Globex42"


def test_create_shows_the_key_once_and_revoke_ends_it(chromium: Browser, site: Site) -> None:
    with tab(chromium, site) as t:
        sign_in(t, site, site.tokens["acme"])
        t.page.fill("#new-name", "mobile app")
        t.page.click("#create button")
        key = t.page.inner_text("#minted-key")
        assert key.startswith("pk_1_") and site.get("a.txt", key) == 200
        t.page.click("text=Go to the key")
        assert key not in t.page.content()  # shown once: the key's page has its id only
        t.page.click("#actions button.danger")  # confirmed in the dialog
        assert t.dialogs and "Revoke" in t.dialogs[0]
        assert "revoked" in t.page.inner_text("h1")
    deadline = time.monotonic() + 3  # a revocation takes effect within a second (SPEC 2)
    while site.get("a.txt", key) != 403 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert site.get("a.txt", key) == 403


def test_roll_shows_the_new_key_and_the_old_ones_traffic(
    chromium: Browser, site: Site, tmp_path: Path
) -> None:
    old = site.admin("POST", "/keys", {"name": "rolled"}, site.tokens["acme"]).json()
    with tab(chromium, site) as t:
        sign_in(t, site, site.tokens["acme"])
        t.page.goto(f"{site.portal}keys/{old['key_id']}")
        t.page.select_option("#grace", "1h")
        t.page.click("#actions form[action$=roll] button")
        new = t.page.inner_text("#minted-key")
        assert new.startswith("pk_1_") and new != old["key"]
        assert "keeps working until" in t.page.inner_text("#old-key")
        assert t.page.locator("#old-key svg").count() == 1
        t.page.screenshot(path=tmp_path / "rolled.png", full_page=True)
    assert site.get("a.txt", new) == 200 and site.get("a.txt", old["key"]) == 200


def test_editing_a_referrer_rule_shows_its_what_if_before_saving(
    chromium: Browser, site: Site, tmp_path: Path
) -> None:
    minted = site.admin("POST", "/keys", {"name": "edited", "referrers": ["good.example"]},
                        site.tokens["acme"]).json()  # fmt: skip
    for _ in range(2):
        assert site.get("a.txt", minted["key"], "https://shop.example/") == 403
    assert site.get("a.txt", minted["key"], "https://good.example/") == 200
    _wait_for(site, minted["key_id"], requests=1)
    with tab(chromium, site) as t:
        sign_in(t, site, site.tokens["acme"])
        t.page.goto(f"{site.portal}keys/{minted['key_id']}")
        t.page.fill("#referrers", "shop.example")  # portal.js asks while it is edited
        t.page.wait_for_selector("#what-if .would-allow")
        live = t.page.inner_text("#what-if")
        assert t.page.inner_text(".would-refuse") == "1" and "good.example (1)" in live
        assert t.page.inner_text(".would-allow") == "2" and "shop.example (2)" in live
        t.page.fill("#referrers", "shop.example\nnot a pattern/")
        t.page.wait_for_selector("#what-if .error")  # the API's 400, shown in place
        assert t.page.is_hidden("button[value=save]")
        t.page.fill("#referrers", "shop.example")
        t.page.click("text=Check what would change")  # the same answer without script
        assert t.page.inner_text("#what-if") == live
        t.page.locator("#restrictions").screenshot(path=tmp_path / "what-if.png")
        assert site.admin("GET", f"/keys/{minted['key_id']}").json()["referrers"] == [
            "good.example"
        ]  # checked, not saved
        t.page.click("button[value=save]")
        assert "Restrictions saved" in t.page.inner_text("main")
    assert site.admin("GET", f"/keys/{minted['key_id']}").json()["referrers"] == ["shop.example"]


def test_one_click_allows_a_refused_referrer(chromium: Browser, site: Site) -> None:
    minted = site.admin("POST", "/keys", {"name": "allow", "referrers": ["good.example"]},
                        site.tokens["acme"]).json()  # fmt: skip
    assert site.get("a.txt", minted["key"], "https://blog.example/") == 403
    _wait_for_refusal(site, minted["key_id"])
    with tab(chromium, site) as t:
        sign_in(t, site, site.tokens["acme"])
        t.page.goto(f"{site.portal}keys/{minted['key_id']}")
        t.page.click("#top-referrers tr.refused button")
        assert "Referrer allowed" in t.page.inner_text("main")
    assert site.get("a.txt", minted["key"], "https://blog.example/") == 200


def _wait_for_refusal(site: Site, key_id: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if site.admin("GET", f"/analytics?key={key_id}&by=hour").json()["referrers"]:
            return
        time.sleep(0.1)
    pytest.fail("the refusal was not flushed")


# --- what the page shows ------------------------------------------------------------------


def test_the_key_page_draws_charts_lists_and_downloads_the_csv(
    chromium: Browser, site: Site, tmp_path: Path
) -> None:
    key_id = site.keys["web"]["key_id"]
    with tab(chromium, site) as t:
        sign_in(t, site, site.tokens["acme"])
        t.page.screenshot(path=tmp_path / "keys-desktop.png", full_page=True)
        t.page.goto(f"{site.portal}keys/{key_id}")
        charts = t.page.locator("figure.chart")
        assert charts.count() == 4
        values = {
            charts.nth(i).locator("figcaption").inner_text(): [
                float(v) for v in charts.nth(i).locator("rect[data-value]").evaluate_all(
                    "rects => rects.map(r => r.dataset.value)")
            ]
            for i in range(4)
        }  # fmt: skip
        assert sum(values["Requests served"]) == 5
        assert sum(values["Bytes sent"]) == 500
        assert sum(values["Refusals by code"]) == 3
        t.page.screenshot(path=tmp_path / "key-desktop.png", full_page=True)
        t.page.click("text=Show by day")
        assert t.page.inner_text("#traffic h2") == "Traffic by day"
        by_day = t.page.locator("figure.chart").first.locator("rect[data-value]")
        assert [float(v) for v in by_day.evaluate_all("rs => rs.map(r => r.dataset.value)")] == [5]
        referrers = t.page.inner_text("#top-referrers")
        assert "good.example" in referrers and "evil.example" in referrers
        assert t.page.locator("#top-referrers tr.refused button").inner_text() == "Allow"
        assert "/files/a.txt" in t.page.inner_text("#top-objects")
        # The key's own quota: the customer's plan cap of 1,000 requests a month.
        quota = t.page.inner_text("#quota")
        assert "5 used of 1,000" in quota and "995 left" in quota
        assert "At this month's pace it" in quota
        with t.page.expect_download() as download:
            t.page.click("text=Download usage by day (CSV)")
        rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
        assert sum(int(r["requests"]) for r in rows) == 5
        assert sum(int(r.get("denied_referrer_not_allowed") or 0) for r in rows) == 3


def test_the_pages_fit_360_px_without_a_horizontal_scroll(
    chromium: Browser, site: Site, tmp_path: Path
) -> None:
    with tab(chromium, site, width=360) as t:
        sign_in(t, site, site.tokens["acme"])
        assert no_horizontal_scroll(t.page)
        t.page.screenshot(path=tmp_path / "keys-360.png", full_page=True)
        t.page.goto(f"{site.portal}keys/{site.keys['web']['key_id']}")
        assert no_horizontal_scroll(t.page)
        assert t.page.evaluate("document.documentElement.scrollWidth") <= 360
        t.page.screenshot(path=tmp_path / "key-360.png", full_page=True)


def test_hostile_names_and_paths_are_shown_as_text(chromium: Browser, site: Site) -> None:
    with tab(chromium, site) as t:
        sign_in(t, site, site.tokens["acme"])
        assert HOSTILE in t.page.inner_text("#keys")
        t.page.goto(f"{site.portal}keys/{site.keys[HOSTILE]['key_id']}")
        assert HOSTILE in t.page.inner_text("h1")
        assert "/files/" + HOSTILE_FILE in t.page.inner_text("#top-objects")
        assert t.page.locator("img").count() == 0
        assert t.page.title() != "pwned" and t.dialogs == []


def test_the_page_sends_a_strict_content_security_policy(site: Site) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", site.kf.admin_port, timeout=10)
    conn.request("GET", "/portal/")
    response = conn.getresponse()
    response.read()
    conn.close()
    policy = response.getheader("Content-Security-Policy") or ""
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    assert response.getheader("X-Frame-Options") == "DENY"
    assert json.dumps(policy)  # a plain ASCII header


# --- sessions across instances -------------------------------------------------------------


def test_a_session_made_on_one_instance_works_on_another_sharing_redis(
    chromium: Browser, redis_server: RedisServer, tmp_path: Path
) -> None:
    """The session is a sealed cookie, not a row in one process's table: the next page
    may be served by another worker or instance (here two keyfronts on one Redis), and
    that one reads it too. Cookies are per host, not per port, so one browser sends
    the cookie it got from the first to the second."""
    store = empty_store_url("redis", redis_server, "", db=7)
    config = f"""
store: {store}
keys: {{secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}}}
admin: {{token: {ADMIN_TOKEN}}}
routes:
  - {{prefix: /files/, origin: "file://{tmp_path}/"}}
"""
    first = start_keyfront(config, str(tmp_path))
    second = start_keyfront(config, str(tmp_path))
    try:
        call(first.admin_url, "POST", f"{PREFIX}/customers", {"customer_id": "acme"})
        token = call(first.admin_url, "POST", f"{PREFIX}/customers/acme/tokens", {}).json()
        call(first.admin_url, "POST", f"{PREFIX}/keys", {"name": "on redis"}, token["token"])
        context = chromium.new_context()
        context.set_default_timeout(10_000)
        try:
            page = context.new_page()
            page.goto(f"{first.admin_url}/portal/")
            page.fill("#token", token["token"])
            page.click("button[type=submit]")
            page.goto(f"{second.admin_url}/portal/")
            assert "on redis" in page.inner_text("#keys")
            page.click("header button")  # signed out on the second: gone on both
            page.goto(f"{first.admin_url}/portal/")
            assert page.is_visible("#token")
        finally:
            context.close()
    finally:
        assert first.stop() == 0 and second.stop() == 0


def test_without_an_admin_token_the_page_is_off(tmp_path: Path) -> None:
    """As the admin API: customer tokens work only beside admin.token."""
    config = f"""
store: sqlite://{tmp_path}/keyfront.db
keys: {{secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}}}
routes:
  - {{prefix: /files/, origin: "file://{tmp_path}/"}}
"""
    kf = start_keyfront(config, str(tmp_path))
    try:
        for method, path in (("GET", "/portal/"), ("POST", "/portal/sign-in")):
            conn = http.client.HTTPConnection("127.0.0.1", kf.admin_port, timeout=10)
            conn.request(method, path, body=b"token=x" if method == "POST" else None,
                         headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
            response = conn.getresponse()
            assert response.status == 503
            assert b"the customer page is off" in response.read()
            conn.close()
    finally:
        assert kf.stop() == 0
