"""The image built from the Dockerfile, running the guestbook topology in real containers.

Builds the image with podman, then runs the objects of deploy/kubernetes/base as podman
containers on a private podman network: each container gets the image, command, arguments,
user, read-only root and dropped capabilities that its Deployment gives it, and the network
aliases `redis-leader` / `redis-follower` stand in for the Services. The frontend's port is
published on 127.0.0.1 only; nothing here talks to any other address.

No registry is reachable in CI: `scripts/ci/build-standin-images.sh` puts local stand-ins
under the exact image references the Dockerfile and manifests name, and builds here use
`--pull=never`. Skipped, with the reason, when podman is not installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from containers import (
    CONTAINERS_CONF,
    PROJECT_IMAGE,
    ROOT,
    podman,
    require_podman_and_images,
    valkey_cli,
    wait_for,
)

BASE = ROOT / "deploy" / "kubernetes" / "base"

pytestmark = [
    pytest.mark.containers,
    # With `--dist loadgroup` all of these run on one worker, so the session-scoped
    # topologies below are built once (session scope: other modules' tests interleaved on
    # that worker do not tear them down).
    pytest.mark.xdist_group("containers"),
    pytest.mark.timeout(600),
]


def deployment(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((BASE / f"{name}-deployment.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def base_deployments() -> dict[str, dict[str, Any]]:
    return {name: deployment(name) for name in ("redis-leader", "redis-follower", "frontend")}


def base_images() -> set[str]:
    """Every image reference the build and the manifests need, as they are written."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    images = set(re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.M))
    images |= set(re.findall(r"^COPY\s+--from=(\S+)", dockerfile, flags=re.M))
    images -= set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile, flags=re.M | re.I))
    for name in ("redis-leader", "redis-follower"):
        images.add(deployment(name)["spec"]["template"]["spec"]["containers"][0]["image"])
    return images


