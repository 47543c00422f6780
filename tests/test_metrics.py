"""/metrics (SPEC section 10): the SPEC names, parseable, bounded labels, merged workers."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from conftest import start_keyfront

SPEC_NAMES = {
    "keyfront_requests",
    "keyfront_request_duration_seconds",
    "keyfront_response_bytes",
    "keyfront_denied",
    "keyfront_key_cache",
    "keyfront_usage_pending",
    "keyfront_customer_requests",
    "keyfront_customer_bytes",
}


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        family.name: [(sample.labels, sample.value) for sample in family.samples]
        for family in text_string_to_metric_families(text)
    }


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_metrics_count_requests_across_workers_without_key_ids(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.txt").write_bytes(b"a" * 10)
    body = f"""
store: sqlite://{tmp_path}/kf.db
keys: {{secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}, defaults: {{rate: null, burst: null}}}}
routes: [{{prefix: /f/, origin: "file://{tmp_path}/files/"}}]
metrics: {{customer_labels: 2}}
access_log: "off"
"""
    kf = start_keyfront(body, str(tmp_path), "--workers", "2")
    try:
        keys = []
        for customer in ("c1", "c2", "c3"):
            kf.cli("customers", "create", customer)
            created = kf.cli("keys", "create", "--customer", customer, "--json").stdout
            keys.append(json.loads(created)["key"])
        for i, key in enumerate(keys):
            for _ in range(3 - i):  # c1 busiest, c3 least
                assert get(f"{kf.url}/f/a.txt?key={key}") == 200
        assert get(f"{kf.url}/f/a.txt") == 401
        time.sleep(1.5)  # workers publish their counters every second
        families = scrape(kf.admin_url)
        assert set(families) >= SPEC_NAMES
        served = sum(
            v for labels, v in families["keyfront_requests"] if labels.get("status") == "200"
        )
        assert served == 6  # summed over both workers, whichever answered the scrape
        denied = dict((labels["code"], v) for labels, v in families["keyfront_denied"])
        assert denied["key_missing"] == 1
        customers = {labels["customer"]: v for labels, v in families["keyfront_customer_requests"]}
        assert customers == {"c1": 3, "c2": 2, "other": 1}
        text = json.dumps(families)
        assert all(key.split("_")[2] not in text for key in keys)  # never a key id
    finally:
        assert kf.stop() == 0
