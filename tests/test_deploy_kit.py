"""The deploy kit (issue 16): Kubernetes manifests, Prometheus alerts and a Grafana
dashboard, a systemd unit, the Dockerfile and the compose example. Each is checked for
what an SRE relies on: probes on the right endpoints, a stop grace above
`shutdown_timeout`, a cache volume sized to `cache.max_size`, non-root read-only pods,
an admin port reachable by monitoring only, Redis persistent and never evicting, and
every metric a query names present on a live keyfront's /metrics.

Kubernetes: `kubectl kustomize` renders the base and the example overlay when kubectl
is on the PATH. It is not part of a fresh machine (here it came from a package with no
apt source) and `make test` does not install it, so without it the base's documents are
loaded as kustomize would list them (resources plus the generated ConfigMap), and the
overlay's references are checked: every file it names exists and parses, and its
cache volume fits its own config.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import Config, load
from proxy.units import parse_duration

from conftest import KEYFRONT, SECRET, HttpOriginServer, start_keyfront

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
MONITORING = DEPLOY / "monitoring"
KUBECTL = shutil.which("kubectl")
PROMTOOL = shutil.which("promtool")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
# What the shipped configs' ${VAR}s get in these tests: any values that pass validation.
ENV = {
    "KEYFRONT_KEY_SECRET": SECRET,
    "KEYFRONT_ADMIN_TOKEN": "test-admin-token-0123456789",
    "KEYFRONT_REDIS_URL": "rediss://:password@redis.example.internal:6380/0",
}

# Metrics that keyfront does not export yet, each named with the issue item that adds
# it. Any other name a query uses must be on the live /metrics page: a typo fails. When
# keyfront starts exporting one, the test says to remove it from here.
NOT_YET_EXPORTED: set[str] = set()
# Series Prometheus makes itself, not keyfront.
PROMETHEUS_OWN = {"up"}
# PromQL functions, aggregations and keywords the kit's queries may use.
PROMQL_WORDS = {
    *("sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "stddev"),
    *("rate", "irate", "increase", "deriv", "delta", "histogram_quantile", "time"),
    *("label_replace", "clamp_min", "clamp_max", "abs", "absent", "vector", "scalar"),
    *("by", "without", "on", "ignoring", "group_left", "group_right"),
    *("and", "or", "unless", "bool", "offset"),
    "label_values",  # Grafana's template variable query
}


# --- Kubernetes --------------------------------------------------------------------


def kubernetes_objects(directory: Path) -> list[dict[str, Any]]:
    """The objects `directory` (a kustomization) deploys: rendered by kubectl when it
    is here, else (the base only) its resources plus the ConfigMap it generates."""
    if KUBECTL:
        rendered = subprocess.run(
            [KUBECTL, "kustomize", str(directory)],
            capture_output=True, text=True, check=True, timeout=30,
        )  # fmt: skip
        return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    kustomization = _yaml(directory / "kustomization.yaml")
    objects = [doc for name in kustomization["resources"] for doc in _yaml_all(directory / name)]
    for generator in kustomization.get("configMapGenerator", []):
        data = {Path(f).name: (directory / f).read_text() for f in generator["files"]}
        objects.append(
            {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": generator["name"]}, "data": data}
        )  # fmt: skip
    return objects


KUBERNETES_TREES = ["base", "overlays/example"] if KUBECTL else ["base"]


@pytest.mark.parametrize("tree", KUBERNETES_TREES)
def test_kubernetes_deployment_probes_grace_resources_and_hardening(
    tree: str, tmp_path: Path
) -> None:
    objects = kubernetes_objects(KUBERNETES / tree)
    deployment = _one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config = _config_of(objects, pod, tmp_path)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["http"] == config.listen.port
    # The admin listener on the pod network, so that Prometheus can scrape it.
    assert (config.admin_listen.host, config.admin_listen.port) == ("0.0.0.0", ports["admin"])

    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    assert readiness["httpGet"]["path"] == "/readyz"
    assert liveness["httpGet"]["path"] == "/healthz"
    for probe in (readiness, liveness):
        assert ports[probe["httpGet"]["port"]] == config.admin_listen.port

    # SIGTERM comes after the preStop pause; keyfront then drains for up to
    # shutdown_timeout and flushes usage, all before the grace period's SIGKILL.
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] >= int(command[1]) + config.shutdown_timeout + 5

    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), kind
    assert config.workers <= _quantity(resources["limits"]["cpu"])

    # The cache volume holds cache.max_size plus objects being written.
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    cache = volumes[mounts[config.cache.dir]]["emptyDir"]["sizeLimit"]
    assert _quantity(cache) >= config.cache.max_size + config.cache.max_object_size
    assert _quantity(resources["limits"]["ephemeral-storage"]) >= _quantity(cache)
    assert "/tmp" in mounts  # the supervisor's metrics folder, on a read-only root

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    hardening = container["securityContext"]
    assert hardening["readOnlyRootFilesystem"] is True
    assert hardening["allowPrivilegeEscalation"] is False
    assert hardening["capabilities"]["drop"] == ["ALL"]

    # Every ${VAR} of the config is given, the secrets from a Secret, never inline.
    env = {item["name"]: item for item in container["env"]}
    variables = set(
        re.findall(r"\$\{([A-Z_]+)", json.dumps(yaml.safe_load(_config_text(objects, pod))))
    )
    assert variables == {"KEYFRONT_KEY_SECRET", "KEYFRONT_ADMIN_TOKEN", "KEYFRONT_REDIS_URL"}
    for name in variables:
        assert "secretKeyRef" in env[name]["valueFrom"], name
    assert len({env[name]["valueFrom"]["secretKeyRef"]["name"] for name in variables}) == 1


@pytest.mark.parametrize("tree", KUBERNETES_TREES)
def test_kubernetes_services_budget_autoscaler_network_policy_and_scrape(tree: str) -> None:
    objects = kubernetes_objects(KUBERNETES / tree)
    deployment = _one(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    assert "replicas" not in deployment["spec"]  # the autoscaler owns the count

    services = {s["metadata"]["name"]: s for s in objects if s["kind"] == "Service"}
    public, admin = services["keyfront"], services["keyfront-admin"]
    for service in (public, admin):
        assert _selects(service["spec"]["selector"], pod_labels)
    # The public Service (a LoadBalancer in the overlay) never carries the admin port.
    assert [port["targetPort"] for port in public["spec"]["ports"]] == ["http"]
    assert [port["targetPort"] for port in admin["spec"]["ports"]] == ["admin"]
    assert admin["spec"]["type"] == "ClusterIP"

    budget = _one(objects, "PodDisruptionBudget")
    autoscaler = _one(objects, "HorizontalPodAutoscaler")
    assert _selects(budget["spec"]["selector"]["matchLabels"], pod_labels)
    assert autoscaler["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert autoscaler["spec"]["minReplicas"] >= 2
    assert budget["spec"]["maxUnavailable"] < autoscaler["spec"]["minReplicas"]

    # The admin port only from the monitoring namespace; the public port from anywhere.
    policy = _one(objects, "NetworkPolicy")
    assert _selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    by_port = {rule["ports"][0]["port"]: rule for rule in policy["spec"]["ingress"]}
    assert set(by_port) == {"http", "admin"}
    assert "from" not in by_port["http"]
    assert by_port["admin"]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]

    monitor = _one(objects, "ServiceMonitor")
    assert _selects(monitor["spec"]["selector"]["matchLabels"], admin["metadata"]["labels"])
    assert not _selects(monitor["spec"]["selector"]["matchLabels"], public["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == (admin["spec"]["ports"][0]["name"], "/metrics")
    assert _one(objects, "ServiceAccount")["automountServiceAccountToken"] is False


def test_kubernetes_overlay_references_and_its_redis() -> None:
    """Without kubectl this is what is checked of the overlay; with it, the rendered
    overlay passes the tests above too."""
    overlay = KUBERNETES / "overlays" / "example"
    kustomization = _yaml(overlay / "kustomization.yaml")
    assert "../../base" in kustomization["resources"]
    for name in kustomization["resources"]:
        assert (overlay / name).exists(), name
    named = [p["path"] for p in kustomization["patches"] if "path" in p]
    for name in named:
        assert _yaml(overlay / name)["metadata"]["name"] == "keyfront", name
    (generator,) = kustomization["configMapGenerator"]
    assert (generator["name"], generator["behavior"]) == ("keyfront-config", "replace")
    config = load(str(overlay / generator["files"][0]), ENV)
    # The overlay's cache volume follows its own cache.max_size.
    volume = _yaml(overlay / "cache-volume.yaml")["spec"]["template"]["spec"]["volumes"][0]
    size = _quantity(volume["emptyDir"]["sizeLimit"])
    assert size >= config.cache.max_size + config.cache.max_object_size
    # It shows both ways to reach an existing Redis, from the Secret the base reads.
    text = (overlay / "kustomization.yaml").read_text()
    assert "rediss://" in text and "redis+cluster://" in text
    assert "redis-url=" in text and "keyfront-secrets" in text


# --- monitoring --------------------------------------------------------------------


def test_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    assert PROMTOOL is not None, "promtool is missing: `make test` installs it (Debian: prometheus)"
    for command in (
        ["check", "rules", "keyfront-rules.yaml"],
        ["test", "rules", "keyfront-rules.test.yaml"],
    ):
        done = _run(PROMTOOL, *command, cwd=MONITORING)
        assert done.returncode == 0, done.stdout + done.stderr
    alerts = {rule["alert"] for rule in _rules()}
    assert {
        "KeyfrontHighErrorRate",
        "KeyfrontStoreUnreachable",
        "KeyfrontUsageBacklogGrowing",
        "KeyfrontCacheWriteErrors",
        "KeyfrontOriginErrors",
        "KeyfrontCertificateExpiringSoon",
    } <= alerts
    expiry = next(r for r in _rules() if r["alert"] == "KeyfrontCertificateExpiringSoon")
    assert "14 * 86400" in expiry["expr"]


def test_dashboard_is_grafana_json_over_the_data_source_variable() -> None:
    dashboard = json.loads((MONITORING / "keyfront-dashboard.json").read_text())
    panels = list(_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    queried = [panel for panel in panels if panel.get("targets")]
    assert len(queried) >= 20
    for panel in queried:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]
    titles = " ".join(panel["title"].lower() for panel in panels)
    for topic in ("status", "refusals", "hit ratio", "cache size", "origin", "store errors"):
        assert topic in titles, topic
    for topic in ("breaker", "usage backlog", "top customers"):
        assert topic in titles, topic


def test_every_metric_the_dashboard_and_alerts_query_is_on_a_live_metrics_page(
    tmp_path: Path,
) -> None:
    live = live_metric_names(tmp_path)
    assert "keyfront_requests_total" in live and "process_cpu_seconds_total" in live
    landed = NOT_YET_EXPORTED & live
    assert not landed, f"keyfront exports {landed} now: remove them from NOT_YET_EXPORTED"
    known = live | NOT_YET_EXPORTED | PROMETHEUS_OWN
    for where, expr in kit_queries():
        assert not unknown_metrics(expr, known), f"{where}: {expr}"
        assert not unknown_functions(expr), f"{where}: {expr}"


def test_the_metric_name_check_catches_a_typo() -> None:
    known = {"keyfront_requests_total", "keyfront_request_duration_seconds_bucket"}
    good = (
        "histogram_quantile(0.99, sum by (le, cache) (rate("
        'keyfront_request_duration_seconds_bucket{job=~"$job", cache=~"HIT|MISS"}'
        "[$__rate_interval])))"
        ' / on (job) group_left sum(rate(keyfront_requests_total{status=~"5.."}[5m]))'
    )
    assert unknown_metrics(good, known) == set()
    assert unknown_functions(good) == set()
    typo = 'sum(rate(keyfront_request_total{status=~"5.."}[5m])) > 14 * 86400'
    assert unknown_metrics(typo, known) == {"keyfront_request_total"}
    assert unknown_functions("sum(rat(keyfront_requests_total[5m]))") == {"rat"}
    # A typo in the kit's own files is caught too: every query names some metric.
    for where, expr in kit_queries():
        assert unknown_metrics(expr, set()), f"{where} names no metric: {expr}"


def live_metric_names(tmp_path: Path) -> set[str]:
    """Every series name a keyfront with traffic of each kind exports: hits, a miss,
    an origin 404, refusals. Families with no sample yet count by their TYPE line."""
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.txt").write_bytes(b"a" * 1000)
    origin = HttpOriginServer(str(tmp_path / "files"))
    origin.start()
    body = f"""