@dataclass
class Topology:
    """The containers of one test run; names are unique per run."""

    prefix: str
    image: str
    network: str
    leader_volume: str
    deployments: dict[str, dict[str, Any]] = field(default_factory=base_deployments)
    # Secret name -> host directory holding one file per key (a Secret volume's layout).
    secrets: dict[str, Path] = field(default_factory=dict)
    password: str = ""
    base_url: str = ""
    containers: list[str] = field(default_factory=list)
    build_seconds: float = 0.0
    ready_seconds: float = 0.0

    @property
    def leader(self) -> str:
        return f"{self.prefix}-redis-leader"

    @property
    def followers(self) -> list[str]:
        return [f"{self.prefix}-redis-follower-{i}" for i in (1, 2)]

    @property
    def frontend(self) -> str:
        return f"{self.prefix}-frontend"

    def cli(self, container: str, *args: str) -> str:
        return valkey_cli(container, *args, password=self.password)

    def run(self, name: str, alias: str, *extra: str, image: str = "") -> None:
        """`podman run` one container of a Deployment's pod template, as Kubernetes would.

        `alias` names the Deployment and is the container's network alias, standing in for
        the Service of the same name.
        """
        pod = self.deployments[alias]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        security = container["securityContext"]
        user = f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
        flags = [
            "--detach", "--name", name, "--hostname", name,
            "--network", self.network, "--network-alias", alias,
            "--user", user, "--cap-drop", "ALL",
        ]  # fmt: skip
        if security.get("readOnlyRootFilesystem"):
            flags.append("--read-only")
        if security.get("allowPrivilegeEscalation") is False:
            flags += ["--security-opt", "no-new-privileges"]
        # emptyDir volumes become tmpfs mounts owned by the pod's user (fsGroup's effect);
        # the leader's PersistentVolumeClaim is mounted by start_leader().
        empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        for mount in container.get("volumeMounts", []):
            if mount["name"] in empty_dirs:
                flags += ["--tmpfs", f"{mount['mountPath']}:rw,U"]
        secret_volumes = {v["name"]: v["secret"] for v in pod.get("volumes", []) if "secret" in v}
        for mount in container.get("volumeMounts", []):
            if mount["name"] in secret_volumes:
                host = self.secrets[secret_volumes[mount["name"]]["secretName"]]
                flags += ["--volume", f"{host}:{mount['mountPath']}:ro"]
        env: dict[str, str] = {}
        for var in container.get("env", []):
            if "valueFrom" in var:
                ref = var["valueFrom"]["secretKeyRef"]
                secret = self.secrets.get(ref["name"])
                if ref.get("optional") and not (secret and (secret / ref["key"]).exists()):
                    continue  # as the kubelet does: an absent optional key sets nothing
                value = (self.secrets[ref["name"]] / ref["key"]).read_text()
            else:
                # Kubernetes expands $(NAME) from the variables defined before this one.
                value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), var["value"])
            env[var["name"]] = value
        for key, value in env.items():
            flags += ["--env", f"{key}={value}"]
        entrypoint = container.get("command", [])
        if entrypoint:
            flags += ["--entrypoint", json.dumps(entrypoint)]
        podman("run", *flags, *extra, image or container["image"], *container.get("args", []))
        self.containers.append(name)

    def start_leader(self) -> None:
        # The PersistentVolumeClaim: a named volume, made writable for the pod's user first
        # (what fsGroup does on Kubernetes).
        pod = self.deployments["redis-leader"]["spec"]["template"]["spec"]
        user = pod["securityContext"]["runAsUser"]
        podman(
            "run", "--rm", "--user", "0", "--volume", f"{self.leader_volume}:/data",
            "--entrypoint", "chown", pod["containers"][0]["image"], f"{user}:{user}", "/data",
        )  # fmt: skip
        self.run(self.leader, "redis-leader", "--volume", f"{self.leader_volume}:/data")

    def start(self) -> None:
        """Leader, followers, then the frontend once the image is there."""
        podman("network", "create", self.network)
        self.start_leader()
        for name in self.followers:
            self.run(name, "redis-follower")

    def start_frontend(self) -> float:
        """Start the frontend; seconds from `podman run` to /readyz 200."""
        started = time.monotonic()
        self.run(self.frontend, "frontend", "--publish", "127.0.0.1::8080", image=self.image)
        port = podman("port", self.frontend, "8080/tcp").stdout.strip().rsplit(":", 1)[1]
        self.base_url = f"http://127.0.0.1:{port}"
        wait_for("/readyz", lambda: httpx.get(f"{self.base_url}/readyz").status_code == 200)
        ready = time.monotonic() - started
        for name in self.followers:
            wait_for(
                f"{name} replicating",
                lambda name=name: "master_link_status:up" in self.cli(name, "info", "replication"),
            )
        return ready

    def dump_logs(self) -> None:
        for name in self.containers:
            print(f"--- logs of {name}\n{podman('logs', name, check=False).stderr}")

    def remove(self) -> None:
        if self.containers:
            podman("rm", "--force", "--time", "2", *self.containers, check=False)
        podman("network", "rm", "--force", self.network, check=False)
        podman("volume", "rm", "--force", self.leader_volume, check=False)


def require_podman_and_base_images() -> None:
    require_podman_and_images(base_images())


def new_topology(image: str, **kwargs: Any) -> Topology:
    run_id = uuid.uuid4().hex[:8]
    return Topology(
        prefix=f"guestbook-test-{run_id}",
        image=image,
        network=f"guestbook-test-{run_id}",
        leader_volume=f"guestbook-test-{run_id}-leader-data",
        **kwargs,
    )


@pytest.fixture(scope="session")
def image() -> Iterator[str]:
    require_podman_and_base_images()
    # Shared with tests/test_containers_ha.py: built once, by whichever module needs it first.
    yield PROJECT_IMAGE.acquire()
    PROJECT_IMAGE.release()


def build(tag: str) -> float:
    """Seconds the build took (in whichever module built it first)."""
    assert tag == PROJECT_IMAGE.tag
    PROJECT_IMAGE.build()
    return PROJECT_IMAGE.build_seconds


@pytest.fixture(scope="session")
def topology(image: str) -> Iterator[Topology]:
    """The base manifests' topology in containers; the image is built while it starts."""
    top = new_topology(image)
    try:
        # The stores first: the followers' first sync runs while the image builds.
        top.start()
        top.build_seconds = build(image)
        top.ready_seconds = top.start_frontend()
        yield top
    except BaseException:
        top.dump_logs()
        raise
    finally:
        top.remove()


