"""Redis Sentinel for the tests: three real sentinels (`valkey-server --sentinel`, the binary the
project ships with) watching a real leader and two followers, all on free loopback ports.

The servers refuse writes without a follower in step (`min-replicas-to-write 1`, lag 5 s), on
the followers too, since a follower becomes the leader. The sentinels ask for a password (the
frontends must send `GUESTBOOK_SENTINEL_PASSWORD`) and decide fast: a leader silent for 1 s is
down. Each sentinel rewrites its own config file, so each gets one of its own, writable.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from conftest import HOST, RedisServer, free_port, wait_until
from guestbook.embedded import server_binary

SERVICE = "guestbook"
# Sent by the frontends, never shown by them: the tests look for it in every answer.
SENTINEL_PASSWORD = "sentinel-pw-not-for-display"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000
# The split-brain guard: a leader with no follower acknowledging within 5 s refuses writes.
SERVER_ARGS = ("--min-replicas-to-write", "1", "--min-replicas-max-lag", "5")


@dataclass
class PasswordServer(RedisServer):
    """A server that asks for a password (`requirepass`), and gives it to its leader
    (`masterauth`), as every server of a password-protected HA set must."""

    password: str = ""

    def __post_init__(self) -> None:
        self.extra_args = (
            *self.extra_args,
            "--requirepass",
            self.password,
            "--masterauth",
            self.password,
        )

    def client(self) -> redis.Redis:
        return redis.Redis(
            host=HOST,
            port=self.port,
            password=self.password,
            decode_responses=True,
            socket_timeout=5,
        )


@dataclass
class SentinelServer:
    workdir: Path
    leader_port: int
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    # The servers' password, when they ask for one (`sentinel auth-pass`).
    server_password: str | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(
            host=HOST,
            port=self.port,
            password=SENTINEL_PASSWORD,
            decode_responses=True,
            socket_timeout=5,
        )

    def start(self) -> SentinelServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "sentinel.conf"
        if not conf.exists():  # a restarted sentinel keeps what it rewrote
            conf.write_text(
                f"port {self.port}\n"
                f"bind {HOST}\n"
                f"dir {self.workdir}\n"
                f"logfile {self.workdir / 'sentinel.log'}\n"
                f"requirepass {SENTINEL_PASSWORD}\n"
                f"sentinel sentinel-pass {SENTINEL_PASSWORD}\n"
                f"sentinel monitor {SERVICE} {HOST} {self.leader_port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
                + (
                    f"sentinel auth-pass {SERVICE} {self.server_password}\n"
                    if self.server_password
                    else ""
                )
            )
        self.process = subprocess.Popen(
            [str(server_binary()), str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: self.client().ping())
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def leader_port_named(self) -> int | None:
        found = self.client().sentinel_get_master_addr_by_name(SERVICE)
        return int(found[1]) if found else None


@dataclass
class HA:
    """A leader, two followers and three sentinels. `servers` keeps the starting order; who
    leads now is `leader()`, as the sentinels say."""

    servers: list[RedisServer]
    sentinels: list[SentinelServer]

    @property
    def env_sentinels(self) -> str:
        return ",".join(s.address for s in self.sentinels)

    def env(self, **extra: str) -> dict[str, str]:
        """The frontend's store settings: the sentinels only."""
        return {
            "GUESTBOOK_SENTINELS": self.env_sentinels,
            "GUESTBOOK_SENTINEL_SERVICE": SERVICE,
            "GUESTBOOK_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
            **extra,
        }

    def leader_port(self) -> int | None:
        """The leader most sentinels name now (None: no majority answers)."""
        named: list[int] = []
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                port = sentinel.leader_port_named()
                if port is not None:
                    named.append(port)
        best = max(set(named), key=named.count, default=None)
        return best if best is not None and named.count(best) >= 2 else None

    def leader(self) -> RedisServer:
        port = self.leader_port()
        found = next((s for s in self.servers if s.port == port), None)
        assert found is not None, f"no leader named by a majority (port {port})"
        return found

    def followers(self) -> list[RedisServer]:
        leader = self.leader()
        return [s for s in self.servers if s is not leader]

    def wait_watching(self, replicas: int = 2, timeout: float = 30) -> None:
        """Until every sentinel knows the leader, `replicas` followers up and both other
        sentinels: before that a failover could not happen."""

        def ready() -> bool:
            for sentinel in self.sentinels:
                state = sentinel.client().sentinel_master(SERVICE)
                if int(state["num-slaves"]) < replicas or int(state["num-other-sentinels"]) < 2:
                    return False
                replicas_seen = sentinel.client().sentinel_slaves(SERVICE)
                up = [r for r in replicas_seen if not (r["is_sdown"] or r["is_disconnected"])]
                if len(up) < replicas:
                    return False
            return True

        wait_until(ready, timeout=timeout, interval=0.1)

    def wait_new_leader(self, old_port: int, timeout: float = 30) -> RedisServer:
        """Until a majority names another leader, and that server says it leads."""
        wait_until(
            lambda: (
                self.leader_port() not in (None, old_port)
                and self.leader().client().info("replication")["role"] == "master"
            ),
            timeout=timeout,
            interval=0.05,
        )
        return self.leader()

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.kill()
        for server in self.servers:
            server.kill()


def start_ha(base: Path, server_password: str | None = None) -> HA:
    def server(name: str, replica_of: RedisServer | None = None) -> RedisServer:
        if server_password:
            return PasswordServer(
                base / name, replica_of=replica_of, extra_args=SERVER_ARGS, password=server_password
            )
        return RedisServer(base / name, replica_of=replica_of, extra_args=SERVER_ARGS)

    leader = server("server0").start()
    servers = [leader] + [server(f"server{i}", leader).start() for i in (1, 2)]
    # A follower restarted after a failover must not come back following the old leader.
    for server in servers[1:]:
        server.replica_of = None
    ha = HA(servers, [])
    try:
        ha.sentinels = [
            SentinelServer(
                base / f"sentinel{i}", leader.port, server_password=server_password
            ).start()
            for i in range(3)
        ]
        ha.wait_watching()
    except BaseException:
        ha.stop()
        raise
    return ha


@contextlib.contextmanager
def running_ha(base: Path, server_password: str | None = None) -> Iterator[HA]:
    ha = start_ha(base, server_password)
    try:
        yield ha
    finally:
        ha.stop()


def rejoined(server: RedisServer, leader: RedisServer) -> bool:
    """`server` follows `leader` with its link up: its data set is the leader's."""
    info = server.client().info("replication")
    return (
        info.get("role") == "slave"
        and int(info.get("master_port", 0)) == leader.port
        and info.get("master_link_status") == "up"
    )


def seconds_since(start: float) -> float:
    return time.monotonic() - start
