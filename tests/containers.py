"""What the container tests share: podman with the project's settings, waiting, the manifests
rendered by kustomize, and the project image, built once per test process.

tests/test_containers.py (the base and production topologies, compose) and
tests/test_containers_ha.py (the HA overlay) both run the image; whichever needs it first
builds it and the other reuses that build, so a session never builds it twice in one worker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "deploy" / "kubernetes"
CONTAINERS_CONF = ROOT / "scripts" / "ci" / "containers.conf"


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


def wait_for(what: str, probe: Any, timeout: float = 30.0, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        # A probe's `podman exec` that timed out is "not yet" too: a server inside can stall
        # (a sentinel blocked in a name lookup while pods are still being created).
        except (httpx.HTTPError, AssertionError, subprocess.TimeoutExpired) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def valkey_cli(container: str, *args: str, password: str = "") -> str:
    auth = ["--no-auth-warning", "-a", password] if password else []
    return podman("exec", container, "valkey-cli", *auth, *args, timeout=30).stdout


def render(overlay: str) -> list[dict[str, Any]]:
    """`kubectl kustomize deploy/kubernetes/overlays/OVERLAY`, as objects."""
    kubectl = shutil.which("kubectl") or str(Path.home() / ".local" / "bin" / "kubectl")
    if not os.access(kubectl, os.X_OK):
        pytest.skip("kubectl is not installed (scripts/ci/install-container-tools.sh installs it)")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


class ProjectImage:
    """The image the Dockerfile builds, under a tag unique to this test process.

    Built on first use and removed when the last module using it lets go of it.
    """

    def __init__(self) -> None:
        self.tag = f"localhost/guestbook-test:{uuid.uuid4().hex[:8]}"
        self.build_seconds = 0.0
        self._built = False
        self._users = 0
        self._lock = threading.Lock()

    def acquire(self) -> str:
        self._users += 1
        return self.tag

    def release(self) -> None:
        self._users -= 1
        if self._users == 0 and self._built:
            podman("rmi", "--force", self.tag, check=False)
            self._built = False

    def build(self) -> float:
        """Build unless built already; the seconds this call spent building."""
        with self._lock:
            if self._built:
                return 0.0
            started = time.monotonic()
            # --network host for the RUN steps only: the default podman network here does
            # not reach the machine's DNS resolver, and uv must fetch the build backend.
            podman(
                "build", "--pull=never", "--network", "host", "--format", "docker",
                "--tag", self.tag, str(ROOT),
            )  # fmt: skip
            self._built = True
            self.build_seconds = time.monotonic() - started
            return self.build_seconds


PROJECT_IMAGE = ProjectImage()


def require_podman_and_images(images: set[str]) -> None:
    """Skip, saying what is missing, unless podman and these images are here."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (scripts/ci/install-container-tools.sh installs it)")
    missing = sorted(i for i in images if podman("image", "exists", i, check=False).returncode)
    if missing:
        # Under CI=true conftest turns this skip into a failure, like every missing tool.
        pytest.skip(
            f"base images not in local storage: {missing} (scripts/ci/build-standin-images.sh)"
        )