def post(top: Topology, text: str) -> dict[str, Any]:
    response = httpx.post(f"{top.base_url}/api/messages", json={"text": text})
    assert response.status_code == 201, response.text
    message: dict[str, Any] = response.json()
    return message


def texts(top: Topology) -> list[str]:
    response = httpx.get(f"{top.base_url}/api/messages")
    assert response.status_code == 200, response.text
    return [m["text"] for m in response.json()["messages"]]


def store_dump(cli: Callable[..., str], container: str) -> str:
    """Every value under the guestbook: prefix in one server, whatever the key types."""
    readers = {
        "stream": ("xrange", "-", "+"),
        "list": ("lrange", "0", "-1"),
        "hash": ("hgetall",),
        "zset": ("zrange", "0", "-1"),
        "set": ("smembers",),
        "string": ("get",),
    }
    out = []
    for key in cli(container, "--scan", "--pattern", "guestbook:*").split():
        kind = cli(container, "type", key).strip()
        if kind in readers:
            command, *args = readers[kind]
            out.append(cli(container, command, key, *args))
    return "\n".join(out)


def test_frontend_container_is_ready_and_live(topology: Topology) -> None:
    assert httpx.get(f"{topology.base_url}/readyz").status_code == 200
    assert httpx.get(f"{topology.base_url}/healthz").status_code == 200
    print(f"build {topology.build_seconds:.1f}s, start to ready {topology.ready_seconds:.1f}s")


def test_post_through_the_frontend_container_is_read_back(topology: Topology) -> None:
    text = f"hello from a container {uuid.uuid4().hex[:6]}"

    post(topology, text)

    assert text in texts(topology)


def test_every_follower_container_holds_the_post(topology: Topology) -> None:
    text = f"replicated {uuid.uuid4().hex[:6]}"

    post(topology, text)

    for name in topology.followers:
        assert "role:slave" in topology.cli(name, "info", "replication")
        wait_for(
            f"{name} to hold the post", lambda name=name: text in store_dump(topology.cli, name)
        )


def test_the_manifests_readiness_commands_pass_in_the_store_containers(topology: Topology) -> None:
    for name, container_name in [
        ("redis-leader", topology.leader),
        *(("redis-follower", f) for f in topology.followers),
    ]:
        probe = deployment(name)["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
        result = podman("exec", container_name, *probe["exec"]["command"], check=False)
        assert result.returncode == 0, f"{name}: {result.stderr}"


def test_image_runs_as_non_root_with_a_read_only_root(topology: Topology) -> None:
    image_user = podman("image", "inspect", "--format", "{{.Config.User}}", topology.image)
    assert image_user.stdout.strip() == "10001:10001"
    assert podman("exec", topology.frontend, "id", "-u").stdout.strip() == "10001"
    read_only = podman("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", topology.frontend)
    assert read_only.stdout.strip() == "true"

    for path in ("/app/written-by-test", "/written-by-test"):
        result = podman("exec", topology.frontend, "touch", path, check=False)
        assert result.returncode != 0
        assert "Read-only file system" in result.stderr or "Permission denied" in result.stderr

    assert podman("exec", topology.frontend, "touch", "/tmp/scratch").returncode == 0


def test_image_carries_no_build_tools_or_caches(topology: Topology) -> None:
    result = podman(
        # As root, so that an unreadable directory cannot hide what is in it.
        "run", "--rm", "--user", "0", "--entrypoint", "sh", topology.image, "-c",
        "command -v uv uvx gcc cc; ls -A /root/.cache /app/src /app/uv.lock 2>/dev/null; true",
    )  # fmt: skip
    assert result.stdout.strip() == ""
    labels = json.loads(
        podman("image", "inspect", "--format", "{{json .Config.Labels}}", topology.image).stdout
    )
    assert labels["org.opencontainers.image.title"] == "guestbook"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"


def test_reads_keep_working_with_a_follower_container_stopped(topology: Topology) -> None:
    text = f"before the follower stopped {uuid.uuid4().hex[:6]}"
    post(topology, text)
    stopped = topology.followers[0]

    podman("stop", "--time", "2", stopped)
    try:
        for _ in range(20):
            assert text in texts(topology)
        assert httpx.get(f"{topology.base_url}/readyz").status_code == 200
    finally:
        podman("start", stopped)
    wait_for(
        f"{stopped} replicating again",
        lambda: "master_link_status:up" in topology.cli(stopped, "info", "replication"),
    )


def test_frontend_stops_promptly_and_cleanly_on_sigterm(topology: Topology) -> None:
    name = f"{topology.prefix}-frontend-stop"
    podman(
        "run", "--detach", "--name", name, "--network", topology.network,
        "--read-only", "--tmpfs", "/tmp:rw,U", "--cap-drop", "ALL",
        "--publish", "127.0.0.1::8080", topology.image,
    )  # fmt: skip
    topology.containers.append(name)
    port = podman("port", name, "8080/tcp").stdout.strip().rsplit(":", 1)[1]
    wait_for("/readyz", lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200)

    started = time.monotonic()
    podman("stop", "--time", "20", name)
    elapsed = time.monotonic() - started

    # podman would SIGKILL after 20 s; a process that handles SIGTERM is gone well before.
    assert elapsed < 10, f"took {elapsed:.1f}s to stop"
    exit_code = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
    assert exit_code == "0"


def test_leader_data_outlives_its_container(topology: Topology) -> None:
    text = f"survives the leader {uuid.uuid4().hex[:6]}"
    post(topology, text)

    # What `kubectl delete pod` does to the leader: a new container on the same volume.
    podman("rm", "--force", "--time", "5", topology.leader)
    topology.containers.remove(topology.leader)
    topology.start_leader()

    wait_for("the leader to answer", lambda: "PONG" in topology.cli(topology.leader, "ping"))
    assert text in store_dump(topology.cli, topology.leader)
    wait_for("reads through the frontend", lambda: text in texts(topology))


# --- the production overlay's password, in containers ------------------------------------


def rendered_production_deployments() -> dict[str, dict[str, Any]]:
    kubectl = shutil.which("kubectl") or str(Path.home() / ".local" / "bin" / "kubectl")
    if not os.access(kubectl, os.X_OK):
        pytest.skip("kubectl is not installed (scripts/ci/install-container-tools.sh installs it)")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "deploy" / "kubernetes" / "overlays" / "production")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {
        doc["metadata"]["name"]: doc
        for doc in yaml.safe_load_all(rendered)
        if doc and doc["kind"] == "Deployment"
    }


