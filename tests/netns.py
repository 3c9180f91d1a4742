"""Several hosts on one machine, for tests that cut links for real: a partition, not a crash.

A `Network` is a bridge in a namespace of its own (the switch) and one namespace per host, each
joined to the bridge by a veth pair, with an address from 10.213.N.0/24. The test process stays
outside the namespaces and gets a port of its own on the bridge: a veth whose host end carries
10.213.N.254, so it talks to the hosts over real sockets. `cut(host)` sets the host's port on the
bridge down (packets to and from it are dropped, its sockets stay open, as when a cable is
pulled); `heal(host)` sets it up again.

Traffic goes only to addresses inside these namespaces: `check_route` proves with `ip route
get` that an address leaves through this network's own veth before anything is sent to it (an
address without such a route would go out to the real network), and every helper here calls it.

N is claimed by creating the host end of the test's port, named after N: creating a link is
atomic, so two networks (two test workers) never share a subnet. Everything a network made is
removed by `close()`, also when the test fails half way: deleting the switch's namespace takes
every veth pair with it. Namespaces left by a test process that died are removed on the next
start.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from conftest import base_env, store_args, wait_until
from guestbook.embedded import server_binary

NS_PREFIX = "gbt-"
SUBNET_PREFIX = "10.213"
TEST_PORT_HOST = 254
REDIS_PORT = 6379
HTTP_PORT = 8080
_counter = itertools.count()


class NetnsUnavailable(RuntimeError):
    """This machine cannot create network namespaces (not root, no `ip`, a sandbox)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used here, or None when they can (tried for real)."""
    probe = f"{NS_PREFIX}{os.getpid()}-probe"
    try:
        _ip("netns", "add", probe)
    except FileNotFoundError:
        return "`ip` is missing (Debian package iproute2)"
    except subprocess.CalledProcessError as exc:
        return f"cannot create a network namespace: {exc.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _remove_stale() -> None:
    """Delete namespaces of test processes that are gone (killed before their teardown)."""
    listed = _ip("netns", "list", check=False).stdout
    for line in listed.splitlines():
        name = line.split(" ", 1)[0]
        found = re.fullmatch(rf"{NS_PREFIX}(\d+)-.*", name)
        if found and not Path(f"/proc/{found.group(1)}").exists():
            _ip("netns", "del", name, check=False)


@dataclass
class Host:
    """One namespace with one address on the network; processes started in it are its own."""

    network: Network
    name: str
    ns: str
    address: str
    switch_port: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def command(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start `argv` inside this host. `ip netns exec` execs the program in place, so the
        process's pid is the program's: signals (SIGKILL, SIGSTOP) reach it directly."""
        process: subprocess.Popen[bytes] = subprocess.Popen(self.command(argv), **kwargs)
        self.processes.append(process)
        return process

    def run(self, argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside this host to the end; its output."""
        return subprocess.run(
            self.command(argv), capture_output=True, text=True, timeout=timeout, check=False
        )

    def check_route(self, address: str) -> None:
        """Refuse unless, from inside this host, `address` is its own loopback or is reached
        through its own veth."""
        self.network.check_route(address, self)


@dataclass
class Network:
    """A bridge, the hosts on it and the test process's own port; see the module's docstring."""

    index: int
    host_port: str
    switch_ns: str
    hosts: dict[str, Host] = field(default_factory=dict)

    @property
    def test_address(self) -> str:
        return f"{SUBNET_PREFIX}.{self.index}.{TEST_PORT_HOST}"

    @classmethod
    def create(cls) -> Network:
        """A new network on a subnet no other network on this machine uses."""
        reason = unavailable_reason()
        if reason is not None:
            raise NetnsUnavailable(reason)
        _remove_stale()
        tag = f"{NS_PREFIX}{os.getpid()}-{next(_counter)}"
        switch_ns = f"{tag}-sw"
        _ip("netns", "add", switch_ns)
        try:
            _ip("-n", switch_ns, "link", "set", "lo", "up")
            _ip("-n", switch_ns, "link", "add", "br0", "type", "bridge")
            _ip("-n", switch_ns, "link", "set", "br0", "up")
            index = cls._claim_subnet(switch_ns)
        except BaseException:
            _ip("netns", "del", switch_ns, check=False)
            raise
        network = cls(index, f"gbt213n{index}", switch_ns)
        try:
            _ip("-n", switch_ns, "link", "set", "t0", "master", "br0")
            _ip("-n", switch_ns, "link", "set", "t0", "up")
            _ip("addr", "add", f"{network.test_address}/24", "dev", network.host_port)
            _ip("link", "set", network.host_port, "up")
        except BaseException:
            network.close()
            raise
        return network

    @staticmethod
    def _claim_subnet(switch_ns: str) -> int:
        """Create the test's port as `gbt213n<N>` for the first N whose link name and subnet are
        free; the name is the claim."""
        routes = _ip("-4", "route", "show").stdout + _ip("-4", "addr", "show").stdout
        for index in range(1, 255):
            if f"{SUBNET_PREFIX}.{index}." in routes:
                continue
            created = _ip(
                "link", "add", f"gbt213n{index}", "type", "veth",
                "peer", "name", "t0", "netns", switch_ns,
                check=False,
            )  # fmt: skip
            if created.returncode == 0:
                return index
            if "exists" not in created.stderr.lower():
                raise RuntimeError(f"cannot create a veth pair: {created.stderr.strip()}")
        raise RuntimeError(f"no free subnet under {SUBNET_PREFIX}.0.0/16")

    def add_host(self, name: str) -> Host:
        """A namespace with loopback up and `eth0` on the bridge at the next address."""
        number = len(self.hosts) + 1
        ns = self.switch_ns.removesuffix("-sw") + f"-{name}"
        port = f"p{number}"
        address = f"{SUBNET_PREFIX}.{self.index}.{number}"
        _ip("netns", "add", ns)
        host = Host(self, name, ns, address, port)
        self.hosts[name] = host
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port,
            "netns", self.switch_ns)  # fmt: skip
        _ip("-n", self.switch_ns, "link", "set", port, "master", "br0")
        _ip("-n", self.switch_ns, "link", "set", port, "up")
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        return host

    def check_route(self, address: str, host: Host | None = None) -> None:
        """Assert that `address` is reached through this network's own veth: from the test
        process (its port `gbt213n<N>`), or from inside `host` (its `eth0`, or its loopback
        for 127.0.0.1). Call before sending anything to an address."""
        if host is None:
            out = _ip("route", "get", address).stdout
            expected = self.host_port
        else:
            out = _ip("-n", host.ns, "route", "get", address).stdout
            expected = "lo" if address.startswith("127.") else "eth0"
        device = re.search(r"\bdev (\S+)", out)
        if device is None or device.group(1) != expected:
            raise AssertionError(
                f"refusing to send to {address}: `ip route get` says {out.strip()!r}, "
                f"not via {expected}"
            )

    def cut(self, host: Host) -> None:
        """Pull `host`'s cable: its port on the bridge goes down, its own link stays up."""
        _ip("-n", self.switch_ns, "link", "set", host.switch_port, "down")

    def heal(self, host: Host) -> None:
        _ip("-n", self.switch_ns, "link", "set", host.switch_port, "up")

    def close(self) -> None:
        """Stop every process started in a host, then delete every namespace and link."""
        for host in self.hosts.values():
            for process in host.processes:
                if process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.send_signal(signal.SIGCONT)
                        process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(10)
        for host in self.hosts.values():
            _ip("netns", "del", host.ns, check=False)
        _ip("netns", "del", self.switch_ns, check=False)
        # The host end dies with its peer in the switch; this is for a half-made network.
        _ip("link", "del", self.host_port, check=False)


@dataclass
class NetnsRedis:
    """A real Valkey on one host, at its address and on its loopback."""

    host: Host
    workdir: Path
    replica_of: NetnsRedis | None = None
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return self.host.address

    @property
    def url(self) -> str:
        return f"redis://{self.address}:{REDIS_PORT}/0"

    def client(self) -> redis.Redis:
        """A client from the test process, over the test's port on the bridge."""
        self.host.network.check_route(self.address)
        return redis.Redis(
            host=self.address, port=REDIS_PORT, decode_responses=True, socket_timeout=5
        )

    def cli(self, *args: str) -> str:
        """`valkey-cli ARGS` run inside the server's own host, on its loopback: reaches the
        server while its link is cut, as an operator on that machine would."""
        self.host.check_route("127.0.0.1")
        cli = server_binary().with_name("valkey-cli")
        done = self.host.run([str(cli), "-h", "127.0.0.1", "-p", str(REDIS_PORT), *args])
        if done.returncode != 0:
            raise AssertionError(f"valkey-cli {args[0]} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def start(self) -> NetnsRedis:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            str(server_binary()),
            "--port", str(REDIS_PORT),
            "--bind", self.address, "127.0.0.1",
            # Without a password Valkey answers only its loopback; this bridge is the test's own.
            "--protected-mode", "no",
            *store_args(self.workdir),
            *self.extra_args,
        ]  # fmt: skip
        if self.replica_of is not None:
            self.host.check_route(self.replica_of.address)
            args += ["--replicaof", self.replica_of.address, str(REDIS_PORT)]
        self.process = self.host.popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.client().ping())
        if self.replica_of is not None:
            self.wait_synced()
        return self

    def wait_synced(self, timeout: float = 15) -> None:
        """Ready when INFO replication says the link is up, as Redis's own tests decide."""
        wait_until(
            lambda: self.client().info("replication").get("master_link_status") == "up",
            timeout=timeout,
        )


