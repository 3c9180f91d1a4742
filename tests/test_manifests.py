"""The Kubernetes manifests and the compose file, read as data: the contract they must keep.

Pure-Python checks of deploy/kubernetes (names, labels, selectors, the tutorial's label
queries, ports, probes, security), the production and HA overlays as rendered, then the
offline tools CI installs:
`kubectl kustomize` renders every kustomization, `kubernetes-validate --strict` checks the
result against the Kubernetes 1.30 and 1.37 schemas, and checkov scans the manifests and the
Dockerfile. A tool that is not installed skips its test, saying which and how to get it (under
CI=true the skip fails the run: see conftest.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBE = ROOT / "deploy" / "kubernetes"
BASE = KUBE / "base"
PRODUCTION = KUBE / "overlays" / "production"
HA = KUBE / "overlays" / "ha"
HA_SCRIPTS = HA / "redis-ha"
KUSTOMIZATIONS = [KUBE, BASE, PRODUCTION, HA]
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]
INSTALL_HINT = "scripts/ci/install-container-tools.sh installs it"

TUTORIAL_FILES = {
    "redis-leader-deployment.yaml": ("Deployment", "redis-leader"),
    "redis-leader-service.yaml": ("Service", "redis-leader"),
    "redis-follower-deployment.yaml": ("Deployment", "redis-follower"),
    "redis-follower-service.yaml": ("Service", "redis-follower"),
    "frontend-deployment.yaml": ("Deployment", "frontend"),
    "frontend-service.yaml": ("Service", "frontend"),
}
TUTORIAL_LABELS = {
    "redis-leader": {"app": "redis", "role": "leader", "tier": "backend"},
    "redis-follower": {"app": "redis", "role": "follower", "tier": "backend"},
    "frontend": {"app": "guestbook", "tier": "frontend"},
}
# The HA overlay adds the sentinels, and its configuration that every Redis pod mounts.
HA_LABELS = {
    **TUTORIAL_LABELS,
    "redis-sentinel": {"app": "redis", "role": "sentinel", "tier": "backend"},
    "redis-ha": {"app": "redis", "tier": "backend"},
}
WORKLOADS = ("Deployment", "StatefulSet")
PREFERRED = "preferredDuringSchedulingIgnoredDuringExecution"

Object = dict[str, Any]


# --- helpers -----------------------------------------------------------------------------


def tool(name: str) -> str | None:
    """A CLI from PATH, or from uv's tool directory where the CI install script puts it."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path.home() / ".local" / "bin" / name
    return str(candidate) if os.access(candidate, os.X_OK) else None


def require(name: str) -> str:
    path = tool(name)
    if path is None:
        pytest.skip(f"{name} is not installed ({INSTALL_HINT})")
    return path