ADMIN_TOKEN = uuid.uuid4().hex


def secret_directory(tmp_path_factory: pytest.TempPathFactory, name: str, **keys: str) -> Path:
    """A Secret as its volume lays it out: one file per key."""
    secret = tmp_path_factory.mktemp(name)
    for key, value in keys.items():
        (secret / key).write_text(value)
        (secret / key).chmod(0o644)
    secret.chmod(0o755)  # a Secret volume is readable by the pod's fsGroup
    return secret


@pytest.fixture(scope="session")
def production(topology: Topology, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """overlays/production's Deployments in containers, the Secrets as mounted directories."""
    deployments = rendered_production_deployments()
    password = uuid.uuid4().hex
    top = new_topology(
        topology.image,
        deployments=deployments,
        secrets={
            "redis-auth": secret_directory(tmp_path_factory, "redis-auth", password=password),
            "guestbook-admin": secret_directory(
                tmp_path_factory, "guestbook-admin", token=ADMIN_TOKEN
            ),
        },
        password=password,
    )
    try:
        top.start()
        top.start_frontend()
        yield top
    except BaseException:
        top.dump_logs()
        raise
    finally:
        top.remove()


def test_production_stores_refuse_clients_without_the_password(production: Topology) -> None:
    for name in (production.leader, *production.followers):
        anonymous = podman("exec", name, "valkey-cli", "ping", check=False)
        assert "NOAUTH" in anonymous.stdout + anonymous.stderr
        # The password was given on the command line; the process list must not show it.
        assert production.password not in podman("exec", name, "cat", "/proc/1/cmdline").stdout


def test_production_readiness_commands_authenticate(production: Topology) -> None:
    for name, container_name in [
        ("redis-leader", production.leader),
        *(("redis-follower", f) for f in production.followers),
    ]:
        pod = production.deployments[name]["spec"]["template"]["spec"]
        command = pod["containers"][0]["readinessProbe"]["exec"]["command"]
        result = podman("exec", container_name, *command, check=False)
        assert result.returncode == 0, f"{name}: {result.stderr}"


def test_production_frontend_writes_and_followers_replicate_with_the_password(
    production: Topology,
) -> None:
    text = f"behind a password {uuid.uuid4().hex[:6]}"

    post(production, text)

    assert text in texts(production)
    for name in production.followers:
        wait_for(
            f"{name} to hold the post", lambda name=name: text in store_dump(production.cli, name)
        )


def test_production_frontend_moderates_with_the_token_from_its_secret(
    production: Topology,
) -> None:
    queue = f"{production.base_url}/api/moderation/queue"

    with_token = httpx.get(queue, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    without = httpx.get(queue)
    wrong = httpx.get(queue, headers={"Authorization": f"Bearer {uuid.uuid4().hex}"})

    assert with_token.status_code == 200, with_token.text
    assert "held" in with_token.json()
    assert (without.status_code, wrong.status_code) == (401, 401)
    logs = podman("logs", production.frontend)
    assert ADMIN_TOKEN not in logs.stdout + logs.stderr


def test_production_frontend_without_the_admin_secret_starts_and_refuses_moderation(
    production: Topology,
) -> None:
    name = f"{production.prefix}-frontend-no-admin"
    secrets = production.secrets
    production.secrets = {k: v for k, v in secrets.items() if k != "guestbook-admin"}
    try:
        production.run(name, "frontend", "--publish", "127.0.0.1::8080", image=production.image)
    finally:
        production.secrets = secrets
    port = podman("port", name, "8080/tcp").stdout.strip().rsplit(":", 1)[1]
    base_url = f"http://127.0.0.1:{port}"
    wait_for("/readyz", lambda: httpx.get(f"{base_url}/readyz").status_code == 200)

    refused = httpx.get(
        f"{base_url}/api/moderation/queue", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )

    assert refused.status_code == 403, refused.text
    # What the docs offer instead: the command line, inside the pod, on the store directly.
    assert podman("exec", name, "guestbook", "queue", "--json").returncode == 0


# --- compose.yaml, through podman-compose -------------------------------------------------


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def compose(
    topology: Topology, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """`podman-compose up` of compose.yaml, the frontend image being the one built here."""
    podman_compose = shutil.which("podman-compose") or str(
        Path.home() / ".local" / "bin" / "podman-compose"
    )
    if not os.access(podman_compose, os.X_OK):
        pytest.skip(
            "podman-compose is not installed (scripts/ci/install-container-tools.sh installs it)"
        )
    project = f"guestbook-test-{uuid.uuid4().hex[:8]}"
    # Only the image name changes: the image is already built, so compose does not build.
    override = tmp_path_factory.mktemp("compose") / "override.yaml"
    override.write_text(yaml.safe_dump({"services": {"frontend": {"image": topology.image}}}))
    port = free_loopback_port()
    env = dict(os.environ, GUESTBOOK_HOST_PORT=str(port))
    env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [podman_compose, "-p", project, "-f", "compose.yaml", "-f", str(override)]
        return subprocess.run(
            [*command, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )

    up = run("up", "--detach", "--no-build")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        base_url = f"http://127.0.0.1:{port}"
        wait_for("/readyz", lambda: httpx.get(f"{base_url}/readyz").status_code == 200)
        yield project, base_url
    finally:
        run("down", "--volumes", "--timeout", "2")


def compose_container(project: str, service: str) -> str:
    (name,) = podman(
        "ps", "--format", "{{.Names}}",
        "--filter", f"label=com.docker.compose.project={project}",
        "--filter", f"label=com.docker.compose.service={service}",
    ).stdout.split()  # fmt: skip
    return name


def test_compose_topology_serves_posts_and_both_followers_replicate_them(
    compose: tuple[str, str],
) -> None:
    project, base_url = compose
    text = f"through compose {uuid.uuid4().hex[:6]}"

    response = httpx.post(f"{base_url}/api/messages", json={"text": text})

    assert response.status_code == 201, response.text
    messages = httpx.get(f"{base_url}/api/messages").json()["messages"]
    assert text in [m["text"] for m in messages]
    for service in ("redis-follower-1", "redis-follower-2"):
        name = compose_container(project, service)
        wait_for(
            f"{service} to hold the post", lambda name=name: text in store_dump(valkey_cli, name)
        )