@dataclass
class NetnsFrontend:
    """A real `guestbook serve` on one host, reached by the test over the bridge."""

    host: Host
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host.address}:{HTTP_PORT}"

    def http(self, timeout: float = 10) -> httpx.Client:
        self.host.network.check_route(self.host.address)
        return httpx.Client(base_url=self.url, timeout=timeout)

    def start(self) -> NetnsFrontend:
        env = {**self.env, "GUESTBOOK_HOST": self.host.address, "GUESTBOOK_PORT": str(HTTP_PORT)}
        with self.log_path.open("ab") as log:
            self.process = self.host.popen(
                [sys.executable, "-m", "guestbook", "serve"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        with self.http(timeout=2) as client:
            wait_until(lambda: self._ready(client), timeout=60)
        return self

    def _ready(self, client: httpx.Client) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"guestbook serve exited: {self.logs()}")
        return client.get("/readyz").status_code == 200

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Topology:
    """A leader, followers and one frontend, each a host of its own on one network."""

    network: Network
    leader: NetnsRedis
    followers: list[NetnsRedis]
    frontend: NetnsFrontend

    def stored_texts(self, server: NetnsRedis | None = None) -> set[str]:
        """Every message text on `server` (the leader by default), read from the test."""
        client = (server or self.leader).client()
        return {fields["t"] for _, fields in client.xrange("guestbook:messages")}


def start_topology(
    network: Network,
    workdir: Path,
    followers: int = 1,
    leader_args: Sequence[str] = (),
    **frontend_env: str,
) -> Topology:
    """Start the leader, then the followers (synced), then a frontend configured for them."""
    leader = NetnsRedis(
        network.add_host("leader"), workdir / "leader", extra_args=tuple(leader_args)
    ).start()
    replicas = [
        NetnsRedis(network.add_host(f"follower{i}"), workdir / f"follower{i}", leader).start()
        for i in range(followers)
    ]
    front_host = network.add_host("frontend")
    for server in (leader, *replicas):
        front_host.check_route(server.address)
    env = base_env(
        workdir,
        GUESTBOOK_REDIS_LEADER_URL=leader.url,
        GUESTBOOK_REDIS_FOLLOWER_URL=",".join(r.url for r in replicas),
        **frontend_env,
    )
    frontend = NetnsFrontend(front_host, env, workdir / "serve.log").start()
    return Topology(network, leader, replicas, frontend)
