"""The monitoring kit (deploy/kubernetes/components/monitoring), checked with the tools that
will read it: promtool checks the rules and runs their unit tests, lints a live /metrics
scrape of a real `guestbook serve`, and every metric name the rules and the dashboard use is
looked up in that scrape; the ServiceMonitor and PrometheusRule are validated against the
prometheus-operator API schemas; kustomize renders the component on the production overlay.

promtool, node and the schema package come from scripts/ci/install-monitoring-tools.sh; a
missing one skips its test, saying so (under CI=true the skip fails the run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conftest import (
    Cluster,
    Frontend,
    MakeFrontend,
    RedisServer,
    app_in_process,
    posted,
    wait_until,
)
from test_manifests import KUBE, PRODUCTION, require

MONITORING = KUBE / "components" / "monitoring"
RULE_TESTS = MONITORING / "tests"
INSTALL_HINT = "scripts/ci/install-monitoring-tools.sh installs it"
JOB = "guestbook"
# The labelled counters that get a series only once what they count has happened (a stream
# cut short, a store call failed): a scrape declares them (# HELP, # TYPE) but may hold no
# sample of theirs yet. The killed-follower test below sees the store errors counted.
COUNTS_EVENTS_ONLY = {"guestbook_live_streams_cut_total", "guestbook_store_errors_total"}

Object = dict[str, Any]


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip(f"promtool is not installed ({INSTALL_HINT}; Debian package prometheus)")
    return found


def crd_models() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    default = Path(base) / "guestbook-ci" / "crd-models"
    models = Path(os.environ.get("GUESTBOOK_CRD_MODELS") or default)
    if not (models / "node_modules" / "@kubernetes-models" / "prometheus-operator").is_dir():
        pytest.skip(f"@kubernetes-models/prometheus-operator is not in {models} ({INSTALL_HINT})")
    return models


def load(name: str) -> Object:
    value = yaml.safe_load((MONITORING / name).read_text())
    assert isinstance(value, dict)
    return value


def alerts() -> list[Object]:
    return [
        rule for group in load("prometheusrule.yaml")["spec"]["groups"] for rule in group["rules"]
    ]


def dashboard() -> Object:
    value = json.loads((MONITORING / "guestbook-dashboard.json").read_text())
    assert isinstance(value, dict)
    return value


def dashboard_queries() -> list[str]:
    queries = [t["expr"] for panel in dashboard()["panels"] for t in panel["targets"]]
    queries += [v["definition"] for v in dashboard()["templating"]["list"] if "definition" in v]
    return queries


def metric_names(expression: str) -> set[str]:
    """The guestbook metric names in a PromQL expression, read crudely: label values and
    strings are dropped first, so a route such as "/api/messages" never looks like one."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)
    return set(re.findall(r"\bguestbook_[a-z0-9_]+\b", bare))


def run(*args: str, cwd: Path | None = None, stdin: str | None = None) -> str:
    done = subprocess.run(
        args, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def rule_files(into: Path) -> Path:
    """The PrometheusRule's groups as a plain rule file, beside copies of the rule tests."""
    for test in RULE_TESTS.glob("*.yaml"):
        shutil.copy(test, into / test.name)
    rules = into / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": load("prometheusrule.yaml")["spec"]["groups"]}))
    return rules


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> tuple[Object, ...]:
    """The production overlay with the component, as an operator's overlay would add it."""
    kubectl = require("kubectl")
    scratch = tmp_path_factory.mktemp("kustomize")
    # kustomize takes relative paths only.
    (scratch / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "guestbook",
                "resources": [os.path.relpath(PRODUCTION, scratch)],
                "components": [os.path.relpath(MONITORING, scratch)],
            }
        )
    )
    out = run(kubectl, "kustomize", str(scratch))
    return tuple(o for o in yaml.safe_load_all(out) if o)


