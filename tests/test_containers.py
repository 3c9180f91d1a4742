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
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "deploy" / "kubernetes" / "base"
CONTAINERS_CONF = ROOT / "scripts" / "ci" / "containers.conf"

pytestmark = [
    pytest.mark.containers,
    # One topology per worker; with `--dist loadgroup` all of these share one worker.
    pytest.mark.xdist_group("containers"),
    pytest.mark.timeout(600),
]


def podman(
    *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    result = subprocess.run(
        ["podman", *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result


def deployment(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((BASE / f"{name}-deployment.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def base_images() -> set[str]:
    """Every image reference the build and the manifests need, as they are written."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    images = set(re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.M))
    images |= set(re.findall(r"^COPY\s+--from=(\S+)", dockerfile, flags=re.M))
    images -= set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile, flags=re.M | re.I))
    for name in ("redis-leader", "redis-follower"):
        images.add(deployment(name)["spec"]["template"]["spec"]["containers"][0]["image"])
    return images


def wait_for(what: str, probe: Any, timeout: float = 30.0, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (httpx.HTTPError, AssertionError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


@dataclass
class Topology:
    """The containers of one test run; names are unique per run."""

    prefix: str
    image: str
    network: str
    leader_volume: str
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
        return podman("exec", container, "valkey-cli", *args, timeout=30).stdout

    def run(
        self, name: str, spec: dict[str, Any], alias: str, *extra: str, image: str = ""
    ) -> None:
        """`podman run` one container of a Deployment's pod template, as Kubernetes would."""
        pod = spec["template"]["spec"]
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
        for env in container.get("env", []):
            flags += ["--env", f"{env['name']}={env['value']}"]
        entrypoint = container.get("command", [])
        if entrypoint:
            flags += ["--entrypoint", json.dumps(entrypoint)]
        podman("run", *flags, *extra, image or container["image"], *container.get("args", []))
        self.containers.append(name)

    def start_leader(self) -> None:
        # The PersistentVolumeClaim: a named volume, made writable for the pod's user first
        # (what fsGroup does on Kubernetes).
        spec = deployment("redis-leader")["spec"]
        user = spec["template"]["spec"]["securityContext"]["runAsUser"]
        image = spec["template"]["spec"]["containers"][0]["image"]
        podman(
            "run", "--rm", "--user", "0", "--volume", f"{self.leader_volume}:/data",
            "--entrypoint", "chown", image, f"{user}:{user}", "/data",
        )  # fmt: skip
        self.run(self.leader, spec, "redis-leader", "--volume", f"{self.leader_volume}:/data")


@pytest.fixture(scope="module")
def topology() -> Iterator[Topology]:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (scripts/ci/install-container-tools.sh installs it)")
    missing = sorted(
        i for i in base_images() if podman("image", "exists", i, check=False).returncode
    )
    if missing:
        reason = f"base images not in local storage: {missing} (scripts/ci/build-standin-images.sh)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)

    run_id = uuid.uuid4().hex[:8]
    top = Topology(
        prefix=f"guestbook-test-{run_id}",
        image=f"localhost/guestbook-test:{run_id}",
        network=f"guestbook-test-{run_id}",
        leader_volume=f"guestbook-test-{run_id}-leader-data",
    )
    podman("network", "create", top.network)
    try:
        # The stores first: the followers' first sync runs while the image builds.
        top.start_leader()
        for name in top.followers:
            top.run(name, deployment("redis-follower")["spec"], "redis-follower")

        started = time.monotonic()
        # --network host for the RUN steps only: the default podman network here does not
        # reach the machine's DNS resolver, and uv must fetch the build backend.
        podman(
            "build", "--pull=never", "--network", "host", "--format", "docker",
            "--tag", top.image, str(ROOT),
        )  # fmt: skip
        top.build_seconds = time.monotonic() - started

        started = time.monotonic()
        top.run(
            top.frontend, deployment("frontend")["spec"], "frontend",
            "--publish", "127.0.0.1::8080",
            image=top.image,
        )  # fmt: skip
        port = podman("port", top.frontend, "8080/tcp").stdout.strip().rsplit(":", 1)[1]
        top.base_url = f"http://127.0.0.1:{port}"
        wait_for("/readyz", lambda: httpx.get(f"{top.base_url}/readyz").status_code == 200)
        top.ready_seconds = time.monotonic() - started
        for name in top.followers:
            wait_for(
                f"{name} replicating",
                lambda name=name: "master_link_status:up" in top.cli(name, "info", "replication"),
            )
        yield top
    except BaseException:
        for name in top.containers:
            print(f"--- logs of {name}\n{podman('logs', name, check=False).stderr}")
        raise
    finally:
        for name in reversed(top.containers):
            podman("rm", "--force", "--time", "2", name, check=False)
        podman("network", "rm", "--force", top.network, check=False)
        podman("volume", "rm", "--force", top.leader_volume, check=False)
        podman("rmi", "--force", top.image, check=False)


def post(top: Topology, text: str) -> dict[str, Any]:
    response = httpx.post(f"{top.base_url}/api/messages", json={"text": text})
    assert response.status_code == 201, response.text
    message: dict[str, Any] = response.json()
    return message


def texts(top: Topology) -> list[str]:
    response = httpx.get(f"{top.base_url}/api/messages")
    assert response.status_code == 200, response.text
    return [m["text"] for m in response.json()["messages"]]


def store_dump(top: Topology, container: str) -> str:
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
    for key in top.cli(container, "--scan", "--pattern", "guestbook:*").split():
        kind = top.cli(container, "type", key).strip()
        if kind in readers:
            command, *args = readers[kind]
            out.append(top.cli(container, command, key, *args))
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
        wait_for(f"{name} to hold the post", lambda name=name: text in store_dump(topology, name))


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
        "run", "--rm", "--entrypoint", "sh", topology.image, "-c",
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
    topology.run(
        name, deployment("frontend")["spec"], "frontend-stop",
        "--publish", "127.0.0.1::8080",
        image=topology.image,
    )  # fmt: skip
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
    assert text in store_dump(topology, topology.leader)
    wait_for("reads through the frontend", lambda: text in texts(topology))