store: sqlite://{tmp_path}/kf.db
keys: {{secrets: {{1: "${{KEYFRONT_KEY_SECRET}}"}}}}
routes: [{{prefix: /f/, origin: "{origin.url}"}}]
metrics: {{customer_labels: 2}}
access_log: "off"
"""
    kf = start_keyfront(body, str(tmp_path))
    try:
        kf.given("customers", "create", "acme")
        key = json.loads(kf.given("keys", "create", "--customer", "acme", "--json"))["key"]
        for path in (f"a.txt?key={key}", f"a.txt?key={key}", f"b.txt?key={key}", "a.txt"):
            try:
                urllib.request.urlopen(f"{kf.url}/f/{path}", timeout=10).close()
            except urllib.error.HTTPError as error:
                error.close()
        with urllib.request.urlopen(f"{kf.admin_url}/metrics", timeout=10) as response:
            page = response.read().decode()
    finally:
        kf.stop()
    names = set()
    for line in page.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            parts = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
            names |= {family + part for part in parts}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def kit_queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every dashboard panel and template query and every rule."""
    dashboard = json.loads((MONITORING / "keyfront-dashboard.json").read_text())
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":  # label_values(SERIES, LABEL): the series
            series = re.fullmatch(r"label_values\((.*), *\w+\)", variable["query"]["query"])
            assert series, variable["query"]
            yield f"variable {variable['name']}", series.group(1)
    for rule in _rules():
        yield f"alert {rule['alert']}", rule["expr"]


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_DIGITS = set("0123456789.")