def scrape(frontend: Frontend) -> str:
    response = httpx.get(f"{frontend.url}/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> (labels, value) of every sample in a scrape."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def declared(text: str) -> set[str]:
    """The names a scrape declares with # TYPE, with a counter's _total as it is queried."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name if kind != "counter" or name.endswith("_total") else f"{name}_total")
    return names


@pytest.fixture(scope="module")
def live_scrape(shared_frontend: Frontend) -> Iterator[str]:
    """/metrics of a real frontend after some of every kind of traffic: pages, the API, a
    post, the status page, the feed, a 404."""
    with shared_frontend.http() as client:
        posted(shared_frontend, "metrics are counted")
        for path in ("/", "/api/messages", "/api/status", "/status", "/feed.atom", "/nowhere"):
            client.get(path)
        yield scrape(shared_frontend)


# --- the component ---------------------------------------------------------------------------


def test_monitoring_is_a_kustomize_component_of_a_servicemonitor_rules_and_a_dashboard() -> None:
    kustomization = load("kustomization.yaml")
    assert kustomization["kind"] == "Component"
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    assert sorted(kustomization["resources"]) == ["prometheusrule.yaml", "servicemonitor.yaml"]
    (generator,) = kustomization["configMapGenerator"]
    assert generator["files"] == ["guestbook-dashboard.json"]
    assert generator["options"]["labels"]["grafana_dashboard"] == "1"


def test_component_renders_on_production_and_its_servicemonitor_scrapes_the_frontend_service(
    production: tuple[Object, ...],
) -> None:
    objects = production
    by_kind = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    service = by_kind["Service", "frontend"]
    monitor = by_kind["ServiceMonitor", "guestbook-frontend"]
    rule = by_kind["PrometheusRule", "guestbook"]
    board = by_kind["ConfigMap", "guestbook-dashboard"]
    namespace = service["metadata"]["namespace"]
    for obj in (monitor, rule, board):
        assert obj["metadata"]["namespace"] == namespace
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # The job the rules and the dashboard select is the Service label jobLabel names.
    assert labels[monitor["spec"]["jobLabel"]] == JOB
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(board["data"]["guestbook-dashboard.json"]) == dashboard()


def test_servicemonitor_and_prometheusrule_validate_against_the_operator_schemas(
    production: tuple[Object, ...], tmp_path: Path
) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip(f"node is not installed ({INSTALL_HINT})")
    models = crd_models()
    objects = production
    checked = tmp_path / "objects.json"
    checked.write_text(json.dumps(list(objects)))
    out = run(node, str(RULE_TESTS / "validate-crds.mjs"), str(models), str(checked))
    assert "2 checked, 0 invalid" in out, out
    # The validator has teeth: a duration the operator would refuse is caught.
    broken = [json.loads(json.dumps(o)) for o in objects if o["kind"] == "ServiceMonitor"]
    broken[0]["spec"]["endpoints"][0]["interval"] = "30 seconds"
    checked.write_text(json.dumps(broken))
    done = subprocess.run(
        [node, str(RULE_TESTS / "validate-crds.mjs"), str(models), str(checked)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "INVALID ServiceMonitor/guestbook-frontend" in done.stdout


def test_production_with_the_component_validates_strictly_for_kubernetes(
    production: tuple[Object, ...],
) -> None:
    """The dashboard's ConfigMap and everything else that Kubernetes itself defines; the two
    custom resources are the operator schemas' business (above)."""
    validate = require("kubernetes-validate")
    run(validate, "--strict", "--quiet", "--no-warn", "-", stdin=yaml.safe_dump_all(production))


def test_dashboard_queries_the_guestbook_job_through_its_datasource_variable() -> None:
    board = dashboard()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert f'job="{JOB}"' in target["expr"], panel["title"]


# --- the rules -------------------------------------------------------------------------------


def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    out = run(promtool(), "check", "rules", str(rule_files(tmp_path)))
    assert f"SUCCESS: {len(alerts())} rules found" in out


def test_every_rule_unit_test_passes_in_promtool(tmp_path: Path) -> None:
    binary = promtool()
    rule_files(tmp_path)
    tests = sorted(p.name for p in RULE_TESTS.glob("*.yaml"))
    assert tests
    out = run(binary, "test", "rules", *tests, cwd=tmp_path)
    assert "FAILED" not in out


def test_every_alert_has_a_test_that_fires_it_and_one_that_keeps_it_silent() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS.glob("*.yaml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case["alert_rule_test"]:
                (firing if check["exp_alerts"] else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names == {
        "GuestbookNoReadyFrontend",
        "GuestbookLeaderUnreachable",
        "GuestbookFollowerUnreachable",
        "GuestbookReplicationLagHigh",
        "GuestbookReplicationBroken",
        "GuestbookHighErrorRate",
        "GuestbookSlowRequests",
        "GuestbookLiveClientsShed",
        "GuestbookPostsFailing",
    }
    assert firing == names
    assert silent == names


def test_every_alert_has_a_severity_a_summary_and_selects_the_guestbook_job() -> None:
    for rule in alerts():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert "docs/kubernetes.md" in rule["annotations"]["description"], rule["alert"]
        for name in metric_names(rule["expr"]):
            assert re.search(rf'{name}\{{job="{JOB}"', rule["expr"]), (rule["alert"], name)


# --- a live scrape ---------------------------------------------------------------------------


def test_a_live_scrape_passes_promtool_check_metrics(live_scrape: str) -> None:
    run(promtool(), "check", "metrics", stdin=live_scrape)


def test_every_metric_the_rules_and_the_dashboard_use_is_in_a_live_scrape(
    live_scrape: str,
) -> None:
    used: set[str] = set()
    for rule in alerts():
        used |= metric_names(rule["expr"])
    for query in dashboard_queries():
        used |= metric_names(query)
    assert len(used) >= 12  # the parse found them (histograms, counters, gauges)
    present = samples(live_scrape)
    assert used <= declared(live_scrape) | present.keys(), used - declared(live_scrape)
    assert used - present.keys() <= COUNTS_EVENTS_ONLY, used - present.keys()


def test_a_live_scrape_reports_readiness_and_every_store_server_up(
    live_scrape: str, shared_cluster: Cluster
) -> None:
    found = samples(live_scrape)
    assert found["guestbook_ready"] == [({}, 1.0)]
    up = {
        (labels["role"], labels["server"]): value for labels, value in found["guestbook_store_up"]
    }
    assert up == {
        ("leader", shared_cluster.leader.url): 1.0,
        **{("follower", f.url): 1.0 for f in shared_cluster.followers},
    }
    links = {labels["server"]: v for labels, v in found["guestbook_store_replication_link_up"]}
    assert links == {f.url: 1.0 for f in shared_cluster.followers}
    lags = {labels["server"] for labels, _ in found["guestbook_store_replication_lag_bytes"]}
    assert lags == {f.url for f in shared_cluster.followers}


def test_a_killed_follower_scrapes_as_down_with_no_lag_and_counts_store_errors(
    cluster: Cluster, make_frontend: MakeFrontend
) -> None:
    frontend = make_frontend(cluster)
    gone, kept = cluster.followers
    gone.kill()

    def follower_down() -> bool:
        found = samples(scrape(frontend))
        up = {labels["server"]: v for labels, v in found["guestbook_store_up"]}
        return up[gone.url] == 0.0 and up[kept.url] == 1.0 and up[cluster.leader.url] == 1.0

    wait_until(follower_down, timeout=15)
    found = samples(scrape(frontend))
    # A server that does not answer reports no replication figures rather than stale ones.
    for name in ("guestbook_store_replication_lag_bytes", "guestbook_store_replication_link_up"):
        assert {labels["server"] for labels, _ in found[name]} == {kept.url}
    assert found["guestbook_ready"] == [({}, 1.0)]
    errors = found["guestbook_store_errors_total"]
    assert sum(value for _, value in errors) >= 1


# --- readiness: the gauge and the probe ------------------------------------------------------

# A store restarted on this many keys, each read back in 3 ms, answers LOADING for 6 s or more while
# INFO already answers: the state where a gauge that read INFO said ready and the probe did not.
FILLER_KEYS = 2000
SLOW_LOAD = ("--key-load-delay", "3000", "--loading-process-events-interval-bytes", "1024")


async def readiness_seen(client: httpx.AsyncClient) -> tuple[int, float]:
    """What /readyz answers and what the gauge says, asked one right after the other."""
    answer = await client.get("/readyz")
    gauge = samples((await client.get("/metrics")).text)["guestbook_ready"]
    assert len(gauge) == 1
    return answer.status_code, gauge[0][1]


def loading(server: RedisServer) -> bool:
    """The server answers INFO and is still reading its data back."""
    try:
        return bool(int(server.client().info("persistence")["loading"]))
    except redis.RedisError:
        return False


def with_filler(server: RedisServer) -> None:
    """FILLER_KEYS keys in the server's base file, which a restart reads back key by key."""
    client = server.client()
    client.mset({f"filler:{i}": "x" for i in range(FILLER_KEYS)})
    client.bgrewriteaof()

    def rewritten() -> bool:
        info = client.info("persistence")
        return not int(info["aof_rewrite_in_progress"]) and not int(info["aof_rewrite_scheduled"])

    wait_until(rewritten, timeout=15)


@pytest.mark.anyio
async def test_the_ready_gauge_says_what_readyz_answers_up_killed_loading_and_stopping(
    tmp_path: Path,
) -> None:
    leader = RedisServer(tmp_path / "leader", extra_args=SLOW_LOAD).start()
    restart: threading.Thread | None = None
    try:
        with_filler(leader)
        env = {"GUESTBOOK_REDIS_LEADER_URL": leader.url, "GUESTBOOK_RATE_LIMIT": "0"}
        async with app_in_process(env) as (app, client):
            assert await readiness_seen(client) == (200, 1.0)

            leader.kill()
            # Killed: refused at once, whether or not the feed reader has noticed yet.
            assert await readiness_seen(client) == (503, 0.0)

            # Started again, reading its data back: INFO answers, PING says LOADING.
            restart = threading.Thread(target=leader.start, name="leader-restart")
            restart.start()
            await anyio.to_thread.run_sync(lambda: wait_until(lambda: loading(leader)))
            asked = time.monotonic()
            seen = await readiness_seen(client)
            took = time.monotonic() - asked
            still_loading = await anyio.to_thread.run_sync(loading, leader)
            print(
                f"loading: /readyz, gauge = {seen} in {took:.2f} s; still loading: {still_loading}"
            )
            assert still_loading, "the load ended before both were asked; raise FILLER_KEYS"
            assert seen == (503, 0.0)

            await anyio.to_thread.run_sync(restart.join, 30)
            with anyio.fail_after(10):  # a pooled connection to the old process is replaced
                while (await client.get("/readyz")).status_code != 200:
                    await anyio.sleep(0.05)
            assert await readiness_seen(client) == (200, 1.0)

            app.state.guestbook.shutting_down.set()
            assert await readiness_seen(client) == (503, 0.0)
    finally:
        if restart is not None:
            restart.join(30)
        leader.kill()