def load_all(text: str) -> list[Object]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@cache
def base_objects() -> tuple[Object, ...]:
    objects: list[Object] = []
    for path in sorted(BASE.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            objects += load_all(path.read_text())
    return tuple(objects)


def get(objects: Iterable[Object], kind: str, name: str) -> Object:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def pod_template(obj: Object) -> Object:
    template: Object = obj["spec"]["template"]
    return template


def only_container(obj: Object) -> Object:
    (container,) = pod_template(obj)["spec"]["containers"]
    result: Object = container
    return result


def matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def parse_selector(query: str) -> dict[str, str]:
    """`kubectl -l` equality selectors: `a=b,c=d`."""
    return dict(term.split("=", 1) for term in query.split(","))


def kubectl_select(objects: Iterable[Object], kind: str, *queries: str) -> set[str]:
    """Names that `kubectl get KIND -l Q1 -l Q2 ...` returns.

    kubectl keeps only the last of repeated -l flags; the tutorial's
    `-l app=guestbook -l tier=frontend` must work whichever way it is read, so this asks
    that both readings (last flag only, and all flags together) give the same answer.
    """

    def select(selector: dict[str, str]) -> set[str]:
        if kind == "Pod":
            return {
                o["metadata"]["name"]
                for o in objects
                if o["kind"] in WORKLOADS
                and matches(selector, pod_template(o)["metadata"]["labels"])
            }
        return {
            o["metadata"]["name"]
            for o in objects
            if o["kind"] == kind and matches(selector, o["metadata"].get("labels", {}))
        }

    last_only = select(parse_selector(queries[-1]))
    combined = select({k: v for q in queries for k, v in parse_selector(q).items()})
    assert last_only == combined, f"-l {' -l '.join(queries)} depends on how kubectl reads it"
    return last_only


def pyproject_version() -> str:
    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return version


def dockerfile_instruction(name: str) -> list[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return re.findall(rf"^{name}\s+(.+)$", text, flags=re.M)


@cache
def render(directory: Path) -> str:
    kubectl = require("kubectl")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


# --- files and names ---------------------------------------------------------------------


def test_base_holds_one_file_per_tutorial_object_named_after_the_tutorials_files() -> None:
    for filename, (kind, name) in TUTORIAL_FILES.items():
        (obj,) = load_all((BASE / filename).read_text())
        assert (obj["kind"], obj["metadata"]["name"]) == (kind, name)


def test_every_base_file_is_listed_in_the_base_kustomization() -> None:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    files = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    for path in BASE.glob("*.yaml"):
        if path.name != "kustomization.yaml":
            assert len(load_all(path.read_text())) == 1, f"{path.name}: one object per file"


def test_top_kustomization_includes_base_and_production_builds_on_base() -> None:
    top = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    assert top["resources"] == ["base"]
    production = yaml.safe_load((PRODUCTION / "kustomization.yaml").read_text())
    assert "../../base" in production["resources"]


# --- labels and selectors ----------------------------------------------------------------


def test_every_object_and_pod_template_carries_the_tutorials_labels() -> None:
    for obj in base_objects():
        name = obj["metadata"]["name"].removesuffix("-data")
        expected = TUTORIAL_LABELS[name]
        labels = obj["metadata"]["labels"]
        assert expected.items() <= labels.items(), obj["metadata"]["name"]
        assert labels["app.kubernetes.io/part-of"] == "guestbook"
        assert {"app.kubernetes.io/name", "app.kubernetes.io/component"} <= labels.keys()
        if obj["kind"] == "Deployment":
            template_labels = pod_template(obj)["metadata"]["labels"]
            assert expected.items() <= template_labels.items()
            assert labels == template_labels


def test_selectors_pick_exactly_their_own_pods_and_never_overlap() -> None:
    deployments = [o for o in base_objects() if o["kind"] == "Deployment"]
    for owner in deployments:
        selector = owner["spec"]["selector"]["matchLabels"]
        assert selector == TUTORIAL_LABELS[owner["metadata"]["name"]]
        selected = {
            d["metadata"]["name"]
            for d in deployments
            if matches(selector, pod_template(d)["metadata"]["labels"])
        }
        assert selected == {owner["metadata"]["name"]}
    for service in (o for o in base_objects() if o["kind"] == "Service"):
        name = service["metadata"]["name"]
        selected = {
            d["metadata"]["name"]
            for d in deployments
            if matches(service["spec"]["selector"], pod_template(d)["metadata"]["labels"])
        }
        assert selected == {name}, f"Service {name} selects {selected}"


def test_tutorial_label_queries_select_exactly_what_they_should() -> None:
    objects = base_objects()

    assert kubectl_select(objects, "Pod", "app=guestbook", "tier=frontend") == {"frontend"}
    assert kubectl_select(objects, "Pod", "app=redis") == {"redis-leader", "redis-follower"}
    assert kubectl_select(objects, "Pod", "app=redis,role=leader,tier=backend") == {"redis-leader"}
    assert kubectl_select(objects, "Pod", "app=redis,role=follower,tier=backend") == {
        "redis-follower"
    }
    assert kubectl_select(objects, "Deployment", "app=redis") == {"redis-leader", "redis-follower"}
    assert kubectl_select(objects, "Service", "app=redis") == {"redis-leader", "redis-follower"}
    assert kubectl_select(objects, "Service", "app=guestbook") == {"frontend"}
    assert kubectl_select(objects, "Deployment", "app=guestbook") == {"frontend"}
    # The leader's data is no Deployment: `kubectl delete deployment -l app=redis` keeps it,
    # and `kubectl delete pvc -l app=redis` is how it goes.
    assert kubectl_select(objects, "PersistentVolumeClaim", "app=redis") == {"redis-leader-data"}


def test_kubectl_scale_deployment_frontend_has_its_target() -> None:
    frontend = get(base_objects(), "Deployment", "frontend")
    assert frontend["spec"]["replicas"] == 3


# --- ports, images, probes ---------------------------------------------------------------


def container_port(deployment: Object, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [
        p["containerPort"] for p in only_container(deployment)["ports"] if p["name"] == port
    ]
    result: int = number
    return result


def test_service_ports_reach_the_ports_the_containers_listen_on() -> None:
    objects = base_objects()
    (exposed,) = dockerfile_instruction("EXPOSE")
    image_port = int(exposed)
    assert image_port == 8080

    frontend = get(objects, "Service", "frontend")
    assert frontend["spec"]["type"] == "NodePort"
    (http,) = frontend["spec"]["ports"]
    assert http["port"] == 80
    frontend_deployment = get(objects, "Deployment", "frontend")
    assert container_port(frontend_deployment, http["targetPort"]) == image_port
    env = {e["name"]: e.get("value") for e in only_container(frontend_deployment)["env"]}
    assert env["GET_HOSTS_FROM"] == "dns"

    for name in ("redis-leader", "redis-follower"):
        service = get(objects, "Service", name)
        assert service["spec"]["type"] == "ClusterIP"
        (redis,) = service["spec"]["ports"]
        assert redis["port"] == 6379
        assert container_port(get(objects, "Deployment", name), redis["targetPort"]) == 6379


def test_image_port_and_user_match_the_dockerfile() -> None:
    env = " ".join(dockerfile_instruction("ENV"))
    assert "GUESTBOOK_HOST=0.0.0.0" in env
    assert "GUESTBOOK_PORT=8080" in env
    (user,) = dockerfile_instruction("USER")
    uid, gid = (int(x) for x in user.split(":"))
    pod = pod_template(get(base_objects(), "Deployment", "frontend"))["spec"]
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, gid)


def test_frontend_image_is_the_one_the_dockerfile_builds_for_this_version() -> None:
    image = only_container(get(base_objects(), "Deployment", "frontend"))["image"]
    assert image == f"guestbook:{pyproject_version()}"


def test_redis_images_are_pinned_and_the_same_everywhere() -> None:
    images = {
        only_container(get(base_objects(), "Deployment", n))["image"] for n in TUTORIAL_LABELS
    }
    images.discard(only_container(get(base_objects(), "Deployment", "frontend"))["image"])
    (image,) = images
    assert re.fullmatch(r"[\w.\-/]+:\d+\.\d+\.\d+", image), f"{image} is not pinned to a release"
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    for name in ("redis-leader", "redis-follower-1", "redis-follower-2"):
        assert compose["services"][name]["image"] == image


def test_probe_paths_are_routes_the_app_serves() -> None:
    from guestbook.ops import router

    routes = {getattr(route, "path", None) for route in router.routes}
    frontend = only_container(get(base_objects(), "Deployment", "frontend"))
    assert frontend["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert frontend["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"/readyz", "/healthz"} <= routes
    for probe in ("readinessProbe", "livenessProbe"):
        port = frontend[probe]["httpGet"]["port"]
        assert container_port(get(base_objects(), "Deployment", "frontend"), port) == 8080


def test_redis_is_probed_by_ping_and_port() -> None:
    for name in ("redis-leader", "redis-follower"):
        container = only_container(get(base_objects(), "Deployment", name))
        assert "ping" in " ".join(container["readinessProbe"]["exec"]["command"])
        assert container["livenessProbe"]["tcpSocket"]["port"] == "redis"


# --- the leader's data, the followers' replication ----------------------------------------


def test_leader_keeps_an_append_only_file_on_its_claim_with_one_replica_recreated() -> None:
    objects = base_objects()
    leader = get(objects, "Deployment", "redis-leader")
    assert leader["spec"]["replicas"] == 1
    assert leader["spec"]["strategy"] == {"type": "Recreate"}
    args = only_container(leader)["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    # Every acknowledged post on disk before its answer, through a crash of the process too
    # (everysec loses the last seconds' posts: docs/reliability.md).
    assert args[args.index("--appendfsync") + 1] == "always"
    data_dir = args[args.index("--dir") + 1]
    (mount,) = only_container(leader)["volumeMounts"]
    assert mount["mountPath"] == data_dir
    (volume,) = pod_template(leader)["spec"]["volumes"]
    assert volume["name"] == mount["name"]
    claim = get(objects, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_followers_replicate_the_leader_service() -> None:
    follower = get(base_objects(), "Deployment", "redis-follower")
    assert follower["spec"]["replicas"] >= 2
    args = only_container(follower)["args"]
    i = args.index("--replicaof")
    assert args[i + 1 : i + 3] == ["redis-leader", "6379"]


# --- Pod Security "restricted", resources, termination ------------------------------------


def assert_pod_security_restricted(workload: Object) -> None:
    """Pod Security "restricted", and requests and limits for CPU and memory."""
    name = workload["metadata"]["name"]
    pod = pod_template(workload)["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True, name
    assert pod["securityContext"]["runAsUser"] >= 10000, name
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
    assert pod["automountServiceAccountToken"] is False, name
    container = only_container(workload)
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False, name
    assert security["readOnlyRootFilesystem"] is True, name
    assert security["capabilities"] == {"drop": ["ALL"]}, name
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys(), name
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys(), name


def assert_tutorial_requests_and_a_prestop_wait(workload: Object) -> None:
    pod = pod_template(workload)["spec"]
    container = only_container(workload)
    assert container["resources"]["requests"] == {"cpu": "100m", "memory": "100Mi"}
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(
        container["lifecycle"]["preStop"]["exec"]["command"][1]
    )


def test_every_pod_meets_pod_security_restricted_with_requests_limits_and_a_prestop_wait() -> None:
    for deployment in (o for o in base_objects() if o["kind"] == "Deployment"):
        assert_pod_security_restricted(deployment)
        assert_tutorial_requests_and_a_prestop_wait(deployment)


def assert_checkov_skips_carry_a_reason(objects: Iterable[Object]) -> None:
    for obj in objects:
        for key, value in obj["metadata"].get("annotations", {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                assert re.fullmatch(r"CKV2?_K8S_\d+", check), value
                assert len(reason) > 20, f"{obj['metadata']['name']}: {value}"


def test_checkov_skips_carry_a_reason() -> None:
    assert_checkov_skips_carry_a_reason(base_objects())


# --- compose.yaml ------------------------------------------------------------------------


def test_compose_runs_a_leader_two_followers_and_the_frontend_on_8080() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"redis-leader", "redis-follower-1", "redis-follower-2", "frontend"}
    leader_command = services["redis-leader"]["command"]
    assert leader_command[leader_command.index("--appendfsync") + 1] == "always"
    assert "--appendonly" in leader_command
    for name in ("redis-follower-1", "redis-follower-2"):
        command = services[name]["command"]
        i = command.index("--replicaof")
        assert command[i + 1 : i + 3] == ["redis-leader", "6379"]
        assert services[name]["networks"]["default"]["aliases"] == ["redis-follower"]
    frontend = services["frontend"]
    assert frontend["build"] == "."
    assert frontend["ports"] == ["127.0.0.1:${GUESTBOOK_HOST_PORT:-8080}:8080"]
    assert frontend["environment"]["GET_HOSTS_FROM"] == "dns"
    assert frontend["read_only"] is True
    assert frontend["cap_drop"] == ["ALL"]


# --- the production overlay, rendered -----------------------------------------------------


def test_production_overlay_adds_auth_policies_budget_autoscaler_spread_and_a_load_balancer() -> (
    None
):
    objects = load_all(render(PRODUCTION))
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {
        "guestbook"
    }
    namespace = get(objects, "Namespace", "guestbook")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert get(objects, "Service", "frontend")["spec"]["type"] == "LoadBalancer"

    frontend = get(objects, "Deployment", "frontend")
    assert "replicas" not in frontend["spec"], "the autoscaler owns the replica count"
    env = {e["name"]: e for e in only_container(frontend)["env"]}
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "redis-auth",
        "key": "password",
    }
    assert "$(REDIS_PASSWORD)@redis-leader:6379" in env["GUESTBOOK_REDIS_LEADER_URL"]["value"]
    assert "$(REDIS_PASSWORD)@redis-follower:6379" in env["GUESTBOOK_REDIS_FOLLOWER_URL"]["value"]
    names = list(env)
    assert names.index("REDIS_PASSWORD") < names.index("GUESTBOOK_REDIS_LEADER_URL")
    assert "GET_HOSTS_FROM" not in env
    for name, flags in [
        ("redis-leader", ["--requirepass", "--masterauth"]),
        ("redis-follower", ["--requirepass", "--masterauth", "--replicaof redis-leader 6379"]),
    ]:
        deployment = get(objects, "Deployment", name)
        script = " ".join(only_container(deployment)["args"])
        assert all(flag in script for flag in flags), script
        (secret,) = [v for v in pod_template(deployment)["spec"]["volumes"] if "secret" in v]
        assert secret["secret"]["secretName"] == "redis-auth"

    pdb = get(objects, "PodDisruptionBudget", "frontend")
    assert pdb["spec"]["selector"]["matchLabels"] == TUTORIAL_LABELS["frontend"]
    hpa = get(objects, "HorizontalPodAutoscaler", "frontend")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "frontend"
    assert hpa["spec"]["minReplicas"] >= 2
    assert pod_template(frontend)["spec"]["topologySpreadConstraints"]


ADMIN_TOKEN = "GUESTBOOK_ADMIN_TOKEN"
# How compose passes a variable through from the host: a reference, never a value.
PASSED_THROUGH = re.compile(rf"\$\{{{ADMIN_TOKEN}(:?-)?\}}")


def admin_token_literals(node: object, where: str = "") -> list[str]:
    """Where, under `node`, a file gives GUESTBOOK_ADMIN_TOKEN a value of its own: a container
    env `value`, a key of a mapping (ConfigMap data, compose environment) or a `NAME=...`
    string (generator literals, an env file, a command line). Only places, never the value."""
    found: list[str] = []
    if isinstance(node, dict):
        if node.get("name") == ADMIN_TOKEN and "value" in node:
            found.append(f"{where}.value")
        for key, value in node.items():
            if key == ADMIN_TOKEN and not (value is None or PASSED_THROUGH.fullmatch(str(value))):
                found.append(f"{where}.{key}")
            found += admin_token_literals(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found += admin_token_literals(item, f"{where}[{i}]")
    elif isinstance(node, str):
        for assigned in re.finditer(rf"\b{ADMIN_TOKEN}=(\S*)", node):
            if not PASSED_THROUGH.fullmatch(assigned[1]):
                found.append(where)
    return found


def secret_key_refs(objects: Iterable[Object]) -> set[tuple[str, str]]:
    """(Secret, key) of every `secretKeyRef` in the workloads' containers."""
    return {
        (var["valueFrom"]["secretKeyRef"]["name"], var["valueFrom"]["secretKeyRef"]["key"])
        for obj in objects
        if obj["kind"] in WORKLOADS
        for container in pod_template(obj)["spec"]["containers"]
        for var in container.get("env", [])
        if "secretKeyRef" in var.get("valueFrom", {})
    }


def test_production_frontend_takes_the_admin_token_from_its_own_optional_secret() -> None:
    objects = load_all(render(PRODUCTION))
    frontend = only_container(get(objects, "Deployment", "frontend"))

    (token,) = [e for e in frontend["env"] if e["name"] == ADMIN_TOKEN]

    # Optional: without the Secret the frontend still starts and the moderation API answers
    # 403 (SPEC), rather than no frontend starting at all.
    assert token == {
        "name": ADMIN_TOKEN,
        "valueFrom": {
            "secretKeyRef": {"name": "guestbook-admin", "key": "token", "optional": True}
        },
    }
    assert "envFrom" not in frontend
    # Not in redis-auth: the Redis pods mount that Secret whole.
    for name in ("redis-leader", "redis-follower"):
        volumes = pod_template(get(objects, "Deployment", name))["spec"]["volumes"]
        assert {v["secret"]["secretName"] for v in volumes if "secret" in v} == {"redis-auth"}


def test_no_secret_is_committed_and_the_docs_create_each_one_the_production_overlay_uses() -> None:
    for directory in KUSTOMIZATIONS:
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        assert "secretGenerator" not in kustomization, directory
        assert not [o for o in load_all(render(directory)) if o["kind"] == "Secret"], directory

    refs = secret_key_refs(load_all(render(PRODUCTION)))

    assert refs == {("redis-auth", "password"), ("guestbook-admin", "token")}
    for name, key in refs:
        command = rf"create secret generic {name}[\s\\]+--from-literal={key}=\"\$\(openssl rand"
        assert re.search(command, (ROOT / "docs" / "kubernetes.md").read_text()), name
        assert re.search(command, (PRODUCTION / "kustomization.yaml").read_text()), name


def test_no_configmap_env_literal_dockerfile_or_compose_line_holds_the_admin_token() -> None:
    sources = {
        str(path.relative_to(ROOT)): load_all(path.read_text())
        for path in sorted(KUBE.rglob("*.yaml"))
    }
    for directory in KUSTOMIZATIONS:
        sources[f"kubectl kustomize {directory.relative_to(ROOT)}"] = load_all(render(directory))
    sources["compose.yaml"] = load_all((ROOT / "compose.yaml").read_text())

    for where, documents in sources.items():
        assert admin_token_literals(documents) == [], where
    # In the image, an ENV or ARG would be in every layer's history: not even a mention.
    dockerfile = (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    assert [line for line in dockerfile if ADMIN_TOKEN in line.partition("#")[0]] == []


def test_the_admin_token_literal_check_finds_each_way_of_writing_one() -> None:
    config_map = {"kind": "ConfigMap", "data": {ADMIN_TOKEN: "x" * 32}}
    env_literal = {"env": [{"name": ADMIN_TOKEN, "value": "x" * 32}]}
    generator = {"configMapGenerator": [{"literals": [f"{ADMIN_TOKEN}={'x' * 32}"]}]}
    compose_list = {"environment": [f"{ADMIN_TOKEN}={'x' * 32}"]}
    from_secret = {"name": ADMIN_TOKEN, "valueFrom": {"secretKeyRef": {"name": "a", "key": "b"}}}
    passed_through = {"environment": {ADMIN_TOKEN: f"${{{ADMIN_TOKEN}:-}}"}}

    assert admin_token_literals(config_map) == [f".data.{ADMIN_TOKEN}"]
    assert admin_token_literals(env_literal) == [".env[0].value"]
    assert admin_token_literals(generator) == [".configMapGenerator[0].literals[0]"]
    assert admin_token_literals(compose_list) == [".environment[0]"]
    assert admin_token_literals(from_secret) == []
    assert admin_token_literals(passed_through) == []


def test_production_load_balancer_keeps_client_addresses_so_no_proxy_is_trusted() -> None:
    objects = load_all(render(PRODUCTION))

    service = get(objects, "Service", "frontend")
    env = {e["name"] for e in only_container(get(objects, "Deployment", "frontend"))["env"]}

    # A layer-4 balancer that does not masquerade: the socket peer is the client, which the
    # rate limit and duplicate check count by. An Ingress in front would need the variable.
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    assert "GUESTBOOK_TRUSTED_PROXIES" not in env
    assert not [o for o in objects if o["kind"] == "Ingress"]


def allowed_sources(policies: list[Object], target: Mapping[str, str], port: int) -> set[str]:
    """Which of the guestbook's pods may open `port` on a pod labelled `target`."""
    pods = {name: labels for name, labels in TUTORIAL_LABELS.items()}
    selecting = [
        p for p in policies if matches(p["spec"]["podSelector"].get("matchLabels", {}), target)
    ]
    assert selecting, f"no NetworkPolicy selects {target}"
    allowed: set[str] = set()
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            if port not in [p["port"] for p in rule.get("ports", [{"port": port}])]:
                continue
            if "from" not in rule:
                allowed |= set(pods)
            for peer in rule.get("from", []):
                selector = peer["podSelector"].get("matchLabels", {})
                allowed |= {n for n, labels in pods.items() if matches(selector, labels)}
    return allowed


def test_production_network_policies_let_only_the_right_pods_reach_redis() -> None:
    objects = load_all(render(PRODUCTION))
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]

    leader = allowed_sources(policies, TUTORIAL_LABELS["redis-leader"], 6379)
    followers = allowed_sources(policies, TUTORIAL_LABELS["redis-follower"], 6379)
    frontend = allowed_sources(policies, TUTORIAL_LABELS["frontend"], 8080)

    assert leader == {"frontend", "redis-follower"}
    assert followers == {"frontend"}
    assert "frontend" in frontend


# --- the HA overlay, rendered ---------------------------------------------------------------


@cache
def ha_objects() -> tuple[Object, ...]:
    return tuple(load_all(render(HA)))


def ha_owner(obj: Object) -> str:
    """Which HA_LABELS entry an object belongs to (a headless Service, a claim, a budget)."""
    if obj["kind"] == "ConfigMap":
        return "redis-ha"
    name: str = obj["metadata"]["name"]
    return name.removesuffix("-headless").removesuffix("-data")


def ha_workloads() -> list[Object]:
    return [o for o in ha_objects() if o["kind"] in WORKLOADS]


def ha_file(name: str) -> str:
    """A file of the redis-ha ConfigMap, as the pods get it."""
    (config_map,) = [o for o in ha_objects() if o["kind"] == "ConfigMap"]
    assert config_map["metadata"]["name"].startswith("redis-ha-"), "name carries a content hash"
    text: str = config_map["data"][name]
    return text


def directives(conf: str) -> list[list[str]]:
    """A Redis-style configuration file as its directives, comments and blank lines dropped."""
    return [line.split() for line in conf.splitlines() if line.strip() and line[0] != "#"]


def sentinel_setting(name: str) -> list[str]:
    """The arguments of `sentinel NAME guestbook ...` (or `sentinel NAME ...`)."""
    (found,) = [d[2:] for d in directives(ha_file("sentinel.conf")) if d[:2] == ["sentinel", name]]
    return found


def pod_addresses(statefulset: Object) -> list[str]:
    """The stable DNS names of a StatefulSet's pods within the namespace: POD.SERVICE."""
    spec = statefulset["spec"]
    name = statefulset["metadata"]["name"]
    return [f"{name}-{i}.{spec['serviceName']}" for i in range(spec["replicas"])]


def topology(variable: str) -> str:
    """A variable that discover.sh sets (the addresses the start scripts ask)."""
    text = (HA_SCRIPTS / "discover.sh").read_text()
    found = re.search(rf'^{variable}="?([^"\n]*)"?$', text, flags=re.M)
    assert found, variable
    return found.group(1)


def test_ha_overlay_builds_on_base_and_turns_the_redis_deployments_into_stateful_sets() -> None:
    kustomization = yaml.safe_load((HA / "kustomization.yaml").read_text())
    assert "../../base" in kustomization["resources"]
    objects = ha_objects()

    assert {o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"} == {"frontend"}
    assert {o["metadata"]["name"] for o in objects if o["kind"] == "StatefulSet"} == {
        "redis-leader",
        "redis-follower",
        "redis-sentinel",
    }
    base_image = only_container(get(base_objects(), "Deployment", "redis-leader"))["image"]
    assert {only_container(s)["image"] for s in ha_workloads() if s["kind"] == "StatefulSet"} == {
        base_image
    }

    leader = get(objects, "StatefulSet", "redis-leader")
    assert leader["spec"]["replicas"] == 1
    args = only_container(leader)["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--appendfsync") + 1] == "always"
    (data,) = [v for v in pod_template(leader)["spec"]["volumes"] if v["name"] == "data"]
    claim = get(objects, "PersistentVolumeClaim", data["persistentVolumeClaim"]["claimName"])
    assert claim["metadata"]["name"] == "redis-leader-data"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "volumeClaimTemplates" not in leader["spec"], "the base's claim, so data carries over"

    assert get(objects, "StatefulSet", "redis-follower")["spec"]["replicas"] >= 2


def test_ha_objects_carry_the_tutorials_labels_and_selectors_pick_exactly_their_own_pods() -> None:
    objects = ha_objects()
    workloads = ha_workloads()
    for obj in objects:
        expected = HA_LABELS[ha_owner(obj)]
        labels = obj["metadata"]["labels"]
        assert expected.items() <= labels.items(), obj["metadata"]["name"]
        assert labels["app.kubernetes.io/part-of"] == "guestbook"
        assert {"app.kubernetes.io/name", "app.kubernetes.io/component"} <= labels.keys()
        if obj["kind"] in WORKLOADS:
            assert labels == pod_template(obj)["metadata"]["labels"]
            assert obj["spec"]["selector"]["matchLabels"] == expected

    def selected_by(selector: Mapping[str, str]) -> set[str]:
        return {
            w["metadata"]["name"]
            for w in workloads
            if matches(selector, pod_template(w)["metadata"]["labels"])
        }

    for workload in workloads:
        name = workload["metadata"]["name"]
        assert selected_by(workload["spec"]["selector"]["matchLabels"]) == {name}
    for service in (o for o in objects if o["kind"] == "Service"):
        assert selected_by(service["spec"]["selector"]) == {ha_owner(service)}, service
    for budget in (o for o in objects if o["kind"] == "PodDisruptionBudget"):
        assert selected_by(budget["spec"]["selector"]["matchLabels"]) == {ha_owner(budget)}


def test_ha_tutorial_label_queries_still_select_what_they_say() -> None:
    objects = ha_objects()
    redis = {"redis-leader", "redis-follower", "redis-sentinel"}

    assert kubectl_select(objects, "Pod", "app=guestbook", "tier=frontend") == {"frontend"}
    assert kubectl_select(objects, "Pod", "app=redis") == redis
    assert kubectl_select(objects, "Pod", "app=redis,role=sentinel,tier=backend") == {
        "redis-sentinel"
    }
    # `kubectl delete deployment -l app=redis` becomes `delete statefulset -l app=redis`.
    assert kubectl_select(objects, "StatefulSet", "app=redis") == redis
    assert kubectl_select(objects, "Deployment", "app=redis") == set()
    assert kubectl_select(objects, "Deployment", "app=guestbook") == {"frontend"}
    assert kubectl_select(objects, "Service", "app=guestbook") == {"frontend"}
    assert kubectl_select(objects, "Service", "app=redis") == {
        "redis-leader",
        "redis-leader-headless",
        "redis-follower",
        "redis-follower-headless",
        "redis-sentinel",
    }
    assert kubectl_select(objects, "PersistentVolumeClaim", "app=redis") == {"redis-leader-data"}


def test_ha_pods_meet_pod_security_restricted_and_skip_checkov_checks_with_a_reason() -> None:
    for workload in ha_workloads():
        assert_pod_security_restricted(workload)
        if workload["metadata"]["name"] in TUTORIAL_LABELS:
            assert_tutorial_requests_and_a_prestop_wait(workload)
    assert_checkov_skips_carry_a_reason(ha_objects())


def test_ha_servers_are_probed_by_ping_and_port() -> None:
    for name, port in [
        ("redis-leader", "redis"),
        ("redis-follower", "redis"),
        ("redis-sentinel", "sentinel"),
    ]:
        container = only_container(get(ha_objects(), "StatefulSet", name))
        assert "ping" in " ".join(container["readinessProbe"]["exec"]["command"]), name
        assert container["livenessProbe"]["tcpSocket"]["port"] == port, name
    sentinel = only_container(get(ha_objects(), "StatefulSet", "redis-sentinel"))
    assert "-p 26379" in " ".join(sentinel["readinessProbe"]["exec"]["command"])


def test_ha_runs_three_sentinels_spread_by_anti_affinity_and_kept_at_two_by_a_budget() -> None:
    objects = ha_objects()
    sentinels = get(objects, "StatefulSet", "redis-sentinel")
    assert sentinels["spec"]["replicas"] == 3
    sentinel_labels = HA_LABELS["redis-sentinel"]

    anti = pod_template(sentinels)["spec"]["affinity"]["podAntiAffinity"]
    terms = [
        *anti.get("requiredDuringSchedulingIgnoredDuringExecution", []),
        *(p["podAffinityTerm"] for p in anti.get(PREFERRED, [])),
    ]
    assert any(
        t["topologyKey"] == "kubernetes.io/hostname"
        and matches(t["labelSelector"]["matchLabels"], sentinel_labels)
        for t in terms
    )

    budget = get(objects, "PodDisruptionBudget", "redis-sentinel")
    assert budget["spec"]["minAvailable"] == 2
    assert budget["spec"]["selector"]["matchLabels"] == sentinel_labels
    followers = get(objects, "PodDisruptionBudget", "redis-follower")
    assert followers["spec"]["maxUnavailable"] == 1

    for name in ("redis-leader", "redis-follower"):
        spec = pod_template(get(objects, "StatefulSet", name))["spec"]
        (term,) = spec["affinity"]["podAntiAffinity"][
            "preferredDuringSchedulingIgnoredDuringExecution"
        ]
        assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"


def test_ha_sentinels_call_a_leader_down_within_five_seconds_and_need_two_to_fail_it_over() -> None:
    settings = directives(ha_file("sentinel.conf"))
    assert ["port", "26379"] in settings
    names = [d[:2] for d in settings]
    assert names.index(["sentinel", "resolve-hostnames"]) < names.index(["sentinel", "monitor"])
    assert sentinel_setting("resolve-hostnames") == ["yes"]
    assert sentinel_setting("announce-hostnames") == ["yes"]

    service, host, port, quorum = sentinel_setting("monitor")
    leader = get(ha_objects(), "StatefulSet", "redis-leader")
    assert (service, host, port) == ("guestbook", pod_addresses(leader)[0], "6379")
    sentinels = get(ha_objects(), "StatefulSet", "redis-sentinel")["spec"]["replicas"]
    assert int(quorum) == sentinels // 2 + 1, "a majority: one cut-off sentinel promotes no one"

    (name, down_after) = sentinel_setting("down-after-milliseconds")
    assert name == "guestbook"
    assert 1000 <= int(down_after) <= 5000
    (name, failover_timeout) = sentinel_setting("failover-timeout")
    assert name == "guestbook"
    assert int(down_after) < int(failover_timeout) <= 30000
    assert sentinel_setting("parallel-syncs") == ["guestbook", "1"]


def test_ha_leader_and_followers_refuse_writes_without_a_follower_in_step() -> None:
    settings = {d[0]: d[1:] for d in directives(ha_file("redis.conf"))}
    assert int(settings["min-replicas-to-write"][0]) >= 1
    assert 1 <= int(settings["min-replicas-max-lag"][0]) <= 10
    assert settings["dir"] == ["/data"]
    assert '"$here/redis.conf"' in ha_file("redis.sh"), "redis.sh starts the server with it"
    for name in ("redis-leader", "redis-follower"):
        container = only_container(get(ha_objects(), "StatefulSet", name))
        assert container["command"] == ["sh", "/etc/redis-ha/redis.sh"], name


def test_ha_frontend_asks_the_sentinels_by_their_dns_names_and_waits_for_one_follower() -> None:
    objects = ha_objects()
    env = {
        e["name"]: e.get("value")
        for e in only_container(get(objects, "Deployment", "frontend"))["env"]
    }
    sentinels = get(objects, "StatefulSet", "redis-sentinel")
    assert env["GUESTBOOK_SENTINELS"].split(",") == [
        f"{address}:26379" for address in pod_addresses(sentinels)
    ]
    assert env["GUESTBOOK_SENTINEL_SERVICE"] == sentinel_setting("monitor")[0] == "guestbook"
    assert env["GUESTBOOK_WRITE_REPLICAS"] == "1"
    assert not {"GET_HOSTS_FROM", "GUESTBOOK_REDIS_LEADER_URL"} & env.keys()

    service = get(objects, "Service", sentinels["spec"]["serviceName"])
    (port,) = service["spec"]["ports"]
    assert port["port"] == 26379
    assert container_port(sentinels, port["targetPort"]) == 26379


def test_ha_every_redis_pod_has_a_dns_name_published_before_it_is_ready() -> None:
    objects = ha_objects()
    addresses: dict[str, list[str]] = {}
    for statefulset in (o for o in objects if o["kind"] == "StatefulSet"):
        name = statefulset["metadata"]["name"]
        service = get(objects, "Service", statefulset["spec"]["serviceName"])
        assert service["spec"]["clusterIP"] == "None", name
        assert service["spec"]["publishNotReadyAddresses"] is True, name
        assert ha_owner(service) == name
        addresses[name] = pod_addresses(statefulset)

        pod = pod_template(statefulset)["spec"]
        container = only_container(statefulset)
        env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
        assert env["POD_NAME"] == "metadata.name"
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "redis-ha"]
        assert mount["mountPath"] == "/etc/redis-ha"
        assert mount["readOnly"] is True
        (volume,) = [v for v in pod["volumes"] if v["name"] == "redis-ha"]
        assert volume["configMap"]["name"].startswith("redis-ha-")
        script = container["command"][1].removeprefix("/etc/redis-ha/")
        assert ha_file(script) == (HA_SCRIPTS / script).read_text()
    for name in ("redis-leader", "redis-follower"):
        container = only_container(get(objects, "StatefulSet", name))
        roles = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
        assert roles["ROLE"] == "metadata.labels['role']"

    # The start scripts ask exactly these pods, and the sentinels first monitor redis-leader-0.
    assert topology("NODES").split() == addresses["redis-leader"] + addresses["redis-follower"]
    assert topology("SENTINELS").split() == addresses["redis-sentinel"]
    assert topology("INITIAL_LEADER") == addresses["redis-leader"][0]
    assert topology("MASTER_NAME") == "guestbook"


# --- offline tools: kustomize, kubernetes-validate, checkov -------------------------------


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(KUBE)))
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendered_manifests_validate_strictly(directory: Path, version: str) -> None:
    validate = require("kubernetes-validate")
    result = subprocess.run(
        [validate, "--strict", "--quiet", "-k", version, "-"],
        input=render(directory),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_each_base_file_validates_on_its_own_for_kubectl_apply_f(version: str) -> None:
    validate = require("kubernetes-validate")
    files = sorted(str(p) for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml")
    result = subprocess.run(
        [validate, "--strict", "--quiet", "-k", version, *files],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_checkov_passes_on_the_rendered_manifests_and_the_dockerfile(tmp_path: Path) -> None:
    checkov = require("checkov")
    files = []
    for directory in (BASE, PRODUCTION, HA):
        rendered = tmp_path / f"{directory.name}.yaml"
        rendered.write_text(render(directory))
        files += ["--file", str(rendered)]
    result = subprocess.run(
        [
            checkov,
            "--skip-download",  # offline: no policy or metadata download
            "--quiet",
            "--compact",
            "--framework",
            "kubernetes",
            "dockerfile",
            *files,
            "--file",
            str(ROOT / "Dockerfile"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Passed checks" in result.stdout