def _promql_words(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, function or keyword names) in a PromQL expression: strings,
    label matchers, ranges, grouping label lists and Grafana $variables taken out."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\$\w+", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1 ", text)
    metrics, words = set(), set()
    for match in _NAME.finditer(text):
        name = match.group()
        if text[match.end() :].lstrip().startswith("(") or name in PROMQL_WORDS:
            words.add(name)
        elif text[match.start() - 1 : match.start()] not in _DIGITS:
            metrics.add(name)  # else the tail of a number or a duration: 1e3, 5m
    return metrics, words


def unknown_metrics(expr: str, known: set[str]) -> set[str]:
    return _promql_words(expr)[0] - known


def unknown_functions(expr: str) -> set[str]:
    return _promql_words(expr)[1] - PROMQL_WORDS


# --- one host: systemd -------------------------------------------------------------


def test_systemd_unit_passes_verify_with_its_sandbox_and_stop_timeout(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE, "systemd-analyze is missing: `make test` installs it (systemd)"
    source = (DEPLOY / "systemd" / "keyfront.service").read_text()
    unit = _unit(source)
    for key, value in {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "StateDirectory": "keyfront",
        "CacheDirectory": "keyfront",
        "Restart": "on-failure",
        "User": "keyfront",
    }.items():
        assert unit[key] == value, key
    assert int(unit["LimitNOFILE"]) >= 10_000 + 1_024  # max_connections + FD reserve
    assert unit["EnvironmentFile"].startswith("/etc/keyfront/")
    # The config's defaults: a stop timeout above shutdown_timeout, and writes only
    # where the unit lets them (StateDirectory, CacheDirectory).
    path = tmp_path / "defaults.yaml"
    path.write_text(
        f'keys: {{secrets: {{1: x{SECRET}}}}}\nroutes: [{{prefix: /, origin: "file://{tmp_path}"}}]'
    )
    defaults = load(str(path), {})
    assert parse_duration(unit["TimeoutStopSec"] + "s") >= defaults.shutdown_timeout + 10
    assert defaults.store == "sqlite:///var/lib/keyfront/keyfront.db"
    assert defaults.cache.dir == "/var/cache/keyfront"

    # verify checks that ExecStart exists: point it at this venv's keyfront.
    path = tmp_path / "keyfront.service"
    path.write_text(source.replace("/opt/keyfront/bin/keyfront", KEYFRONT))
    verified = _run(SYSTEMD_ANALYZE, "verify", str(path))
    # An unknown or misspelt directive is only a warning: no output at all is required.
    assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr
    security = _run(SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(path))
    exposure = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert exposure, security.stdout + security.stderr
    assert float(exposure.group(1)) <= 2.5  # "OK" in systemd's words; 1.8 when written


# --- Docker and compose ------------------------------------------------------------


def test_compose_redis_is_persistent_password_protected_and_never_evicts() -> None:
    compose = _yaml(DEPLOY / "compose" / "docker-compose.yaml")
    redis = compose["services"]["redis"]
    command = " ".join(redis["command"])
    for option in ("--appendonly yes", "--maxmemory-policy noeviction", "requirepass"):
        assert option in command, option
    assert "$$REDIS_PASSWORD" in command  # from the environment, given on stdin
    assert [volume.split(":")[1] for volume in redis["volumes"]] == ["/data"]
    assert redis["volumes"][0].split(":")[0] in compose["volumes"]


def test_compose_keyfront_scrapeable_with_a_cache_volume_each_and_a_long_stop_grace(
    tmp_path: Path,
) -> None:
    compose = _yaml(DEPLOY / "compose" / "docker-compose.yaml")
    instances = {n: s for n, s in compose["services"].items() if n.startswith("keyfront")}
    assert len(instances) == 2
    caches = set()
    for name, service in instances.items():
        mounts = dict(reversed(v.split(":")[:2]) for v in service["volumes"])
        config = load(str(DEPLOY / "compose" / mounts["/etc/keyfront/keyfront.yaml"]), ENV)
        assert (config.admin_listen.host, config.admin_listen.port) == ("0.0.0.0", 9080)
        assert service["expose"] == ["9080"]  # on the compose network, not the host
        assert all("9080" not in str(port) for port in service["ports"])
        assert "redis://:${KEYFRONT_REDIS_PASSWORD" in service["environment"]["KEYFRONT_REDIS_URL"]
        assert "${KEYFRONT_ADMIN_TOKEN:?" in service["environment"]["KEYFRONT_ADMIN_TOKEN"]
        caches.add(mounts[config.cache.dir])
        grace = parse_duration(service["stop_grace_period"])
        assert grace >= config.shutdown_timeout + 10, name
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        check = " ".join(service["healthcheck"]["test"])
        assert "python" not in check and "/healthz" in check
    assert len(caches) == 2 and caches <= set(compose["volumes"])  # one cache each

    # The monitoring profile's Prometheus loads the kit's rules and scrapes both.
    shutil.copy(DEPLOY / "compose" / "prometheus.yml", tmp_path)
    shutil.copy(MONITORING / "keyfront-rules.yaml", tmp_path)
    assert PROMTOOL is not None
    checked = _run(PROMTOOL, "check", "config", str(tmp_path / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    targets = _yaml(tmp_path / "prometheus.yml")["scrape_configs"][0]["static_configs"][0]
    assert sorted(targets["targets"]) == [f"{name}:9080" for name in sorted(instances)]


def test_dockerfile_runs_as_a_fixed_non_root_user_without_a_python_healthcheck() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    instructions = [line.split(None, 1) for line in lines if line and not line.startswith("#")]
    assert not [rest for word, *rest in instructions if word == "HEALTHCHECK"]
    (user,) = [rest[0] for word, *rest in instructions if word == "USER"]
    assert re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", user)  # numeric: runAsNonRoot checks it
    (expose,) = [rest[0].split() for word, *rest in instructions if word == "EXPOSE"]
    assert {"8080", "9080"} <= set(expose)


# --- helpers -----------------------------------------------------------------------


def _run(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _yaml_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _config_text(objects: list[dict[str, Any]], pod: dict[str, Any]) -> str:
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    name = volume["configMap"]["name"]
    (config_map,) = [
        o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name
    ]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    path = Path(str(env["KEYFRONT_CONFIG"]))
    assert str(path.parent) == mount["mountPath"]
    return str(config_map["data"][path.name])


def _config_of(objects: list[dict[str, Any]], pod: dict[str, Any], tmp_path: Path) -> Config:
    """The config the pod mounts, validated as keyfront does at start-up."""
    path = tmp_path / "keyfront.yaml"
    path.write_text(_config_text(objects, pod))
    return load(str(path), ENV)


def _quantity(value: str | int) -> float:
    """A Kubernetes quantity: 10Gi, 512Mi, 500m, 2."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "m": 1e-3, "k": 1e3, "G": 1e9}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value)).groups()  # type: ignore[union-attr]
    return float(number) * units.get(unit, 1)


def _rules() -> list[dict[str, Any]]:
    groups = _yaml(MONITORING / "keyfront-rules.yaml")["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _unit(text: str) -> dict[str, str]:
    """A unit file's Key=Value lines (the last one of a key wins, as for most keys)."""
    return dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")
    )
