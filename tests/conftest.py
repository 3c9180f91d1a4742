"""Fixtures that start real servers: Valkey leaders and followers (the binary the project ships
with) on free loopback ports, and `guestbook serve` processes talked to over real HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from starlette.types import Receive, Scope, Send

# The browser tests' Chromium fixtures, defined once in browser.py.
from browser import browser, new_page  # noqa: F401
from guestbook.app import GuestbookApp, create_app
from guestbook.embedded import server_binary
from guestbook.settings import Settings, discover

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent


def in_ci() -> bool:
    """CI=true (as .ci/run is run): a machine that must have every tool the tests use."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Under CI a skip is a failure: a CI machine without its tools (podman, Chromium, kubectl,
    kubernetes-validate, checkov, the stand-in images) must not come out green with skips.
    Elsewhere a skip stays a skip, and `-ra` prints its reason."""
    report = yield
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true, so this skip fails the run: {reason}"
    return report


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: object, timeout: float = 10.0, interval: float = 0.02) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s: {predicate}")


def store_args(workdir: Path) -> list[str]:
    """The options every test store runs with: as durable as the production leaders
    (appendfsync always), no snapshots, a follower synced at once, its log in WORKDIR."""
    return [
        "--dir", str(workdir),
        "--appendonly", "yes",
        "--appendfsync", "always",
        "--save", "",
        "--repl-diskless-sync-delay", "0",
        "--logfile", str(workdir / "server.log"),
    ]  # fmt: skip


@dataclass
class RedisServer:
    """A real Valkey process; kill, hang (SIGSTOP), resume and restart it to cause faults."""

    workdir: Path
    port: int = field(default_factory=free_port)
    replica_of: RedisServer | None = None
    process: subprocess.Popen[bytes] | None = None
    # More server options, e.g. min-replicas-to-write for the Sentinel tests' servers.
    extra_args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, decode_responses=True, socket_timeout=5)

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            str(server_binary()), "--port", str(self.port), "--bind", HOST,
            *store_args(self.workdir),
        ]  # fmt: skip
        if self.replica_of is not None:
            args += ["--replicaof", HOST, str(self.replica_of.port)]
        args += self.extra_args
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.client().ping())
        if self.replica_of is not None:
            self.wait_synced()
        return self

    def wait_synced(self) -> None:
        """Ready when INFO replication says the link is up, as Redis's own tests decide, and
        this follower has applied every write its leader had taken when asked: a link that is
        up can still be behind a burst of writes made just before (a page read from it then
        missed messages the leader had)."""
        wait_until(
            lambda: self.client().info("replication").get("master_link_status") == "up",
            timeout=15,
        )
        if self.replica_of is None:
            return
        try:
            # Asked through its own client, which knows its password when it has one.
            target = int(self.replica_of.client().info("replication")["master_repl_offset"])
        except redis.RedisError:
            return  # the leader it was started with is gone (a failover test): the link says it
        wait_until(
            lambda: int(self.client().info("replication").get("slave_repl_offset", -1)) >= target,
            timeout=15,
        )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.process.kill()
            self.process.wait()

    def hang(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.kill()
        self.start()


@dataclass
class Cluster:
    leader: RedisServer
    followers: list[RedisServer]

    def follower_urls(self) -> str:
        return ",".join(f.url for f in self.followers)

    def break_all(self, fault: str) -> None:
        """Take every server away: killed (connections refused) or frozen (SIGSTOP: no answer
        at all, as in a partition)."""
        for server in (*self.followers, self.leader):
            if fault == "killed":
                server.kill()
            else:
                server.hang()

    def mend_all(self, fault: str) -> None:
        if fault == "killed":
            self.leader.start()  # same port, same append-only file
            for follower in self.followers:
                follower.start()
        else:
            for server in (self.leader, *self.followers):
                server.resume()

    def stop(self) -> None:
        for server in (*self.followers, self.leader):
            server.kill()


def start_cluster(base: Path, followers: int = 2) -> Cluster:
    leader = RedisServer(base / "leader").start()
    return Cluster(
        leader,
        [RedisServer(base / f"follower{i}", replica_of=leader).start() for i in range(followers)],
    )


@dataclass
class Frontend:
    """A `guestbook serve` process on a free port."""

    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[str] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def http(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, **kwargs)  # type: ignore[arg-type]

    def start(self, wait_ready: bool = True) -> Frontend:
        env = {**self.env, "GUESTBOOK_PORT": str(self.port)}
        assert self.log_path is not None
        log = self.log_path.open("a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "guestbook", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        log.close()
        try:
            wait_until(lambda: self._answers(), timeout=60)
            if wait_ready:
                wait_until(lambda: httpx.get(f"{self.url}/readyz").status_code == 200, timeout=30)
        except BaseException:
            self.stop(signal.SIGKILL)  # never leave a half-started server behind
            raise
        return self

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"guestbook serve exited: {self.logs()}")
        return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200

    def logs(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def base_env(tmp: Path, **extra: str) -> dict[str, str]:
    """A clean environment: nothing of the caller's GUESTBOOK_* or Kubernetes variables."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GUESTBOOK_", "REDIS_")) and k != "GET_HOSTS_FROM"
    }
    env.update(
        GUESTBOOK_HOST=HOST,
        GUESTBOOK_DATA_DIR=str(tmp / "data"),
        GUESTBOOK_RATE_LIMIT="0",
        GUESTBOOK_STORE_TIMEOUT="0.5",
        GUESTBOOK_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@pytest.fixture
def anyio_backend() -> str:
    """In-process tests run on asyncio, the loop the server runs on."""
    return "asyncio"


@contextlib.asynccontextmanager
async def app_in_process(
    env: dict[str, str], instance: str = "in-process"
) -> AsyncIterator[tuple[GuestbookApp, httpx.AsyncClient]]:
    """The app from `create_app`, its lifespan run, driven through httpx's ASGI transport:
    the in-process tier, with real store servers behind it and no HTTP server in between."""
    settings = Settings.from_env(env)
    app = create_app(settings, discover(settings), instance)
    async with app.api.router.lifespan_context(app.api) as lifespan_state:

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            # What an ASGI server does with the state a lifespan yields.
            scope["state"] = dict(lifespan_state or {})
            await app(scope, receive, send)

        transport = httpx.ASGITransport(app=with_state, client=(HOST, 40000))
        base = "http://guestbook.test"
        async with httpx.AsyncClient(transport=transport, base_url=base) as client:
            yield app, client


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests pass settings explicitly; nothing from the caller's environment leaks in."""
    for key in list(os.environ):
        if key.startswith(("GUESTBOOK_", "REDIS_")) or key == "GET_HOSTS_FROM":
            monkeypatch.delenv(key)


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One leader and two followers shared by a module's tests that cause no faults."""
    cluster = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def shared_frontend(
    shared_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Frontend]:
    tmp = tmp_path_factory.mktemp("frontend")
    env = base_env(
        tmp,
        GUESTBOOK_REDIS_LEADER_URL=shared_cluster.leader.url,
        GUESTBOOK_REDIS_FOLLOWER_URL=shared_cluster.follower_urls(),
    )
    frontend = Frontend(env, log_path=tmp / "serve.log").start()
    yield frontend
    frontend.stop()


@pytest.fixture
def gb(shared_frontend: Frontend) -> Iterator[httpx.Client]:
    """An HTTP client of the shared frontend. Other tests' messages may be there too: tests
    on it mark their own messages with `token()`; tests that need an empty guestbook start
    a cluster of their own."""
    with shared_frontend.http() as client:
        yield client


@pytest.fixture
def token(request: pytest.FixtureRequest) -> str:
    """A marker unique to this test, to find its own messages among others'."""
    return f"t{abs(hash(request.node.nodeid)) % 10**8}-{time.monotonic_ns() % 10**6}"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster of one's own, for tests that kill, hang or restart servers."""
    cluster = start_cluster(tmp_path / "cluster")
    yield cluster
    cluster.stop()


MakeFrontend = Callable[..., Frontend]


def cli(
    tmp_path: Path, cluster: Cluster | None, *args: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """`python -m guestbook ARGS` on `cluster` (its leader and followers), or on the embedded
    store of a data dir under `tmp_path` when there is none."""
    extra = dict(env)
    if cluster is not None:
        extra.setdefault("GUESTBOOK_REDIS_LEADER_URL", cluster.leader.url)
        extra.setdefault("GUESTBOOK_REDIS_FOLLOWER_URL", cluster.follower_urls())
    return subprocess.run(
        [sys.executable, "-m", "guestbook", *args],
        env=base_env(tmp_path, **extra),
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
    )


def post(target: httpx.Client | Frontend, text: str) -> httpx.Response:
    """POST a message through the JSON API (of a client's frontend, or of a frontend); the
    answer as it came."""
    if isinstance(target, Frontend):
        return httpx.post(f"{target.url}/api/messages", json={"text": text}, timeout=10)
    return target.post("/api/messages", json={"text": text})


def posted(target: httpx.Client | Frontend, text: str) -> dict[str, Any]:
    """POST a message that must be taken; the stored message."""
    response = post(target, text)
    assert response.status_code == 201, response.text
    value = response.json()
    assert isinstance(value, dict)
    return value


@pytest.fixture
def make_frontend(tmp_path: Path) -> Iterator[MakeFrontend]:
    started: list[Frontend] = []

    def make(cluster: Cluster | None = None, wait_ready: bool = True, **extra: str) -> Frontend:
        env_extra = dict(extra)
        if cluster is not None:
            env_extra.setdefault("GUESTBOOK_REDIS_LEADER_URL", cluster.leader.url)
            if cluster.followers:
                env_extra.setdefault("GUESTBOOK_REDIS_FOLLOWER_URL", cluster.follower_urls())
        index = len(started)
        frontend = Frontend(
            base_env(tmp_path, **env_extra), log_path=tmp_path / f"serve{index}.log"
        )
        started.append(frontend)
        return frontend.start(wait_ready=wait_ready)

    yield make
    for frontend in started:
        with contextlib.suppress(Exception):
            frontend.stop(signal.SIGKILL if frontend.process else signal.SIGTERM)
